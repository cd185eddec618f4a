//! Repairs found by killing things: Redis restarted from an older snapshot,
//! counters the database contradicts, rebuilds racing reservations,
//! reservations stranded `queued`, a client hanging up mid-buy, and a dead
//! letter whose order was committed after all. Each test reproduces the
//! fault with real servers (a Redis of its own where it kills one).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lapin::types::{AMQPValue, FieldTable};
use redis::AsyncCommands;
use sea_orm::ConnectionTrait;
use seckill_backend::{
    auth::Role,
    domain::AttemptId,
    lifecycle::{dead_letters::headers, rebuild},
    queue::OrderMessage,
    store::sale::{ReserveOutcome, Restore, RestoreMode, Settlement},
};
use serde_json::json;

use crate::helpers::{FaultProxy, TestApp, TestOptions, amqp_url, eventually, item, users};

/// A redis-server of the test's own, on a free port, in its own directory,
/// so it can be killed and restarted without touching the shared one.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut r = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server on the directory's snapshot, if any. Saving is off:
    /// the test decides when a snapshot is taken.
    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let url = self.url();
        eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let c = redis::Client::open(url).ok()?;
                let mut c = c.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Writes a snapshot now (what Debian's `save` schedule does by itself).
    async fn save(&self) {
        let _: () = redis::cmd("SAVE")
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        assert!(self.dir.path().join("dump.rdb").exists());
    }

    /// `kill -9`, then a restart from the last snapshot.
    async fn crash_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.spawn().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(Path::new(self.dir.path()));
    }
}

/// Buys one unit for each user at once, each retrying after a `503` as the
/// sale page does (a retry of a reservation that did happen answers `200`
/// with it); returns (user, token, status, body).
async fn buy_each(
    app: &TestApp,
    round: i64,
    item: i64,
    names: &[String],
) -> Vec<(String, String, u16, serde_json::Value)> {
    let buys = names.iter().map(|u| {
        let t = app.token(u, Role::Buyer);
        async move {
            let (s, v) = eventually(Duration::from_secs(20), || async {
                let (s, v) = app.buy(round, item, &t, 1).await;
                (s != 503).then_some((if s == 200 { 202 } else { s }, v))
            })
            .await;
            (u.clone(), t, s, v)
        }
    });
    futures::future::join_all(buys).await
}

/// Every buyer told 202 must end with an order.
async fn assert_all_accepted_ordered(
    app: &TestApp,
    got: &[(String, String, u16, serde_json::Value)],
) {
    for (u, t, s, v) in got {
        if *s == 202 {
            let a = v["attempt_id"].as_str().unwrap();
            let f = app.poll_final(a, t).await;
            assert_eq!(f["status"], "ordered", "{u} was told 202, then {f}");
        }
    }
}

#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_sells_exactly_the_stock() {
    let mut redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(TestOptions {
        redis_url: Some(redis.url()),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let before = buy_each(&app, round, items[0], &users("early", 2)).await;
    assert_all_accepted_ordered(&app, &before).await;
    redis.save().await;
    let after = buy_each(&app, round, items[0], &users("late", 2)).await;
    assert_all_accepted_ordered(&app, &after).await;
    assert_eq!(app.order_count().await, 4);

    // The snapshot says 3 units are left; the database knows 1 is.
    redis.crash_and_restart().await;
    let crowd = buy_each(&app, round, items[0], &users("crowd", 6)).await;
    // Buys that came while Redis was restarting were journaled
    // (`processing`): they may end sold out; queued ones must be ordered.
    let mut ordered = 0;
    for (u, t, s, v) in &crowd {
        match *s {
            202 => {
                let f = app.poll_final(v["attempt_id"].as_str().unwrap(), t).await;
                if f["status"] == "ordered" {
                    ordered += 1;
                } else {
                    assert_eq!(v["status"], "processing", "{u} was told {v}, then {f}");
                    assert_eq!(
                        (f["status"].as_str(), f["reason"].as_str()),
                        (Some("cancelled"), Some("sold_out")),
                        "{u}: {f}"
                    );
                }
            }
            410 => assert_eq!(v["error"], "sold_out", "{v}"),
            _ => panic!("{u}: {s} {v}"),
        }
    }
    assert_eq!(ordered, 1, "exactly the one unit left is sold: {crowd:?}");
    assert_eq!(app.order_count().await, 5);
    assert_eq!(app.counters(round, items[0]).await, (5, 0, 5, 0));
    // The buyers of before the snapshot and after it are known again.
    let (s, v) = app
        .buy(round, items[0], &app.token("late-1", Role::Buyer), 1)
        .await;
    assert_eq!(s, 200, "a retry finds the attempt the snapshot lost: {v}");
    let reports = rebuild::reconcile(&app.state.lifecycle, Some(round), false)
        .await
        .unwrap();
    assert!(reports.iter().all(|r| r.consistent()), "{reports:?}");
}

#[tokio::test]
async fn an_order_the_database_refuses_for_lack_of_stock_never_frees_a_unit() {
    let app = TestApp::spawn().await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;
    let first = buy_each(&app, round, items[0], &users("first", 2)).await;
    assert_all_accepted_ordered(&app, &first).await;
    // The counters drift: Redis believes one unit is still there.
    let k = app.state.sale.keys(round, items[0]);
    let mut c = app.state.sale.connection();
    let _: () = c
        .hset_multiple(k.stock(), &[("available", 1), ("reserved", 1)])
        .await
        .unwrap();

    let (s, v) = app
        .buy(round, items[0], &app.token("phantom", Role::Buyer), 1)
        .await;
    assert_eq!(s, 202, "{v}");
    let t = app.token("phantom", Role::Buyer);
    let f = app.poll_final(v["attempt_id"].as_str().unwrap(), &t).await;
    assert_eq!(f["status"], "cancelled");
    assert_eq!(f["reason"], "sold_out");
    // The refused unit did not go back on sale: the item was rebuilt.
    let again = buy_each(&app, round, items[0], &users("next", 3)).await;
    for (_, _, s, v) in &again {
        assert_eq!(*s, 410, "{v}");
    }
    assert_eq!(app.counters(round, items[0]).await, (2, 0, 2, 0));
    assert_eq!(app.order_count().await, 2);
}

#[tokio::test]
async fn a_rebuild_keeps_reservations_made_while_it_read_the_database() {
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let (round_id, item_id) = (round, items[0]);
    let sale = &app.state.sale;
    let token = sale.lock_item(round_id, item_id).await.unwrap().unwrap();
    assert!(
        sale.lock_item(round_id, item_id).await.unwrap().is_none(),
        "one rebuild at a time"
    );
    // What the database said when the rebuild read it: no orders.
    let restore = Restore {
        round_id,
        item_id,
        total: 5,
        unpaid: 0,
        sold: 0,
        starts_ms: app.now_ms() - 1_000,
        ends_ms: app.now_ms() + 3_600_000,
        per_user_limit: 1,
        price_cents: 100,
        attempts: vec![],
    };
    // Meanwhile a buyer reserves.
    let now = app.now_ms();
    let id = AttemptId::new(round_id, item_id, now);
    let r = sale
        .reserve(&id, "meanwhile", 1, now, "", None)
        .await
        .unwrap()
        .outcome;
    assert!(matches!(r, ReserveOutcome::Reserved { .. }), "{r:?}");
    // And a settlement that follows a database decision waits for it.
    let settle = {
        let sale = sale.clone();
        let id = id.clone();
        tokio::spawn(async move { sale.settle(&id, Settlement::Expired, now).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !settle.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err(),
        "settle ran while the rebuild held the item"
    );

    let done = sale
        .restore(&restore, RestoreMode::Overwrite, &token)
        .await
        .unwrap();
    assert!(done.written);
    assert_eq!(done.in_flight, 1);
    // The reservation made during the rebuild kept its unit.
    assert_eq!(
        (
            done.counters.available,
            done.counters.reserved,
            done.counters.sold
        ),
        (4, 1, 0)
    );
    assert_eq!(settle.await.unwrap().unwrap(), "applied");
    assert!(!sale.item_locked(round_id, item_id).await.unwrap());
    assert_eq!(app.counters(round_id, item_id).await, (5, 5, 0, 0));
}

#[tokio::test]
async fn a_reservation_left_queued_without_a_message_is_resolved_by_the_sweep() {
    let app = TestApp::spawn_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.rabbitmq.confirm_timeout_ms = 500;
            c.lifecycle.queued_grace_ms = 300;
            c.lifecycle.sweep_interval_ms = 200;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    // A reservation whose reply never reached the buy (Redis answered
    // after the backend gave up): no message was published for it.
    let now = app.now_ms();
    let id = AttemptId::new(round, items[0], now);
    let r = app
        .state
        .sale
        .reserve(&id, "ghost", 1, now, "", None)
        .await
        .unwrap()
        .outcome;
    assert!(matches!(r, ReserveOutcome::Reserved { .. }), "{r:?}");
    let t = app.token("ghost", Role::Buyer);
    let f = app.poll_final(&id.to_string(), &t).await;
    assert_eq!(f["status"], "ordered", "{f}");
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.counters(round, items[0]).await, (3, 2, 1, 0));
}

#[tokio::test]
async fn a_buyer_who_hangs_up_mid_buy_leaves_a_durable_record_of_what_is_held() {
    let url = amqp_url();
    let host = url
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap()
        .to_owned();
    let broker = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let proxy = FaultProxy::start(broker).await;
    let app = TestApp::spawn_with(TestOptions {
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", proxy.addr)),
        tweak: Some(Box::new(|c| c.rabbitmq.confirm_timeout_ms = 1_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    // The broker stops answering: the buy waits for a confirm that never
    // comes, and the buyer gives up long before the confirm timeout.
    proxy.blackhole();
    let t = app.token("impatient", Role::Buyer);
    let r = app
        .client
        .post(app.url(&format!("/api/rounds/{round}/items/{}/buy", items[0])))
        .bearer_auth(&t)
        .json(&json!({"qty": 1}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(r.is_err(), "the buyer hung up: {r:?}");
    // The buy still ran to its end: the unconfirmed order was spooled, so
    // the unit it holds has a durable record.
    eventually(Duration::from_secs(10), || async {
        (app.state.durable.spool.len() == 1).then_some(())
    })
    .await;
    assert_eq!(app.counters(round, items[0]).await, (3, 2, 1, 0));
    let held = app
        .state
        .sale
        .buyer_attempt(round, items[0], "impatient")
        .await
        .unwrap()
        .expect("the spooled attempt");
    // The broker answers again: the spooled order is written once.
    proxy.up();
    let f = app.poll_final(&held, &t).await;
    assert_eq!(f["status"], "ordered", "{f}");
    assert_eq!(app.order_count().await, 1);
    assert!(app.state.durable.spool.is_empty());
}

#[tokio::test]
async fn a_dead_letter_whose_order_was_committed_is_finished_not_released() {
    let app = TestApp::spawn_with(TestOptions {
        tweak: Some(Box::new(|c| {
            c.writer.max_attempts = 1;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    let t = app.token("committed", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 1).await;
    assert_eq!(s, 202);
    let attempt = v["attempt_id"].as_str().unwrap().to_owned();
    let f = app.poll_final(&attempt, &t).await;
    assert_eq!(f["status"], "ordered");

    // As if the commit landed and marking the attempt failed: the attempt
    // is still `writing`, its message comes back, and this time every
    // write fails.
    let id: AttemptId = attempt.parse().unwrap();
    let k = app.state.sale.keys(id.round_id, id.item_id);
    let _: () = app
        .state
        .sale
        .connection()
        .hset(k.attempt(&attempt), "status", "writing")
        .await
        .unwrap();
    app.state
        .db
        .execute_unprepared(
            "CREATE TRIGGER refuse_orders BEFORE INSERT ON orders \
             BEGIN SELECT RAISE(ABORT, 'orders refused'); END",
        )
        .await
        .unwrap();
    let o = seckill_backend::store::orders::find(&app.state.db, &attempt)
        .await
        .unwrap()
        .unwrap();
    let msg = OrderMessage {
        attempt_id: attempt.clone(),
        round_id: round,
        item_id: items[0],
        user_id: "committed".into(),
        qty: 1,
        unit_price_cents: o.unit_price_cents,
        reserved_at_ms: o.reserved_at_ms,
    };
    let mut h = FieldTable::default();
    h.insert(headers::FAILURES.into(), AMQPValue::LongLongInt(0));
    app.state
        .publisher
        .publish_to(
            app.state.publisher.topology().orders(),
            &serde_json::to_vec(&msg).unwrap(),
            &attempt,
            o.reserved_at_ms,
            h,
        )
        .await
        .unwrap();

    let status = eventually(Duration::from_secs(15), || async {
        let a = app.state.sale.attempt(&id).await.unwrap().unwrap();
        (a.status != "writing").then_some(a)
    })
    .await;
    assert_eq!(status.status, "ordered", "{status:?}");
    assert_eq!(app.counters(round, items[0]).await, (3, 2, 1, 0));
}

#[tokio::test]
async fn a_node_whose_clock_runs_ahead_neither_refuses_a_timely_payment_nor_expires_early() {
    let clock = seckill_backend::clock::ManualClock::new(chrono::Utc::now().timestamp_millis());
    let app = TestApp::spawn_with(TestOptions {
        clock: Some(clock.clone()),
        payment_timeout_secs: 60,
        tweak: Some(Box::new(|c| {
            c.lifecycle.expiry_grace_ms = 2_000;
            c.lifecycle.sweep_interval_ms = 600_000;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;
    let got = buy_each(&app, round, items[0], &users("skew", 2)).await;
    assert_all_accepted_ordered(&app, &got).await;
    let ids: Vec<(String, String)> = got
        .iter()
        .map(|(_, t, _, v)| (v["attempt_id"].as_str().unwrap().to_owned(), t.clone()))
        .collect();
    // This node's clock reads 1.5 s past the deadline; the buyers' clocks
    // (and the other nodes') are on time.
    clock.advance(60_000 + 1_500);
    let lc = &app.state.lifecycle;
    let report = seckill_backend::lifecycle::sweep::pass(lc, &app.state.publisher)
        .await
        .unwrap();
    assert_eq!(report.expired, 0, "expired early by a clock running ahead");
    let (order_id, t) = &ids[0];
    let r = app
        .post_json(&format!("/api/orders/{order_id}/pay"), t, None)
        .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Past the grace too: the other order expires.
    clock.advance(1_000);
    let report = seckill_backend::lifecycle::sweep::pass(lc, &app.state.publisher)
        .await
        .unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(app.counters(round, items[0]).await, (2, 1, 0, 1));
}
