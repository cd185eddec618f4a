//! The one place that connects to RabbitMQ: a connection within
//! `rabbitmq.connect_timeout_ms`, one channel, and the queue topology
//! declared on it (declaring is idempotent, so every user declares what it
//! relies on). The publisher, the order writer, the expiry consumer and the
//! dead-letter tools all open their channels here; what they do on the
//! channel (confirms, prefetch, consuming) stays theirs; [`ready_count`]
//! reads a queue's depth for the dashboard.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};

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
