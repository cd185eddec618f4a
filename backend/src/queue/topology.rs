//! The queues on RabbitMQ, declared idempotently by every publisher and
//! consumer after each (re)connection. With `queue = "seckill.orders"`:
//!
//! - `seckill.orders` — order messages (durable, quorum by default, with a
//!   delivery limit as a backstop against crash loops); the broker
//!   dead-letters to `seckill.orders.dead`.
//! - `seckill.orders.retry.<ms>` — one per retry tier: a TTL queue whose
//!   expired messages dead-letter back into `seckill.orders`.
//! - `seckill.orders.dead` — dead letters, kept for an operator to list,
//!   replay or discard.
//! - `seckill.orders.expiry.wait.<ms>` — one expiry message per order, held
//!   for the payment timeout, then dead-lettered into
//!   `seckill.orders.expiry`, which the expiry consumer reads.
//!
//! RabbitMQ as packaged by Debian has no delayed-message plugin, so every
//! delay is a queue with `x-message-ttl` and a dead-letter exchange (the
//! default exchange, routing by queue name). Per-queue TTLs expire messages
//! in order; the TTL is part of a delay queue's name so a changed setting
//! declares a new queue instead of clashing with the old one's arguments.

use lapin::{
    Channel,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::config::{Config, QueueType, RabbitConfig};

/// Names and arguments of every queue; cheap to clone.
#[derive(Clone, Debug)]
pub struct Topology {
    pub queue: String,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
    pub retry_delays_ms: Vec<u64>,
    pub expiry_delay_ms: u64,
    /// `x-expires` on every queue (throwaway environments only).
    pub queue_expires_ms: Option<u64>,
}

impl Topology {
    pub fn from_config(cfg: &Config) -> Self {
        Self::new(
            &cfg.rabbitmq,
            cfg.writer.retry_delays_ms.clone(),
            cfg.expiry_delay_ms(),
        )
    }

    pub fn new(rabbit: &RabbitConfig, retry_delays_ms: Vec<u64>, expiry_delay_ms: u64) -> Self {
        Self {
            queue: rabbit.queue.clone(),
            queue_type: rabbit.queue_type,
            delivery_limit: rabbit.delivery_limit,
            retry_delays_ms,
            expiry_delay_ms,
            queue_expires_ms: rabbit.queue_expires_ms,
        }
    }

    pub fn orders(&self) -> &str {
        &self.queue
    }

    pub fn dead(&self) -> String {
        dead_letter_queue(&self.queue)
    }

    /// The retry tier for a message's `failures`-th failed write (1-based);
    /// the last tier repeats.
    pub fn retry_for(&self, failures: u32) -> String {
        let i = (failures.max(1) as usize - 1).min(self.retry_delays_ms.len().saturating_sub(1));
        format!("{}.retry.{}", self.queue, self.retry_delays_ms[i])
    }

    pub fn expiry(&self) -> String {
        format!("{}.expiry", self.queue)
    }

    pub fn expiry_wait(&self) -> String {
        format!("{}.expiry.wait.{}", self.queue, self.expiry_delay_ms)
    }

    /// Every queue name, for clean-up in tests and tools.
    pub fn all(&self) -> Vec<String> {
        let mut v = vec![
            self.queue.clone(),
            self.dead(),
            self.expiry(),
            self.expiry_wait(),
        ];
        for d in &self.retry_delays_ms {
            v.push(format!("{}.retry.{d}", self.queue));
        }
        v
    }

    fn base_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        if let Some(ms) = self.queue_expires_ms {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(ms.min(i64::MAX as u64) as i64),
            );
        }
        args
    }

    /// A delay queue: messages wait `ttl_ms`, then go to `target`.
    fn delay_args(&self, ttl_ms: u64, target: &str) -> FieldTable {
        let mut args = self.base_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(ttl_ms.min(i64::MAX as u64) as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(target.into()),
        );
        if self.queue_type == QueueType::Quorum {
            // Quorum queues dead-letter at most once unless told otherwise;
            // a delayed order or expiry must not vanish in transit.
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        args
    }

    /// Declares every queue (idempotent).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declare = |name: String, args: FieldTable| async move {
            channel
                .queue_declare(ShortString::from(name), durable, args)
                .await
                .map(|_| ())
        };
        declare(self.dead(), self.base_args()).await?;
        let mut args = self.base_args();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.dead().into()),
        );
        if self.queue_type == QueueType::Quorum {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit.min(i32::MAX as u32) as i32),
            );
        }
        declare(self.queue.clone(), args).await?;
        for d in &self.retry_delays_ms {
            declare(
                format!("{}.retry.{d}", self.queue),
                self.delay_args(*d, &self.queue),
            )
            .await?;
        }
        declare(self.expiry(), self.base_args()).await?;
        declare(
            self.expiry_wait(),
            self.delay_args(self.expiry_delay_ms, &self.expiry()),
        )
        .await?;
        Ok(())
    }
}

pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_tiers_grow_then_repeat_the_last() {
        let t = Topology::new(&RabbitConfig::default(), vec![100, 500], 60_000);
        assert_eq!(t.retry_for(1), "seckill.orders.retry.100");
        assert_eq!(t.retry_for(2), "seckill.orders.retry.500");
        assert_eq!(t.retry_for(7), "seckill.orders.retry.500");
        assert_eq!(t.expiry_wait(), "seckill.orders.expiry.wait.60000");
    }
}
