//! The periodic backstop of the lifecycle. Each pass:
//!
//! 1. expires overdue unpaid orders (their expiry message may be lost);
//! 2. re-applies settlements a crash left without their counters effect;
//! 3. settles payments whose outcome was never learnt, by asking the
//!    provider (after twice the payment timeout);
//! 4. watches Redis for lost data: an item on sale without counters is
//!    rebuilt from the database, and after a Redis restart (its run id
//!    changed) every item on sale is reconciled and repaired.
//!
//! Every step is idempotent, so several nodes may sweep at once.

use std::{sync::Arc, time::Duration};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio_util::sync::CancellationToken;

use super::{Lifecycle, rebuild};
use crate::store::{
    StoreError,
    entities::order::{self, status},
    rounds,
};

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub reapplied: usize,
    pub payments_resolved: usize,
    pub items_rebuilt: usize,
}

/// Runs passes every `lifecycle.sweep_interval_ms` until `shutdown`.
pub async fn run(lc: Arc<Lifecycle>, shutdown: CancellationToken) {
    let every = Duration::from_millis(lc.config.lifecycle.sweep_interval_ms);
    let mut run_id: Option<String> = None;
    loop {
        match pass(&lc, &mut run_id).await {
            Ok(r) if r != SweepReport::default() => tracing::info!(?r, "sweep"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep pass failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass. `run_id` carries the Redis server's run id between passes.
pub async fn pass(lc: &Lifecycle, run_id: &mut Option<String>) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let now = lc.clock.now_ms();
    let batch = lc.config.lifecycle.sweep_batch;

    let due: Vec<String> = order::Entity::find()
        .select_only()
        .column(order::Column::Id)
        .filter(order::Column::Status.eq(status::PENDING_PAYMENT))
        .filter(order::Column::PayByMs.lte(now))
        .order_by_asc(order::Column::PayByMs)
        .limit(batch)
        .into_tuple()
        .all(&lc.db)
        .await?;
    for id in due {
        if lc.expire(&id).await? {
            report.expired += 1;
        }
    }

    let half_done = order::Entity::find()
        .filter(order::Column::CountersApplied.eq(false))
        .filter(order::Column::Status.is_in([status::PAID, status::CANCELLED]))
        .limit(batch)
        .all(&lc.db)
        .await?;
    for o in half_done {
        lc.apply(&o).await?;
        report.reapplied += 1;
    }

    let stale = now - (lc.config.payment.timeout_ms as i64).saturating_mul(2);
    let unknown = order::Entity::find()
        .filter(order::Column::Status.eq(status::PAYING))
        .filter(order::Column::PaymentStartedAtMs.lte(stale))
        .limit(batch)
        .all(&lc.db)
        .await?;
    for o in unknown {
        lc.resolve_paying(&o).await?;
        report.payments_resolved += 1;
    }

    report.items_rebuilt = watch_redis(lc, run_id).await?;
    if report.expired > 0 {
        metrics::counter!("seckill_sweep_expired_total").increment(report.expired as u64);
    }
    Ok(report)
}

/// Rebuilds items on sale whose counters Redis lost; after a restart of
/// the Redis server, reconciles and repairs every item on sale.
async fn watch_redis(lc: &Lifecycle, last: &mut Option<String>) -> Result<usize, StoreError> {
    let current = lc.sale.server_run_id().await?;
    let restarted = last.as_ref().is_some_and(|l| *l != current);
    *last = Some(current);
    let mut rebuilt = 0;
    for r in rounds::visible(&lc.db, lc.clock.now_ms()).await? {
        for it in &r.items {
            if restarted {
                let rep = rebuild::reconcile_item(lc, &r.round, it, true).await?;
                if rep.repaired {
                    tracing::warn!(round_id = r.round.id, item_id = it.id, differences = ?rep.differences,
                        "redis restarted with different data; item repaired from the database");
                    rebuilt += 1;
                }
            } else if lc.sale.counters(r.round.id, it.id).await?.is_none()
                && rebuild::ensure_item(lc, r.round.id, it.id).await? == rebuild::Ensured::Ready
            {
                rebuilt += 1;
            }
        }
    }
    Ok(rebuilt)
}
