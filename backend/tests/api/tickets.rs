//! Purchase tickets (`tickets.enabled`): handed out from the lead time
//! before the start, required by every buy, spent by one buy, refused when
//! forged, expired, another buyer's or another item's; ticket requests are
//! limited per buyer and per client address.

use seckill_backend::{auth::Role, clock::ManualClock};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestOptions, item};

const TICKET_SECRET: &str = "ticket-secret-for-the-tests";

async fn spawn(
    clock: Option<ManualClock>,
    tweak: fn(&mut seckill_backend::config::Config),
) -> TestApp {
    TestApp::spawn_with(TestOptions {
        clock,
        tweak: Some(Box::new(move |c| {
            c.tickets.enabled = true;
            c.tickets.secret = TICKET_SECRET.into();
            tweak(c);
        })),
        ..Default::default()
    })
    .await
}

async fn ask_ticket(app: &TestApp, round: i64, item: i64, token: &str) -> (u16, Value) {
    let r = app
        .post_json(
            &format!("/api/rounds/{round}/items/{item}/ticket"),
            token,
            None,
        )
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn buy_with(app: &TestApp, path: &str, token: &str, ticket: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&json!({ "qty": 1 }));
    if let Some(t) = ticket {
        req = req.header("x-seckill-ticket", t);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn buy_path(round: i64, item: i64) -> String {
    format!("/api/rounds/{round}/items/{item}/buy")
}

#[tokio::test]
async fn tickets_open_at_the_lead_time_and_buy_once() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = spawn(Some(clock.clone()), |_| {}).await;
    let (round, items) = app.open_round(json!([item(5, 1)]), 60_000, 3_600_000).await;
    let it = items[0];
    let alice = app.token("alice", Role::Buyer);

    // A minute early: refused, with the start.
    let (s, b) = ask_ticket(&app, round, it, &alice).await;
    assert_eq!(s, 425, "{b}");
    assert_eq!(b["error"], "not_started");
    assert!(
        b["starts_at"].is_string() && b["starts_at_ms"].is_i64(),
        "{b}"
    );

    // Within the lead time (2 s by default): a ticket for the buy path.
    clock.advance(60_000 - 1_500);
    let (s, b) = ask_ticket(&app, round, it, &alice).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["buy_path"], buy_path(round, it));
    assert_eq!(b["expires_at_ms"], app.now_ms() + 30_000);
    let ticket = b["ticket"].as_str().unwrap().to_owned();

    // Before the start the buy is refused and the ticket stays unspent.
    let (s, b) = buy_with(&app, &buy_path(round, it), &alice, Some(&ticket)).await;
    assert_eq!(s, 425, "{b}");
    assert_eq!(b["error"], "not_started");

    clock.advance(1_500);
    // A buy without a ticket is refused.
    let (s, b) = buy_with(&app, &buy_path(round, it), &alice, None).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"], "ticket_required");
    let (s, b) = buy_with(&app, &buy_path(round, it), &alice, Some(&ticket)).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(app.counters(round, it).await.2, 1);

    // The same ticket again: used, nothing changed.
    let (s, b) = buy_with(&app, &buy_path(round, it), &alice, Some(&ticket)).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"], "ticket_used");
    assert_eq!(app.counters(round, it).await, (5, 4, 1, 0));
    app.teardown().await;
}

#[tokio::test]
async fn forged_expired_and_misdirected_tickets_are_refused() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = spawn(Some(clock.clone()), |c| c.tickets.ttl_ms = 1_000).await;
    let (round, items) = app
        .open_round(json!([item(5, 1), item(5, 1)]), -1_000, 3_600_000)
        .await;
    let (it, other_item) = (items[0], items[1]);
    let alice = app.token("alice", Role::Buyer);
    let bob = app.token("bob", Role::Buyer);
    let (s, b) = ask_ticket(&app, round, it, &alice).await;
    assert_eq!(s, 200, "{b}");
    let ticket = b["ticket"].as_str().unwrap().to_owned();

    // Signed with another secret.
    let forger = seckill_proto::ticket::TicketKeys::new(b"not-the-sale-secret-at-all");
    let forged = forger.issue(&seckill_proto::ticket::Ticket {
        user: "alice".into(),
        round_id: round,
        item_id: it,
        expires_ms: app.now_ms() + 60_000,
        nonce: 1,
    });
    // A character of the real one changed.
    let mut tampered = ticket.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let path = buy_path(round, it);
    for (token, path, t, code) in [
        (&alice, &path, forged.as_str(), "ticket_invalid"),
        (&alice, &path, tampered.as_str(), "ticket_invalid"),
        (&alice, &path, "not a ticket", "ticket_invalid"),
        (&bob, &path, ticket.as_str(), "ticket_other_user"),
        (
            &alice,
            &buy_path(round, other_item),
            ticket.as_str(),
            "ticket_other_item",
        ),
    ] {
        let (s, b) = buy_with(&app, path, token, Some(t)).await;
        assert_eq!(s, 403, "{code}: {b}");
        assert_eq!(b["error"], code, "{b}");
    }
    // Past its expiry (ttl 1 s).
    clock.advance(1_000);
    let (s, b) = buy_with(&app, &path, &alice, Some(&ticket)).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"], "ticket_expired");
    // Nothing was reserved by any of them.
    assert_eq!(app.counters(round, it).await, (5, 5, 0, 0));
    assert_eq!(app.counters(round, other_item).await, (5, 5, 0, 0));

    // A fresh ticket still buys.
    let (s, b) = ask_ticket(&app, round, it, &alice).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = buy_with(&app, &path, &alice, b["ticket"].as_str()).await;
    assert_eq!(s, 202, "{b}");
    app.teardown().await;
}

#[tokio::test]
async fn ticket_requests_are_limited_per_buyer_and_per_address() {
    let app = spawn(None, |c| {
        c.tickets.per_user_limit = 2;
        c.tickets.per_client_limit = 4;
        c.tickets.limit_window_ms = 60_000;
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let it = items[0];
    let alice = app.token("alice", Role::Buyer);
    for _ in 0..2 {
        assert_eq!(ask_ticket(&app, round, it, &alice).await.0, 200);
    }
    let (s, b) = ask_ticket(&app, round, it, &alice).await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"], "rate_limited");
    assert!(b["retry_after_ms"].as_u64().unwrap() > 0, "{b}");

    // Alice's refused request counted for the address too (3 of 4): one
    // more buyer from it gets a ticket, the next is refused.
    let (s, b) = ask_ticket(&app, round, it, &app.token("bob", Role::Buyer)).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = ask_ticket(&app, round, it, &app.token("carol", Role::Buyer)).await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(b["error"], "rate_limited");
    assert!(b["message"].as_str().unwrap().contains("address"), "{b}");
    app.teardown().await;
}

#[tokio::test]
async fn tickets_are_refused_after_the_end_and_when_disabled() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = spawn(Some(clock.clone()), |_| {}).await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 60_000).await;
    let alice = app.token("alice", Role::Buyer);
    clock.advance(60_000);
    let (s, b) = ask_ticket(&app, round, items[0], &alice).await;
    assert_eq!(s, 410, "{b}");
    assert_eq!(b["error"], "ended");
    app.teardown().await;

    let plain = TestApp::spawn().await;
    let (round, items) = plain
        .open_round(json!([item(5, 1)]), -1_000, 3_600_000)
        .await;
    let alice = plain.token("alice", Role::Buyer);
    let (s, b) = ask_ticket(&plain, round, items[0], &alice).await;
    assert_eq!(s, 404, "{b}");
    // Without tickets a buy needs none.
    assert_eq!(plain.buy(round, items[0], &alice, 1).await.0, 202);
    plain.teardown().await;
}
