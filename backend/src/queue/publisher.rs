//! Publishes order messages with publisher confirms and `mandatory`.
//!
//! A publish counts only when the broker confirmed it with a plain ack: a
//! nack, a returned (unroutable) message, a connection error or a timeout is
//! a [`PublishError`], and the caller must assume the message may or may not
//! be in the queue (the order writer's claim makes either outcome safe).
//!
//! One connection and one confirm channel are shared by all buys; after any
//! failure the next publish reconnects, at most once per back-off interval,
//! so a broker outage costs each buy one fast failure instead of a timeout.

use std::time::{Duration, Instant};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::Mutex;

use super::{OrderMessage, broker, topology::Topology};
use crate::config::RabbitConfig;

/// Why a message was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable: {0}")]
    Connect(String),
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("message was unroutable and returned")]
    Returned,
    #[error("no confirm within {0:?}")]
    Timeout(Duration),
    #[error("reconnect suppressed after a recent failure")]
    BackingOff,
}

struct Live {
    // Kept so the connection lives as long as its channel.
    _conn: Connection,
    channel: Channel,
}

struct State {
    live: Option<Live>,
    last_failure: Option<Instant>,
}

/// The buy path's confirmed publisher.
pub struct Publisher {
    cfg: RabbitConfig,
    topology: Topology,
    state: Mutex<State>,
    backoff: Duration,
}

impl Publisher {
    /// Creates a publisher; it connects on first use and declares
    /// `topology`'s queues on every connection.
    pub fn new(cfg: RabbitConfig, topology: Topology) -> Self {
        Self {
            cfg,
            topology,
            state: Mutex::new(State {
                live: None,
                last_failure: None,
            }),
            backoff: Duration::from_millis(250),
        }
    }

    /// Connects now (used at start-up so the first buys do not pay for it).
    pub async fn warm_up(&self) -> Result<(), PublishError> {
        self.channel().await.map(|_| ())
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut st = self.state.lock().await;
        if let Some(live) = &st.live {
            if live.channel.status().connected() {
                return Ok(live.channel.clone());
            }
            st.live = None;
        }
        if let Some(t) = st.last_failure
            && t.elapsed() < self.backoff
        {
            return Err(PublishError::BackingOff);
        }
        match self.connect().await {
            Ok(live) => {
                let ch = live.channel.clone();
                st.live = Some(live);
                st.last_failure = None;
                Ok(ch)
            }
            Err(e) => {
                st.last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Live, PublishError> {
        let open = broker::open(&self.cfg, &self.topology)
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        open.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        tracing::info!(queue = %self.cfg.queue, "publisher connected");
        Ok(Live {
            _conn: open.conn,
            channel: open.channel,
        })
    }

    async fn invalidate(&self, failed: &Channel) {
        let mut st = self.state.lock().await;
        if st
            .live
            .as_ref()
            .is_some_and(|l| l.channel.id() == failed.id())
        {
            st.live = None;
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes one order message to the order queue and waits for the
    /// broker's confirm.
    pub async fn publish(&self, msg: &OrderMessage) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(msg).expect("order message serializes");
        self.publish_to(
            self.topology.orders(),
            &payload,
            &msg.attempt_id,
            msg.reserved_at_ms,
            FieldTable::default(),
        )
        .await
    }

    /// Publishes a persistent JSON message to `queue` (through the default
    /// exchange) and waits for the broker's confirm.
    pub async fn publish_to(
        &self,
        queue: &str,
        payload: &[u8],
        message_id: &str,
        timestamp_ms: i64,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(message_id))
            .with_timestamp((timestamp_ms / 1000).max(0) as u64)
            .with_headers(headers);
        let timeout = Duration::from_millis(self.cfg.confirm_timeout_ms);
        let fut = async {
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    payload,
                    props,
                )
                .await?;
            confirm.await
        };
        let outcome = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Returned),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
            Ok(Err(e)) => Err(PublishError::Amqp(e)),
            Err(_) => Err(PublishError::Timeout(timeout)),
        };
        if matches!(
            outcome,
            Err(PublishError::Amqp(_)) | Err(PublishError::Timeout(_))
        ) {
            self.invalidate(&channel).await;
        }
        outcome
    }
}
