//! The buy: reserve units in Redis, publish the order message, and accept
//! only after the broker's confirm. What the buyer is told must match what
//! happened to the units:
//!
//! - `Accepted` only after the order message was confirmed (or the order
//!   writer already claimed the attempt, so the message did arrive);
//! - every other outcome leaves nothing reserved — an unconfirmed publish
//!   is released; a reserve whose reply was lost is released in the
//!   background once Redis answers again.
//!
//! The work from the reserve to the confirm (or the release) runs on a task
//! of its own, so a client that disconnects cannot cancel it half-way and
//! strand a reservation. Whatever still slips through (Redis gone for
//! longer than the background release tries) is resolved by the sweep,
//! which republishes attempts left `queued` past the confirm timeout.
//!
//! Items whose counters Redis lost, or brought back from older data after a
//! restart, are rebuilt from the database before anything is sold from
//! them (see [`super::rebuild`]).
//!
//! A buy forwarded by an edge carries the edge's permits for its units
//! ([`EdgePermit`]); the reserve script takes them out of the edge's lease
//! in the same step, and the buy reports what it did to them ([`Effect`])
//! so the edge can settle its count. `None` means the buy cannot tell (the
//! reserve's reply was lost).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    Lifecycle,
    rebuild::{self, Ensured},
};
use seckill_proto::permit::{EdgePermit, Effect};

use crate::{
    domain::{AttemptId, AttemptStatus, attempt::reason},
    queue::{OrderMessage, Publisher},
    store::{
        StoreError,
        sale::{ReserveOutcome, Reserved},
    },
};

/// How long a buyer refused with `held` is asked to wait: the leased units
/// are either bought or back in the pool within moments.
const HELD_RETRY_MS: u64 = 250;

/// How long a buy waits for another node's rebuild of the item.
const REBUILD_WAIT: Duration = Duration::from_millis(2_000);
const REBUILD_STEP: Duration = Duration::from_millis(20);

/// One validated buy request.
#[derive(Clone, Debug)]
pub struct Buy {
    pub round_id: i64,
    pub item_id: i64,
    pub user: String,
    pub qty: i64,
    /// `""` when the client sent none.
    pub idempotency_key: String,
    /// The edge permits the request carries, if it came through an edge.
    pub permit: Option<EdgePermit>,
}

/// A buy's end, and what it did to the edge permit it carried (`None`: it
/// carried none, or the buy cannot tell).
#[derive(Debug)]
pub struct BuyResult {
    pub outcome: Result<Bought, BuyError>,
    pub permit: Option<Effect>,
}

/// A buy that holds units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bought {
    /// A new attempt; its order message is confirmed.
    Accepted { attempt_id: String },
    /// The buyer's earlier attempt, asked for again.
    Retry {
        attempt_id: String,
        status: AttemptStatus,
    },
}

/// Why a buy holds nothing.
#[derive(Debug, thiserror::Error)]
pub enum BuyError {
    #[error("the buyer holds another attempt or asked for more than the limit")]
    Limit {
        held_attempt: Option<String>,
        held_qty: i64,
        limit: i64,
    },
    #[error("no such item on sale")]
    NotOnSale,
    #[error("the sale has not started")]
    NotStarted { starts_ms: i64 },
    #[error("the sale has ended")]
    Ended,
    #[error("sold out")]
    SoldOut,
    #[error("only {available} unit(s) left")]
    Insufficient { available: i64 },
    #[error("every free unit is held for buyers on their way")]
    Held { retry_after_ms: u64 },
    #[error("the sale's state is being rebuilt")]
    Rebuilding,
    #[error("the order queue did not confirm the order")]
    QueueUnavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs one buy to its end on a task of its own.
pub async fn buy(lc: Arc<Lifecycle>, publisher: Arc<Publisher>, req: Buy) -> BuyResult {
    let task = tokio::spawn(async move {
        let mut permit = None;
        let outcome = run(&lc, &publisher, &req, &mut permit).await;
        BuyResult { outcome, permit }
    });
    match task.await {
        Ok(r) => r,
        Err(e) => BuyResult {
            outcome: Err(BuyError::Store(StoreError::Protocol(format!(
                "buy task failed: {e}"
            )))),
            permit: None,
        },
    }
}

async fn run(
    lc: &Arc<Lifecycle>,
    publisher: &Publisher,
    req: &Buy,
    permit: &mut Option<Effect>,
) -> Result<Bought, BuyError> {
    let now = lc.clock.now_ms();
    let id = AttemptId::new(req.round_id, req.item_id, now);
    let price_cents = match reserve_verified(lc, &id, req, now, permit).await? {
        ReserveOutcome::Reserved { price_cents } => price_cents,
        ReserveOutcome::Duplicate { attempt_id, status } => {
            let status = AttemptStatus::from_redis(&status).unwrap_or(AttemptStatus::Queued);
            return Ok(Bought::Retry { attempt_id, status });
        }
        ReserveOutcome::Limit {
            held_attempt,
            held_qty,
            limit,
        } => {
            return Err(BuyError::Limit {
                held_attempt,
                held_qty,
                limit,
            });
        }
        ReserveOutcome::Unknown => return Err(BuyError::NotOnSale),
        ReserveOutcome::NotStarted { starts_ms } => return Err(BuyError::NotStarted { starts_ms }),
        ReserveOutcome::Ended => return Err(BuyError::Ended),
        ReserveOutcome::SoldOut => return Err(BuyError::SoldOut),
        ReserveOutcome::Insufficient { available } => {
            return Err(BuyError::Insufficient { available });
        }
        ReserveOutcome::Held { .. } => {
            return Err(BuyError::Held {
                retry_after_ms: HELD_RETRY_MS,
            });
        }
        ReserveOutcome::Stale => return Err(BuyError::Rebuilding),
    };
    let attempt_id = id.to_string();
    tracing::Span::current().record("attempt_id", attempt_id.as_str());
    let msg = OrderMessage {
        attempt_id: attempt_id.clone(),
        round_id: req.round_id,
        item_id: req.item_id,
        user_id: req.user.clone(),
        qty: req.qty,
        unit_price_cents: price_cents,
        reserved_at_ms: now,
    };
    let start = std::time::Instant::now();
    let published = publisher.publish(&msg).await;
    metrics::histogram!("seckill_publish_confirm_seconds").record(start.elapsed().as_secs_f64());
    let Err(e) = published else {
        return Ok(Bought::Accepted { attempt_id });
    };
    tracing::warn!(error = %e, "order message not confirmed; releasing the reservation");
    match lc
        .sale
        .release(&id, reason::UNAVAILABLE, lc.clock.now_ms(), false)
        .await
    {
        Ok(r) if r == "released" || r == "missing" => Err(BuyError::QueueUnavailable),
        // The writer already claimed it: the message did arrive.
        Ok(_) => Ok(Bought::Accepted { attempt_id }),
        Err(e) => {
            release_later(lc.clone(), id);
            Err(e.into())
        }
    }
}

/// Runs the reserve script, rebuilding the item first when Redis has no
/// counters for it or counters it did not verify.
async fn reserve_verified(
    lc: &Arc<Lifecycle>,
    id: &AttemptId,
    req: &Buy,
    now: i64,
    permit: &mut Option<Effect>,
) -> Result<ReserveOutcome, BuyError> {
    let deadline = Instant::now() + REBUILD_WAIT;
    loop {
        let start = std::time::Instant::now();
        let outcome = lc
            .sale
            .reserve(
                id,
                &req.user,
                req.qty,
                now,
                &req.idempotency_key,
                req.permit.as_ref(),
            )
            .await;
        metrics::histogram!("seckill_reserve_seconds").record(start.elapsed().as_secs_f64());
        let Reserved {
            outcome,
            permit: effect,
        } = match outcome {
            Ok(o) => o,
            Err(e) => {
                // The script may have run and its reply been lost: take
                // back whatever it reserved once Redis answers. What it
                // did to the permit is unknown.
                *permit = None;
                release_later(lc.clone(), id.clone());
                return Err(e.into());
            }
        };
        *permit = effect;
        if !matches!(outcome, ReserveOutcome::Unknown | ReserveOutcome::Stale) {
            return Ok(outcome);
        }
        // Never sell from missing or unverified counters: rebuild first.
        match rebuild::ensure_item(lc, req.round_id, req.item_id).await? {
            Ensured::NotOnSale => return Ok(outcome),
            Ensured::Ready => {}
            Ensured::Busy => {
                // Another node is rebuilding it: wait for its lock to go.
                while lc.sale.item_locked(req.round_id, req.item_id).await? {
                    if Instant::now() >= deadline {
                        return Err(BuyError::Rebuilding);
                    }
                    tokio::time::sleep(REBUILD_STEP).await;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(BuyError::Rebuilding);
        }
    }
}

/// Releases an attempt whose fate the buy could not learn (Redis did not
/// answer), retrying in the background for up to the confirm timeout. The
/// sweep resolves what this does not.
fn release_later(lc: Arc<Lifecycle>, id: AttemptId) {
    tokio::spawn(async move {
        let until = Instant::now()
            + Duration::from_millis(lc.config.rabbitmq.confirm_timeout_ms.max(1_000));
        let mut step = Duration::from_millis(100);
        loop {
            match lc
                .sale
                .release(&id, reason::UNAVAILABLE, lc.clock.now_ms(), false)
                .await
            {
                Ok(r) => {
                    if r == "released" {
                        tracing::info!(attempt_id = %id, "unanswered reservation released");
                    }
                    return;
                }
                Err(e) if Instant::now() >= until => {
                    tracing::warn!(attempt_id = %id, error = %e,
                        "cannot release an unanswered reservation; the sweep will resolve it");
                    return;
                }
                Err(_) => {}
            }
            tokio::time::sleep(step).await;
            step = (step * 2).min(Duration::from_millis(1_000));
        }
    });
}
