//! Payment and dead-letter edge cases: a charge that lands after its order
//! was cancelled, a payment of unknown outcome whose charge arrives late,
//! and dead letters whose order was written after all.

use std::{sync::Arc, time::Duration};

use lapin::types::FieldTable;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use seckill_backend::{
    auth::Role,
    clock::ManualClock,
    config::SimulatedOutcome,
    lifecycle::sweep,
    payment::SimulatedProvider,
    queue::OrderMessage,
    store::entities::order::{self, status},
};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestOptions, eventually, item};

fn provider() -> Arc<SimulatedProvider> {
    Arc::new(SimulatedProvider::new(SimulatedOutcome::Succeed))
}

fn clock() -> ManualClock {
    ManualClock::new(chrono::Utc::now().timestamp_millis())
}

async fn pay(app: &TestApp, order_id: &str, token: &str) -> (u16, Value) {
    let r = app
        .post_json(&format!("/api/orders/{order_id}/pay"), token, None)
        .await;
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn order_of(app: &TestApp, id: &str) -> order::Model {
    order::Entity::find_by_id(id.to_owned())
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("order written")
}

/// Buys one unit as `user` and waits for its order; returns (token, order id).
async fn ordered(app: &TestApp, round: i64, item: i64, user: &str) -> (String, String) {
    let t = app.token(user, Role::Buyer);
    let (s, v) = app.buy(round, item, &t, 1).await;
    assert_eq!(s, 202, "{v}");
    let a = v["attempt_id"].as_str().unwrap().to_owned();
    assert_eq!(app.poll_final(&a, &t).await["status"], "ordered");
    (t, a)
}

#[tokio::test]
async fn a_charge_that_lands_after_its_order_was_cancelled_is_refunded() {
    let p = provider();
    let app = TestApp::spawn_with(TestOptions {
        provider: Some(p.clone()),
        tweak: Some(Box::new(|c| {
            c.payment.timeout_ms = 30_000;
            c.lifecycle.sweep_interval_ms = 600_000;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;
    let (t, id) = ordered(&app, round, items[0], "late-charge").await;

    // While the charge is on its way, another path cancels the order and
    // returns its unit to stock.
    p.hold_charges();
    let cancel = async {
        eventually(Duration::from_secs(10), || async {
            (p.held_charges() == 1).then_some(())
        })
        .await;
        order::Entity::update_many()
            .col_expr(order::Column::Status, Expr::value(status::CANCELLED))
            .col_expr(order::Column::CancelReason, Expr::value("expired"))
            .col_expr(order::Column::CancelledAtMs, Expr::value(app.now_ms()))
            .filter(order::Column::Id.eq(id.clone()))
            .exec(&app.state.db)
            .await
            .unwrap();
        app.state
            .lifecycle
            .apply(&order_of(&app, &id).await)
            .await
            .unwrap();
        assert_eq!(app.counters(round, items[0]).await, (2, 2, 0, 0));
        p.land_held_charges();
    };
    let ((s, v), ()) = tokio::join!(pay(&app, &id, &t), cancel);

    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "conflict");
    assert_eq!(v["order_status"], "cancelled");
    assert_eq!(v["reason"], "expired");
    assert_eq!(v["refunded"], true, "{v}");
    assert_eq!((p.charged_orders(), p.refunded_orders()), (0, 1));
    let o = order_of(&app, &id).await;
    assert_eq!(o.status, status::CANCELLED);
    assert_eq!(o.charge_id, None);
    assert_eq!(app.counters(round, items[0]).await, (2, 2, 0, 0));
    // Paying again charges nothing and refunds nothing more.
    let (s, v) = pay(&app, &id, &t).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!((p.charged_orders(), p.refunded_orders()), (0, 1));
    let metrics = reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"seckill_payments_total{outcome="refunded"}"#),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test]
async fn a_payment_of_unknown_outcome_is_held_until_the_provider_voids_its_charge() {
    let p = provider();
    let clock = clock();
    let app = TestApp::spawn_with(TestOptions {
        provider: Some(p.clone()),
        clock: Some(clock.clone()),
        tweak: Some(Box::new(|c| {
            c.payment.timeout_ms = 200;
            c.payment.lookup_settle_ms = Some(5_000);
            c.lifecycle.sweep_interval_ms = 600_000;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;
    let (t, id) = ordered(&app, round, items[0], "slow-provider").await;

    // The provider received the charge but does not answer in time.
    p.hold_charges();
    let (s, v) = pay(&app, &id, &t).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (504, Some("payment_pending")),
        "{v}"
    );
    assert_eq!(p.held_charges(), 1);

    // Past the sweep's first look: "no charge" is not conclusive yet.
    clock.advance(1_000);
    let lc = &app.state.lifecycle;
    sweep::pass(lc, &app.state.publisher).await.unwrap();
    assert_eq!(order_of(&app, &id).await.status, status::PAYING);

    // Past lookup_settle_ms: the pending charge is voided, the order
    // payable again, and the late charge can no longer land.
    clock.advance(5_000);
    sweep::pass(lc, &app.state.publisher).await.unwrap();
    assert_eq!(order_of(&app, &id).await.status, status::PENDING_PAYMENT);
    p.land_held_charges();
    assert_eq!(p.charged_orders(), 0, "a charge landed on a released order");
    assert_eq!(app.counters(round, items[0]).await, (2, 1, 1, 0));

    let (s, v) = pay(&app, &id, &t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(p.charged_orders(), 1);
    assert_eq!(app.counters(round, items[0]).await, (2, 1, 0, 1));
    app.teardown().await;
}

/// Puts a copy of the order message of `order_id` into the dead-letter
/// queue, as a message dead-lettered after its order was written.
async fn dead_letter_copy(app: &TestApp, o: &order::Model) {
    let msg = OrderMessage {
        attempt_id: o.attempt_id.clone(),
        round_id: o.round_id,
        item_id: o.item_id,
        user_id: o.user_id.clone(),
        qty: o.qty,
        unit_price_cents: o.unit_price_cents,
        reserved_at_ms: o.reserved_at_ms,
    };
    let publisher = &app.state.publisher;
    publisher
        .publish_to(
            &publisher.topology().dead(),
            &serde_json::to_vec(&msg).unwrap(),
            &o.attempt_id,
            app.now_ms(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Sets fields of an attempt's Redis record.
async fn set_attempt(app: &TestApp, round: i64, item: i64, id: &str, fields: &[(&str, &str)]) {
    let mut c = app.state.sale.connection();
    let mut cmd = redis::cmd("HSET");
    cmd.arg(app.state.sale.keys(round, item).attempt(id));
    for (k, v) in fields {
        cmd.arg(k).arg(v);
    }
    let _: i64 = cmd.query_async(&mut c).await.unwrap();
}

async fn act(app: &TestApp, what: &str) -> Vec<Value> {
    let r = app
        .post_json(
            &format!("/admin/dead-letters/{what}"),
            &app.token("ops", Role::Operator),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn replaying_a_dead_letter_whose_order_expired_reserves_nothing() {
    let clock = clock();
    let app = TestApp::spawn_with(TestOptions {
        clock: Some(clock.clone()),
        tweak: Some(Box::new(|c| c.lifecycle.sweep_interval_ms = 600_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(1, 1)]), -1_000, 3_600_000).await;
    let (_, id) = ordered(&app, round, items[0], "expired-buyer").await;
    let o = order_of(&app, &id).await;
    // The writer committed the order but its message was dead-lettered (a
    // later step failed), leaving the attempt cancelled as a dead letter;
    // then the unpaid order expired and its unit went back to stock.
    clock.advance(app.config.payment_timeout_ms() + 1_000);
    assert!(app.state.lifecycle.expire(&id).await.unwrap());
    set_attempt(
        &app,
        round,
        items[0],
        &o.attempt_id,
        &[("reason", "dead_letter")],
    )
    .await;
    dead_letter_copy(&app, &o).await;
    assert_eq!(app.counters(round, items[0]).await, (1, 1, 0, 0));

    let results = act(&app, "replay").await;
    assert_eq!(results.len(), 1);
    assert_eq!(
        app.counters(round, items[0]).await,
        (1, 1, 0, 0),
        "{results:?}"
    );
    assert_eq!(results[0]["outcome"], "order_exists", "{results:?}");
    assert_eq!(results[0]["order_status"], "cancelled");
    // The message is dropped: there is nothing left to replay.
    assert!(act(&app, "replay").await.is_empty());
    app.teardown().await;
}

#[tokio::test]
async fn discarding_a_dead_letter_whose_order_was_written_keeps_its_units() {
    let p = provider();
    let app = TestApp::spawn_with(TestOptions {
        provider: Some(p.clone()),
        tweak: Some(Box::new(|c| c.lifecycle.sweep_interval_ms = 600_000)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(1, 1)]), -1_000, 3_600_000).await;
    let (t, id) = ordered(&app, round, items[0], "committed-buyer").await;
    let o = order_of(&app, &id).await;
    // The writer committed the order and stopped before marking the
    // attempt ordered; its message ended among the dead letters.
    set_attempt(
        &app,
        round,
        items[0],
        &o.attempt_id,
        &[("status", "writing")],
    )
    .await;
    dead_letter_copy(&app, &o).await;

    let results = act(&app, "discard").await;
    assert_eq!(results.len(), 1);
    assert_eq!(
        app.counters(round, items[0]).await,
        (1, 0, 1, 0),
        "{results:?}"
    );
    assert_eq!(results[0]["outcome"], "order_exists", "{results:?}");
    assert!(act(&app, "discard").await.is_empty());
    // The order is still the buyer's to pay.
    let (s, v) = pay(&app, &id, &t).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.counters(round, items[0]).await, (1, 0, 0, 1));
    app.teardown().await;
}
