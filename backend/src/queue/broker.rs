//! The one place that connects to RabbitMQ: a connection within
//! `rabbitmq.connect_timeout_ms`, one channel, and the queue topology
//! declared on it (declaring is idempotent, so every user declares what it
//! relies on). The publisher, the order writer, the expiry consumer and the
//! dead-letter tools all open their channels here; what they do on the
//! channel (confirms, publishing, acking) stays theirs; [`ready_count`]
//! reads a queue's depth for the dashboard.
//!
//! A consumer is a [`Subscription`]: connecting, declaring, setting the
//! prefetch and starting to consume happen under one deadline, and a
//! subscription the broker has stopped feeding (it restarted and the
//! queue came back, but our consumer did not) is noticed and given up, so
//! its owner reconnects instead of waiting forever.

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
};

use super::topology::Topology;
use crate::config::RabbitConfig;

/// An open connection and its channel; dropping it closes both.
pub struct BrokerChannel {
    pub conn: Connection,
    pub channel: Channel,
}

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("consumer cancelled by the broker")]
    Cancelled,
    #[error("{0} messages ready in the queue but none delivered for {1:?}")]
    Stalled(u32, Duration),
}

/// Connects, opens a channel and declares `topology` on it.
pub async fn open(cfg: &RabbitConfig, topology: &Topology) -> Result<BrokerChannel, ConnectError> {
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let fut = async {
        let conn = Connection::connect(&cfg.url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        topology.declare(&channel).await?;
        Ok::<_, lapin::Error>(BrokerChannel { conn, channel })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

/// Messages ready in the queue `name` (a passive declare: it neither
/// creates nor changes the queue; a missing queue is an error and closes
/// the channel).
pub async fn ready_count(channel: &Channel, name: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            lapin::types::ShortString::from(name.to_owned()),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// How long a consumer waits for a delivery before it asks the broker how
/// many messages are ready.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// A consumer of one queue on a connection of its own; dropping it closes
/// the connection (and the broker requeues what was delivered unacked).
pub struct Subscription {
    pub conn: Connection,
    pub channel: Channel,
    consumer: Consumer,
    queue: String,
    timeout: Duration,
}

impl Subscription {
    /// Connects, declares `topology`, sets the prefetch and starts
    /// consuming `queue` as `tag`, all within `rabbitmq.connect_timeout_ms`.
    pub async fn open(
        cfg: &RabbitConfig,
        topology: &Topology,
        queue: &str,
        tag: &str,
        prefetch: u16,
    ) -> Result<Self, ConnectError> {
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let fut = async {
            let conn = Connection::connect(&cfg.url, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            topology.declare(&channel).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    ShortString::from(queue.to_owned()),
                    ShortString::from(tag.to_owned()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((conn, channel, consumer))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok((conn, channel, consumer))) => Ok(Self {
                conn,
                channel,
                consumer,
                queue: queue.to_owned(),
                timeout,
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    /// The next delivery, waiting as long as it takes while the broker has
    /// nothing for us. `Err` when the channel failed, the broker cancelled
    /// the consumer, or the subscription is stalled: messages were ready at
    /// two depth checks in a row ([`IDLE_CHECK`] apart) with nothing
    /// delivered between them. Cancel-safe between depth checks, which only
    /// start after a wait of [`IDLE_CHECK`].
    pub async fn next(&mut self) -> Result<Delivery, ConnectError> {
        let mut ready_before = false;
        loop {
            match tokio::time::timeout(IDLE_CHECK, self.consumer.next()).await {
                Ok(Some(d)) => return Ok(d?),
                Ok(None) => return Err(ConnectError::Cancelled),
                Err(_) => {}
            }
            let ready =
                match tokio::time::timeout(self.timeout, ready_count(&self.channel, &self.queue))
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => return Err(ConnectError::Timeout(self.timeout)),
                };
            if ready > 0 && ready_before {
                return Err(ConnectError::Stalled(ready, IDLE_CHECK * 2));
            }
            ready_before = ready > 0;
        }
    }

    /// The next delivery if one comes before `deadline`.
    pub async fn next_before(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Option<Result<Delivery, ConnectError>> {
        match tokio::time::timeout_at(deadline, self.consumer.next()).await {
            Ok(Some(d)) => Some(d.map_err(ConnectError::from)),
            Ok(None) => Some(Err(ConnectError::Cancelled)),
            Err(_) => None,
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self.conn.close(200, ShortString::from("shutdown")).await;
    }
}
