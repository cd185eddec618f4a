//! The buy path end to end: contention, limits, retries, windows, and a
//! broker that is down or comes back.

use std::{collections::HashMap, time::Duration};

use futures::future::join_all;
use seckill_backend::{auth::Role, clock::ManualClock};
use serde_json::json;

use crate::helpers::{Db, FaultProxy, TestApp, TestOptions, dead_addr, item};

/// 50 units, 500 buyers each sending 2 requests at once over real HTTP.
/// The test's one runtime thread serves all 1,000 requests and runs their
/// clients too: Redis's reply timeout is raised so a busy machine measures
/// correctness here, not latency.
async fn contention(db: Db) {
    let app = TestApp::spawn_with(TestOptions {
        db,
        tweak: Some(Box::new(|c| c.redis.timeout_ms = 10_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app
        .open_round(json!([item(50, 1)]), -1_000, 3_600_000)
        .await;
    let item_id = items[0];
    let tokens: Vec<(String, String)> = (0..500)
        .map(|i| {
            let sub = format!("buyer-{i}");
            let t = app.token(&sub, Role::Buyer);
            (sub, t)
        })
        .collect();
    let reqs = tokens.iter().flat_map(|(sub, t)| {
        let app = &app;
        (0..2).map(move |_| async move { (sub.clone(), app.buy(round, item_id, t, 1).await) })
    });
    let results = join_all(reqs).await;

    let mut per_buyer: HashMap<String, Vec<(u16, serde_json::Value)>> = HashMap::new();
    for (sub, r) in results {
        per_buyer.entry(sub).or_default().push(r);
    }
    let mut winners = HashMap::new();
    for (sub, rs) in &per_buyer {
        let accepted: Vec<_> = rs.iter().filter(|(s, _)| *s == 202).collect();
        assert!(accepted.len() <= 1, "{sub} got two 202s: {rs:?}");
        if let Some((_, body)) = accepted.first() {
            let id = body["attempt_id"].as_str().unwrap().to_owned();
            // The other request of a winner is the same attempt (200) or also sold out.
            for (s, b) in rs {
                match s {
                    202 => {}
                    200 => assert_eq!(b["attempt_id"], id.as_str()),
                    410 => assert_eq!(b["error"], "sold_out"),
                    other => panic!("{sub}: unexpected {other} {b}"),
                }
            }
            winners.insert(sub.clone(), id);
        } else {
            for (s, b) in rs {
                assert_eq!(*s, 410, "{sub}: {b}");
                assert_eq!(b["error"], "sold_out");
            }
        }
    }
    assert_eq!(winners.len(), 50, "exactly the stock is reserved");
    assert_eq!(app.counters(round, item_id).await, (50, 0, 50, 0));

    let by_sub: HashMap<_, _> = tokens.into_iter().collect();
    for (sub, id) in &winners {
        let v = app.poll_final(id, &by_sub[sub]).await;
        assert_eq!(v["status"], "ordered", "{v}");
        assert_eq!(v["order_id"], id.as_str());
        assert!(v["pay_by_ms"].as_i64().unwrap() > app.now_ms());
    }
    assert_eq!(app.order_count().await, 50);
    assert_eq!(app.counters(round, item_id).await, (50, 0, 50, 0));
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_sells_exactly_the_stock_sqlite() {
    contention(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_sells_exactly_the_stock_postgres() {
    contention(Db::Postgres).await;
}

#[tokio::test]
async fn per_user_limit_refuses_a_second_attempt_and_keeps_the_first() {
    let app = TestApp::spawn().await;
    let (round, items) = app
        .open_round(json!([item(10, 3)]), -1_000, 3_600_000)
        .await;
    let t = app.token("alice", Role::Buyer);
    let path = format!("/api/rounds/{round}/items/{}/buy", items[0]);
    let send = |key: &'static str, qty: i64| {
        app.client
            .post(app.url(&path))
            .bearer_auth(&t)
            .header("idempotency-key", key)
            .json(&json!({ "qty": qty }))
            .send()
    };
    let first = send("click-1", 2).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();

    let second = send("click-2", 2).await.unwrap();
    assert_eq!(second.status(), 422);
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(second["error"], "limit_exceeded");
    assert_eq!(second["per_user_limit"], 3);
    assert_eq!(second["held_qty"], 2);
    assert_eq!(second["attempt_id"], first["attempt_id"]);

    // A retry of the first click returns the first attempt.
    let retry = send("click-1", 2).await.unwrap();
    assert_eq!(retry.status(), 200);
    let retry: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(retry["attempt_id"], first["attempt_id"]);

    // More than the limit in one request.
    let bob = app.token("bob", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &bob, 4).await;
    assert_eq!((s, v["error"].as_str()), (422, Some("limit_exceeded")));

    assert_eq!(app.counters(round, items[0]).await, (10, 8, 2, 0));
    let v = app
        .poll_final(first["attempt_id"].as_str().unwrap(), &t)
        .await;
    assert_eq!(v["status"], "ordered");
    assert_eq!(v["qty"], 2);
    assert_eq!(app.order_count().await, 1);
    app.teardown().await;
}

#[tokio::test]
async fn a_plain_retry_returns_the_same_attempt() {
    let app = TestApp::spawn().await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let t = app.token("carol", Role::Buyer);
    let (s1, v1) = app.buy(round, items[0], &t, 1).await;
    let (s2, v2) = app.buy(round, items[0], &t, 1).await;
    assert_eq!((s1, s2), (202, 200));
    assert_eq!(v1["attempt_id"], v2["attempt_id"]);
    assert_eq!(app.counters(round, items[0]).await, (5, 4, 1, 0));
    app.teardown().await;
}

#[tokio::test]
async fn window_not_started_and_ended() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = TestApp::spawn_with(TestOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), 60_000, 120_000).await;
    let t = app.token("dave", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 1).await;
    assert_eq!(s, 425, "{v}");
    assert_eq!(v["error"], "not_started");
    assert!(v["starts_at"].is_string());
    assert!(v["starts_at_ms"].as_i64().unwrap() > app.now_ms());

    clock.advance(60_000);
    let (s, _) = app.buy(round, items[0], &t, 1).await;
    assert_eq!(s, 202);

    clock.advance(60_000);
    let late = app.token("erin", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &late, 1).await;
    assert_eq!((s, v["error"].as_str()), (410, Some("ended")));
    assert_eq!(app.counters(round, items[0]).await, (5, 4, 1, 0));
    app.teardown().await;
}

#[tokio::test]
async fn unreachable_broker_spools_the_order_and_keeps_its_units() {
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", dead_addr().await)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    let t = app.token("frank", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 1).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("queued")), "{v}");
    assert_eq!(app.counters(round, items[0]).await, (3, 2, 1, 0));
    assert_eq!(app.state.durable.spool.len(), 1);
    // A retry finds the same attempt; nothing more is held or spooled.
    let (s, again) = app.buy(round, items[0], &t, 1).await;
    assert_eq!((s, &again["attempt_id"]), (200, &v["attempt_id"]));
    assert_eq!(app.counters(round, items[0]).await, (3, 2, 1, 0));
    assert_eq!(app.state.durable.spool.len(), 1);
    app.teardown().await;
}

#[tokio::test]
async fn publisher_recovers_after_the_broker_comes_back() {
    let target = crate::helpers::amqp_url();
    let host = target
        .trim_start_matches("amqp://")
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let proxy =
        FaultProxy::start(tokio::net::lookup_host(host).await.unwrap().next().unwrap()).await;
    let app = TestApp::spawn_with(TestOptions {
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", proxy.addr)),
        ..Default::default()
    })
    .await;
    let (round, items) = app
        .open_round(json!([item(10, 1)]), -1_000, 3_600_000)
        .await;

    let a = app.token("g1", Role::Buyer);
    let (s, va) = app.buy(round, items[0], &a, 1).await;
    assert_eq!(s, 202);

    proxy.down();
    let b = app.token("g2", Role::Buyer);
    let (s, vb) = app.buy(round, items[0], &b, 1).await;
    assert_eq!(s, 202, "spooled: {vb}");
    assert_eq!(app.counters(round, items[0]).await, (10, 8, 2, 0));
    assert_eq!(app.state.durable.spool.len(), 1);

    // Back: the spool is drained with confirms, the writer takes it.
    proxy.up();
    for (id, t) in [(&va, &a), (&vb, &b)] {
        let v = app.poll_final(id["attempt_id"].as_str().unwrap(), t).await;
        assert_eq!(v["status"], "ordered");
    }
    assert_eq!(app.counters(round, items[0]).await, (10, 8, 2, 0));
    assert_eq!(app.order_count().await, 2);

    assert!(app.state.durable.spool.is_empty());

    // A broker that stops answering: the confirm times out, the order is
    // spooled and delivered once the broker answers again.
    proxy.blackhole();
    let c = app.token("g3", Role::Buyer);
    let (s, vc) = app.buy(round, items[0], &c, 1).await;
    assert_eq!(s, 202, "{vc}");
    assert_eq!(app.counters(round, items[0]).await, (10, 7, 3, 0));
    proxy.up();
    let v = app.poll_final(vc["attempt_id"].as_str().unwrap(), &c).await;
    assert_eq!(v["status"], "ordered");
    assert_eq!(app.counters(round, items[0]).await, (10, 7, 3, 0));
    assert_eq!(app.order_count().await, 3);
    app.teardown().await;
}

#[tokio::test]
async fn redis_outage_journals_buys_quickly_and_replays_them() {
    let redis_addr = tokio::net::lookup_host(
        crate::helpers::redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await
    .unwrap()
    .next()
    .unwrap();
    let proxy = FaultProxy::start(redis_addr).await;
    let app = TestApp::spawn_with(TestOptions {
        redis_url: Some(format!("redis://{}/", proxy.addr)),
        ..Default::default()
    })
    .await;
    let (round, items) = app
        .open_round(json!([item(10, 1)]), -1_000, 3_600_000)
        .await;
    let a = app.token("r1", Role::Buyer);
    assert_eq!(app.buy(round, items[0], &a, 1).await.0, 202);

    proxy.down();
    let b = app.token("r2", Role::Buyer);
    let started = std::time::Instant::now();
    let (s, v) = app.buy(round, items[0], &b, 1).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("processing")), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead redis must be noticed fast"
    );
    // Polled while Redis is still away: answered from the journal.
    let path = format!("/api/attempts/{}", v["attempt_id"].as_str().unwrap());
    let (s, p) = app.get(&path, &b).await;
    assert_eq!((s, p["status"].as_str()), (200, Some("processing")), "{p}");

    proxy.up();
    let v = app.poll_final(v["attempt_id"].as_str().unwrap(), &b).await;
    assert_eq!(v["status"], "ordered");
    assert_eq!(app.counters(round, items[0]).await, (10, 8, 2, 0));

    // A server that stops answering (no reset) costs at most the timeout.
    proxy.blackhole();
    let c = app.token("r3", Role::Buyer);
    let started = std::time::Instant::now();
    let (s, v) = app.buy(round, items[0], &c, 1).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("processing")), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    proxy.up();
    let v = app.poll_final(v["attempt_id"].as_str().unwrap(), &c).await;
    assert_eq!(v["status"], "ordered");
    assert_eq!(app.counters(round, items[0]).await, (10, 7, 3, 0));
    app.teardown().await;
}
