//! The buy: reserve units in Redis, publish the order message, and accept
//! only after the broker's confirm or a durable local record. What the
//! buyer is told must match what happened to the units:
//!
//! - `Accepted` only after the order message was confirmed, or spooled on
//!   local disk (or the order writer already claimed the attempt, so the
//!   message did arrive);
//! - `Journaled` only after the buy itself is on local disk (nothing is
//!   reserved yet: the replay decides it);
//! - every other outcome leaves nothing reserved — a publish neither
//!   confirmed nor spooled is released; a reserve whose reply was lost and
//!   that could not be journaled is released in the background once Redis
//!   answers again.
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
//! When Redis or the broker is away the buy keeps what it can make durable
//! on local disk ([`crate::durable`]) instead of refusing:
//!
//! - Redis unreachable (a reserve got no answer, or Redis is known to be
//!   away): the buy is checked against the database (item on sale, window,
//!   per-user limit), journaled and answered `Journaled` (`202
//!   processing`); [`super::replay`] runs it through the reserve script
//!   later, in arrival order. The journal is bounded per item (by default
//!   the item's stock). A buyer whose journaled buy still waits gets it
//!   back (`processing`). Once Redis answers, a later buy of an item with
//!   journaled buys still waiting waits for their replay (up to a second,
//!   then `Held`): they were told 202 first, so they take their units
//!   first.
//! - The order message not confirmed: it is spooled and the buy answered
//!   `Accepted`; [`super::spool_drain`] delivers it.
//! - Neither can be written (disk full, directory gone, fsync failed): the
//!   buy fails closed — nothing reserved (a reservation is released), `503`.
//!
//! A buy forwarded by an edge carries the edge's permits for its units
//! ([`EdgePermit`]); the reserve script takes them out of the edge's lease
//! in the same step, and the buy reports what it did to them ([`Effect`])
//! so the edge can settle its count. `None` means the buy cannot tell (the
//! reserve's reply was lost).
//!
//! Every buy answer is also counted in process ([`Outcomes`], on the
//! [`Lifecycle`], by the route that counts `seckill_buy_total`) for the
//! operator's live dashboard.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    Lifecycle,
    rebuild::{self, Ensured},
};
use seckill_proto::permit::{EdgePermit, Effect};

use crate::{
    domain::{AttemptId, AttemptStatus, RoundStatus, attempt::reason},
    durable::{Durable, DurableError, JournalEntry, Spool, journal::Appended},
    queue::{OrderMessage, PublishError, Publisher},
    store::{
        StoreError, rounds,
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
    /// Journaled while Redis is away: nothing reserved yet (`processing`).
    Journaled { attempt_id: String },
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
    #[error("the journal holds as many buys for the item as it may")]
    JournalFull,
    #[error("the buy could not be made durable: {0}")]
    NotDurable(String),
    /// The reserve call got no answer: the script may or may not have run.
    #[error("no answer from redis: {0}")]
    Unanswered(StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a buy checks without Redis before journaling it.
#[derive(Clone, Copy, Debug)]
pub struct ItemFacts {
    pub stock: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    /// The round's ticket challenge difficulty (0: none).
    pub pow_difficulty: i64,
}

/// Runs one buy to its end on a task of its own.
pub async fn buy(
    lc: Arc<Lifecycle>,
    publisher: Arc<Publisher>,
    durable: Durable,
    req: Buy,
) -> BuyResult {
    let task = tokio::spawn(async move {
        let mut permit = None;
        let outcome = run(&lc, &publisher, &durable, &req, &mut permit).await;
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

/// How many buys of this process ended which way, since it started: what
/// the operator's dashboard turns into outcomes per second. (The metrics
/// recorder cannot be read back in process, and the dashboard must not
/// depend on a scrape.)
#[derive(Debug, Default)]
pub struct Outcomes {
    reserved: AtomicU64,
    sold_out: AtomicU64,
    rate_limited: AtomicU64,
    over_limit: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

/// A reading of [`Outcomes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutcomeCounts {
    /// Accepted or journaled: units held for the buyer.
    pub reserved: u64,
    /// Nothing (or not enough) left.
    pub sold_out: u64,
    /// Every free unit held for buyers on their way: asked to retry.
    pub rate_limited: u64,
    /// Over the per-user limit, or holding another attempt.
    pub over_limit: u64,
    /// A store, the queue or the local disk failed: nothing held.
    pub unavailable: u64,
    /// Anything else: not on sale, not started, ended, a repeated
    /// attempt, a refused request.
    pub other: u64,
}

impl Outcomes {
    /// Counts one buy answer by its `seckill_buy_total` outcome label (the
    /// answer's error code, or `reserved` / `journaled` / `duplicate`).
    pub fn record(&self, outcome: &str) {
        use seckill_proto::errors as e;
        let counter = match outcome {
            "reserved" | "journaled" => &self.reserved,
            e::SOLD_OUT => &self.sold_out,
            e::RATE_LIMITED => &self.rate_limited,
            e::LIMIT_EXCEEDED => &self.over_limit,
            e::UNAVAILABLE => &self.unavailable,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> OutcomeCounts {
        OutcomeCounts {
            reserved: self.reserved.load(Ordering::Relaxed),
            sold_out: self.sold_out.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            over_limit: self.over_limit.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

impl OutcomeCounts {
    /// What changed since `earlier`.
    pub fn since(&self, earlier: &OutcomeCounts) -> OutcomeCounts {
        OutcomeCounts {
            reserved: self.reserved.saturating_sub(earlier.reserved),
            sold_out: self.sold_out.saturating_sub(earlier.sold_out),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
            over_limit: self.over_limit.saturating_sub(earlier.over_limit),
            unavailable: self.unavailable.saturating_sub(earlier.unavailable),
            other: self.other.saturating_sub(earlier.other),
        }
    }
}

async fn run(
    lc: &Arc<Lifecycle>,
    publisher: &Publisher,
    durable: &Durable,
    req: &Buy,
    permit: &mut Option<Effect>,
) -> Result<Bought, BuyError> {
    let now = lc.clock.now_ms();
    let id = AttemptId::new(req.round_id, req.item_id, now);
    if durable.journal.active() {
        // The reserve does not run: the edge's lease is untouched. A buy
        // journaled is answered `void` all the same, so the edge does not
        // forward another buy on these permits while Redis is away (each
        // would be journaled too, past what the node holds); it renews its
        // lease once Redis answers, and the remainder returns to the pool.
        let bought = journal_buy(lc, durable, &id, req, now).await;
        *permit = Some(match bought {
            Ok(Bought::Journaled { .. }) => Effect::Void,
            _ => Effect::Kept,
        });
        return bought;
    }
    if let Some(attempt_id) = durable
        .journal
        .buyer_entry(req.round_id, req.item_id, &req.user)
    {
        // The buyer's journaled buy is still waiting for its replay.
        *permit = Some(Effect::Kept);
        return Ok(Bought::Retry {
            attempt_id,
            status: AttemptStatus::Processing,
        });
    }
    if !journal_drained(durable, req.round_id, req.item_id).await {
        // Buys journaled while Redis was away were told 202 first: they
        // take their units before any later buy of the item, or a later
        // buy could sell what they were promised. The edge keeps its
        // permits (nothing ran); the buyer retries shortly.
        *permit = Some(Effect::Kept);
        return Err(BuyError::Held {
            retry_after_ms: JOURNAL_DRAIN_RETRY_MS,
        });
    }
    let outcome = match reserve_verified(lc, &id, req, now, permit).await {
        Ok(o) => o,
        Err(BuyError::Unanswered(e)) if e.redis_unreachable() => {
            durable.journal.mark_unreachable();
            // The script may have run under this id; if so the replay finds
            // the attempt (a duplicate of the same id) and queues its order,
            // so there is nothing to release — unless the buy is not
            // journaled under this id.
            let journaled = journal_buy(lc, durable, &id, req, now).await;
            if !matches!(&journaled, Ok(Bought::Journaled { .. })) {
                release_later(lc.clone(), id);
            }
            return journaled;
        }
        Err(BuyError::Unanswered(e)) => {
            // Take back whatever the script reserved once Redis answers.
            release_later(lc.clone(), id);
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    let price_cents = match outcome {
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
    let Err(e) = enqueue(publisher, &durable.spool, &msg, now).await else {
        return Ok(Bought::Accepted { attempt_id });
    };
    tracing::error!(error = %e, "order message neither confirmed nor spooled; releasing the reservation");
    match lc
        .sale
        .release(&id, reason::UNAVAILABLE, lc.clock.now_ms(), false)
        .await
    {
        Ok(r) if r == "released" || r == "missing" => Err(match e {
            NotQueued::Spool(DurableError::Full { .. }, _) => BuyError::QueueUnavailable,
            NotQueued::Spool(d, _) => BuyError::NotDurable(d.to_string()),
        }),
        // The writer already claimed it: the message did arrive.
        Ok(_) => Ok(Bought::Accepted { attempt_id }),
        Err(e) => {
            release_later(lc.clone(), id);
            Err(e.into())
        }
    }
}

/// Why an order message is neither confirmed nor spooled.
#[derive(Debug, thiserror::Error)]
pub enum NotQueued {
    #[error("not confirmed ({1}) and not spooled: {0}")]
    Spool(DurableError, PublishError),
}

/// How an order message was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    Confirmed,
    Spooled,
}

/// Publishes an order message with confirms; spools it (fsync'd) when the
/// broker does not confirm.
pub async fn enqueue(
    publisher: &Publisher,
    spool: &Spool,
    msg: &OrderMessage,
    now_ms: i64,
) -> Result<Queued, NotQueued> {
    let start = std::time::Instant::now();
    let published = publisher.publish(msg).await;
    metrics::histogram!("seckill_publish_confirm_seconds").record(start.elapsed().as_secs_f64());
    let Err(e) = published else {
        return Ok(Queued::Confirmed);
    };
    match spool.append(msg, now_ms).await {
        Ok(()) => {
            tracing::info!(attempt_id = %msg.attempt_id, error = %e, "order message not confirmed; spooled");
            Ok(Queued::Spooled)
        }
        Err(d) => Err(NotQueued::Spool(d, e)),
    }
}

/// Journals a buy that cannot reach Redis, after checking what the
/// database knows of the item (on sale, window, per-user limit).
/// How long a buy waits for the journaled buys of its item to be replayed
/// before it is answered `Held`.
const JOURNAL_DRAIN_WAIT: Duration = Duration::from_millis(1_000);
const JOURNAL_DRAIN_RETRY_MS: u64 = 250;

/// Whether no journaled buy of the item is waiting, or none is once the
/// replay got to them within [`JOURNAL_DRAIN_WAIT`].
async fn journal_drained(durable: &Durable, round_id: i64, item_id: i64) -> bool {
    let deadline = tokio::time::Instant::now() + JOURNAL_DRAIN_WAIT;
    while durable.journal.waiting_for_item(round_id, item_id) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // The replay removes entries as it decides them (it is woken by
        // appends, not removals): look again shortly.
        tokio::time::sleep(REBUILD_STEP).await;
    }
    true
}

async fn journal_buy(
    lc: &Arc<Lifecycle>,
    durable: &Durable,
    id: &AttemptId,
    req: &Buy,
    now: i64,
) -> Result<Bought, BuyError> {
    let facts = item_facts(lc, req.round_id, req.item_id)
        .await?
        .ok_or(BuyError::NotOnSale)?;
    if now < facts.starts_ms {
        return Err(BuyError::NotStarted {
            starts_ms: facts.starts_ms,
        });
    }
    if now >= facts.ends_ms {
        return Err(BuyError::Ended);
    }
    if req.qty > facts.per_user_limit {
        return Err(BuyError::Limit {
            held_attempt: None,
            held_qty: 0,
            limit: facts.per_user_limit,
        });
    }
    let bound = lc
        .config
        .durability
        .journal_bound
        .unwrap_or(facts.stock.max(1) as usize);
    let attempt_id = id.to_string();
    let entry = JournalEntry {
        attempt_id: attempt_id.clone(),
        round_id: req.round_id,
        item_id: req.item_id,
        user: req.user.clone(),
        qty: req.qty,
        idempotency_key: req.idempotency_key.clone(),
        arrived_ms: now,
    };
    match durable.journal.append(&entry, bound).await {
        Ok(Appended::New) => {
            tracing::Span::current().record("attempt_id", attempt_id.as_str());
            Ok(Bought::Journaled { attempt_id })
        }
        Ok(Appended::Existing { attempt_id, .. }) => Ok(Bought::Retry {
            attempt_id,
            status: AttemptStatus::Processing,
        }),
        Err(DurableError::Full { bound, .. }) => {
            tracing::warn!(bound, "journal full for the item; refusing the buy");
            Err(BuyError::JournalFull)
        }
        Err(e) => {
            tracing::error!(error = %e, "buy not journaled; refusing it");
            Err(BuyError::NotDurable(e.to_string()))
        }
    }
}

/// An item's stock, window and limit from the database (cached briefly).
pub(crate) async fn item_facts(
    lc: &Lifecycle,
    round_id: i64,
    item_id: i64,
) -> Result<Option<ItemFacts>, StoreError> {
    if let Some(f) = lc.item_facts.get(&(round_id, item_id)).await {
        return Ok(f);
    }
    let facts = rounds::get(&lc.db, round_id).await?.and_then(|r| {
        if r.round.status != RoundStatus::Approved.as_str() {
            return None;
        }
        r.items.iter().find(|i| i.id == item_id).map(|i| ItemFacts {
            stock: i.stock,
            starts_ms: r.round.starts_at_ms,
            ends_ms: r.round.ends_at_ms,
            per_user_limit: i.per_user_limit,
            pow_difficulty: r.round.pow_difficulty,
        })
    });
    lc.item_facts.insert((round_id, item_id), facts).await;
    Ok(facts)
}

/// Runs the reserve script, rebuilding the item first when Redis has no
/// counters for it or counters it did not verify. A reserve call that got
/// no answer is [`BuyError::Unanswered`]: the caller decides what to do
/// with a reservation that may exist.
pub(crate) async fn reserve_verified(
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
                // The script may have run and its reply been lost. What it
                // did to the permit is unknown.
                *permit = None;
                return Err(BuyError::Unanswered(e));
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
