//! Proof-of-work challenges in front of purchase tickets (a round's
//! `pow_difficulty`): handed out before the ticket window, a solved one
//! gets one ticket, missing, forged, wrong, other buyers', other items' and
//! expired solutions get none; a round without a difficulty needs none;
//! and a ticket request before the window costs Redis nothing.

use std::net::SocketAddr;

use seckill_backend::{auth::Role, clock::ManualClock};
use seckill_proto::pow::{self, PowKeys};
use serde_json::{Value, json};

use crate::helpers::{FaultProxy, TestApp, TestOptions, item};

const TICKET_SECRET: &str = "ticket-secret-for-the-tests";
/// Small, so the solver (a debug build) takes a moment.
const DIFFICULTY: i64 = 16;

async fn spawn(
    clock: Option<ManualClock>,
    redis_url: Option<String>,
    tweak: fn(&mut seckill_backend::config::Config),
) -> TestApp {
    TestApp::spawn_with(TestOptions {
        clock,
        redis_url,
        tweak: Some(Box::new(move |c| {
            c.tickets.enabled = true;
            c.tickets.secret = TICKET_SECRET.into();
            tweak(c);
        })),
        ..Default::default()
    })
    .await
}

/// Creates, submits and approves a round of `pow_difficulty`; returns its
/// id and its items' ids.
async fn open_round(
    app: &TestApp,
    items: Value,
    starts_in_ms: i64,
    ends_in_ms: i64,
    difficulty: i64,
) -> (i64, Vec<i64>) {
    let r = app
        .post_json(
            "/admin/rounds",
            &app.token("operator-1", Role::Operator),
            Some(round_body(app, items, starts_in_ms, ends_in_ms, difficulty)),
        )
        .await;
    assert_eq!(r.status(), 201, "create round");
    let round: Value = r.json().await.unwrap();
    assert_eq!(round["pow_difficulty"], difficulty, "{round}");
    let id = round["id"].as_i64().unwrap();
    for (path, role, who) in [
        ("submit", Role::Operator, "operator-1"),
        ("approve", Role::Approver, "approver-1"),
    ] {
        let r = app
            .post_json(
                &format!("/admin/rounds/{id}/{path}"),
                &app.token(who, role),
                None,
            )
            .await;
        assert_eq!(r.status(), 200, "{path}");
    }
    let items = round["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    (id, items)
}

fn round_body(
    app: &TestApp,
    items: Value,
    starts_in_ms: i64,
    ends_in_ms: i64,
    difficulty: i64,
) -> Value {
    let ts = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(app.now_ms() + ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    json!({
        "name": "Challenged round",
        "starts_at": ts(starts_in_ms),
        "ends_at": ts(ends_in_ms),
        "items": items,
        "pow_difficulty": difficulty,
    })
}

async fn get_challenge(app: &TestApp, round: i64, item: i64, token: &str) -> (u16, Value) {
    app.get(
        &format!("/api/rounds/{round}/items/{item}/challenge"),
        token,
    )
    .await
}

/// Fetches and solves a challenge; returns the payload to send.
async fn solved(app: &TestApp, round: i64, item: i64, token: &str) -> String {
    let (s, b) = get_challenge(app, round, item, token).await;
    assert_eq!(s, 200, "{b}");
    let c: pow::Challenge = serde_json::from_value(b).expect("an ALTCHA challenge");
    pow::solve(&c, 60_000).expect("solvable")
}

async fn ask_ticket(
    app: &TestApp,
    round: i64,
    item: i64,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let r = app
        .post_json(
            &format!("/api/rounds/{round}/items/{item}/ticket"),
            token,
            body,
        )
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Keys of an item in Redis whose name contains `part`.
async fn keys_of(app: &TestApp, round: i64, item: i64, part: &str) -> Vec<String> {
    let mut c = app.state.sale.connection();
    redis::cmd("KEYS")
        .arg(format!(
            "{}:{{r{round}:i{item}}}*{part}*",
            app.config.redis.key_prefix
        ))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_solved_challenge_gets_one_ticket_that_buys() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = spawn(Some(clock.clone()), None, |_| {}).await;
    let (round, items) = open_round(&app, json!([item(5, 1)]), 60_000, 3_600_000, DIFFICULTY).await;
    let it = items[0];
    let alice = app.token("alice", Role::Buyer);

    // The challenge is handed out before the ticket window, with the
    // round's bindings in its signed data.
    let (s, b) = get_challenge(&app, round, it, &alice).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["parameters"]["algorithm"], "PBKDF2/SHA-256");
    assert_eq!(b["parameters"]["data"]["user"], "alice");
    assert_eq!(b["parameters"]["data"]["round_id"], round);
    assert_eq!(b["parameters"]["data"]["item_id"], it);
    assert_eq!(
        b["parameters"]["data"]["expires_at_ms"],
        app.now_ms() + 600_000
    );
    let payload = solved(&app, round, it, &alice).await;
    // The round says it has one, publicly.
    let (s, rounds) = app.get("/api/rounds", &alice).await;
    assert_eq!(s, 200);
    assert_eq!(rounds["rounds"][0]["pow_difficulty"], DIFFICULTY);

    clock.advance(60_000 - 1_000);
    // Without a solution (no body, or a body without one): refused.
    for body in [None, Some(json!({}))] {
        let (s, b) = ask_ticket(&app, round, it, &alice, body).await;
        assert_eq!(s, 403, "{b}");
        assert_eq!(b["error"], "challenge_required");
    }
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": payload }))).await;
    assert_eq!(s, 200, "{b}");
    let ticket = b["ticket"].as_str().unwrap().to_owned();
    // The same solution again: used.
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": payload }))).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"], "challenge_used");
    assert_eq!(keys_of(&app, round, it, ":challenge:").await.len(), 1);

    // The ticket buys.
    clock.advance(1_000);
    let r = app
        .client
        .post(app.url(&format!("/api/rounds/{round}/items/{it}/buy")))
        .bearer_auth(&alice)
        .header("x-seckill-ticket", &ticket)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.counters(round, it).await, (5, 4, 1, 0));
    app.teardown().await;
}

#[tokio::test]
async fn forged_wrong_misdirected_and_expired_solutions_get_no_ticket() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = spawn(Some(clock.clone()), None, |c| {
        c.tickets.challenge_ttl_ms = 5_000
    })
    .await;
    let (round, items) = open_round(
        &app,
        json!([item(5, 1), item(5, 1)]),
        -1_000,
        3_600_000,
        DIFFICULTY,
    )
    .await;
    let (it, other_item) = (items[0], items[1]);
    let alice = app.token("alice", Role::Buyer);
    let bob = app.token("bob", Role::Buyer);

    let alices = solved(&app, round, it, &alice).await;
    let bobs = solved(&app, round, it, &bob).await;
    let other_items = solved(&app, round, other_item, &alice).await;
    // Signed with another secret, and solved.
    let forger = PowKeys::new(b"not-the-sale-secret-at-all");
    let forged = pow::solve(
        &forger.challenge("alice", round, it, 4, app.now_ms() + 60_000),
        60_000,
    )
    .unwrap();
    // Alice's, with a wrong derived key.
    let mut p = pow::decode_payload(&alices).unwrap();
    p.solution.derived_key = "00".repeat(32);
    let wrong = pow::encode_payload(&p.challenge, &p.solution);
    // Alice's, made cheaper.
    let mut p = pow::decode_payload(&alices).unwrap();
    p.challenge.parameters.cost = 1;
    let cheaper = pow::encode_payload(&p.challenge, &p.solution);

    for (what, payload) in [
        ("forged", forged.as_str()),
        ("wrong key", wrong.as_str()),
        ("cheaper", cheaper.as_str()),
        ("another buyer's", bobs.as_str()),
        ("another item's", other_items.as_str()),
        ("garbage", "bm90IGEgc29sdXRpb24="),
        ("not base64", "not a solution!"),
    ] {
        let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": payload }))).await;
        assert_eq!(s, 403, "{what}: {b}");
        assert_eq!(b["error"], "challenge_failed", "{what}: {b}");
        assert!(b.get("ticket").is_none(), "{what}: {b}");
    }
    // A body that is not the ticket body at all.
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": 7 }))).await;
    assert_eq!(s, 400, "{b}");
    // None of them reached Redis: nothing spent, nothing counted.
    assert!(keys_of(&app, round, it, ":challenge:").await.is_empty());
    assert!(keys_of(&app, round, it, ":ticket_req:").await.is_empty());

    // Past its expiry (challenge_ttl_ms 5 s).
    clock.advance(5_000);
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": alices }))).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["error"], "challenge_failed");
    assert!(b["message"].as_str().unwrap().contains("expired"), "{b}");

    // A fresh one still gets a ticket, and the ticket buys the item.
    let fresh = solved(&app, round, it, &alice).await;
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": fresh }))).await;
    assert_eq!(s, 200, "{b}");
    let r = app
        .client
        .post(app.url(&format!("/api/rounds/{round}/items/{it}/buy")))
        .bearer_auth(&alice)
        .header("x-seckill-ticket", b["ticket"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.counters(round, other_item).await, (5, 5, 0, 0));
    app.teardown().await;
}

#[tokio::test]
async fn a_round_without_a_difficulty_needs_no_challenge() {
    let app = spawn(None, None, |_| {}).await;
    let (round, items) = open_round(&app, json!([item(5, 1)]), -1_000, 3_600_000, 0).await;
    let alice = app.token("alice", Role::Buyer);
    let (s, b) = get_challenge(&app, round, items[0], &alice).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"], "no_challenge");
    // No body, as clients without challenges send; a solution is ignored.
    let (s, b) = ask_ticket(&app, round, items[0], &alice, None).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = ask_ticket(&app, round, items[0], &alice, Some(json!({ "pow": "x" }))).await;
    assert_eq!(s, 200, "{b}");
    // No such item: not found.
    let (s, b) = get_challenge(&app, round, items[0] + 1_000, &alice).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"], "not_found");
    app.teardown().await;

    // Without tickets there is no challenge, whatever the round says.
    let plain = TestApp::spawn().await;
    let (round, items) = open_round(&plain, json!([item(5, 1)]), -1_000, 3_600_000, 50).await;
    let alice = plain.token("alice", Role::Buyer);
    let (s, b) = get_challenge(&plain, round, items[0], &alice).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"], "no_challenge");
    assert_eq!(plain.buy(round, items[0], &alice, 1).await.0, 202);
    plain.teardown().await;
}

#[tokio::test]
async fn a_difficulty_out_of_bounds_is_refused() {
    let app = spawn(None, None, |_| {}).await;
    let op = app.token("operator-1", Role::Operator);
    for bad in [
        json!(-1),
        json!(pow::MAX_DIFFICULTY as i64 + 1),
        json!("hard"),
    ] {
        let mut body = round_body(&app, json!([item(5, 1)]), 60_000, 3_600_000, 0);
        body["pow_difficulty"] = bad.clone();
        let r = app.post_json("/admin/rounds", &op, Some(body)).await;
        assert_eq!(r.status(), 400, "{bad}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"], "bad_request", "{bad}: {b}");
    }
    // Left out: 0.
    let mut body = round_body(&app, json!([item(5, 1)]), 60_000, 3_600_000, 0);
    body.as_object_mut().unwrap().remove("pow_difficulty");
    let r = app.post_json("/admin/rounds", &op, Some(body)).await;
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["pow_difficulty"], 0);
    let (s, got) = app.get(&format!("/admin/rounds/{}", b["id"]), &op).await;
    assert_eq!(s, 200);
    assert_eq!(got["pow_difficulty"], 0);
    app.teardown().await;
}

async fn redis_addr() -> SocketAddr {
    tokio::net::lookup_host(
        crate::helpers::redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await
    .unwrap()
    .next()
    .unwrap()
}

#[tokio::test]
async fn a_ticket_request_before_the_window_reaches_no_redis() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let proxy = FaultProxy::start(redis_addr().await).await;
    let app = spawn(
        Some(clock.clone()),
        Some(format!("redis://{}/", proxy.addr)),
        |c| c.redis.timeout_ms = 300,
    )
    .await;
    let (round, items) = open_round(&app, json!([item(5, 1)]), 60_000, 3_600_000, DIFFICULTY).await;
    let it = items[0];
    let alice = app.token("alice", Role::Buyer);
    let payload = solved(&app, round, it, &alice).await;

    // Early, Redis up: refused, and no request counter was created.
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": payload }))).await;
    assert_eq!(s, 425, "{b}");
    assert!(keys_of(&app, round, it, ":ticket_req:").await.is_empty());

    // Redis cut off: early requests are still answered, 425, with and
    // without a solution, and the challenge is still handed out.
    proxy.down();
    for body in [None, Some(json!({ "pow": payload }))] {
        let (s, b) = ask_ticket(&app, round, it, &alice, body).await;
        assert_eq!(s, 425, "{b}");
        assert_eq!(b["error"], "not_started");
    }
    assert_eq!(get_challenge(&app, round, it, &alice).await.0, 200);
    // Within the window the same request needs Redis: unavailable.
    clock.advance(60_000 - 1_000);
    let (s, b) = ask_ticket(&app, round, it, &alice, Some(json!({ "pow": payload }))).await;
    assert_eq!(s, 503, "{b}");

    // Back: nothing was counted for the early requests (the one counter
    // pair is the in-window request's, if it got through before the cut
    // was seen, or the next one's).
    proxy.up();
    let (app_ref, alice_ref, body) = (&app, &alice, json!({ "pow": payload }));
    let (s, b) = crate::helpers::eventually(std::time::Duration::from_secs(10), || {
        let body = body.clone();
        async move {
            let r = ask_ticket(app_ref, round, it, alice_ref, Some(body)).await;
            (r.0 != 503).then_some(r)
        }
    })
    .await;
    assert_eq!(s, 200, "{b}");
    let counted: Vec<String> = keys_of(&app, round, it, "ticket_req:u:").await;
    assert_eq!(counted.len(), 1, "{counted:?}");
    let mut c = app.state.sale.connection();
    let n: u64 = redis::cmd("GET")
        .arg(&counted[0])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the request that got the ticket was counted");
    app.teardown().await;
}
