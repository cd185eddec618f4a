//! Stock-bounded forwarding with one node, and leases shared by two nodes
//! (one of them killed mid-sale).

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use seckill_proto::auth::Role;

use crate::helpers::*;

/// Permits forwarded that did not become a reservation.
async fn not_spent(edge: &Edge) -> f64 {
    let mut n = 0.0;
    for e in ["kept", "dropped", "void", "lost", "stale"] {
        n += edge
            .metric("edge_permits_total", &[&format!("event=\"{e}\"")])
            .await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_no_more_buy_requests_than_stock() {
    let backend = Backend::spawn().await;
    let counter = HitCounter::start(backend.addr).await;
    let (round, items) = backend.open_round(serde_json::json!([item(20, 1)])).await;
    let item_id = items[0];
    let mut opts = EdgeOptions::new(&backend.secret, &backend.prefix);
    opts.backends = vec![counter.addr];
    opts.batch = 5;
    opts.pages = backend.pages.clone();
    opts.node_id = format!("solo-{}", unique());
    let edge = Arc::new(Edge::start(&opts).await);

    // The page the backend rendered at approval is served by the edge.
    let page = edge
        .client
        .get(edge.url(&format!("/sale/{round}/{item_id}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    // 1,000 buyers, two requests each (the second is a retry), 2,000 in all.
    let keys = backend.keys();
    let tokens: Vec<String> = (0..1000)
        .map(|u| keys.mint(&format!("buyer-{u}"), Role::Buyer, 3600))
        .collect();
    let requests: Vec<String> = tokens.iter().chain(tokens.iter()).cloned().collect();
    let statuses: Vec<(u16, serde_json::Value)> = stream::iter(requests)
        .map(|t| {
            let edge = edge.clone();
            async move { edge.buy(round, item_id, Some(&t)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for (s, _) in &statuses {
        *by_status.entry(*s).or_default() += 1;
    }
    let accepted = by_status.get(&202).copied().unwrap_or(0);
    assert_eq!(accepted, 20, "statuses: {by_status:?}");
    assert_eq!(statuses.len(), 2000);

    let (total, available, reserved, sold) = backend.counters(round, item_id).await;
    assert_eq!((total, available, reserved + sold), (20, 0, 20));
    eventually(Duration::from_secs(20), || async {
        (backend.order_count().await == 20).then_some(())
    })
    .await;

    // Every backend hit carried a permit; refunds bound the extra hits.
    let hits = counter.hits() as f64;
    let forwarded = edge
        .metric("edge_permits_total", &["event=\"forwarded\""])
        .await;
    let spent = edge
        .metric("edge_permits_total", &["event=\"spent\""])
        .await;
    let refunded = not_spent(&edge).await;
    assert_eq!(hits, forwarded, "every forwarded buy took a permit");
    assert_eq!(spent, 20.0, "each unit sold spent one permit");
    assert!(
        hits <= 20.0 + refunded,
        "hits {hits} > 20 + refunded {refunded}"
    );
    assert!(hits < 200.0, "the edge answered the crowd: hits {hits}");

    // Sold out now: answered by the edge without a backend call.
    let before = counter.hits();
    let t = keys.mint("late-buyer", Role::Buyer, 3600);
    let (s, body) = edge.buy(round, item_id, Some(&t)).await;
    assert_eq!(s, 410, "{body}; log: {}", edge.log());
    assert_eq!(body["error"], "sold_out");
    assert_eq!(
        counter.hits(),
        before,
        "sold-out answer reached the backend"
    );
    let edge_410 = edge
        .metric("edge_rejections_total", &["reason=\"sold_out\""])
        .await;
    assert!(edge_410 >= 1.0);

    // A unit comes back (as when an unpaid order expires): the edge sells
    // it again once it re-checks Redis.
    let stock_key = format!("{}:{{r{round}:i{item_id}}}:stock", backend.prefix);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .atomic()
        .cmd("HINCRBY")
        .arg(&stock_key)
        .arg("reserved")
        .arg(-1)
        .cmd("HINCRBY")
        .arg(&stock_key)
        .arg("available")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let again = keys.mint("buyer-after-cancel", Role::Buyer, 3600);
    eventually(Duration::from_secs(10), || async {
        let (s, _) = edge.buy(round, item_id, Some(&again)).await;
        (s == 202).then_some(())
    })
    .await;
    let (_, available, _, _) = backend.counters(round, item_id).await;
    assert_eq!(available, 0);

    // SIGTERM drains and exits cleanly, handing its lease back.
    let mut edge = Arc::try_unwrap(edge).ok().expect("no other handle");
    let status = edge.terminate().expect("edge was running");
    assert!(status.success(), "exit {status}: {}", edge.log());
    let leases_key = format!("{}:{{r{round}:i{item_id}}}:leases", backend.prefix);
    let held: Option<i64> = redis::cmd("HGET")
        .arg(&leases_key)
        .arg(&opts.node_id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        held,
        None,
        "lease left behind after a graceful stop: {}",
        edge.log()
    );

    backend.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_stock_through_leases_and_survive_a_dead_node() {
    let backend = Backend::spawn().await;
    let counter = HitCounter::start(backend.addr).await;
    let (round, items) = backend.open_round(serde_json::json!([item(30, 1)])).await;
    let item_id = items[0];
    let mut opts = EdgeOptions::new(&backend.secret, &backend.prefix);
    opts.backends = vec![counter.addr];
    opts.batch = 5;
    opts.lease_ttl_ms = 3_000;
    opts.node_id = "node-a".into();
    let mut a = Edge::start(&opts).await;
    opts.node_id = "node-b".into();
    let b = Arc::new(Edge::start(&opts).await);
    let keys = backend.keys();
    let token = |u: usize| keys.mint(&format!("buyer-{u}"), Role::Buyer, 3600);

    // Node A sells 3 and keeps the other 2 of its batch.
    for u in 0..3 {
        let (s, body) = a.buy(round, item_id, Some(&token(u))).await;
        assert_eq!(s, 202, "{body}");
    }
    let a_refunded = not_spent(&a).await;
    a.kill();

    // Node B sells the rest; the 2 permits A stranded come back when its
    // lease expires, and B keeps answering (429 "wait") until then.
    let mut sold = 3;
    let mut next_user = 3;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let batch: Vec<String> = (next_user..next_user + 20).map(token).collect();
        next_user += 20;
        let results: Vec<(u16, serde_json::Value)> = stream::iter(batch)
            .map(|t| {
                let b = b.clone();
                async move { b.buy(round, item_id, Some(&t)).await }
            })
            .buffer_unordered(20)
            .collect()
            .await;
        for (s, _) in &results {
            *statuses.entry(*s).or_default() += 1;
            if *s == 202 {
                sold += 1;
            }
        }
        if results.iter().all(|(s, _)| *s == 410) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not sold out in time: sold {sold}, {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sold, 30, "{statuses:?}");
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 0,
        "B had to wait for A's lease: {statuses:?}"
    );
    let (_, available, reserved, sold_c) = backend.counters(round, item_id).await;
    assert_eq!((available, reserved + sold_c), (0, 30));
    let b_refunded = not_spent(&b).await;
    let hits = counter.hits() as f64;
    assert!(
        hits <= 30.0 + a_refunded + b_refunded,
        "hits {hits} > 30 + refunds {}",
        a_refunded + b_refunded
    );

    drop(b);
    backend.teardown().await;
}
