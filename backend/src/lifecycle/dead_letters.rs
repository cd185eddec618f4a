//! Dead letters: order messages the writer gave up on (their units already
//! released, their attempts `cancelled` with reason `dead_letter`), and
//! messages the broker moved there itself (delivery limit exceeded, not an
//! order message).
//!
//! Listing reads the queue without consuming it (every message fetched is
//! handed back when the channel closes). A replay reserves the attempt's
//! units again from what is available now (`revive.lua`) and requeues the
//! message, so the writer writes its order once; it never sells a unit
//! twice. A discard drops the message and releases any units it still
//! held.
//!
//! Both first ask the database: a dead letter whose attempt already has an
//! order (written before the message was dead-lettered, whatever its status
//! now) is dropped as `order_exists`, neither revived (an expired order's
//! units would stay reserved with nothing to release them) nor released
//! (the units of a live or paid order are its own). The order's lifecycle
//! owns those units from then on.

use std::collections::HashSet;

use lapin::{
    Connection,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde::Serialize;

use super::Lifecycle;
use crate::{
    domain::AttemptId,
    queue::{OrderMessage, Publisher, topology::Topology},
    store::{StoreError, entities::order, sale::AttemptSeed},
};

/// Most messages one call looks at.
pub const MAX_SCAN: usize = 10_000;

/// Header names the writer sets on the messages it dead-letters.
pub mod headers {
    pub const FAILURES: &str = "x-seckill-failures";
    pub const REASON: &str = "x-seckill-reason";
    pub const ERROR: &str = "x-seckill-error";
    pub const DEAD_AT_MS: &str = "x-seckill-dead-at-ms";
    /// Set on a replayed message: the backlog check counts its age from
    /// the replay, not from the reservation.
    pub const REPLAYED_AT_MS: &str = "x-seckill-replayed-at-ms";
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker: {0}")]
    Connect(#[from] crate::queue::broker::ConnectError),
    #[error("republishing: {0}")]
    Publish(#[from] crate::queue::PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One dead letter as listed.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// `null` for a message that is not an order message.
    pub attempt_id: Option<String>,
    pub user_id: Option<String>,
    pub round_id: Option<i64>,
    pub item_id: Option<i64>,
    pub qty: Option<i64>,
    /// `write_failed` (the writer gave up), or the broker's reason
    /// (`delivery_limit`, `rejected`, …).
    pub reason: String,
    pub error: Option<String>,
    pub failures: Option<u32>,
    pub dead_at_ms: Option<i64>,
    /// The attempt's status in Redis now.
    pub attempt_status: Option<String>,
}

/// Which dead letters a replay or discard acts on.
#[derive(Clone, Debug)]
pub enum Selection {
    All,
    Attempts(HashSet<String>),
}

impl Selection {
    fn matches(&self, attempt_id: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::Attempts(ids) => attempt_id.is_some_and(|a| ids.contains(a)),
        }
    }
}

/// What happened to one selected dead letter.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    pub attempt_id: Option<String>,
    /// `replayed`, `discarded`, `order_exists` (dropped: the attempt has an
    /// order), or why it stays (`sold_out`, `buyer_has_another`,
    /// `cancelled`, `not_an_order`, `no_counters`).
    pub outcome: String,
    /// The status of the attempt's order, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_status: Option<String>,
}

/// What acting on one message did: whether it leaves the queue, and what
/// to report.
struct Acted {
    remove: bool,
    outcome: String,
    order_status: Option<String>,
}

impl Acted {
    fn new(remove: bool, outcome: &str) -> Self {
        Self {
            remove,
            outcome: outcome.to_owned(),
            order_status: None,
        }
    }

    /// The attempt already has an order: the message is done with.
    fn order_exists(o: order::Model) -> Self {
        Self {
            remove: true,
            outcome: "order_exists".to_owned(),
            order_status: Some(o.status),
        }
    }
}

/// The order written for `attempt_id`, if any.
async fn order_of(lc: &Lifecycle, attempt_id: &str) -> Result<Option<order::Model>, StoreError> {
    Ok(order::Entity::find()
        .filter(order::Column::AttemptId.eq(attempt_id))
        .one(&lc.db)
        .await?)
}

fn header<'a>(h: Option<&'a FieldTable>, name: &str) -> Option<&'a AMQPValue> {
    h.and_then(|t| t.inner().get(name))
}

fn header_str(h: Option<&FieldTable>, name: &str) -> Option<String> {
    match header(h, name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An integer header (any AMQP integer type).
pub fn header_int(h: Option<&FieldTable>, name: &str) -> Option<i64> {
    match header(h, name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(*v as i64),
        AMQPValue::LongUInt(v) => Some(*v as i64),
        AMQPValue::ShortInt(v) => Some(*v as i64),
        AMQPValue::ShortUInt(v) => Some(*v as i64),
        AMQPValue::Timestamp(v) => Some(*v as i64),
        _ => None,
    }
}

/// The failure count the writer recorded on a message (0 when none).
pub fn failures_of(h: Option<&FieldTable>) -> u32 {
    header_int(h, headers::FAILURES)
        .unwrap_or(0)
        .clamp(0, u32::MAX as i64) as u32
}

fn parse(m: &BasicGetMessage) -> (Option<OrderMessage>, Option<AttemptId>) {
    let msg = serde_json::from_slice::<OrderMessage>(&m.delivery.data).ok();
    let id = msg.as_ref().and_then(|m| m.attempt_id.parse().ok());
    (msg, id)
}

struct Session {
    conn: Connection,
    channel: lapin::Channel,
    queue: String,
}

impl Session {
    async fn open(lc: &Lifecycle, topology: &Topology) -> Result<Self, DeadLetterError> {
        let crate::queue::broker::BrokerChannel { conn, channel } =
            crate::queue::broker::open(&lc.config.rabbitmq, topology).await?;
        Ok(Self {
            conn,
            channel,
            queue: topology.dead(),
        })
    }

    /// The next message, unacknowledged (handed back on close unless acked).
    async fn next(&self) -> Result<Option<BasicGetMessage>, DeadLetterError> {
        Ok(self
            .channel
            .basic_get(
                ShortString::from(self.queue.clone()),
                BasicGetOptions { no_ack: false },
            )
            .await?)
    }

    async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("done")).await;
        let _ = self.conn.close(200, ShortString::from("done")).await;
    }
}

async fn describe(lc: &Lifecycle, m: &BasicGetMessage) -> Result<DeadLetter, StoreError> {
    let h = m.delivery.properties.headers().as_ref();
    let (msg, id) = parse(m);
    let attempt_status = match &id {
        Some(id) => lc.sale.attempt(id).await?.map(|a| a.status),
        None => None,
    };
    let broker_reason = header_str(h, "x-first-death-reason");
    Ok(DeadLetter {
        attempt_id: msg.as_ref().map(|m| m.attempt_id.clone()),
        user_id: msg.as_ref().map(|m| m.user_id.clone()),
        round_id: msg.as_ref().map(|m| m.round_id),
        item_id: msg.as_ref().map(|m| m.item_id),
        qty: msg.as_ref().map(|m| m.qty),
        reason: header_str(h, headers::REASON)
            .or(broker_reason)
            .unwrap_or_else(|| "unknown".into()),
        error: header_str(h, headers::ERROR),
        failures: header_int(h, headers::FAILURES).map(|v| v as u32),
        dead_at_ms: header_int(h, headers::DEAD_AT_MS),
        attempt_status,
    })
}

/// Lists up to `limit` dead letters, oldest first, without consuming them.
pub async fn list(
    lc: &Lifecycle,
    topology: &Topology,
    limit: usize,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let s = Session::open(lc, topology).await?;
    let mut out = Vec::new();
    let result = async {
        while out.len() < limit.min(MAX_SCAN) {
            let Some(m) = s.next().await? else { break };
            out.push(describe(lc, &m).await?);
        }
        Ok::<_, DeadLetterError>(())
    }
    .await;
    s.close().await;
    result.map(|_| out)
}

/// Replays the selected dead letters (see the module docs).
pub async fn replay(
    lc: &Lifecycle,
    publisher: &Publisher,
    selection: &Selection,
) -> Result<Vec<Outcome>, DeadLetterError> {
    act(lc, publisher.topology(), selection, |m| async move {
        let (msg, id) = parse(&m);
        let (Some(msg), Some(id)) = (msg, id) else {
            return Ok(Acted::new(false, "not_an_order"));
        };
        if let Some(o) = order_of(lc, &msg.attempt_id).await? {
            return Ok(Acted::order_exists(o));
        }
        let seed = AttemptSeed {
            id: &id,
            user: &msg.user_id,
            qty: msg.qty,
            price_cents: msg.unit_price_cents,
            created_ms: msg.reserved_at_ms,
        };
        let r = lc.sale.revive(&seed, lc.clock.now_ms()).await?;
        match r.as_str() {
            "revived" | "live" => {
                // A fresh message: the failure count starts again, and its
                // age counts from now for the backlog check.
                let now = lc.clock.now_ms();
                let mut h = FieldTable::default();
                h.insert(headers::REPLAYED_AT_MS.into(), AMQPValue::LongLongInt(now));
                publisher
                    .publish_to(
                        publisher.topology().orders(),
                        &m.delivery.data,
                        &msg.attempt_id,
                        now,
                        h,
                    )
                    .await?;
                Ok(Acted::new(true, "replayed"))
            }
            "done" => Ok(Acted::new(true, "already_ordered")),
            other => Ok(Acted::new(false, other)),
        }
    })
    .await
}

/// Discards the selected dead letters, releasing units they still hold.
pub async fn discard(
    lc: &Lifecycle,
    topology: &Topology,
    selection: &Selection,
) -> Result<Vec<Outcome>, DeadLetterError> {
    act(lc, topology, selection, |m| async move {
        if let (_, Some(id)) = parse(&m) {
            if let Some(o) = order_of(lc, &id.to_string()).await? {
                return Ok(Acted::order_exists(o));
            }
            lc.sale
                .release(&id, "dead_letter", lc.clock.now_ms(), true)
                .await?;
        }
        Ok(Acted::new(true, "discarded"))
    })
    .await
}

/// Runs `f` on every selected message; a message is removed from the
/// queue when `f` says so, and handed back otherwise.
async fn act<F, Fut>(
    lc: &Lifecycle,
    topology: &Topology,
    selection: &Selection,
    f: F,
) -> Result<Vec<Outcome>, DeadLetterError>
where
    F: Fn(BasicGetMessage) -> Fut,
    Fut: std::future::Future<Output = Result<Acted, DeadLetterError>>,
{
    let s = Session::open(lc, topology).await?;
    let mut out = Vec::new();
    let result = async {
        for _ in 0..MAX_SCAN {
            let Some(m) = s.next().await? else { break };
            let (msg, _) = parse(&m);
            let attempt_id = msg.map(|m| m.attempt_id);
            if !selection.matches(attempt_id.as_deref()) {
                continue;
            }
            let acker = m.delivery.acker.clone();
            let acted = f(m).await?;
            if acted.remove {
                acker.ack(BasicAckOptions::default()).await?;
            }
            out.push(Outcome {
                attempt_id,
                outcome: acted.outcome,
                order_status: acted.order_status,
            });
        }
        Ok::<_, DeadLetterError>(())
    }
    .await;
    s.close().await;
    result.map(|_| out)
}
