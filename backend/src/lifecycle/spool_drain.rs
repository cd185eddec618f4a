//! Delivers the order spool ([`crate::durable::spool`]): republishes
//! spooled order messages with confirms, oldest first, once the broker
//! confirms again; or, when the order writer runs in this process and the
//! broker has failed for `durability.direct_after_ms`, hands them straight
//! to the writer (the "direct" degradation: orders are written while the
//! broker is still away). An entry leaves the spool only after its confirm
//! or its order's commit; a duplicate (a message that did arrive after
//! all) is absorbed by the orders' unique keys and the writer's claim.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    durable::Spool,
    queue::{OrderWriter, PublishError, Publisher},
};

/// Messages published at once (confirms awaited together).
const WINDOW: usize = 64;
/// Orders handed to the writer at once.
const DIRECT_BATCH: usize = 200;
const IDLE: Duration = Duration::from_millis(1_000);
const RETRY: Duration = Duration::from_millis(250);

/// Drains until `shutdown`; what is left stays on disk for the next start.
pub async fn run(
    spool: Arc<Spool>,
    publisher: Arc<Publisher>,
    writer: Option<OrderWriter>,
    direct_after: Duration,
    shutdown: CancellationToken,
) {
    let mut failing_since: Option<Instant> = None;
    loop {
        spool.gauges();
        if shutdown.is_cancelled() {
            return;
        }
        if spool.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = spool.appended() => {}
                _ = tokio::time::sleep(IDLE) => {}
            }
            continue;
        }
        match publish_oldest(&spool, &publisher, WINDOW).await {
            Ok(_) => {
                failing_since = None;
                continue;
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                tracing::debug!(error = %e, depth = spool.len(), "spool not drained yet");
                if let Some(w) = &writer
                    && since.elapsed() >= direct_after
                {
                    match direct_oldest(&spool, w, DIRECT_BATCH).await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "spooled orders not written directly yet")
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Publishes up to `n` of the oldest entries and removes the confirmed
/// ones; `Err` when none was confirmed.
pub async fn publish_oldest(
    spool: &Spool,
    publisher: &Publisher,
    n: usize,
) -> Result<usize, PublishError> {
    let batch = spool.oldest(n);
    let results = futures::future::join_all(batch.iter().map(|e| publisher.publish(&e.msg))).await;
    let mut done = 0;
    let mut first_err = None;
    for (e, r) in batch.iter().zip(results) {
        match r {
            Ok(()) => match spool.remove(&e.msg.attempt_id).await {
                Ok(()) => {
                    done += 1;
                    metrics::counter!("seckill_spool_drained_total", "via" => "publish")
                        .increment(1);
                }
                Err(err) => {
                    tracing::error!(attempt_id = %e.msg.attempt_id, error = %err, "confirmed spool entry not removed; it will be published again")
                }
            },
            Err(err) => {
                first_err.get_or_insert(err);
            }
        }
    }
    match first_err {
        Some(e) if done == 0 => Err(e),
        _ => {
            if done > 0 {
                tracing::info!(
                    published = done,
                    left = spool.len(),
                    "spooled order messages confirmed"
                );
            }
            Ok(done)
        }
    }
}

/// Hands up to `n` of the oldest entries to the order writer and removes
/// them once their orders committed.
pub async fn direct_oldest(
    spool: &Spool,
    writer: &OrderWriter,
    n: usize,
) -> Result<usize, crate::store::StoreError> {
    let batch = spool.oldest(n);
    if batch.is_empty() {
        return Ok(0);
    }
    let msgs: Vec<_> = batch.into_iter().map(|e| e.msg).collect();
    writer.write_direct(&msgs).await?;
    let mut done = 0;
    for m in &msgs {
        match spool.remove(&m.attempt_id).await {
            Ok(()) => {
                done += 1;
                metrics::counter!("seckill_spool_drained_total", "via" => "direct").increment(1);
            }
            Err(err) => {
                tracing::error!(attempt_id = %m.attempt_id, error = %err, "written spool entry not removed; its duplicate will be absorbed")
            }
        }
    }
    tracing::info!(
        written = done,
        left = spool.len(),
        "spooled orders handed to the order writer directly"
    );
    Ok(done)
}
