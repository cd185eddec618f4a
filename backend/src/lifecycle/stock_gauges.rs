//! The item counters of every round on sale or about to be (approved, not
//! ended) as gauges, `seckill_item_units{round_id, item_id, state}` with
//! `state` one of `total`, `available`, `reserved`, `sold`: read from Redis
//! each time the metrics are scraped, so every backend shows the same
//! numbers and nothing runs between scrapes. A scrape that cannot read
//! them within [`READ_LIMIT`] keeps the last values and counts
//! `seckill_item_gauge_failures_total`.

use std::time::Duration;

use super::Lifecycle;
use crate::store::rounds;

/// How long a scrape may wait for the counters.
pub const READ_LIMIT: Duration = Duration::from_millis(500);

/// Sets the gauges from the current counters.
pub async fn refresh(lc: &Lifecycle) {
    let read = async {
        let open = rounds::visible(&lc.db, lc.clock.now_ms()).await?;
        for r in &open {
            for item in &r.items {
                let Some(c) = lc.sale.counters(r.round.id, item.id).await? else {
                    continue;
                };
                let (round, item) = (r.round.id.to_string(), item.id.to_string());
                for (state, units) in [
                    ("total", c.total),
                    ("available", c.available),
                    ("reserved", c.reserved),
                    ("sold", c.sold),
                ] {
                    metrics::gauge!("seckill_item_units", "round_id" => round.clone(), "item_id" => item.clone(), "state" => state)
                        .set(units as f64);
                }
            }
        }
        Ok::<_, crate::store::StoreError>(())
    };
    match tokio::time::timeout(READ_LIMIT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "item gauges not refreshed");
            metrics::counter!("seckill_item_gauge_failures_total").increment(1);
        }
        Err(_) => {
            metrics::counter!("seckill_item_gauge_failures_total").increment(1);
        }
    }
}
