//! Payment edge cases: a charge that lands after its order was cancelled,
//! and a payment of unknown outcome whose charge arrives late.

use std::{sync::Arc, time::Duration};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use seckill_backend::{
    auth::Role,
    clock::ManualClock,
    config::SimulatedOutcome,
    lifecycle::sweep,
    payment::SimulatedProvider,
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
    sweep::pass(lc, &mut None).await.unwrap();
    assert_eq!(order_of(&app, &id).await.status, status::PAYING);

    // Past lookup_settle_ms: the pending charge is voided, the order
    // payable again, and the late charge can no longer land.
    clock.advance(5_000);
    sweep::pass(lc, &mut None).await.unwrap();
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
