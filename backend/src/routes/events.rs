//! `GET /admin/rounds/{round_id}/events`: the live view of one round as
//! server-sent events, one `snapshot` about once a second — per item the
//! Redis counters (as `…/items/{item}/stock` reads them), the buy outcomes
//! of this process per second, the orders waiting for the writer and the
//! dead letters (queue depths; `null` while the broker is away).
//!
//! Read only: it changes nothing in Redis, the database or the broker. It
//! ends with an `end` event when the server starts its graceful shutdown
//! ([`AppState::stopping`]), so an open dashboard never holds up the
//! drain. Admin roles only, with the token in the `Authorization` header
//! (the console reads the stream with `fetch`, not `EventSource`).

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State},
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt, stream};
use serde_json::{Value, json};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{
    AppState, admin,
    error::{AdminRefusals, ApiError, ErrorBody},
    extract::Admin,
};
use crate::{
    lifecycle::buy::OutcomeCounts,
    queue::broker::{self, BrokerChannel},
    store::{entities::item, rounds},
};

/// Time between two snapshots.
const PERIOD: Duration = Duration::from_secs(1);

/// Snapshots between two attempts to reach an unreachable broker.
const BROKER_RETRY_TICKS: u64 = 10;

/// The live view of a round as server-sent events: a `snapshot` event
/// about once a second, an `end` event when the server shuts down.
#[utoipa::path(
    get,
    path = "/admin/rounds/{round_id}/events",
    tag = "admin",
    security(("bearer" = [])),
    params(("round_id" = i64, Path, description = "The round")),
    responses(
        (status = 200, description = "`snapshot` events (JSON data: the round, per item its counters, buy outcomes per second, orders waiting, dead letters), then `end`", content_type = "text/event-stream", body = String),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 404, description = "No such round", body = ErrorBody),
    )
)]
pub async fn stream(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Path(round): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let r = admin::load(&st, &round).await?;
    tracing::info!(round_id = r.round.id, by = %caller.sub, "dashboard stream opened");
    let stopping = st.stopping.clone();
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        outcomes: (Instant::now(), st.lifecycle.outcomes.read()),
        st,
        round: r.round,
        items: r.items,
        interval,
        broker: None,
        tick: 0,
    };
    let snapshots = stream::unfold(feed, |mut f| async move {
        let event = f.next().await;
        Some((Ok(event), f))
    })
    .take_until(stopping.cancelled_owned());
    let end = stream::once(async {
        Ok(Event::default()
            .event("end")
            .data("the server is shutting down"))
    });
    Ok(Sse::new(snapshots.chain(end)).keep_alive(KeepAlive::default()))
}

/// The state of one open stream.
struct Feed {
    st: AppState,
    round: crate::store::entities::round::Model,
    items: Vec<item::Model>,
    interval: Interval,
    /// The previous outcome reading and when it was taken.
    outcomes: (Instant, OutcomeCounts),
    broker: Option<BrokerChannel>,
    tick: u64,
}

impl Feed {
    async fn next(&mut self) -> Event {
        self.interval.tick().await;
        self.tick += 1;
        let snapshot = self.snapshot().await;
        Event::default()
            .event("snapshot")
            .json_data(snapshot)
            .unwrap_or_else(|e| Event::default().comment(format!("unencodable snapshot: {e}")))
    }

    async fn snapshot(&mut self) -> Value {
        // The status moves (approval, rejection) while a dashboard is open.
        if let Ok(Some(r)) = rounds::get(&self.st.db, self.round.id).await {
            self.round = r.round;
        }
        let mut items = Vec::with_capacity(self.items.len());
        for it in &self.items {
            let counters = match admin::item_stock(&self.st, self.round.id, it.id).await {
                Ok(c) => c.unwrap_or(Value::Null),
                Err(e) => json!({ "error": e.code() }),
            };
            items.push(json!({
                "item_id": it.id,
                "title": it.title,
                "stock": it.stock,
                "counters": counters,
            }));
        }
        let now = Instant::now();
        let counts = self.st.lifecycle.outcomes.read();
        let (then, before) = std::mem::replace(&mut self.outcomes, (now, counts));
        let secs = now.duration_since(then).as_secs_f64().max(0.001);
        let d = counts.since(&before);
        let rate = |n: u64| (n as f64 / secs * 10.0).round() / 10.0;
        let (orders_waiting, dead_letters) = self.queue_depths().await;
        json!({
            "round_id": self.round.id,
            "name": self.round.name,
            "status": self.round.status,
            "starts_at_ms": self.round.starts_at_ms,
            "ends_at_ms": self.round.ends_at_ms,
            "now_ms": self.st.clock.now_ms(),
            "items": items,
            "outcomes": {
                "totals": counts,
                "per_second": {
                    "reserved": rate(d.reserved),
                    "sold_out": rate(d.sold_out),
                    "rate_limited": rate(d.rate_limited),
                    "over_limit": rate(d.over_limit),
                    "unavailable": rate(d.unavailable),
                    "other": rate(d.other),
                },
            },
            "orders_waiting": orders_waiting,
            "dead_letters": dead_letters,
        })
    }

    /// Messages ready in the order queue and in the dead-letter queue.
    async fn queue_depths(&mut self) -> (Option<u32>, Option<u32>) {
        let topology = self.st.publisher.topology();
        if self.broker.is_none() && (self.tick == 1 || self.tick.is_multiple_of(BROKER_RETRY_TICKS))
        {
            match broker::open(&self.st.config.rabbitmq, topology).await {
                Ok(b) => self.broker = Some(b),
                Err(e) => tracing::debug!(error = %e, "dashboard: broker unreachable"),
            }
        }
        let Some(b) = &self.broker else {
            return (None, None);
        };
        let waiting = broker::ready_count(&b.channel, &topology.queue).await;
        let dead = broker::ready_count(&b.channel, &topology.dead()).await;
        match (waiting, dead) {
            (Ok(w), Ok(d)) => (Some(w), Some(d)),
            _ => {
                // A failed declare closes the channel: open a new one later.
                self.broker = None;
                (None, None)
            }
        }
    }
}
