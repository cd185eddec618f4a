//! The sale page in a real headless Chromium (the browser harness of the
//! backend's console test), served by the real edge in front of a backend
//! with purchase tickets and a round with a proof-of-work challenge: the
//! page syncs its clock, solves the challenge during the countdown, asks
//! for its ticket at the lead time, buys with it at the start, polls and
//! shows the order, which is in the database.

use std::time::Duration;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use seckill_backend::store::entities::order;
use seckill_proto::auth::Role;
use serde_json::{Value, json};

use crate::{
    browser::{Browser, screenshot_path, until},
    helpers::*,
};

const TICKET_SECRET: &str = "edge-ticket-secret-for-tests";
/// Keys the page derives at most: a moment, even on a loaded machine.
const DIFFICULTY: i64 = 300;
const LEAD_MS: u64 = 1_500;

/// Creates, submits and approves a round of one item starting in
/// `starts_in_ms`, with the challenge; returns (round, item, starts_at_ms).
async fn open_round(backend: &Backend, starts_in_ms: i64) -> (i64, i64, i64) {
    let starts = chrono::Utc::now().timestamp_millis() + starts_in_ms;
    let ts = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let url = |p: &str| format!("http://{}{p}", backend.addr);
    let op = backend.token("operator-1", Role::Operator);
    let r = backend
        .client
        .post(url("/admin/rounds"))
        .bearer_auth(&op)
        .json(&json!({
            "name": "Browser sale",
            "starts_at": ts(starts),
            "ends_at": ts(starts + 3_600_000),
            "items": [item(3, 1)],
            "pow_difficulty": DIFFICULTY,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "create round");
    let round: Value = r.json().await.unwrap();
    let id = round["id"].as_i64().unwrap();
    for (path, token) in [
        ("submit", op.clone()),
        ("approve", backend.token("approver-1", Role::Approver)),
    ] {
        let r = backend
            .client
            .post(url(&format!("/admin/rounds/{id}/{path}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    (id, round["items"][0]["id"].as_i64().unwrap(), starts)
}

async fn data(b: &Browser, key: &str) -> Option<String> {
    b.js(
        "return document.body.dataset[arguments[0]] ?? null;",
        vec![json!(key)],
    )
    .await
    .as_str()
    .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sale_page_solves_its_challenge_gets_a_ticket_and_buys() {
    let backend = Backend::spawn_with(|c| {
        c.tickets.enabled = true;
        c.tickets.secret = TICKET_SECRET.into();
        c.tickets.lead_ms = LEAD_MS;
    })
    .await;
    let mut opts = EdgeOptions::new(&backend.secret, &backend.prefix);
    opts.backends = vec![backend.addr];
    opts.pages = backend.pages.clone();
    let edge = Edge::start_with(
        &opts,
        &LuaSetup {
            env: vec![
                ("SECKILL_EDGE__TICKETS__ENABLED".into(), "true".into()),
                ("SECKILL_EDGE__TICKETS__SECRET".into(), TICKET_SECRET.into()),
            ],
            ..LuaSetup::default()
        },
    )
    .await;
    let b = Browser::launch().await;

    // The round starts a few seconds after the page loads.
    let (round, item_id, starts) = open_round(&backend, 5_000).await;
    let token = backend.token("page-buyer", Role::Buyer);
    b.client
        .goto(&edge.url(&format!("/sale/{round}/{item_id}/?token={token}")))
        .await
        .expect("the page loads");
    let access = b.wait_text("#access", "purchase ticket").await;
    assert!(access.contains("check"), "{access}");

    // The clock is synced and the challenge solved during the countdown,
    // before the ticket window opens.
    until(
        Duration::from_secs(10),
        "the challenge is solved",
        || async { (data(&b, "stage").await.as_deref() == Some("solved")).then_some(()) },
    )
    .await;
    assert_eq!(data(&b, "synced").await.as_deref(), Some("true"));
    let solved_at: i64 = data(&b, "solvedAt").await.unwrap().parse().unwrap();
    assert!(
        solved_at < starts - LEAD_MS as i64,
        "solved {} ms before the start",
        starts - solved_at
    );
    b.wait_text("#prep", "done").await;
    assert!(b.wait_text("#countdown", "Starts in").await.contains('s'));

    // The ticket at the lead time (the backend hands none out earlier).
    until(Duration::from_secs(10), "a ticket", || async {
        (data(&b, "stage").await.as_deref() == Some("ticket")).then_some(())
    })
    .await;
    let ticket_at: i64 = data(&b, "ticketAt").await.unwrap().parse().unwrap();
    assert!(
        ticket_at >= starts - LEAD_MS as i64 - 100,
        "{ticket_at} {starts}"
    );

    // At the start the button opens; the buy goes out with the ticket.
    until(Duration::from_secs(10), "the buy button opens", || async {
        let enabled = b
            .js("return !document.getElementById('buy').disabled;", vec![])
            .await;
        (enabled == json!(true)).then_some(())
    })
    .await;
    b.click("#buy").await;
    let status = b.wait_text("#status", "Ordered").await;

    let orders = order::Entity::find()
        .filter(order::Column::UserId.eq("page-buyer"))
        .all(&backend.state.db)
        .await
        .unwrap();
    assert_eq!(orders.len(), 1, "{orders:?}");
    let o = &orders[0];
    assert_eq!((o.round_id, o.item_id, o.qty), (round, item_id, 1));
    assert!(status.contains(&o.id), "{status}");
    assert_eq!(backend.counters(round, item_id).await, (3, 2, 1, 0));

    let png = b.client.screenshot().await.expect("screenshot");
    let path = screenshot_path("sale-page.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!(
        "sale page screenshot: {}; challenge of difficulty {DIFFICULTY} solved in {} ms",
        path.display(),
        data(&b, "solveMs").await.unwrap_or_default()
    );
    // Ending the session makes chromedriver stop its Chromium (killing
    // chromedriver alone would leave the browser running).
    b.client.close().await.expect("the browser closes");
    drop(edge);
    backend.teardown().await;
}
