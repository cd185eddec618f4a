//! The operator's console in a real headless Chromium (Debian's
//! `/usr/bin/chromium`, driven through `chromedriver` over WebDriver)
//! against a real backend: an operator creates and submits a round in the
//! page, an approver approves it, a crowd buys and pays over HTTP, and the
//! live dashboard's bars reach `sold` for every unit. Also: the event
//! stream refuses buyers, and ends when the server shuts down gracefully.

use std::time::Duration;

use tokio::time::Instant;

use seckill_backend::auth::Role;
use serde_json::{Value, json};

use crate::{
    browser::{Browser, UI_WAIT, screenshot_path, until},
    helpers::{TestApp, item, users},
};

async fn sign_in(b: &Browser, token: &str, sub: &str) {
    if b.js("return !document.getElementById('who').hidden;", vec![])
        .await
        == json!(true)
    {
        b.click("#signout-btn").await;
    }
    b.fill("#token", token).await;
    b.click("#signin-btn").await;
    b.wait_text("#who-sub", sub).await;
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The dashboard's bars as the page holds them: (item id, total, sold).
async fn bars(b: &Browser) -> Vec<(i64, i64, i64)> {
    let v = b
        .js(
            "return [...document.querySelectorAll('#bars .item-row')].map(r => r.dataset);",
            vec![],
        )
        .await;
    let num = |r: &Value, k: &str| r[k].as_str().and_then(|s| s.parse().ok()).unwrap_or(-1);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (num(r, "itemId"), num(r, "total"), num(r, "sold")))
        .collect()
}

#[tokio::test]
async fn console_runs_a_sale_from_draft_to_sold_out_in_a_browser() {
    let app = TestApp::spawn().await;
    let b = Browser::launch().await;
    let operator = app.token("operator-1", Role::Operator);
    let approver = app.token("approver-1", Role::Approver);

    // The bare path redirects to the console.
    b.client.goto(&app.url("/admin/console")).await.unwrap();
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/admin/console/");
    b.wait_data("body", "ready", "true").await;

    // The operator signs in and creates a round; a refusal shows the API's
    // code and message.
    sign_in(&b, &operator, "operator-1").await;
    let now = app.now_ms();
    b.fill("#round-name", "Console sale").await;
    b.fill("#round-starts", &rfc3339(now - 1_000)).await;
    b.fill("#round-ends", &rfc3339(now - 1_000)).await;
    b.click("#create-btn").await;
    b.wait_data("#create-msg", "code", "bad_request").await;
    b.wait_text("#create-msg", "ends_at must be after starts_at")
        .await;

    b.fill("#round-ends", &rfc3339(now + 3_600_000)).await;
    let first = "#items fieldset.item:nth-of-type(1)";
    b.fill(&format!("{first} [name=title]"), "Phone").await;
    b.fill(&format!("{first} [name=stock]"), "3").await;
    b.click("#add-item").await;
    let second = "#items fieldset.item:nth-of-type(2)";
    b.fill(&format!("{second} [name=title]"), "Watch").await;
    b.fill(&format!("{second} [name=stock]"), "2").await;
    b.click("#create-btn").await;
    b.wait_text("#rv-status", "draft").await;
    let round: i64 = b
        .js(
            "return document.getElementById('round-view').dataset.roundId;",
            vec![],
        )
        .await
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the page shows the new round's id");
    let (s, r) = app.get(&format!("/admin/rounds/{round}"), &operator).await;
    assert_eq!(s, 200);
    assert_eq!(r["created_by"], "operator-1");
    let stocks: Vec<(i64, i64)> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_i64().unwrap(), i["stock"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        stocks.iter().map(|s| s.1).collect::<Vec<_>>(),
        [3, 2],
        "{r}"
    );

    b.click("#submit-btn").await;
    b.wait_text("#rv-status", "submitted").await;
    // An operator cannot approve: the page shows the API's refusal.
    b.click("#approve-btn").await;
    b.wait_data("#round-msg", "code", "forbidden").await;
    b.wait_text("#round-msg", "an approver token is required")
        .await;

    // A second person, holding an approver token, approves it.
    sign_in(&b, &approver, "approver-1").await;
    b.wait_text("#rv-status", "submitted").await;
    b.click("#approve-btn").await;
    b.wait_text("#rv-status", "approved").await;
    b.wait_text("#rv-reviewed", "approver-1").await;

    // The dashboard follows the round.
    b.click("#watch-btn").await;
    b.wait_data("#dashboard", "state", "live").await;
    until(UI_WAIT, "a live bar per item", || async {
        let bars = bars(&b).await;
        (bars.len() == 2 && bars.iter().all(|&(_, total, sold)| total > 0 && sold == 0))
            .then_some(())
    })
    .await;

    // A crowd larger than the stock buys, and every winner pays.
    let buys = stocks.iter().flat_map(|&(item, stock)| {
        users(&format!("crowd-{item}"), stock as usize + 3)
            .into_iter()
            .map(move |u| (item, u))
    });
    let buys = buys.map(|(item, u)| {
        let app = &app;
        async move {
            let t = app.token(&u, Role::Buyer);
            let (s, v) = app.buy(round, item, &t, 1).await;
            (item, t, s, v)
        }
    });
    let answers = futures::future::join_all(buys).await;
    for &(item, stock) in &stocks {
        let won = answers.iter().filter(|a| a.0 == item && a.2 == 202).count();
        assert_eq!(won as i64, stock, "item {item}: one 202 per unit");
        assert!(
            answers
                .iter()
                .filter(|a| a.0 == item && a.2 != 202)
                .all(|a| a.2 == 410 && a.3["error"] == "sold_out"),
            "the rest are told sold_out"
        );
    }
    for (_, t, _, v) in answers.iter().filter(|a| a.2 == 202) {
        let attempt = v["attempt_id"].as_str().unwrap();
        assert_eq!(app.poll_final(attempt, t).await["status"], "ordered");
        let r = app
            .post_json(&format!("/api/orders/{attempt}/pay"), t, None)
            .await;
        assert_eq!(r.status(), 200, "pay {attempt}");
    }
    let last_paid = Instant::now();

    // Within a few seconds of the last payment every bar is all sold.
    until(Duration::from_secs(5), "every bar reaches sold", || async {
        let bars = bars(&b).await;
        let all = stocks.iter().all(|&(item, stock)| {
            bars.iter()
                .any(|&(id, total, sold)| id == item && total == stock && sold == stock)
        });
        all.then_some(())
    })
    .await;
    let shown_after = last_paid.elapsed();
    assert!(shown_after < Duration::from_secs(5), "{shown_after:?}");
    let sold_out = b.wait_text("#sold-out", "Watch: sold out").await;
    assert!(sold_out.contains("Phone: sold out"), "{sold_out}");
    let lines = b
        .js(
            "return document.querySelectorAll('#chart polyline').length;",
            vec![],
        )
        .await;
    assert_eq!(lines, json!(4), "one line per outcome");
    // The screenshot shows the dashboard once the bars have stopped moving.
    b.js(
        "document.getElementById('dashboard').scrollIntoView();",
        vec![],
    )
    .await;
    until(UI_WAIT, "the bars' transitions finish", || async {
        let done = b
            .js(
                "return [...document.querySelectorAll('#bars .bar')].every(bar => \
                   bar.querySelector('.seg.sold').getBoundingClientRect().width >= \
                   bar.getBoundingClientRect().width - 1);",
                vec![],
            )
            .await;
        (done == json!(true)).then_some(())
    })
    .await;
    let png = b.client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_path("console-dashboard.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("dashboard screenshot: {}", path.display());

    // A buyer's token gets 403 from the event stream, and the page says so.
    let buyer = app.token("crowd-buyer", Role::Buyer);
    let events = format!("/admin/rounds/{round}/events");
    let (s, v) = app.get(&events, &buyer).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("forbidden")), "{v}");
    let r = app.client.get(app.url(&events)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    sign_in(&b, &buyer, "crowd-buyer").await;
    b.wait_text("#who-warn", "the admin API will refuse it")
        .await;
    b.fill("#dash-round", &round.to_string()).await;
    b.click("#dash-watch").await;
    b.wait_data("#dash-error", "code", "forbidden").await;
    b.wait_text("#dash-error", "403").await;
    b.wait_data("#dashboard", "state", "refused").await;

    b.client.close().await.expect("the browser closes");
    app.teardown().await;
}

#[tokio::test]
async fn console_files_are_served_and_unknown_ones_are_json_404() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/admin/console/", "text/html"),
        ("/admin/console/console.js", "text/javascript"),
        ("/admin/console/dashboard.js", "text/javascript"),
        ("/admin/console/api.js", "text/javascript"),
        ("/admin/console/console.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(r.headers().contains_key("content-security-policy"));
    }
    let r = app
        .client
        .get(app.url("/admin/console/../secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(app.url("/admin/console/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    app.teardown().await;
}

#[tokio::test]
async fn dashboard_stream_ends_when_the_server_shuts_down() {
    let mut app = TestApp::spawn().await;
    let (round, items) = app.open_round(json!([item(4, 1)]), -1_000, 3_600_000).await;
    let op = app.token("operator-1", Role::Operator);
    let (s, _) = app
        .buy(round, items[0], &app.token("early", Role::Buyer), 1)
        .await;
    assert_eq!(s, 202);

    let (s, v) = app.get("/admin/rounds/999999/events", &op).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let mut resp = app
        .client
        .get(app.url(&format!("/admin/rounds/{round}/events")))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seen = String::new();
    let snapshot = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let chunk = resp.chunk().await.unwrap().expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(at) = seen.find("event: snapshot\ndata: ") {
                let rest = &seen[at + "event: snapshot\ndata: ".len()..];
                if let Some(end) = rest.find('\n') {
                    return serde_json::from_str::<Value>(&rest[..end]).unwrap();
                }
            }
        }
    })
    .await
    .expect("a snapshot within 5 s");
    assert_eq!(snapshot["round_id"], round);
    assert_eq!(snapshot["status"], "approved");
    let c = &snapshot["items"][0]["counters"];
    assert_eq!(
        (&c["total"], &c["available"], &c["reserved"]),
        (&json!(4), &json!(3), &json!(1))
    );
    assert!(snapshot["outcomes"]["totals"]["reserved"].as_u64() >= Some(1));
    assert!(snapshot["dead_letters"].is_u64(), "{snapshot}");

    // A graceful shutdown ends the open stream (with an `end` event) and is
    // not held up by it.
    let read_to_end = async {
        let mut rest = String::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        rest
    };
    let (took, rest) = tokio::join!(app.shut_down(), read_to_end);
    assert!(rest.contains("event: end"), "{rest}");
    assert!(
        took < app.config.shutdown_grace(),
        "shutdown took {took:?} with a stream open"
    );
    app.teardown().await;
}
