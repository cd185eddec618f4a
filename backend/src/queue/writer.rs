//! The order writer: consumes order messages with manual acks and a prefetch
//! window, writes orders in batches, acks only after the commit.
//!
//! Per batch: each attempt is claimed in Redis (`claim.lua`, which stops a
//! late release from cancelling it; a cancelled attempt is skipped), the
//! orders are inserted in one transaction with `ON CONFLICT DO NOTHING` (a
//! redelivered message finds its order already there), the attempts are
//! marked `ordered`, and only then are the messages acked. An attempt whose
//! order was refused because the buyer already has another order for the
//! item is released. A message that is not an order message is rejected to
//! the dead-letter queue. When Redis or the database fails, the batch is
//! handed back to the broker after a pause; the queue's delivery limit moves
//! a message that keeps failing to the dead-letter queue, so nothing loops
//! forever.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture};
use lapin::{
    Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::{FieldTable, ShortString},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set, TransactionTrait};
use tokio_util::sync::CancellationToken;

use super::{OrderMessage, topology};
use crate::{
    clock::Clock,
    config::{Config, RabbitConfig, WriterConfig},
    domain::AttemptId,
    store::{SaleStore, StoreError, entities::order, orders},
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
    pub writer: WriterConfig,
    pub rabbit: RabbitConfig,
    pub sale: SaleStore,
    pub db: DatabaseConnection,
    pub clock: Arc<dyn Clock>,
    pub payment_timeout_ms: i64,
    pub hooks: WriterHooks,
}

struct Pending {
    delivery: Delivery,
    msg: OrderMessage,
    id: AttemptId,
}

impl OrderWriter {
    /// A writer configured from `config`'s writer, RabbitMQ and sale sections.
    pub fn new(
        config: &Config,
        sale: SaleStore,
        db: DatabaseConnection,
        clock: Arc<dyn Clock>,
        hooks: WriterHooks,
    ) -> Self {
        Self {
            writer: config.writer.clone(),
            rabbit: config.rabbitmq.clone(),
            sale,
            db,
            clock,
            payment_timeout_ms: (config.sale.payment_timeout_secs * 1000) as i64,
            hooks,
        }
    }

    /// Consumes until `shutdown`, reconnecting after broker failures. The
    /// batch in hand when shutdown comes is committed and acked first.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.connect().await {
                Ok((conn, consumer)) => {
                    tracing::info!(queue = %self.rabbit.queue, "order writer consuming");
                    match self.consume(consumer, &shutdown).await {
                        Ok(()) => {
                            let _ = conn.close(200, ShortString::from("shutdown")).await;
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

    async fn connect(&self) -> Result<(Connection, Consumer), lapin::Error> {
        let conn = Connection::connect(&self.rabbit.url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        topology::declare(&channel, &self.rabbit).await?;
        channel
            .basic_qos(self.writer.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                ShortString::from(self.rabbit.queue.clone()),
                ShortString::from("order-writer"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((conn, consumer))
    }

    async fn consume(
        &self,
        mut consumer: Consumer,
        shutdown: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let wait = Duration::from_millis(self.writer.batch_wait_ms);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                d = consumer.next() => d,
            };
            let first = match first {
                Some(d) => d?,
                None => {
                    return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "consumer cancelled",
                    )));
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + wait;
            let mut failure = None;
            while batch.len() < self.writer.batch_size {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(Ok(d))) => batch.push(d),
                    Ok(Some(Err(e))) => {
                        failure = Some(e);
                        break;
                    }
                    Ok(None) | Err(_) => break,
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
        let now = self.clock.now_ms();
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
        if pending.is_empty() {
            return Ok(());
        }
        metrics::histogram!("seckill_writer_batch_size").record(pending.len() as f64);
        match self.write(&pending, now).await {
            Ok(()) => {
                if let Some(hook) = &self.hooks.after_commit {
                    hook().await;
                }
                if let Some(last) = pending.last() {
                    last.delivery
                        .acker
                        .ack(BasicAckOptions { multiple: true })
                        .await?;
                }
                for p in &pending {
                    metrics::histogram!("seckill_order_lag_seconds")
                        .record((now - p.msg.reserved_at_ms).max(0) as f64 / 1000.0);
                }
                metrics::counter!("seckill_orders_processed_total").increment(pending.len() as u64);
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = pending.len(), "order batch failed; handing it back");
                metrics::counter!("seckill_writer_failures_total").increment(1);
                tokio::time::sleep(Duration::from_millis(self.writer.retry_backoff_ms)).await;
                if let Some(last) = pending.last() {
                    last.delivery
                        .acker
                        .nack(BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        })
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn write(&self, pending: &[Pending], now: i64) -> Result<(), StoreError> {
        // Claim every attempt; cancelled ones are settled without an order.
        let claims =
            futures::future::join_all(pending.iter().map(|p| self.sale.claim(&p.id, now))).await;
        let mut rows = Vec::new();
        for (p, claim) in pending.iter().zip(claims) {
            let status = claim?;
            match status.as_str() {
                "cancelled" => {
                    tracing::info!(attempt_id = %p.msg.attempt_id, "attempt was cancelled; no order");
                }
                other => {
                    if other == "missing" {
                        tracing::warn!(attempt_id = %p.msg.attempt_id, "attempt unknown to redis; writing its order from the message");
                    }
                    rows.push(order::ActiveModel {
                        id: Set(p.msg.attempt_id.clone()),
                        attempt_id: Set(p.msg.attempt_id.clone()),
                        round_id: Set(p.msg.round_id),
                        item_id: Set(p.msg.item_id),
                        user_id: Set(p.msg.user_id.clone()),
                        qty: Set(p.msg.qty),
                        unit_price_cents: Set(p.msg.unit_price_cents),
                        status: Set(order::status::PENDING_PAYMENT.to_owned()),
                        reserved_at_ms: Set(p.msg.reserved_at_ms),
                        created_at_ms: Set(now),
                        pay_by_ms: Set(now + self.payment_timeout_ms),
                        paid_at_ms: Set(None),
                        cancelled_at_ms: Set(None),
                        cancel_reason: Set(None),
                    });
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone().unwrap()).collect();
        let txn = self.db.begin().await?;
        orders::insert_ignoring_conflicts(&txn, rows).await?;
        txn.commit().await?;

        let written: HashMap<String, order::Model> = order::Entity::find()
            .filter(order::Column::AttemptId.is_in(ids.clone()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|o| (o.attempt_id.clone(), o))
            .collect();
        let written = &written;
        let marks = futures::future::join_all(ids.iter().map(|aid| async move {
            let id: AttemptId = aid.parse().map_err(|_| StoreError::Protocol(aid.clone()))?;
            match written.get(aid) {
                Some(o) => self.sale.mark_ordered(&id, &o.id, o.pay_by_ms, now).await.map(|_| ()),
                None => {
                    // The buyer already has a different order for this item.
                    tracing::warn!(attempt_id = %aid, "order refused as a second order of the buyer; releasing");
                    self.sale.release(&id, "duplicate_order", now, true).await.map(|_| ())
                }
            }
        }))
        .await;
        marks.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(())
    }
}
