//! Declares the order queue and its dead-letter queue (idempotent; both the
//! publisher and the writer call it after every (re)connection).
//!
//! The order queue is durable (quorum by default) with a delivery limit, so
//! a message that keeps failing is moved to `<queue>.dead` rather than
//! redelivered forever.

use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::config::{QueueType, RabbitConfig};

pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

pub async fn declare(channel: &Channel, cfg: &RabbitConfig) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = dead_letter_queue(&cfg.queue);
    let mut dead_args = FieldTable::default();
    if cfg.queue_type == QueueType::Quorum {
        dead_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(ShortString::from(dead.clone()), durable, dead_args)
        .await?;

    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.into()),
    );
    if cfg.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(cfg.delivery_limit as i32),
        );
    }
    channel
        .queue_declare(ShortString::from(cfg.queue.clone()), durable, args)
        .await?;
    Ok(())
}
