//! Purchase tickets at the edge (`[tickets]` on edge and backend): a buy
//! with a missing, forged, expired, other buyer's or other item's ticket is
//! answered 403 by the edge and never reaches the backend (the
//! [`HitCounter`] in front of it does not move); a valid ticket buys once,
//! and its reuse is refused by the backend, which alone sees every use.

use seckill_proto::{
    auth::Role,
    ticket::{Ticket, TicketKeys},
};
use serde_json::{Value, json};

use crate::helpers::*;

const TICKET_SECRET: &str = "edge-ticket-secret-for-tests";

async fn buy(edge: &Edge, path: &str, token: &str, ticket: Option<&str>) -> (u16, Value) {
    let mut req = edge
        .client
        .post(edge.url(path))
        .bearer_auth(token)
        .json(&json!({ "qty": 1 }));
    if let Some(t) = ticket {
        req = req.header("x-seckill-ticket", t);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_tickets_are_refused_at_the_edge() {
    let backend = Backend::spawn_with(|c| {
        c.tickets.enabled = true;
        c.tickets.secret = TICKET_SECRET.into();
    })
    .await;
    let counter = HitCounter::start(backend.addr).await;
    let (round, items) = backend.open_round(json!([item(10, 1), item(10, 1)])).await;
    let (it, other_item) = (items[0], items[1]);
    let mut opts = EdgeOptions::new(&backend.secret, &backend.prefix);
    opts.backends = vec![counter.addr];
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
    let alice = backend.token("alice", Role::Buyer);
    let bob = backend.token("bob", Role::Buyer);

    // Alice's ticket, straight from the backend (not through the counter).
    let r = backend
        .client
        .post(format!(
            "http://{}/api/rounds/{round}/items/{it}/ticket",
            backend.addr
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    let path = body["buy_path"].as_str().unwrap().to_owned();

    let now = chrono::Utc::now().timestamp_millis();
    let forged = TicketKeys::new(b"a-secret-the-sale-never-had").issue(&Ticket {
        user: "alice".into(),
        round_id: round,
        item_id: it,
        expires_ms: now + 60_000,
        nonce: 1,
    });
    let expired = TicketKeys::new(TICKET_SECRET.as_bytes()).issue(&Ticket {
        user: "alice".into(),
        round_id: round,
        item_id: it,
        expires_ms: now - 1,
        nonce: 2,
    });
    let other_path = format!("/api/rounds/{round}/items/{other_item}/buy");
    for (token, path, t, code) in [
        (&alice, &path, None, "ticket_required"),
        (&alice, &path, Some(forged.as_str()), "ticket_invalid"),
        (&alice, &path, Some("garbage"), "ticket_invalid"),
        (&alice, &path, Some(expired.as_str()), "ticket_expired"),
        (&bob, &path, Some(ticket.as_str()), "ticket_other_user"),
        (
            &alice,
            &other_path,
            Some(ticket.as_str()),
            "ticket_other_item",
        ),
    ] {
        let (s, b) = buy(&edge, path, token, t).await;
        assert_eq!(s, 403, "{code}: {b}");
        assert_eq!(b["error"], code, "{b}");
    }
    // No token at all: refused before the ticket is looked at.
    let (s, b) = edge.buy(round, it, None).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(counter.hits(), 0, "a refused ticket reached the backend");
    assert!(
        edge.metric("edge_rejections_total", &["reason=\"ticket_invalid\""])
            .await
            >= 2.0,
        "{}",
        edge.metrics().await
    );

    // The real one buys, once: its reuse is the backend's to refuse.
    let (s, b) = buy(&edge, &path, &alice, Some(&ticket)).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(counter.hits(), 1);
    let (s, b) = buy(&edge, &path, &alice, Some(&ticket)).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"], "ticket_used");
    assert_eq!(counter.hits(), 2);
    assert_eq!(backend.counters(round, it).await, (10, 9, 1, 0));
    backend.teardown().await;
}
