//! Replays the buy journal ([`crate::durable::journal`]) through the
//! reserve script once Redis answers again, in arrival order.
//!
//! Each entry runs the reserve under the attempt id its buyer was given,
//! without an edge permit (the buy's permit went back to its edge), and
//! then follows the normal path:
//!
//! - reserved → its order message is confirmed or spooled, then the entry
//!   is removed (the buyer's poll shows `queued`, then `ordered`);
//! - the same attempt found (the buy's own reserve had run, its reply lost)
//!   → its order message is queued if it still is `queued`;
//! - refused (sold out, ended, over the limit, another attempt held) → the
//!   refusal is recorded in Redis for the buyer's poll (`cancelled` with the
//!   reason), then the entry is removed;
//! - `held` (free units leased to edges), a rebuild in progress, or Redis
//!   failing again → the entry stays, and so do the later entries of the
//!   same item, so arrival order holds; other items go on.
//!
//! Items whose counters Redis lost or did not verify are rebuilt from the
//! database before anything is replayed on them (the buy path's reserve
//! does that).

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{
    Lifecycle,
    buy::{self, Buy, BuyError},
};
use crate::{
    domain::{AttemptId, attempt::reason, attempt::stored},
    durable::{Durable, JournalEntry},
    queue::{OrderMessage, Publisher},
    store::sale::ReserveOutcome,
};

const IDLE: Duration = Duration::from_millis(1_000);
const PROBE: Duration = Duration::from_millis(100);
const RETRY: Duration = Duration::from_millis(250);

/// What became of one entry.
enum Step {
    /// Decided; the label is the outcome for the metrics.
    Done(&'static str),
    /// Not now; the item's later entries wait too.
    Later,
    /// Redis is not answering: stop the pass.
    Unreachable,
}

/// The outcome of a replay pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pass {
    pub decided: usize,
    pub waiting: usize,
    pub redis_unreachable: bool,
}

/// Replays until `shutdown`: waits for entries, probes Redis while it is
/// away, replays once it answers.
pub async fn run(
    lc: Arc<Lifecycle>,
    publisher: Arc<Publisher>,
    durable: Durable,
    shutdown: CancellationToken,
) {
    let journal = &durable.journal;
    loop {
        journal.gauges();
        if !journal.active() && journal.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = journal.changed() => {}
                _ = tokio::time::sleep(IDLE) => {}
            }
            continue;
        }
        let pause = match lc.sale.ping().await {
            Err(_) => PROBE,
            Ok(()) => {
                journal.mark_reachable();
                let p = pass(&lc, &publisher, &durable).await;
                if p.decided > 0 && p.waiting == 0 {
                    continue;
                }
                if p.redis_unreachable { PROBE } else { RETRY }
            }
        };
        if journal.is_empty() && !journal.redis_unreachable() {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One pass over the journal in arrival order: the items one after the
/// other each, different items side by side.
pub async fn pass(lc: &Arc<Lifecycle>, publisher: &Publisher, durable: &Durable) -> Pass {
    let mut by_item: Vec<((i64, i64), Vec<JournalEntry>)> = Vec::new();
    for e in durable.journal.entries() {
        let item = (e.round_id, e.item_id);
        match by_item.iter_mut().find(|(k, _)| *k == item) {
            Some((_, v)) => v.push(e),
            None => by_item.push((item, vec![e])),
        }
    }
    let passes = futures::future::join_all(
        by_item
            .into_iter()
            .map(|(_, entries)| item_pass(lc, publisher, durable, entries)),
    )
    .await;
    let mut out = Pass::default();
    for p in passes {
        out.decided += p.decided;
        out.waiting += p.waiting;
        out.redis_unreachable |= p.redis_unreachable;
    }
    if out.redis_unreachable {
        durable.journal.mark_unreachable();
    }
    out
}

/// The entries of one item, in arrival order, until one must wait.
async fn item_pass(
    lc: &Arc<Lifecycle>,
    publisher: &Publisher,
    durable: &Durable,
    entries: Vec<JournalEntry>,
) -> Pass {
    let mut out = Pass::default();
    let total = entries.len();
    for e in entries {
        match replay_one(lc, publisher, durable, &e).await {
            Step::Done(outcome) => {
                metrics::counter!("seckill_journal_replayed_total", "outcome" => outcome)
                    .increment(1);
                if let Err(err) = durable.journal.remove(&e.attempt_id).await {
                    // Replayed again later: the reserve then finds the
                    // same attempt, or the recorded refusal stands.
                    tracing::error!(attempt_id = %e.attempt_id, error = %err, "journal entry decided but not removed");
                    break;
                }
                tracing::info!(attempt_id = %e.attempt_id, outcome, "journaled buy replayed");
                out.decided += 1;
            }
            Step::Later => break,
            Step::Unreachable => {
                out.redis_unreachable = true;
                break;
            }
        }
    }
    out.waiting = total - out.decided;
    out
}

#[tracing::instrument(name = "replay", skip_all, fields(attempt_id = %e.attempt_id, round_id = e.round_id, item_id = e.item_id))]
async fn replay_one(
    lc: &Arc<Lifecycle>,
    publisher: &Publisher,
    durable: &Durable,
    e: &JournalEntry,
) -> Step {
    let Ok(id) = e.attempt_id.parse::<AttemptId>() else {
        tracing::error!("journal entry with a malformed attempt id; dropped");
        return Step::Done("malformed");
    };
    let req = Buy {
        round_id: e.round_id,
        item_id: e.item_id,
        user: e.user.clone(),
        qty: e.qty,
        idempotency_key: e.idempotency_key.clone(),
        permit: None,
    };
    let now = lc.clock.now_ms();
    let mut permit = None;
    let outcome = match buy::reserve_verified(lc, &id, &req, now, &mut permit).await {
        Ok(o) => o,
        Err(BuyError::Unanswered(err) | BuyError::Store(err)) if err.redis_unreachable() => {
            return Step::Unreachable;
        }
        Err(err) => {
            tracing::warn!(error = %err, "journaled buy not replayed yet");
            return Step::Later;
        }
    };
    let idr = &id;
    let refuse = |why: &'static str| async move {
        match lc
            .sale
            .record_journal_refusal(idr, &e.user, e.qty, why, now)
            .await
        {
            Ok(()) => Step::Done(why),
            Err(err) if err.redis_unreachable() => Step::Unreachable,
            Err(_) => Step::Later,
        }
    };
    match outcome {
        ReserveOutcome::Reserved { price_cents } => {
            queue(
                publisher,
                durable,
                &e.attempt_id,
                &req,
                price_cents,
                now,
                now,
            )
            .await
        }
        ReserveOutcome::Duplicate { attempt_id, status } if attempt_id == e.attempt_id => {
            if status != stored::QUEUED {
                return Step::Done("found");
            }
            match lc.sale.attempt(&id).await {
                Ok(Some(rec)) => {
                    queue(
                        publisher,
                        durable,
                        &e.attempt_id,
                        &req,
                        rec.price_cents,
                        rec.created_ms,
                        now,
                    )
                    .await
                }
                Ok(None) => Step::Later,
                Err(err) if err.redis_unreachable() => Step::Unreachable,
                Err(_) => Step::Later,
            }
        }
        ReserveOutcome::Duplicate { .. } => refuse(reason::ALREADY_HELD).await,
        ReserveOutcome::Limit { .. } => refuse(reason::LIMIT_EXCEEDED).await,
        ReserveOutcome::SoldOut | ReserveOutcome::Insufficient { .. } => {
            refuse(reason::SOLD_OUT).await
        }
        ReserveOutcome::Ended => refuse(reason::ENDED).await,
        ReserveOutcome::Unknown => refuse(reason::NOT_ON_SALE).await,
        ReserveOutcome::NotStarted { .. } | ReserveOutcome::Stale | ReserveOutcome::Held { .. } => {
            Step::Later
        }
    }
}

/// Queues the order message of a replayed reservation; when neither the
/// broker nor the spool takes it, the entry stays (the reservation is kept
/// and found again by the next pass).
async fn queue(
    publisher: &Publisher,
    durable: &Durable,
    attempt_id: &str,
    req: &Buy,
    price_cents: i64,
    reserved_at_ms: i64,
    now: i64,
) -> Step {
    let msg = OrderMessage {
        attempt_id: attempt_id.to_owned(),
        round_id: req.round_id,
        item_id: req.item_id,
        user_id: req.user.clone(),
        qty: req.qty,
        unit_price_cents: price_cents,
        reserved_at_ms,
    };
    match buy::enqueue(publisher, &durable.spool, &msg, now).await {
        Ok(_) => Step::Done("reserved"),
        Err(err) => {
            tracing::error!(error = %err, "replayed reservation not queued yet; kept in the journal");
            Step::Later
        }
    }
}
