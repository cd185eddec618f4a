//! The broker's subscriptions: a consumer the broker has stopped feeding is
//! given up (so the order writer and the expiry consumer reconnect), and an
//! idle one on an empty queue is not.

use std::time::Duration;

use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
use seckill_backend::{
    config::Config,
    queue::{
        broker::{ConnectError, Subscription},
        topology::Topology,
    },
};

use crate::{common::delete_topology, helpers::amqp_url};

fn topology(name: &str) -> (Config, Topology) {
    let mut cfg = Config::default();
    cfg.rabbitmq.url = amqp_url();
    cfg.rabbitmq.queue = format!("seckill.test.{name}.{}", ulid::Ulid::new()).to_lowercase();
    cfg.rabbitmq.queue_expires_ms = Some(900_000);
    cfg.rabbitmq.connect_timeout_ms = 2_000;
    let topology = Topology::from_config(&cfg);
    (cfg, topology)
}

async fn publish(queue: &str, n: usize) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for i in 0..n {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            format!("{{\"n\":{i}}}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn a_subscription_with_messages_ready_but_none_delivered_gives_up_and_an_idle_one_waits() {
    let (cfg, fed) = topology("stalled");
    let (_, idle) = topology("idle");
    // Prefetch 1 and the first delivery never acked: the broker holds the
    // second message back, as it does for a consumer it no longer serves.
    let mut stalled = Subscription::open(&cfg.rabbitmq, &fed, fed.orders(), "t", 1)
        .await
        .expect("subscribed");
    let mut waiting = Subscription::open(&cfg.rabbitmq, &idle, idle.orders(), "t", 1)
        .await
        .expect("subscribed");
    publish(fed.orders(), 2).await;
    let first = stalled.next().await.expect("first delivery");
    assert_eq!(first.data, b"{\"n\":0}");

    let (gave_up, idle_wait) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(15), stalled.next()),
        tokio::time::timeout(Duration::from_secs(6), waiting.next()),
    );
    match gave_up.expect("a stalled subscription is noticed within 15 s") {
        Err(ConnectError::Stalled(ready, _)) => assert_eq!(ready, 1),
        Err(e) => panic!("expected a stall, got {e}"),
        Ok(d) => panic!("nothing should have been delivered, got {:?}", d.data),
    }
    assert!(
        idle_wait.is_err(),
        "a subscription to an empty queue keeps waiting"
    );

    // A fresh subscription gets what the stalled one could not.
    drop(first);
    drop(stalled);
    let mut again = Subscription::open(&cfg.rabbitmq, &fed, fed.orders(), "t", 10)
        .await
        .expect("subscribed");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), again.next())
            .await
            .expect("redelivered")
            .expect("delivery");
        seen.push(String::from_utf8(d.data.clone()).unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["{\"n\":0}", "{\"n\":1}"]);
    again.close().await;
    waiting.close().await;
    delete_topology(&amqp_url(), &fed).await;
    delete_topology(&amqp_url(), &idle).await;
}

#[tokio::test]
async fn subscribing_to_a_broker_that_accepts_but_never_answers_times_out() {
    // A listener that accepts connections and says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (mut cfg, topology) = topology("silent");
    cfg.rabbitmq.url = format!("amqp://guest:guest@{addr}/%2f");
    cfg.rabbitmq.connect_timeout_ms = 500;
    let started = std::time::Instant::now();
    let r = Subscription::open(&cfg.rabbitmq, &topology, topology.orders(), "t", 1).await;
    assert!(
        matches!(r, Err(ConnectError::Timeout(_))),
        "got {:?}",
        r.err()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}
