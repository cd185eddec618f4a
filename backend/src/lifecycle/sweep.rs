//! The periodic backstop of the lifecycle. Each pass:
//!
//! 1. expires overdue unpaid orders (their expiry message may be lost);
//! 2. re-applies settlements a crash left without their counters effect;
//! 3. settles payments whose outcome was never learnt, by asking the
//!    provider (after twice the payment timeout);
//! 4. watches Redis for lost data: an item on sale (or whose round ended
//!    recently) whose counters are missing, or were not verified by the
//!    running Redis server (it restarted), is rebuilt from the database —
//!    the buy path does the same at once for the items it sells, this
//!    catches the others;
//! 5. resolves attempts left `queued` past the publisher's confirm timeout
//!    plus `lifecycle.queued_grace_ms` (a reply lost, a process killed
//!    between reserve and confirm): their order message is published again,
//!    so the order writer decides them; a duplicate of a message that did
//!    arrive is absorbed by the writer's claim and the unique keys.
//!
//! Every step is idempotent, so several nodes may sweep at once.

use std::{sync::Arc, time::Duration};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio_util::sync::CancellationToken;

use super::{Lifecycle, rebuild};
use crate::{
    domain::{AttemptId, attempt::stored},
    queue::{OrderMessage, Publisher},
    store::{
        StoreError,
        entities::order::{self, status},
        rounds,
    },
};

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub reapplied: usize,
    pub payments_resolved: usize,
    pub items_rebuilt: usize,
    pub queued_republished: usize,
}

/// Runs passes every `lifecycle.sweep_interval_ms` until `shutdown`.
pub async fn run(lc: Arc<Lifecycle>, publisher: Arc<Publisher>, shutdown: CancellationToken) {
    let every = Duration::from_millis(lc.config.lifecycle.sweep_interval_ms);
    loop {
        match pass(&lc, &publisher).await {
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

/// One pass.
pub async fn pass(lc: &Lifecycle, publisher: &Publisher) -> Result<SweepReport, StoreError> {
    let mut report = SweepReport::default();
    let now = lc.clock.now_ms();
    let batch = lc.config.lifecycle.sweep_batch;

    let due: Vec<String> = order::Entity::find()
        .select_only()
        .column(order::Column::Id)
        .filter(order::Column::Status.eq(status::PENDING_PAYMENT))
        .filter(order::Column::PayByMs.lte(lc.config.overdue_before(now)))
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

    let (rebuilt, republished) = watch_redis(lc, publisher).await?;
    report.items_rebuilt = rebuilt;
    report.queued_republished = republished;
    if report.expired > 0 {
        metrics::counter!("seckill_sweep_expired_total").increment(report.expired as u64);
    }
    Ok(report)
}

/// Rebuilds the items whose counters the running Redis server did not
/// verify, and republishes their attempts stuck in `queued`. Returns the
/// items rebuilt and the attempts republished.
async fn watch_redis(lc: &Lifecycle, publisher: &Publisher) -> Result<(usize, usize), StoreError> {
    let now = lc.clock.now_ms();
    // Orders are still written up to the backlog threshold after a round
    // ends, and expire up to the payment timeout after that.
    let recent =
        now - lc.config.payment_timeout_ms() - lc.config.lifecycle.backlog_threshold_ms as i64;
    let stuck_before = now
        - lc.config.rabbitmq.confirm_timeout_ms as i64
        - lc.config.lifecycle.queued_grace_ms as i64;
    let run_id = lc.sale.server_run_id().await?;
    let (mut rebuilt, mut republished) = (0, 0);
    for r in rounds::visible(&lc.db, recent).await? {
        for it in &r.items {
            if !lc.sale.verified_by(r.round.id, it.id, &run_id).await?
                && rebuild::ensure_item(lc, r.round.id, it.id).await? == rebuild::Ensured::Ready
            {
                rebuilt += 1;
            }
            for raw in lc
                .sale
                .in_flight_since(r.round.id, it.id, stuck_before)
                .await?
            {
                if republish(lc, publisher, &raw).await? {
                    republished += 1;
                }
            }
        }
    }
    Ok((rebuilt, republished))
}

/// Publishes the order message of an attempt still `queued` again.
async fn republish(lc: &Lifecycle, publisher: &Publisher, raw: &str) -> Result<bool, StoreError> {
    let Ok(id) = raw.parse::<AttemptId>() else {
        return Ok(false);
    };
    let Some(a) = lc.sale.attempt(&id).await? else {
        return Ok(false);
    };
    if a.status != stored::QUEUED {
        return Ok(false);
    }
    let msg = OrderMessage {
        attempt_id: raw.to_owned(),
        round_id: id.round_id,
        item_id: id.item_id,
        user_id: a.user.clone(),
        qty: a.qty,
        unit_price_cents: a.price_cents,
        reserved_at_ms: a.created_ms,
    };
    match publisher.publish(&msg).await {
        Ok(()) => {
            lc.sale.touch_in_flight(&id, lc.clock.now_ms()).await?;
            metrics::counter!("seckill_sweep_republished_total").increment(1);
            tracing::warn!(
                attempt_id = raw,
                age_ms = lc.clock.now_ms() - a.created_ms,
                "attempt still queued past the confirm timeout; order message published again"
            );
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(attempt_id = raw, error = %e, "cannot republish a stuck attempt; next pass");
            Ok(false)
        }
    }
}
