//! The order lifecycle against real Redis, RabbitMQ and databases: expiry
//! returning units, the pay-versus-expire race, retry tiers and dead
//! letters, backlog fail-fast, Redis data loss and reconciliation, and the
//! payment API's refusals.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sea_orm::{ConnectionTrait, EntityTrait};
use seckill_backend::{
    auth::Role,
    clock::ManualClock,
    config::SimulatedOutcome,
    payment::SimulatedProvider,
    store::entities::order::{self, status},
};
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, TestOptions, eventually, item, users};

fn provider() -> Arc<SimulatedProvider> {
    Arc::new(SimulatedProvider::new(SimulatedOutcome::Succeed))
}

async fn orders(app: &TestApp) -> Vec<order::Model> {
    order::Entity::find().all(&app.state.db).await.unwrap()
}

/// Buys one unit for each of `users`, concurrently; returns (user, token,
/// attempt id) of each 202.
async fn buy_all(
    app: &TestApp,
    round: i64,
    item: i64,
    users: &[String],
) -> Vec<(String, String, String)> {
    let buys = users.iter().map(|u| async move {
        let t = app.token(u, Role::Buyer);
        let (s, v) = app.buy(round, item, &t, 1).await;
        assert_eq!(s, 202, "{u}: {v}");
        (u.clone(), t, v["attempt_id"].as_str().unwrap().to_owned())
    });
    futures::future::join_all(buys).await
}

async fn pay(app: &TestApp, order_id: &str, token: &str) -> (u16, Value) {
    let r = app
        .post_json(&format!("/api/orders/{order_id}/pay"), token, None)
        .await;
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// I1: the counters balance and none is negative.
fn balanced((total, a, r, s): (i64, i64, i64, i64)) {
    assert!(a >= 0 && r >= 0 && s >= 0, "negative counter: {a} {r} {s}");
    assert_eq!(a + r + s, total, "available {a} + reserved {r} + sold {s}");
}

#[tokio::test]
async fn unpaid_orders_expire_and_their_units_sell_again() {
    let p = provider();
    let app = TestApp::spawn_with(TestOptions {
        payment_timeout_secs: 3,
        provider: Some(p.clone()),
        // Only the expiry queue acts: the sweep would cover a lost message.
        tweak: Some(Box::new(|c| c.lifecycle.sweep_interval_ms = 600_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app
        .open_round(json!([item(30, 1)]), -1_000, 3_600_000)
        .await;
    let first = buy_all(&app, round, items[0], &users("early", 30)).await;
    assert_eq!(app.counters(round, items[0]).await, (30, 0, 30, 0));
    for (_, t, a) in &first {
        assert_eq!(app.poll_final(a, t).await["status"], "ordered");
    }
    for (_, t, a) in &first[..10] {
        let (s, v) = pay(&app, a, t).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "paid");
    }
    assert_eq!(app.counters(round, items[0]).await, (30, 0, 20, 10));

    // The 20 unpaid orders expire: their units are buyable again.
    eventually(Duration::from_secs(30), || async {
        (app.counters(round, items[0]).await == (30, 20, 0, 10)).then_some(())
    })
    .await;
    for (_, t, a) in &first[10..] {
        let (_, v) = app.get(&format!("/api/attempts/{a}"), t).await;
        assert_eq!(v["status"], "cancelled");
        assert_eq!(v["reason"], "expired");
        // A late payment is refused and charges nothing.
        let (s, v) = pay(&app, a, t).await;
        assert_eq!(s, 409, "{v}");
    }
    assert_eq!(p.charged_orders(), 10);

    let second = buy_all(&app, round, items[0], &users("late", 20)).await;
    assert_eq!(second.len(), 20);
    let (s, _) = app
        .buy(round, items[0], &app.token("one-too-many", Role::Buyer), 1)
        .await;
    assert_eq!(s, 410);
    for (_, t, a) in &second {
        assert!(
            ["ordered", "cancelled"]
                .contains(&app.poll_final(a, t).await["status"].as_str().unwrap())
        );
    }

    // Once the second wave expired too, nothing is stranded (I1-I4).
    eventually(Duration::from_secs(30), || async {
        (app.counters(round, items[0]).await == (30, 20, 0, 10)).then_some(())
    })
    .await;
    let all = orders(&app).await;
    assert_eq!(all.len(), 50);
    let count = |st: &str| all.iter().filter(|o| o.status == st).count();
    assert_eq!(count(status::PAID), 10);
    assert_eq!(count(status::CANCELLED), 40);
    assert!(all.iter().all(|o| o.counters_applied));
    let r = reconcile(&app).await;
    assert_eq!(r["consistent"], true, "{r}");
    app.teardown().await;
}

async fn reconcile(app: &TestApp) -> Value {
    let (s, v) = app
        .get("/admin/reconcile", &app.token("ops", Role::Operator))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn payment_and_expiry_racing_for_200_orders_each_end_exactly_one_way() {
    let p = provider();
    let app = TestApp::spawn_with(TestOptions {
        db: Db::Postgres,
        payment_timeout_secs: 2,
        provider: Some(p.clone()),
        tweak: Some(Box::new(|c| c.lifecycle.sweep_interval_ms = 100)),
        ..Default::default()
    })
    .await;
    let (round, items) = app
        .open_round(json!([item(200, 1)]), -1_000, 3_600_000)
        .await;
    let bought = buy_all(&app, round, items[0], &users("racer", 200)).await;
    let tokens: HashMap<String, String> = bought
        .iter()
        .map(|(_, t, a)| (a.clone(), t.clone()))
        .collect();
    let written = eventually(Duration::from_secs(30), || async {
        let o = orders(&app).await;
        (o.len() == 200).then_some(o)
    })
    .await;

    // At each order's deadline, a payment and an expiry fire together (and
    // the expiry queue and the sweep race them too).
    let base = tokio::time::Instant::now();
    let now = app.now_ms();
    // Spread over ±30 ms around each deadline so both sides get to win.
    let races = written.iter().enumerate().map(|(i, o)| {
        let token = tokens[&o.id].clone();
        let offset = (i as i64 % 61) - 30;
        let at = base + Duration::from_millis((o.pay_by_ms + offset - now).max(0) as u64);
        let id = o.id.clone();
        let app = &app;
        async move {
            tokio::time::sleep_until(at).await;
            let (paid, _) = tokio::join!(pay(app, &id, &token), app.state.lifecycle.expire(&id));
            paid.0
        }
    });
    let answers = futures::future::join_all(races).await;
    for s in &answers {
        assert!([200, 409].contains(s), "pay answered {s}");
    }

    let settled = eventually(Duration::from_secs(30), || async {
        let o = orders(&app).await;
        o.iter()
            .all(|o| {
                (o.status == status::PAID || o.status == status::CANCELLED) && o.counters_applied
            })
            .then_some(o)
    })
    .await;
    let paid = settled.iter().filter(|o| o.status == status::PAID).count() as i64;
    let ok = answers.iter().filter(|s| **s == 200).count() as i64;
    assert_eq!(paid, ok, "every 200 is a paid order and only those");
    assert_eq!(
        p.charged_orders() as i64,
        paid,
        "cancelled orders charged nothing"
    );
    let c = app.counters(round, items[0]).await;
    balanced(c);
    assert_eq!(c, (200, 200 - paid, 0, paid));
    for o in &settled {
        let (_, v) = app
            .get(&format!("/api/attempts/{}", o.id), &tokens[&o.id])
            .await;
        let want = if o.status == status::PAID {
            "paid"
        } else {
            "cancelled"
        };
        assert_eq!(v["status"], want, "{}", o.id);
    }
    eprintln!("race: {paid} paid, {} expired", 200 - paid);
    app.teardown().await;
}

async fn dead_letters(app: &TestApp) -> Value {
    let (s, v) = app
        .get("/admin/dead-letters", &app.token("ops", Role::Operator))
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

#[tokio::test]
async fn orders_that_cannot_be_written_are_dead_lettered_released_and_replayed_once() {
    let app = TestApp::spawn_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.writer.retry_delays_ms = vec![100, 300];
            c.writer.max_attempts = 3;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    // Every insert fails for longer than the retry tiers last, while the
    // database still answers (so the writer can see no order was written).
    app.state
        .db
        .execute_unprepared(
            "CREATE TRIGGER refuse_orders BEFORE INSERT ON orders \
             BEGIN SELECT RAISE(ABORT, 'orders refused'); END",
        )
        .await
        .unwrap();
    let bought = buy_all(&app, round, items[0], &users("dl", 3)).await;
    for (_, t, a) in &bought {
        let v = app.poll_final(a, t).await;
        assert_eq!(v["status"], "cancelled", "{v}");
        assert_eq!(v["reason"], "dead_letter");
    }
    assert_eq!(app.counters(round, items[0]).await, (5, 5, 0, 0));
    let listed = eventually(Duration::from_secs(10), || async {
        let v = dead_letters(&app).await;
        (v["count"] == 3).then_some(v)
    })
    .await;
    for d in listed["dead_letters"].as_array().unwrap() {
        assert_eq!(d["reason"], "write_failed", "{d}");
        assert_eq!(d["failures"], 3);
        assert_eq!(d["attempt_status"], "cancelled");
    }
    // Listing consumed nothing.
    assert_eq!(dead_letters(&app).await["count"], 3);

    // Bad selections are refused and change nothing.
    let ops = app.token("ops", Role::Operator);
    let r = app
        .post_json("/admin/dead-letters/replay", &ops, Some(json!({})))
        .await;
    assert_eq!(r.status(), 400);
    let r = app
        .post_json(
            "/admin/dead-letters/replay",
            &app.token("dl-0", Role::Buyer),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(r.status(), 403);

    // The database returns; the replay writes each order once.
    app.state
        .db
        .execute_unprepared("DROP TRIGGER refuse_orders")
        .await
        .unwrap();
    let r = app
        .post_json(
            "/admin/dead-letters/replay",
            &ops,
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{v}");
    assert!(results.iter().all(|r| r["outcome"] == "replayed"), "{v}");
    for (_, t, a) in &bought {
        let v = app.poll_final(a, t).await;
        assert_eq!(v["status"], "ordered", "{v}");
    }
    assert_eq!(app.order_count().await, 3);
    assert_eq!(app.counters(round, items[0]).await, (5, 2, 3, 0));
    // Nothing is left to replay; a second replay writes nothing.
    let r = app
        .post_json(
            "/admin/dead-letters/replay",
            &ops,
            Some(json!({"all": true})),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 0);
    assert_eq!(app.order_count().await, 3);
    assert_eq!(reconcile(&app).await["consistent"], true);
    app.teardown().await;
}

#[tokio::test]
async fn a_message_past_the_backlog_threshold_releases_its_units() {
    let clock = ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        clock: Some(clock.clone()),
        tweak: Some(Box::new(|c| c.lifecycle.backlog_threshold_ms = 2_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let (_, old_t, old) = buy_all(&app, round, items[0], &users("old", 1))
        .await
        .remove(0);
    // The writer is down for longer than the threshold.
    clock.advance(5_000);
    let (_, new_t, new) = buy_all(&app, round, items[0], &users("new", 1))
        .await
        .remove(0);
    assert_eq!(app.counters(round, items[0]).await, (5, 3, 2, 0));

    let stop = tokio_util::sync::CancellationToken::new();
    let w = tokio::spawn(app.order_writer().run(stop.clone()));
    let v = app.poll_final(&old, &old_t).await;
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["reason"], "backlog");
    assert_eq!(app.poll_final(&new, &new_t).await["status"], "ordered");
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.counters(round, items[0]).await, (5, 4, 1, 0));
    stop.cancel();
    w.await.unwrap();
    app.teardown().await;
}

/// Deletes every key of this test's prefix: Redis lost its data.
async fn lose_redis_data(app: &TestApp) {
    crate::common::delete_keys(&app.state.sale, &app.config.redis.key_prefix).await;
}

#[tokio::test]
async fn after_redis_loses_its_data_the_sale_reopens_only_from_the_database() {
    let p = provider();
    let app = TestApp::spawn_with(TestOptions {
        db: Db::Postgres,
        provider: Some(p.clone()),
        tweak: Some(Box::new(|c| c.lifecycle.sweep_interval_ms = 600_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app
        .open_round(json!([item(10, 1)]), -1_000, 3_600_000)
        .await;
    let first = buy_all(&app, round, items[0], &users("before", 4)).await;
    for (_, t, a) in &first {
        assert_eq!(app.poll_final(a, t).await["status"], "ordered");
    }
    assert_eq!(pay(&app, &first[0].2, &first[0].1).await.0, 200);
    assert_eq!(app.counters(round, items[0]).await, (10, 6, 3, 1));

    lose_redis_data(&app).await;
    let r = reconcile(&app).await;
    assert_eq!(r["consistent"], false);
    let diffs = r["items"][0]["differences"].to_string();
    assert!(diffs.contains("redis has no counters"), "{diffs}");
    assert_eq!(r["items"][0]["expected"]["available"], 6);

    // A buyer who already holds an order gets it back, not a second unit.
    let (s, v) = app.buy(round, items[0], &first[1].1, 1).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attempt_id"], first[1].2.as_str());
    assert_eq!(app.counters(round, items[0]).await, (10, 6, 3, 1));
    let (_, v) = app
        .get(&format!("/api/attempts/{}", first[0].2), &first[0].1)
        .await;
    assert_eq!(v["status"], "paid");

    // The rest sells exactly once.
    let rest = buy_all(&app, round, items[0], &users("after", 6)).await;
    let (s, _) = app
        .buy(round, items[0], &app.token("too-late", Role::Buyer), 1)
        .await;
    assert_eq!(s, 410);
    for (_, t, a) in &rest {
        assert_eq!(app.poll_final(a, t).await["status"], "ordered");
    }
    assert_eq!(app.order_count().await, 10);
    assert_eq!(app.counters(round, items[0]).await, (10, 0, 9, 1));
    assert_eq!(reconcile(&app).await["consistent"], true);

    // Counters that drift are reported, and repaired from the database.
    let mut c = app.state.sale.connection();
    let k = app.state.sale.keys(round, items[0]);
    let _: i64 = redis::cmd("HINCRBY")
        .arg(k.stock())
        .arg("available")
        .arg(5)
        .query_async(&mut c)
        .await
        .unwrap();
    let r = reconcile(&app).await;
    assert_eq!(r["consistent"], false);
    assert!(
        r["items"][0]["differences"]
            .to_string()
            .contains("available: redis 5"),
        "{r}"
    );
    let (s, _) = app
        .get("/admin/reconcile", &app.token("b", Role::Buyer))
        .await;
    assert_eq!(s, 403);
    let r = app
        .post_json(
            "/admin/reconcile/repair",
            &app.token("ops", Role::Operator),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repaired"], 1, "{v}");
    assert_eq!(app.counters(round, items[0]).await, (10, 0, 9, 1));
    assert_eq!(reconcile(&app).await["consistent"], true);
    app.teardown().await;
}

#[tokio::test]
async fn an_order_message_whose_attempt_redis_lost_is_written_only_within_stock() {
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;
    // Two reservations queued, then Redis loses everything.
    let queued = buy_all(&app, round, items[0], &users("inflight", 2)).await;
    lose_redis_data(&app).await;
    // Meanwhile the rebuilt sale (no orders yet) sells both units again.
    let fresh = buy_all(&app, round, items[0], &users("fresh", 2)).await;
    assert_eq!(app.counters(round, items[0]).await, (2, 0, 2, 0));

    let stop = tokio_util::sync::CancellationToken::new();
    let w = tokio::spawn(app.order_writer().run(stop.clone()));
    for (_, t, a) in &fresh {
        assert_eq!(app.poll_final(a, t).await["status"], "ordered");
    }
    for (_, t, a) in &queued {
        let v = app.poll_final(a, t).await;
        assert_eq!(v["status"], "cancelled", "{v}");
    }
    assert_eq!(app.order_count().await, 2, "no unit sold twice");
    assert_eq!(app.counters(round, items[0]).await, (2, 0, 2, 0));
    stop.cancel();
    w.await.unwrap();
    app.teardown().await;
}

#[tokio::test]
async fn payment_refusals_change_nothing() {
    let p = provider();
    let app = TestApp::spawn_with(TestOptions {
        payment_timeout_secs: 2,
        provider: Some(p.clone()),
        tweak: Some(Box::new(|c| {
            c.payment.timeout_ms = 200;
            c.lifecycle.sweep_interval_ms = 100;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let b = buy_all(&app, round, items[0], &users("payer", 4)).await;
    for (_, t, a) in &b {
        assert_eq!(app.poll_final(a, t).await["status"], "ordered");
    }
    let (owner_t, order_id) = (&b[0].1, &b[0].2);

    // Someone else's order, or no order: 404, nothing charged.
    let (s, v) = pay(&app, order_id, &b[1].1).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let (s, _) = pay(&app, "1-1-01ARZ3NDEKTSV4RRFFQ69G5FAV", owner_t).await;
    assert_eq!(s, 404);
    let (s, _) = pay(&app, "not-an-order", owner_t).await;
    assert_eq!(s, 404);
    let r = app
        .client
        .post(app.url(&format!("/api/orders/{order_id}/pay")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(p.calls(), 0);

    // Paying twice is one payment.
    let (s, first) = pay(&app, order_id, owner_t).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = pay(&app, order_id, owner_t).await;
    assert_eq!(s, 200);
    assert_eq!(first["charge_id"], again["charge_id"]);
    assert_eq!(p.charged_orders(), 1);
    assert_eq!(app.counters(round, items[0]).await, (5, 1, 3, 1));

    // Declined: 402, still payable.
    p.set_outcome(SimulatedOutcome::Fail);
    let (s, v) = pay(&app, &b[1].2, &b[1].1).await;
    assert_eq!((s, v["error"].as_str()), (402, Some("payment_declined")));
    p.set_outcome(SimulatedOutcome::Succeed);
    assert_eq!(pay(&app, &b[1].2, &b[1].1).await.0, 200);

    // A provider that never answers: 504, the order is held, and the sweep
    // settles it from the provider's records (nothing was charged).
    p.set_outcome(SimulatedOutcome::Hang);
    let (s, v) = pay(&app, &b[2].2, &b[2].1).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (504, Some("payment_pending")),
        "{v}"
    );
    let (s, v) = pay(&app, &b[2].2, &b[2].1).await;
    assert_eq!(s, 409, "a second payment waits for the first: {v}");
    p.set_outcome(SimulatedOutcome::Succeed);

    // After expiry: 409, nothing charged, units back.
    let unpaid = &b[3];
    eventually(Duration::from_secs(20), || async {
        let (_, v) = app
            .get(&format!("/api/attempts/{}", unpaid.2), &unpaid.1)
            .await;
        (v["status"] == "cancelled").then_some(())
    })
    .await;
    let calls = p.calls();
    let (s, v) = pay(&app, &unpaid.2, &unpaid.1).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "conflict");
    assert_eq!(v["reason"], "expired");
    assert_eq!(p.calls(), calls);
    // The held payment was found uncharged and expired with the rest.
    eventually(Duration::from_secs(20), || async {
        let o = order::Entity::find_by_id(b[2].2.clone())
            .one(&app.state.db)
            .await
            .unwrap()
            .unwrap();
        (o.status == status::CANCELLED).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        (app.counters(round, items[0]).await == (5, 3, 0, 2)).then_some(())
    })
    .await;
    assert_eq!(p.charged_orders(), 2);
    app.teardown().await;
}
