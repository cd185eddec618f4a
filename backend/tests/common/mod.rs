//! Clean-up shared by the test binaries: each test removes the Redis keys
//! and queues it created, so the machine's shared services stay as they were.

// Each test binary uses a subset of these.
#![allow(dead_code)]

use seckill_backend::store::SaleStore;

/// Deletes every key under `prefix`.
pub async fn delete_keys(store: &SaleStore, prefix: &str) {
    let mut c = store.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
    }
}

/// Deletes every queue of the topology around the order queue `queue`
/// (dead letters, retry tiers, expiry) as the default config declares it.
pub async fn delete_queues(amqp_url: &str, queue: &str) {
    let mut cfg = seckill_backend::config::Config::default();
    cfg.rabbitmq.queue = queue.to_owned();
    delete_topology(
        amqp_url,
        &seckill_backend::queue::topology::Topology::from_config(&cfg),
    )
    .await;
}

/// Deletes every queue of `topology`.
pub async fn delete_topology(
    amqp_url: &str,
    topology: &seckill_backend::queue::topology::Topology,
) {
    use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
    if let Ok(conn) = Connection::connect(amqp_url, ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in topology.all() {
            let _ = ch
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// Messages ready in a queue (declared passively: it must exist).
pub async fn queue_depth(amqp_url: &str, queue: &str) -> u32 {
    use lapin::{
        Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable,
    };
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    q.message_count()
}
