//! Expiry messages: when the order writer writes an order it publishes
//! `{order_id, pay_by_ms}` to the expiry wait queue, whose TTL is the
//! payment timeout; the broker then dead-letters it into the expiry queue,
//! where [`run`] expires the order if it is still unpaid. A message that is
//! lost costs nothing but time: the sweep expires every overdue order too.

use std::{sync::Arc, time::Duration};

use lapin::{
    options::{BasicAckOptions, BasicNackOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Lifecycle;
use crate::queue::{
    Publisher,
    broker::{ConnectError, Subscription},
    topology::Topology,
};

/// Longest an early expiry message is held before it is retried.
const MAX_EARLY_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryMessage {
    pub order_id: String,
    pub pay_by_ms: i64,
}

/// Schedules the expiry of written orders; failures are logged, not
/// returned (the sweep covers a lost schedule).
pub async fn schedule(publisher: &Publisher, orders: &[ExpiryMessage]) {
    let queue = publisher.topology().expiry_wait();
    let sends = orders.iter().map(|m| {
        let payload = serde_json::to_vec(m).expect("expiry message serializes");
        let queue = &queue;
        async move {
            publisher
                .publish_to(
                    queue,
                    &payload,
                    &m.order_id,
                    m.pay_by_ms,
                    FieldTable::default(),
                )
                .await
        }
    });
    let failed = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|r| r.is_err())
        .count();
    if failed > 0 {
        metrics::counter!("seckill_expiry_schedule_failures_total").increment(failed as u64);
        tracing::warn!(
            failed,
            "expiry messages not confirmed; the sweep will expire those orders"
        );
    }
}

/// Consumes the expiry queue until `shutdown`, reconnecting after broker
/// failures.
pub async fn run(lc: Arc<Lifecycle>, topology: Topology, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match consume(&lc, &topology, &shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "expiry consumer lost the broker"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn consume(
    lc: &Lifecycle,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> Result<(), ConnectError> {
    let queue = topology.expiry();
    let mut sub = Subscription::open(&lc.config.rabbitmq, topology, &queue, "expiry", 64).await?;
    tracing::info!(%queue, "expiry consumer running");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => {
                sub.close().await;
                return Ok(());
            }
            d = sub.next() => d?,
        };
        let Ok(msg) = serde_json::from_slice::<ExpiryMessage>(&delivery.data) else {
            tracing::error!("not an expiry message; dropping it");
            delivery.acker.ack(BasicAckOptions::default()).await?;
            continue;
        };
        let early = msg.pay_by_ms - lc.clock.now_ms();
        if early > 0 {
            // Clocks of two machines disagree a little; wait it out.
            tokio::time::sleep(Duration::from_millis(early as u64).min(MAX_EARLY_WAIT)).await;
        }
        match lc.expire(&msg.order_id).await {
            Ok(_) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                tracing::warn!(order_id = %msg.order_id, error = %e, "expiry failed; retrying");
                tokio::time::sleep(Duration::from_millis(lc.config.writer.retry_backoff_ms)).await;
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
        }
    }
}
