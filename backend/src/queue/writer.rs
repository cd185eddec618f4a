//! The order writer: consumes order messages with manual acks and a prefetch
//! window, writes orders in batches, acks only after the commit.
//!
//! Per batch:
//! - A message older than `lifecycle.backlog_threshold_ms` whose attempt is
//!   still `queued` is not turned into a late order: its units are released
//!   and the attempt cancelled with reason `backlog`.
//! - Each attempt is claimed in Redis (`claim.lua`, which stops a late
//!   release from cancelling it; a cancelled attempt is skipped). An
//!   attempt Redis lost is re-reserved from the current counters
//!   (`adopt.lua`), after rebuilding the item from the database if Redis
//!   lost the counters too.
//! - The orders are inserted in one transaction with `ON CONFLICT DO
//!   NOTHING` (a redelivered message finds its order already there), after
//!   a stock guard: the database never holds more live units of an item
//!   than its stock, whatever Redis said. An order refused by the
//!   one-order-per-buyer key is released; one refused by the guard is
//!   cancelled without making its units available (Redis's counters were
//!   wrong), and the item is rebuilt from the database.
//!   The guard locks and bumps the batch's item rows in one statement and
//!   sums an item's live orders only when another writer wrote to the item
//!   since this writer's last batch of it, or the batch would not fit by
//!   what that batch left (see `stock_guard`).
//! - The attempts are marked `ordered`, an expiry message is scheduled per
//!   order, and only then are the messages acked.
//!
//! When a write fails (database or Redis down, a constraint it does not
//! expect), a batch is split to isolate the failing messages, and each one
//! goes to a retry queue with a growing delay; after `writer.max_attempts`
//! writes it is dead-lettered: its units are released, its attempt is
//! cancelled with reason `dead_letter`, and the message is kept in the
//! dead-letter queue for an operator to replay or discard — unless the
//! database shows its order was committed after all (the commit landed,
//! marking it failed): that order is finished instead, never released. A message that
//! is not an order message is rejected straight to the dead-letter queue.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures::future::BoxFuture;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
    types::{AMQPValue, FieldTable},
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseTransaction, EntityTrait, QueryFilter,
    QuerySelect, Statement, TransactionTrait, sea_query::Expr,
};
use tokio_util::sync::CancellationToken;

use super::{
    OrderMessage, Publisher,
    broker::{ConnectError, Subscription},
    topology::Topology,
};
use crate::{
    domain::{
        AttemptId,
        attempt::{reason, stored},
    },
    lifecycle::{
        Lifecycle,
        dead_letters::{failures_of, header_int, headers},
        expiry::{self, ExpiryMessage},
        rebuild,
    },
    store::{
        StoreError,
        entities::{item, order},
        orders,
        sale::AttemptSeed,
    },
};

/// Test seams: code run at points where a crash matters.
#[derive(Clone, Default)]
pub struct WriterHooks {
    /// Runs after a batch's transaction committed and before its acks.
    pub after_commit: Option<Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>>,
}

/// Everything the writer needs; cheap to clone.
#[derive(Clone)]
pub struct OrderWriter {
    pub lc: Arc<Lifecycle>,
    pub topology: Topology,
    /// Confirmed publishes of retries, dead letters and expiry messages.
    pub publisher: Arc<Publisher>,
    pub hooks: WriterHooks,
    /// What the stock guard last learned of each item (PostgreSQL).
    guard_seen: GuardCache,
}

struct Pending {
    delivery: Delivery,
    msg: OrderMessage,
    id: AttemptId,
}

/// What became of one order row of a batch.
enum Fate {
    Written,
    /// Refused by the stock guard.
    OverStock,
}

impl OrderWriter {
    /// A writer on `lc`'s stores and configuration.
    pub fn new(lc: Arc<Lifecycle>, hooks: WriterHooks) -> Self {
        let topology = Topology::from_config(&lc.config);
        let publisher = Arc::new(Publisher::new(lc.config.rabbitmq.clone(), topology.clone()));
        Self {
            lc,
            topology,
            publisher,
            hooks,
            guard_seen: GuardCache::default(),
        }
    }

    /// Consumes until `shutdown`, reconnecting after broker failures (and
    /// after a subscription the broker stopped feeding). The batch in hand
    /// when shutdown comes is committed and acked first.
    pub async fn run(self, shutdown: CancellationToken) {
        let cfg = &self.lc.config;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let orders = self.topology.orders();
            match Subscription::open(
                &cfg.rabbitmq,
                &self.topology,
                orders,
                "order-writer",
                cfg.writer.prefetch,
            )
            .await
            {
                Ok(mut sub) => {
                    tracing::info!(queue = %orders, "order writer consuming");
                    match self.consume(&mut sub, &shutdown).await {
                        Ok(()) => {
                            sub.close().await;
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "order writer lost its channel"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "order writer cannot connect"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn consume(
        &self,
        sub: &mut Subscription,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectError> {
        let cfg = &self.lc.config.writer;
        let wait = Duration::from_millis(cfg.batch_wait_ms);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                d = sub.next() => d?,
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + wait;
            let mut failure = None;
            while batch.len() < cfg.batch_size {
                match sub.next_before(deadline).await {
                    Some(Ok(d)) => batch.push(d),
                    Some(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    None => break,
                }
            }
            self.process(batch).await?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    /// Writes one batch and settles every delivery in it.
    async fn process(&self, batch: Vec<Delivery>) -> Result<(), lapin::Error> {
        let now = self.lc.clock.now_ms();
        let mut pending = Vec::with_capacity(batch.len());
        for delivery in batch {
            let parsed = serde_json::from_slice::<OrderMessage>(&delivery.data)
                .ok()
                .and_then(|m| m.attempt_id.parse::<AttemptId>().ok().map(|id| (m, id)));
            match parsed {
                Some((msg, id)) => pending.push(Pending { delivery, msg, id }),
                None => {
                    tracing::error!(
                        tag = delivery.delivery_tag,
                        "not an order message; dead-lettering it"
                    );
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        let Some(last) = pending.last().map(|p| p.delivery.acker.clone()) else {
            return Ok(());
        };
        metrics::histogram!("seckill_writer_batch_size").record(pending.len() as f64);

        let settled = match self.settle_batch(&pending, now).await {
            Ok(expiries) => {
                if let Some(hook) = &self.hooks.after_commit {
                    hook().await;
                }
                expiry::schedule(&self.publisher, &expiries).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        match settled {
            Ok(()) => {
                last.ack(BasicAckOptions { multiple: true }).await?;
                for p in &pending {
                    metrics::histogram!("seckill_order_lag_seconds")
                        .record((now - p.msg.reserved_at_ms).max(0) as f64 / 1000.0);
                }
                metrics::counter!("seckill_orders_processed_total").increment(pending.len() as u64);
            }
            Err(e) => {
                // The retry or dead-letter queues could not take the
                // messages either: hand the batch back to the broker.
                tracing::warn!(error = %e, batch = pending.len(), "order batch not settled; handing it back");
                tokio::time::sleep(Duration::from_millis(
                    self.lc.config.writer.retry_backoff_ms,
                ))
                .await;
                last.nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Writes what can be written, sends the rest to retry or dead-letter
    /// queues. Returns the expiry messages of the orders written.
    async fn settle_batch(
        &self,
        pending: &[Pending],
        now: i64,
    ) -> Result<Vec<ExpiryMessage>, SettleError> {
        let live = self.fail_fast_backlog(pending, now).await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let jobs: Vec<_> = live.iter().map(|p| (&p.msg, &p.id)).collect();
        match self.write(&jobs, now).await {
            Ok(e) => return Ok(e),
            Err(e) if live.len() == 1 => {
                self.retry_or_dead_letter(live[0], &e, now).await?;
                return Ok(Vec::new());
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = live.len(), "order batch failed; writing its messages one by one");
                metrics::counter!("seckill_writer_failures_total").increment(1);
            }
        }
        let mut expiries = Vec::new();
        for p in live {
            match self.write(&[(&p.msg, &p.id)], now).await {
                Ok(e) => expiries.extend(e),
                Err(e) => self.retry_or_dead_letter(p, &e, now).await?,
            }
        }
        Ok(expiries)
    }

    /// Releases messages past the backlog threshold; returns the others.
    async fn fail_fast_backlog<'a>(
        &self,
        pending: &'a [Pending],
        now: i64,
    ) -> Result<Vec<&'a Pending>, SettleError> {
        let threshold = self.lc.config.lifecycle.backlog_threshold_ms as i64;
        let mut live = Vec::with_capacity(pending.len());
        for p in pending {
            let h = p.delivery.properties.headers().as_ref();
            let since = header_int(h, headers::REPLAYED_AT_MS)
                .unwrap_or(0)
                .max(p.msg.reserved_at_ms);
            if now - since <= threshold {
                live.push(p);
                continue;
            }
            let r = self
                .lc
                .sale
                .release(&p.id, reason::BACKLOG, now, false)
                .await?;
            match r.as_str() {
                "released" => {
                    metrics::counter!("seckill_backlog_released_total").increment(1);
                    tracing::warn!(attempt_id = %p.msg.attempt_id, age_ms = now - since,
                        "order message past the backlog threshold; units released");
                }
                // Already cancelled, or unknown: nothing to write.
                stored::CANCELLED | "missing" => {}
                // Claimed by an earlier delivery: its order may be written;
                // finish it idempotently.
                _ => live.push(p),
            }
        }
        Ok(live)
    }

    /// Sends a message whose write failed to its next retry tier, or to
    /// the dead-letter queue after `writer.max_attempts` writes.
    async fn retry_or_dead_letter(
        &self,
        p: &Pending,
        error: &StoreError,
        now: i64,
    ) -> Result<(), SettleError> {
        let h = p.delivery.properties.headers().as_ref();
        let failures = failures_of(h) + 1;
        let mut out = h.cloned().unwrap_or_default();
        out.insert(
            headers::FAILURES.into(),
            AMQPValue::LongLongInt(failures as i64),
        );
        if failures < self.lc.config.writer.max_attempts {
            let tier = self.topology.retry_for(failures);
            tracing::warn!(attempt_id = %p.msg.attempt_id, failures, %tier, %error, "order not written; retrying later");
            metrics::counter!("seckill_writer_retries_total").increment(1);
            return self.send(&tier, p, out, now).await;
        }
        // Where a message waits while its fate cannot be decided yet.
        let last_tier = self.topology.retry_for(failures);
        // Give up: units back, buyer told, message kept for an operator —
        // unless the order was committed after all (a commit whose marking
        // failed): then it is finished, not dead.
        match orders::find(&self.lc.db, &p.msg.attempt_id).await {
            Ok(Some(o)) => {
                let id = &p.id;
                return match self.lc.sale.mark_ordered(id, &o.id, o.pay_by_ms, now).await {
                    Ok(_) => {
                        tracing::info!(attempt_id = %p.msg.attempt_id, "order was written before its failure; finished");
                        if o.pay_by_ms > now {
                            expiry::schedule(
                                &self.publisher,
                                &[ExpiryMessage {
                                    order_id: o.id.clone(),
                                    pay_by_ms: o.pay_by_ms,
                                }],
                            )
                            .await;
                        }
                        Ok(())
                    }
                    Err(_) => self.send(&last_tier, p, out, now).await,
                };
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(attempt_id = %p.msg.attempt_id, error = %e,
                    "cannot tell whether a failing order was written; keeping it in the last retry tier");
                return self.send(&last_tier, p, out, now).await;
            }
        }
        match self
            .lc
            .sale
            .release(&p.id, reason::DEAD_LETTER, now, true)
            .await
        {
            Ok(r) if r == stored::ORDERED || r == stored::PAID => {
                // Its order was written after all.
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(attempt_id = %p.msg.attempt_id, error = %e,
                    "cannot release a dead letter's units; keeping it in the last retry tier");
                return self.send(&last_tier, p, out, now).await;
            }
        }
        out.insert(
            headers::REASON.into(),
            AMQPValue::LongString("write_failed".into()),
        );
        let mut text = error.to_string();
        text.truncate(500);
        out.insert(headers::ERROR.into(), AMQPValue::LongString(text.into()));
        out.insert(headers::DEAD_AT_MS.into(), AMQPValue::LongLongInt(now));
        tracing::error!(attempt_id = %p.msg.attempt_id, failures, %error, "order dead-lettered; units released");
        metrics::counter!("seckill_dead_letters_total").increment(1);
        self.send(&self.topology.dead(), p, out, now).await
    }

    async fn send(
        &self,
        queue: &str,
        p: &Pending,
        headers: FieldTable,
        now: i64,
    ) -> Result<(), SettleError> {
        self.publisher
            .publish_to(queue, &p.delivery.data, &p.msg.attempt_id, now, headers)
            .await
            .map_err(|e| SettleError(e.to_string()))
    }

    /// Writes order messages that never went through the broker (the
    /// spool's direct hand-off while the broker is away): the same claim,
    /// stock guard, insert and marking as a consumed batch, and the same
    /// backlog rule. Expiry messages are scheduled if the broker takes them;
    /// otherwise the sweep expires those orders. `Ok` once committed.
    pub async fn write_direct(&self, msgs: &[OrderMessage]) -> Result<usize, StoreError> {
        let now = self.lc.clock.now_ms();
        let threshold = self.lc.config.lifecycle.backlog_threshold_ms as i64;
        let mut jobs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let Ok(id) = m.attempt_id.parse::<AttemptId>() else {
                tracing::error!(attempt_id = %m.attempt_id, "spooled message with a malformed attempt id; dropped");
                continue;
            };
            if now - m.reserved_at_ms > threshold {
                let r = self
                    .lc
                    .sale
                    .release(&id, reason::BACKLOG, now, false)
                    .await?;
                if r == "released" {
                    metrics::counter!("seckill_backlog_released_total").increment(1);
                }
                if matches!(r.as_str(), "released" | "missing" | stored::CANCELLED) {
                    continue;
                }
            }
            jobs.push((m, id));
        }
        let refs: Vec<_> = jobs.iter().map(|(m, id)| (*m, id)).collect();
        let expiries = self.write(&refs, now).await?;
        expiry::schedule(&self.publisher, &expiries).await;
        metrics::counter!("seckill_orders_processed_total").increment(refs.len() as u64);
        Ok(refs.len())
    }

    /// Claims the attempts, one Redis call per item, adopting those Redis
    /// lost; the replies are in the order of `pending`.
    async fn claim(
        &self,
        pending: &[(&OrderMessage, &AttemptId)],
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = vec![String::new(); pending.len()];
        let groups = by_item(pending.iter().map(|(_, id)| *id));
        let claimed = futures::future::join_all(groups.iter().map(|idx| {
            let ids: Vec<&AttemptId> = idx.iter().map(|&i| pending[i].1).collect();
            async move { self.lc.sale.claim_many(&ids, now).await }
        }))
        .await;
        for (idx, replies) in groups.iter().zip(claimed) {
            let replies = replies?;
            if replies.len() != idx.len() {
                return Err(StoreError::Protocol("claim: one reply per attempt".into()));
            }
            for (&i, r) in idx.iter().zip(replies) {
                out[i] = r;
            }
        }
        let adopted =
            futures::future::join_all(out.iter().enumerate().filter(|(_, r)| *r == "missing").map(
                |(i, _)| async move { (i, self.adopt(pending[i].0, pending[i].1, now).await) },
            ))
            .await;
        for (i, r) in adopted {
            out[i] = r?;
        }
        Ok(out)
    }

    /// Recreates an attempt Redis lost from its message, then claims it.
    async fn adopt(
        &self,
        msg: &OrderMessage,
        id: &AttemptId,
        now: i64,
    ) -> Result<String, StoreError> {
        let seed = AttemptSeed {
            id,
            user: &msg.user_id,
            qty: msg.qty,
            price_cents: msg.unit_price_cents,
            created_ms: msg.reserved_at_ms,
        };
        let mut r = self.lc.sale.adopt(&seed, now).await?;
        if r == "no_counters" {
            rebuild::ensure_item(&self.lc, id.round_id, id.item_id).await?;
            r = self.lc.sale.adopt(&seed, now).await?;
        }
        tracing::warn!(attempt_id = %msg.attempt_id, outcome = %r, "attempt unknown to redis; adopted from the message");
        Ok(match r.as_str() {
            "adopted" => "claimed".to_owned(),
            "refused" => stored::CANCELLED.to_owned(),
            "no_counters" => {
                return Err(StoreError::Protocol(
                    "item counters missing in redis; rebuild pending".into(),
                ));
            }
            _ => self.lc.sale.claim(id, now).await?,
        })
    }

    async fn write(
        &self,
        pending: &[(&OrderMessage, &AttemptId)],
        now: i64,
    ) -> Result<Vec<ExpiryMessage>, StoreError> {
        let claims = self.claim(pending, now).await?;
        let pay_by = now + self.lc.config.payment_timeout_ms();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for ((msg, _), claim) in pending.iter().zip(claims) {
            if claim == stored::CANCELLED {
                tracing::info!(attempt_id = %msg.attempt_id, "attempt was cancelled; no order");
                continue;
            }
            // The same message twice in one batch (a spooled message and the
            // sweep's republication of it): one row, or the stock guard
            // would count its units twice and refuse the order.
            if !seen.insert(msg.attempt_id.as_str()) {
                continue;
            }
            rows.push(order::Model {
                id: msg.attempt_id.clone(),
                attempt_id: msg.attempt_id.clone(),
                round_id: msg.round_id,
                item_id: msg.item_id,
                user_id: msg.user_id.clone(),
                qty: msg.qty,
                unit_price_cents: msg.unit_price_cents,
                status: order::status::PENDING_PAYMENT.to_owned(),
                reserved_at_ms: msg.reserved_at_ms,
                created_at_ms: now,
                pay_by_ms: pay_by,
                paid_at_ms: None,
                cancelled_at_ms: None,
                cancel_reason: None,
                payment_started_at_ms: None,
                charge_id: None,
                counters_applied: true,
            });
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.lc.db.begin().await?;
        let guard = stock_guard(&txn, &rows, &self.guard_seen).await?;
        let new: Vec<order::Model> = rows
            .iter()
            .filter(|r| {
                !guard.existing.contains_key(&r.id)
                    && matches!(guard.fates.get(&r.id), Some(Fate::Written))
            })
            .cloned()
            .collect();
        orders::insert_ignoring_conflicts(
            &txn,
            new.into_iter().map(order::ActiveModel::from).collect(),
        )
        .await?;
        txn.commit().await?;

        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let written: HashMap<String, i64> = order::Entity::find()
            .select_only()
            .column(order::Column::AttemptId)
            .column(order::Column::PayByMs)
            .filter(order::Column::AttemptId.is_in(ids))
            .into_tuple::<(String, i64)>()
            .all(&self.lc.db)
            .await?
            .into_iter()
            .collect();
        // What the batch added to its items' live units.
        guard.remember(
            &self.guard_seen,
            rows.iter()
                .filter(|r| written.contains_key(&r.id) && !guard.existing.contains_key(&r.id)),
        );
        // The written orders: marked in Redis, one call per item.
        let mut done: Vec<(AttemptId, &str, i64)> = Vec::new();
        let mut refused: Vec<(&str, AttemptId)> = Vec::new();
        for r in &rows {
            let aid = r.id.as_str();
            let id: AttemptId = aid.parse().map_err(|_| StoreError::Protocol(aid.into()))?;
            match written.get(aid) {
                Some(&pay_by_ms) => done.push((id, aid, pay_by_ms)),
                None => refused.push((aid, id)),
            }
        }
        let groups = by_item(done.iter().map(|(id, _, _)| id));
        let marked = futures::future::join_all(groups.iter().map(|idx| {
            let marks: Vec<(&AttemptId, &str, i64)> = idx
                .iter()
                .map(|&i| (&done[i].0, done[i].1, done[i].2))
                .collect();
            async move { self.lc.sale.mark_ordered_many(&marks, now).await }
        }))
        .await;
        for m in marked {
            m?;
        }
        let fates = &guard.fates;
        futures::future::join_all(refused.iter().map(|(aid, id)| async move {
            if let Some(Fate::OverStock) = fates.get(*aid) {
                // Redis reserved a unit the database says is taken: its
                // counters are wrong. Never hand that unit out again;
                // rebuild the item from the database instead.
                tracing::error!(attempt_id = %aid, "order refused: the item's stock is all ordered; rebuilding the item");
                metrics::counter!("seckill_orders_refused_total", "reason" => "stock").increment(1);
                self.lc.sale.release_distrusted(id, reason::SOLD_OUT, now).await?;
                if let Err(e) = rebuild::ensure_item(&self.lc, id.round_id, id.item_id).await {
                    tracing::warn!(error = %e, "item not rebuilt now; its next reservation rebuilds it");
                }
            } else {
                // The buyer already has a different order for this item.
                tracing::warn!(attempt_id = %aid, "order refused as a second order of the buyer; releasing");
                self.lc.sale.release(id, reason::DUPLICATE_ORDER, now, true).await?;
            }
            Ok::<_, StoreError>(())
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
        let expiries = done
            .iter()
            .filter(|(_, _, pay_by_ms)| *pay_by_ms > now)
            .map(|(_, order_id, pay_by_ms)| ExpiryMessage {
                order_id: (*order_id).to_owned(),
                pay_by_ms: *pay_by_ms,
            })
            .collect();
        Ok(expiries)
    }
}

/// Indices of `ids` grouped by item, in first-seen order (one Redis call
/// per group: an item's keys share a hash tag).
fn by_item<'a>(ids: impl Iterator<Item = &'a AttemptId>) -> Vec<Vec<usize>> {
    let mut groups: Vec<((i64, i64), Vec<usize>)> = Vec::new();
    for (i, id) in ids.enumerate() {
        let item = (id.round_id, id.item_id);
        match groups.iter_mut().find(|(k, _)| *k == item) {
            Some((_, g)) => g.push(i),
            None => groups.push((item, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// A batch that could be neither written nor handed on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SettleError(String);

impl From<StoreError> for SettleError {
    fn from(e: StoreError) -> Self {
        Self(e.to_string())
    }
}

/// What the stock guard learned of one item in a committed batch: the
/// version (`xmin`) its row got from that batch's transaction, and the live
/// units of the item then.
#[derive(Clone, Copy, Debug)]
struct Seen {
    version: u64,
    used: i64,
}

/// Items the guard has seen, shared by the writer's clones.
type GuardCache = Arc<std::sync::Mutex<HashMap<(i64, i64), Seen>>>;

/// Items remembered at most; past it the cache starts over.
const GUARD_CACHE_ITEMS: usize = 1024;

/// The stock guard's decision for a batch.
struct Guard {
    fates: HashMap<String, Fate>,
    /// Orders of the batch already in the database, with their pay-by.
    existing: HashMap<String, i64>,
    /// Items locked and bumped (PostgreSQL): their new version and the
    /// live units before the batch.
    locked: Vec<((i64, i64), u64, i64)>,
}

impl Guard {
    /// After the commit: the items' live units are now the units counted
    /// plus those `inserted`.
    fn remember<'a>(&self, cache: &GuardCache, inserted: impl Iterator<Item = &'a order::Model>) {
        let mut added: HashMap<(i64, i64), i64> = HashMap::new();
        for r in inserted {
            *added.entry((r.round_id, r.item_id)).or_default() += r.qty;
        }
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= GUARD_CACHE_ITEMS {
            c.clear();
        }
        for (key, version, used) in &self.locked {
            let used = used + added.get(key).copied().unwrap_or(0);
            c.insert(
                *key,
                Seen {
                    version: *version,
                    used,
                },
            );
        }
    }
}

/// Decides, inside the batch's transaction, which new rows fit in their
/// item's stock: live orders (not cancelled) of an item never hold more
/// units than it has. Rows whose order already exists (redeliveries) are
/// written (a no-op).
///
/// On PostgreSQL one statement locks the batch's item rows (in id order,
/// so two writers cannot both fill the last units, nor deadlock) and bumps
/// them (`SET stock = stock`), which gives each a new `xmin`. When an
/// item's previous `xmin` is the one this writer's last batch of it gave
/// it, no other writer has added orders since (every writer bumps the
/// item it writes), so the live units are at most what that batch left —
/// orders are only ever cancelled meanwhile — and the guard counts from
/// there; it sums the item's orders only when that does not hold, or when
/// the batch would not fit by that count.
async fn stock_guard(
    txn: &DatabaseTransaction,
    rows: &[order::Model],
    cache: &GuardCache,
) -> Result<Guard, StoreError> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let existing: HashMap<String, i64> = order::Entity::find()
        .select_only()
        .column(order::Column::Id)
        .column(order::Column::PayByMs)
        .filter(order::Column::Id.is_in(ids))
        .into_tuple::<(String, i64)>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let mut fates = HashMap::new();
    let mut by_item: Vec<((i64, i64), Vec<&order::Model>)> = Vec::new();
    for r in rows {
        if existing.contains_key(&r.id) {
            fates.insert(r.id.clone(), Fate::Written);
            continue;
        }
        let key = (r.round_id, r.item_id);
        match by_item.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => by_item.push((key, vec![r])),
        }
    }
    let mut locked = Vec::new();
    let pg = txn.get_database_backend() == DatabaseBackend::Postgres;
    // (stock, live units known to be no fewer, whether that is exact)
    let mut counts: HashMap<(i64, i64), (i64, Option<i64>)> = HashMap::new();
    if pg && !by_item.is_empty() {
        let seen = cache.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (key, stock, old, new) in lock_and_bump(txn, by_item.iter().map(|(k, _)| *k)).await? {
            let cached = seen.get(&key).filter(|s| s.version == old).map(|s| s.used);
            counts.insert(key, (stock, cached));
            locked.push((key, new, 0));
        }
    }
    for (key, new) in &by_item {
        let (round_id, item_id) = *key;
        let units: i64 = new.iter().map(|r| r.qty).sum();
        let (stock, cached) = match counts.get(key) {
            Some(c) => *c,
            None if pg => (0, None),
            None => {
                let stock = item::Entity::find_by_id(item_id)
                    .filter(item::Column::RoundId.eq(round_id))
                    .one(txn)
                    .await?
                    .map(|i| i.stock)
                    .unwrap_or(0);
                (stock, None)
            }
        };
        let used = match cached {
            Some(used) if units <= stock - used => used,
            _ => live_units(txn, round_id, item_id).await?,
        };
        if let Some(l) = locked.iter_mut().find(|(k, _, _)| k == key) {
            l.2 = used;
        }
        let mut room = stock - used;
        for r in new {
            let fate = if r.qty <= room {
                room -= r.qty;
                Fate::Written
            } else {
                Fate::OverStock
            };
            fates.insert(r.id.clone(), fate);
        }
    }
    Ok(Guard {
        fates,
        existing,
        locked,
    })
}

/// Locks the items' rows in id order and gives each a new version; returns
/// per item found its stock, its version before and its version now.
async fn lock_and_bump(
    txn: &DatabaseTransaction,
    items: impl Iterator<Item = (i64, i64)>,
) -> Result<Vec<((i64, i64), i64, u64, u64)>, StoreError> {
    let mut pairs = Vec::new();
    let mut values: Vec<sea_orm::Value> = Vec::new();
    for (round_id, item_id) in items {
        pairs.push(format!("(${}, ${})", values.len() + 1, values.len() + 2));
        values.push(round_id.into());
        values.push(item_id.into());
    }
    let sql = format!(
        "WITH old AS (SELECT id, xmin::text::bigint AS v FROM items \
         WHERE (round_id, id) IN ({}) ORDER BY id FOR UPDATE) \
         UPDATE items i SET stock = i.stock FROM old WHERE i.id = old.id \
         RETURNING i.round_id, i.id, i.stock, old.v, i.xmin::text::bigint AS nv",
        pairs.join(", ")
    );
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get("", "round_id")?, r.try_get("", "id")?),
                r.try_get("", "stock")?,
                r.try_get::<i64>("", "v")? as u64,
                r.try_get::<i64>("", "nv")? as u64,
            ))
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()
        .map_err(Into::into)
}

/// The units of an item's live (not cancelled) orders.
async fn live_units(
    txn: &DatabaseTransaction,
    round_id: i64,
    item_id: i64,
) -> Result<i64, StoreError> {
    Ok(order::Entity::find()
        .select_only()
        .column_as(Expr::cust("CAST(COALESCE(SUM(qty), 0) AS BIGINT)"), "used")
        .filter(order::Column::RoundId.eq(round_id))
        .filter(order::Column::ItemId.eq(item_id))
        .filter(order::Column::Status.ne(order::status::CANCELLED))
        .into_tuple::<i64>()
        .one(txn)
        .await?
        .unwrap_or(0))
}
