//! SIGTERM on the real binary while buys are in flight: it stops accepting,
//! every buy it answered ends confirmed (202, an order follows) or released,
//! and the process exits cleanly within its grace period.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use sea_orm::{EntityTrait, PaginatorTrait};
use seckill_backend::{
    auth::{Role, TokenKeys},
    clock::SystemClock,
    config::{Config, RabbitConfig, SimulatedOutcome},
    lifecycle::Lifecycle,
    payment::SimulatedProvider,
    queue::OrderWriter,
    store::{SaleStore, db, entities::order},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_buys() {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let secret = format!("shutdown-test-secret-{id}");
    let prefix = format!("t{id}");
    let queue = format!("seckill.test.{id}");
    let db_url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("orders.db").display()
    );
    let redis_url = std::env::var("SECKILL_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let amqp_url = std::env::var("SECKILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let child = Command::new(env!("CARGO_BIN_EXE_seckill-backend"))
        .arg("serve")
        .env_remove("SECKILL_CONFIG")
        .env("SECKILL__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "SECKILL__HTTP__METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("SECKILL__HTTP__SHUTDOWN_GRACE_MS", "8000")
        .env("SECKILL__AUTH__SECRET", &secret)
        .env("SECKILL__REDIS__URL", &redis_url)
        .env("SECKILL__REDIS__KEY_PREFIX", &prefix)
        .env("SECKILL__RABBITMQ__URL", &amqp_url)
        .env("SECKILL__RABBITMQ__QUEUE", &queue)
        .env("SECKILL__RABBITMQ__QUEUE_EXPIRES_MS", "900000")
        .env("SECKILL__DATABASE__URL", &db_url)
        .env("SECKILL__PAGES__DIR", dir.path().join("pages"))
        .env("SECKILL__DURABILITY__SPOOL_DIR", dir.path().join("spool"))
        .env(
            "SECKILL__DURABILITY__JOURNAL_DIR",
            dir.path().join("journal"),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "backend did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let keys = TokenKeys::new(secret.as_bytes(), 0);
    let now = chrono::Utc::now();
    let round: Value = client
        .post(format!("{base}/admin/rounds"))
        .bearer_auth(keys.mint("op", Role::Operator, 600))
        .json(&json!({
            "name": "shutdown", "starts_at": (now - chrono::Duration::seconds(5)).to_rfc3339(),
            "ends_at": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "items": [{"title": "t", "original_price_cents": 100, "sale_price_cents": 1, "stock": 100}]
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rid = round["id"].as_i64().unwrap();
    let iid = round["items"][0]["id"].as_i64().unwrap();
    for (path, who, role) in [
        ("submit", "op", Role::Operator),
        ("approve", "boss", Role::Approver),
    ] {
        let r = client
            .post(format!("{base}/admin/rounds/{rid}/{path}"))
            .bearer_auth(keys.mint(who, role, 600))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // 300 buyers at once; SIGTERM as soon as the first answer is back.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = Arc::new(std::sync::Mutex::new(Some(first_tx)));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let client = client.clone();
        let url = format!("{base}/api/rounds/{rid}/items/{iid}/buy");
        let token = keys.mint(&format!("b{i}"), Role::Buyer, 600);
        let first_tx = first_tx.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"qty": 1}))
                .send()
                .await;
            if let Some(tx) = first_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            match r {
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => None, // never reached the server, or refused after it closed
            }
        }));
    }
    first_rx.await.unwrap();
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let exited = tokio::task::spawn_blocking(move || {
        let status = child.0.wait().unwrap();
        std::mem::forget(child);
        status
    });
    let status = tokio::time::timeout(Duration::from_secs(15), exited)
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let accepted = statuses.iter().filter(|s| **s == Some(202)).count() as i64;
    for s in statuses.iter().flatten() {
        assert!([202, 410, 503].contains(s), "unexpected status {s}");
    }
    let refused = statuses.iter().filter(|s| s.is_none()).count();
    eprintln!(
        "accepted {accepted}, not served {refused}, of {}",
        statuses.len()
    );
    assert!(accepted > 0);

    // Every 202 holds exactly one reserved unit; nothing else is reserved.
    let sale = SaleStore::connect(&redis_url, &prefix, Duration::from_secs(2))
        .await
        .unwrap();
    let c = sale.counters(rid, iid).await.unwrap().unwrap();
    assert_eq!(c.available + c.reserved + c.sold, c.total);
    assert_eq!(c.reserved, accepted, "reserved units == 202 answers");

    // Whatever the writer had not consumed is still queued: drain it.
    let dbc = db::connect_and_migrate(&db_url, 1).await.unwrap();
    let mut cfg = Config::default();
    cfg.rabbitmq = RabbitConfig {
        url: amqp_url.clone(),
        queue: queue.clone(),
        // As the backend declared them (SECKILL__RABBITMQ__QUEUE_EXPIRES_MS).
        queue_expires_ms: Some(900_000),
        ..cfg.rabbitmq
    };
    let stop = CancellationToken::new();
    cfg.redis.key_prefix = prefix.clone();
    let lc = Lifecycle::new(
        Arc::new(cfg),
        sale.clone(),
        dbc.clone(),
        Arc::new(SystemClock),
        Arc::new(SimulatedProvider::new(SimulatedOutcome::Succeed)),
    );
    let writer = OrderWriter::new(lc, Default::default());
    let w = tokio::spawn(writer.run(stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = order::Entity::find().count(&dbc).await.unwrap() as i64;
        if n == accepted {
            break;
        }
        assert!(n < accepted, "more orders than 202s");
        assert!(
            std::time::Instant::now() < deadline,
            "orders {n} != accepted {accepted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    w.await.unwrap();

    common::delete_keys(&sale, &prefix).await;
    common::delete_queues(&amqp_url, &queue).await;
}
