//! RabbitMQ's own confirmed-publish ceiling, the peer of the buy path's
//! reservations: one producer on one confirm channel publishing persistent
//! messages of an order message's size to a fresh queue of the same kind
//! and topology as the order queue, with at most `in_flight` unconfirmed,
//! for `seconds` or `messages`, whichever ends first. The queue is deleted
//! afterwards.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Confirmation,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use seckill_backend::{
    config::{Config, QueueType},
    queue::{OrderMessage, broker, topology::Topology},
};
use serde::Serialize;
use tokio::time::Instant;

use crate::orders::delete_topology;

pub struct ConfirmsOptions {
    pub amqp_url: String,
    pub queue: String,
    pub in_flight: usize,
    pub messages: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ConfirmsReport {
    pub messages: u64,
    pub message_bytes: usize,
    pub in_flight: usize,
    pub seconds: f64,
    pub per_sec: f64,
}

/// A message body as large as a real order message.
fn sample_body() -> Vec<u8> {
    let msg = OrderMessage {
        attempt_id: "1000000-1000000-01JE2Q4V3ZQK8N6M9T1W5X7Y0B".into(),
        round_id: 1_000_000,
        item_id: 1_000_000,
        user_id: "buyer-000000000".into(),
        qty: 1,
        unit_price_cents: 9_999,
        reserved_at_ms: 1_733_270_400_000,
    };
    serde_json::to_vec(&msg).expect("order message serializes")
}

pub async fn run(opts: &ConfirmsOptions) -> anyhow::Result<ConfirmsReport> {
    if opts.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    let mut cfg = Config::default();
    cfg.rabbitmq.url = opts.amqp_url.clone();
    cfg.rabbitmq.queue = opts.queue.clone();
    cfg.rabbitmq.queue_type = QueueType::Quorum;
    // Gone by itself if this run is interrupted before it deletes it.
    cfg.rabbitmq.queue_expires_ms = Some(cfg.expiry_delay_ms() + 600_000);
    let topology = Topology::from_config(&cfg);
    let open = broker::open(&cfg.rabbitmq, &topology)
        .await
        .context("connecting to RabbitMQ")?;
    open.channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let result = publish(&open.channel, topology.orders(), opts).await;
    drop(open);
    delete_topology(&opts.amqp_url, &topology).await;
    result
}

async fn publish(
    channel: &lapin::Channel,
    queue: &str,
    opts: &ConfirmsOptions,
) -> anyhow::Result<ConfirmsReport> {
    let body = sample_body();
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"));
    let limit = Duration::from_secs_f64(opts.seconds.max(0.1));
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    loop {
        let more = sent < opts.messages && start.elapsed() < limit;
        if more && pending.len() < opts.in_flight {
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props.clone(),
                )
                .await?;
            pending.push(confirm);
            sent += 1;
            continue;
        }
        match pending.next().await {
            Some(Ok(Confirmation::Ack(None))) => confirmed += 1,
            Some(Ok(other)) => bail!("broker did not confirm a message: {other:?}"),
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(ConfirmsReport {
        messages: confirmed,
        message_bytes: body.len(),
        in_flight: opts.in_flight,
        seconds,
        per_sec: confirmed as f64 / seconds,
    })
}
