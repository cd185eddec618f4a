//! Reconciliation: per item, the Redis counters and attempts against the
//! database's orders, every difference reported; and rebuilding an item's
//! Redis state from the database, which is what `--repair` does and what
//! the backend does by itself before it sells from an item whose counters
//! Redis lost, whose counters a restarted Redis brought back from older
//! data (the reserve script answers `stale`), or whose counters the
//! database contradicted (an order refused for lack of stock).
//!
//! A rebuild holds the item's lock from before it reads the database until
//! `restore.lua` wrote the counters: the scripts that follow a database
//! decision (marking an order written, settling a payment or expiry) wait
//! meanwhile, and the units of attempts still on their way are counted
//! inside the script, so nothing that happens during the rebuild is lost.
//!
//! What the database implies for an item with `stock` units:
//! `sold = Σ qty(paid)`, `reserved = Σ qty(pending_payment, paying) +
//! in-flight` (attempts Redis holds as `queued`/`writing` whose order is not
//! written yet), `available = stock - reserved - sold`.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;

use super::Lifecycle;
use crate::{
    domain::{RoundStatus, attempt::stored},
    store::{
        StoreError,
        entities::{
            item,
            order::{self, status},
            round,
        },
        rounds,
        sale::{AttemptRecord, Counters, Preheat, Restore, RestoreMode, Restored, RestoredAttempt},
    },
};

/// Per-attempt differences listed in one report, at most.
const MAX_LISTED: usize = 50;

/// Units per order status in the database.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DbTotals {
    pub orders: i64,
    pub pending_payment: i64,
    pub paying: i64,
    pub paid: i64,
    pub cancelled: i64,
}

/// One item's reconciliation.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ItemReport {
    pub round_id: i64,
    pub item_id: i64,
    pub stock: i64,
    /// The counters in Redis, `null` when Redis has none.
    pub redis: Option<Counters>,
    /// The counters the database implies.
    pub expected: Counters,
    pub database: DbTotals,
    /// Units held by attempts whose order is not written yet.
    pub in_flight: i64,
    pub differences: Vec<String>,
    pub repaired: bool,
}

impl ItemReport {
    pub fn consistent(&self) -> bool {
        self.differences.is_empty()
    }
}

/// The preheat data of an item (window, limit, price, public fields).
pub fn preheat_of<'a>(r: &round::Model, it: &item::Model) -> Preheat<'a> {
    Preheat {
        round_id: r.id,
        item_id: it.id,
        stock: it.stock,
        starts_ms: r.starts_at_ms,
        ends_ms: r.ends_at_ms,
        per_user_limit: it.per_user_limit,
        price_cents: it.sale_price_cents,
        info: vec![
            ("title", it.title.clone()),
            ("image_url", it.image_url.clone()),
            ("sale_price_cents", it.sale_price_cents.to_string()),
            ("original_price_cents", it.original_price_cents.to_string()),
        ],
        admission_window_ms: r.admission_window_ms,
    }
}

fn totals(orders: &[order::Model]) -> DbTotals {
    let mut t = DbTotals::default();
    for o in orders {
        t.orders += 1;
        match o.status.as_str() {
            status::PENDING_PAYMENT => t.pending_payment += o.qty,
            status::PAYING => t.paying += o.qty,
            status::PAID => t.paid += o.qty,
            _ => t.cancelled += o.qty,
        }
    }
    t
}

fn expected(stock: i64, t: &DbTotals, in_flight: i64) -> Counters {
    let reserved = t.pending_payment + t.paying + in_flight;
    Counters {
        total: stock,
        available: stock - reserved - t.paid,
        reserved,
        sold: t.paid,
    }
}

/// The attempt status an order implies.
fn attempt_status_of(o: &order::Model) -> &'static str {
    match o.status.as_str() {
        status::PAID => stored::PAID,
        status::CANCELLED => stored::CANCELLED,
        _ => stored::ORDERED,
    }
}

async fn item_orders(
    lc: &Lifecycle,
    round_id: i64,
    item_id: i64,
) -> Result<Vec<order::Model>, StoreError> {
    Ok(order::Entity::find()
        .filter(order::Column::RoundId.eq(round_id))
        .filter(order::Column::ItemId.eq(item_id))
        .order_by_asc(order::Column::Id)
        .all(&lc.db)
        .await?)
}

fn in_flight_of(
    attempts: &[(String, AttemptRecord)],
    orders: &HashMap<&str, &order::Model>,
) -> i64 {
    attempts
        .iter()
        .filter(|(id, a)| stored::in_flight(&a.status) && !orders.contains_key(id.as_str()))
        .map(|(_, a)| a.qty)
        .sum()
}

/// Rewrites an item's Redis state from the database under the item's
/// rebuild lock. `Verify` writes only when Redis has no counters for it or
/// counters the running server did not verify; `Overwrite` always
/// replaces them. `None` when another rebuild holds the item.
pub async fn rebuild_item(
    lc: &Lifecycle,
    r: &round::Model,
    it: &item::Model,
    mode: RestoreMode,
) -> Result<Option<Restored>, StoreError> {
    let Some(token) = lc.sale.lock_item(r.id, it.id).await? else {
        return Ok(None);
    };
    let result = restore_locked(lc, r, it, mode, &token).await;
    if result.is_err() {
        // restore.lua releases the lock when it runs; a failure before it
        // must not leave the item held until the lock expires.
        let _ = lc.sale.unlock_item(r.id, it.id, &token).await;
    }
    let restored = result?;
    if restored.written {
        lc.sale.preheat(&preheat_of(r, it)).await?;
        metrics::counter!("seckill_redis_rebuilds_total").increment(1);
        if restored.over > 0 {
            tracing::error!(
                round_id = r.id,
                item_id = it.id,
                over = restored.over,
                "the database holds more units than the stock"
            );
        }
        tracing::warn!(
            round_id = r.id,
            item_id = it.id,
            counters = ?restored.counters,
            in_flight = restored.in_flight,
            "item's redis state rebuilt from the database"
        );
    }
    Ok(Some(restored))
}

async fn restore_locked(
    lc: &Lifecycle,
    r: &round::Model,
    it: &item::Model,
    mode: RestoreMode,
    token: &str,
) -> Result<Restored, StoreError> {
    let orders = item_orders(lc, r.id, it.id).await?;
    let t = totals(&orders);
    let restore = Restore {
        round_id: r.id,
        item_id: it.id,
        total: it.stock,
        unpaid: t.pending_payment + t.paying,
        sold: t.paid,
        starts_ms: r.starts_at_ms,
        ends_ms: r.ends_at_ms,
        per_user_limit: it.per_user_limit,
        price_cents: it.sale_price_cents,
        attempts: orders
            .iter()
            .map(|o| RestoredAttempt {
                attempt_id: o.id.clone(),
                user: o.user_id.clone(),
                qty: o.qty,
                status: attempt_status_of(o),
                pay_by_ms: o.pay_by_ms,
                created_ms: o.reserved_at_ms,
                reason: o.cancel_reason.clone(),
                price_cents: o.unit_price_cents,
            })
            .collect(),
    };
    lc.sale.restore(&restore, mode, token).await
}

/// What [`ensure_item`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The counters exist and are verified (rebuilt now, or already).
    Ready,
    /// No such item in an approved round.
    NotOnSale,
    /// Another node is rebuilding it right now.
    Busy,
}

/// Makes sure an item of an approved round has counters in Redis that the
/// running server verified, rebuilding them from the database otherwise.
/// Called by the buy path when the reserve script finds no counters or
/// stale ones, by the order writer, and by the sweep.
pub async fn ensure_item(
    lc: &Lifecycle,
    round_id: i64,
    item_id: i64,
) -> Result<Ensured, StoreError> {
    let Some(r) = rounds::get(&lc.db, round_id).await? else {
        return Ok(Ensured::NotOnSale);
    };
    if r.round.status != RoundStatus::Approved.as_str() {
        return Ok(Ensured::NotOnSale);
    }
    let Some(it) = r.items.iter().find(|i| i.id == item_id) else {
        return Ok(Ensured::NotOnSale);
    };
    Ok(
        match rebuild_item(lc, &r.round, it, RestoreMode::Verify).await? {
            Some(_) => Ensured::Ready,
            None => Ensured::Busy,
        },
    )
}

/// Compares one item; with `repair`, rebuilds it when anything differs.
pub async fn reconcile_item(
    lc: &Lifecycle,
    r: &round::Model,
    it: &item::Model,
    repair: bool,
) -> Result<ItemReport, StoreError> {
    let redis = lc.sale.counters(r.id, it.id).await?;
    let orders = item_orders(lc, r.id, it.id).await?;
    let by_id: HashMap<&str, &order::Model> = orders.iter().map(|o| (o.id.as_str(), o)).collect();
    let attempts = lc.sale.item_attempts(r.id, it.id).await?;
    let in_flight = in_flight_of(&attempts, &by_id);
    let t = totals(&orders);
    let exp = expected(it.stock, &t, in_flight);
    let mut diffs = Vec::new();
    match &redis {
        None => diffs.push("redis has no counters for this item".to_owned()),
        Some(c) => {
            for (name, got, want) in [
                ("total", c.total, exp.total),
                ("available", c.available, exp.available),
                ("reserved", c.reserved, exp.reserved),
                ("sold", c.sold, exp.sold),
            ] {
                if got != want {
                    diffs.push(format!("{name}: redis {got}, database implies {want}"));
                }
            }
        }
    }
    if exp.available < 0 {
        diffs.push(format!(
            "the database holds {} unit(s) more than the stock",
            -exp.available
        ));
    }
    let mut listed = Vec::new();
    let by_attempt: HashMap<&str, &AttemptRecord> =
        attempts.iter().map(|(id, a)| (id.as_str(), a)).collect();
    for o in &orders {
        let want = attempt_status_of(o);
        match by_attempt.get(o.id.as_str()) {
            None => listed.push(format!(
                "order {} ({}) has no attempt in redis",
                o.id, o.status
            )),
            Some(a) => {
                let ok =
                    a.status == want || (want == stored::ORDERED && a.status == stored::WRITING);
                if !ok {
                    listed.push(format!(
                        "order {} is {} but its attempt is {}",
                        o.id, o.status, a.status
                    ));
                }
            }
        }
    }
    let now = lc.clock.now_ms();
    let stranded_after = (lc.config.lifecycle.backlog_threshold_ms as i64).saturating_mul(2);
    for (id, a) in &attempts {
        if by_id.contains_key(id.as_str()) {
            continue;
        }
        match a.status.as_str() {
            stored::ORDERED | stored::PAID => {
                listed.push(format!("attempt {id} is {} but has no order", a.status))
            }
            s if stored::in_flight(s) && now - a.created_ms > stranded_after => {
                listed.push(format!(
                    "attempt {id} has held {} unit(s) for {} s without an order",
                    a.qty,
                    (now - a.created_ms) / 1000
                ))
            }
            _ => {}
        }
    }
    let extra = listed.len().saturating_sub(MAX_LISTED);
    diffs.extend(listed.into_iter().take(MAX_LISTED));
    if extra > 0 {
        diffs.push(format!("… and {extra} more attempt difference(s)"));
    }
    let mut repaired = false;
    if repair && !diffs.is_empty() {
        match rebuild_item(lc, r, it, RestoreMode::Overwrite).await? {
            Some(done) => repaired = done.written,
            None => diffs.push("not repaired: another rebuild of this item is running".into()),
        }
    }
    Ok(ItemReport {
        round_id: r.id,
        item_id: it.id,
        stock: it.stock,
        redis,
        expected: exp,
        database: t,
        in_flight,
        differences: diffs,
        repaired,
    })
}

/// Reconciles every item of the approved rounds (or of one round).
pub async fn reconcile(
    lc: &Lifecycle,
    round_id: Option<i64>,
    repair: bool,
) -> Result<Vec<ItemReport>, StoreError> {
    let targets = match round_id {
        Some(id) => rounds::get(&lc.db, id).await?.into_iter().collect(),
        None => rounds::approved(&lc.db).await?,
    };
    let mut out = Vec::new();
    for r in targets {
        if r.round.status != RoundStatus::Approved.as_str() {
            continue;
        }
        for it in &r.items {
            out.push(reconcile_item(lc, &r.round, it, repair).await?);
        }
    }
    Ok(out)
}
