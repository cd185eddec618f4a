//! Script cache loss, poison messages and a writer that cannot write: the
//! system recovers or parks the message, and never loops forever.

use std::{process::Stdio, time::Duration};

use seckill_backend::auth::Role;
use serde_json::json;

use crate::helpers::{TestApp, TestOptions, eventually, item};

/// A redis-server of the test's own on a free port (the shared one is never
/// flushed or stopped).
struct OwnRedis {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str()).unwrap();
        eventually(Duration::from_secs(10), || async {
            client
                .get_multiplexed_async_connection()
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn lost_script_cache_is_reloaded() {
    let redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(TestOptions {
        redis_url: Some(redis.url.clone()),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let a = app.token("s1", Role::Buyer);
    assert_eq!(app.buy(round, items[0], &a, 1).await.0, 202);

    let mut c = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();

    let b = app.token("s2", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &b, 1).await;
    assert_eq!(s, 202, "{v}");
    let v = app.poll_final(v["attempt_id"].as_str().unwrap(), &b).await;
    assert_eq!(
        v["status"], "ordered",
        "the writer's scripts were reloaded too"
    );
    assert_eq!(app.counters(round, items[0]).await, (5, 3, 2, 0));
    app.teardown().await;
}

async fn dead_letter_count(queue: &str) -> u32 {
    crate::common::queue_depth(&crate::helpers::amqp_url(), &format!("{queue}.dead")).await
}

#[tokio::test]
async fn a_message_that_is_not_an_order_goes_to_the_dead_letter_queue() {
    let app = TestApp::spawn().await;
    // Wait until the writer declared the queues.
    let queue = app.config.rabbitmq.queue.clone();
    let conn = lapin::Connection::connect(&crate::helpers::amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let c = conn.create_channel().await.ok()?;
        c.queue_declare(
            queue.clone().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .ok()
        .map(|_| ())
    })
    .await;
    ch.basic_publish(
        "".into(),
        queue.clone().into(),
        Default::default(),
        b"not json",
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    eventually(Duration::from_secs(10), || async {
        (dead_letter_count(&queue).await == 1).then_some(())
    })
    .await;
    let _ = conn.close(200, "bye".into()).await;
    app.teardown().await;
}

#[tokio::test]
async fn metrics_count_buy_outcomes() {
    let app = TestApp::spawn().await;
    let (round, items) = app.open_round(json!([item(1, 1)]), -1_000, 3_600_000).await;
    assert_eq!(
        app.buy(round, items[0], &app.token("m1", Role::Buyer), 1)
            .await
            .0,
        202
    );
    assert_eq!(
        app.buy(round, items[0], &app.token("m2", Role::Buyer), 1)
            .await
            .0,
        410
    );
    let metrics_url = format!("http://{}/metrics", app.metrics_addr.unwrap());
    let body = eventually(Duration::from_secs(5), || async {
        let body = app
            .client
            .get(&metrics_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (body.contains("seckill_buy_total{outcome=\"reserved\"}")
            && body.contains("seckill_buy_total{outcome=\"sold_out\"}"))
        .then_some(body)
    })
    .await;
    assert!(body.contains("seckill_reserve_seconds_bucket"));
    assert!(body.contains("seckill_publish_confirm_seconds_bucket"));
    assert!(body.contains(
        "seckill_http_requests_total{route=\"/api/rounds/{round_id}/items/{item_id}/buy\""
    ));
    app.teardown().await;
}
