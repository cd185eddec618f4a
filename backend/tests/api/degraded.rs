//! Selling through a Redis or RabbitMQ outage: buys journaled while Redis
//! is away and replayed in arrival order, orders spooled while the broker
//! is away and delivered (or handed to the writer directly), a restarted
//! backend draining both first, and failing closed on a full disk.

use std::{net::SocketAddr, process::Command, time::Duration};

use seckill_backend::auth::Role;
use serde_json::{Value, json};

use crate::helpers::{FaultProxy, TestApp, TestOptions, amqp_url, dead_addr, eventually, item};

async fn redis_addr() -> SocketAddr {
    tokio::net::lookup_host(
        crate::helpers::redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/'),
    )
    .await
    .unwrap()
    .next()
    .unwrap()
}

async fn broker_addr() -> SocketAddr {
    let url = amqp_url();
    let host = url
        .split('@')
        .nth(1)
        .and_then(|h| h.split('/').next())
        .unwrap()
        .to_owned();
    tokio::net::lookup_host(host).await.unwrap().next().unwrap()
}

/// A buy sent as an edge would, carrying a permit; returns the status, the
/// body and the `x-seckill-permit` answer.
async fn buy_with_permit(
    app: &TestApp,
    round: i64,
    item: i64,
    token: &str,
) -> (u16, Value, Option<String>) {
    let r = app
        .client
        .post(app.url(&format!("/api/rounds/{round}/items/{item}/buy")))
        .bearer_auth(token)
        .header("x-seckill-permit", "edge-a;1;1")
        .json(&json!({"qty": 1}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let permit = r
        .headers()
        .get("x-seckill-permit")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap(), permit)
}

#[tokio::test]
async fn journaled_buys_replay_in_arrival_order_and_the_bound_holds() {
    let proxy = FaultProxy::start(redis_addr().await).await;
    let app = TestApp::spawn_with(TestOptions {
        redis_url: Some(format!("redis://{}/", proxy.addr)),
        tweak: Some(Box::new(|c| c.durability.journal_bound = Some(3))),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;

    proxy.down();
    let tokens: Vec<String> = (0..4)
        .map(|i| app.token(&format!("j{i}"), Role::Buyer))
        .collect();
    let mut ids = Vec::new();
    for (i, t) in tokens.iter().take(3).enumerate() {
        let (s, v, permit) = buy_with_permit(&app, round, items[0], t).await;
        assert_eq!((s, v["status"].as_str()), (202, Some("processing")), "{v}");
        if i > 0 {
            // Journaled without running the reserve: the edge's lease is
            // untouched, but it must not buy again on those permits while
            // Redis is away.
            assert_eq!(permit.as_deref(), Some("void"));
        }
        ids.push(v["attempt_id"].as_str().unwrap().to_owned());
    }
    // A retry gets the same journaled attempt; the bound refuses a fourth.
    let (s, v) = app.buy(round, items[0], &tokens[1], 1).await;
    assert_eq!((s, v["attempt_id"].as_str()), (200, Some(ids[1].as_str())));
    assert_eq!(v["status"], "processing");
    let (s, v) = app.buy(round, items[0], &tokens[3], 1).await;
    assert_eq!((s, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert_eq!(app.state.durable.journal.len(), 3);

    proxy.up();
    // Arrival order: the first two get the two units, the third sold out.
    let mut finals = Vec::new();
    for (id, t) in ids.iter().zip(&tokens) {
        finals.push(app.poll_final(id, t).await);
    }
    assert_eq!(finals[0]["status"], "ordered", "{}", finals[0]);
    assert_eq!(finals[1]["status"], "ordered", "{}", finals[1]);
    assert_eq!(
        (finals[2]["status"].as_str(), finals[2]["reason"].as_str()),
        (Some("cancelled"), Some("sold_out")),
        "{}",
        finals[2]
    );
    assert_eq!(app.counters(round, items[0]).await, (2, 0, 2, 0));
    assert_eq!(app.order_count().await, 2);
    assert!(app.state.durable.journal.is_empty());
    // Buys go straight to Redis again.
    let (s, v) = app.buy(round, items[0], &tokens[3], 1).await;
    assert_eq!((s, v["error"].as_str()), (410, Some("sold_out")), "{v}");
    app.teardown().await;
}

#[tokio::test]
async fn the_journal_bound_defaults_to_the_items_stock() {
    let proxy = FaultProxy::start(redis_addr().await).await;
    let app = TestApp::spawn_with(TestOptions {
        redis_url: Some(format!("redis://{}/", proxy.addr)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(2, 1)]), -1_000, 3_600_000).await;
    proxy.down();
    let mut answers = Vec::new();
    for i in 0..3 {
        let t = app.token(&format!("d{i}"), Role::Buyer);
        answers.push(app.buy(round, items[0], &t, 1).await.0);
    }
    assert_eq!(answers, [202, 202, 503]);
    proxy.up();
    eventually(Duration::from_secs(15), || async {
        app.state.durable.journal.is_empty().then_some(())
    })
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn a_broker_that_stays_away_gets_the_spool_written_directly() {
    let app = TestApp::spawn_with(TestOptions {
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", dead_addr().await)),
        tweak: Some(Box::new(|c| c.durability.direct_after_ms = 300)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    let mut bought = Vec::new();
    for i in 0..2 {
        let t = app.token(&format!("s{i}"), Role::Buyer);
        let (s, v) = app.buy(round, items[0], &t, 1).await;
        assert_eq!((s, v["status"].as_str()), (202, Some("queued")), "{v}");
        bought.push((v["attempt_id"].as_str().unwrap().to_owned(), t));
    }
    // The broker never comes back: the writer in this process takes them.
    for (id, t) in &bought {
        let v = app.poll_final(id, t).await;
        assert_eq!(v["status"], "ordered", "{v}");
    }
    assert_eq!(app.order_count().await, 2);
    // The entries go once the writer returns, just after the orders show.
    eventually(Duration::from_secs(10), || async {
        app.state.durable.spool.is_empty().then_some(())
    })
    .await;
    assert_eq!(app.counters(round, items[0]).await, (3, 1, 2, 0));
    app.teardown().await;
}

#[tokio::test]
async fn a_restarted_backend_drains_its_spool_and_journal_first() {
    let broker = FaultProxy::start(broker_addr().await).await;
    let redis = FaultProxy::start(redis_addr().await).await;
    let first = TestApp::spawn_with(TestOptions {
        writer: false,
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", broker.addr)),
        redis_url: Some(format!("redis://{}/", redis.addr)),
        ..Default::default()
    })
    .await;
    let (round, items) = first
        .open_round(json!([item(5, 1)]), -1_000, 3_600_000)
        .await;
    let a = first.token("spooled", Role::Buyer);
    let b = first.token("journaled", Role::Buyer);
    broker.down();
    let (s, va) = first.buy(round, items[0], &a, 1).await;
    assert_eq!((s, va["status"].as_str()), (202, Some("queued")), "{va}");
    redis.down();
    let (s, vb) = first.buy(round, items[0], &b, 1).await;
    assert_eq!(
        (s, vb["status"].as_str()),
        (202, Some("processing")),
        "{vb}"
    );
    let (cfg, dir) = first.stop().await;
    assert_eq!(
        seckill_backend::durable::spool::list(&cfg.durability.spool_dir)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        seckill_backend::durable::journal::list(&cfg.durability.journal_dir)
            .unwrap()
            .len(),
        1
    );

    // Restarted on the same directories and stores, everything reachable.
    let second = TestApp::spawn_with(TestOptions {
        tweak: Some(Box::new(move |c| {
            c.auth.secret = cfg.auth.secret.clone();
            c.redis.key_prefix = cfg.redis.key_prefix.clone();
            c.rabbitmq.queue = cfg.rabbitmq.queue.clone();
            c.database.url = cfg.database.url.clone();
            c.durability = cfg.durability.clone();
        })),
        ..Default::default()
    })
    .await;
    for (v, t) in [(&va, &a), (&vb, &b)] {
        let f = second
            .poll_final(v["attempt_id"].as_str().unwrap(), t)
            .await;
        assert_eq!(f["status"], "ordered", "{f}");
    }
    assert_eq!(second.order_count().await, 2);
    assert!(second.state.durable.spool.is_empty());
    assert!(second.state.durable.journal.is_empty());
    assert_eq!(second.counters(round, items[0]).await, (5, 3, 2, 0));
    second.teardown().await;
    drop(dir);
}

/// A tmpfs of `kib` KiB mounted at `dir` (unmounted on drop), or `None`
/// where mounting is not permitted.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, kib: u32) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(dir.to_owned()))
    }

    /// Writes a file until the file system refuses; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
        // Fill the last partial block too.
        while f.write_all(&[0u8]).and_then(|()| f.sync_data()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_closed_and_the_sale_resumes_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&root.path().join("disk"), 64) else {
        eprintln!("skipped: mounting a tmpfs is not permitted here");
        return;
    };
    let spool_dir = fs.0.join("spool");
    let journal_dir = fs.0.join("journal");
    let redis = FaultProxy::start(redis_addr().await).await;
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", dead_addr().await)),
        redis_url: Some(format!("redis://{}/", redis.addr)),
        tweak: Some(Box::new(move |c| {
            c.durability.spool_dir = spool_dir.clone();
            c.durability.journal_dir = journal_dir.clone();
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    let filler = fs.fill();

    // The broker is away and the spool cannot be written: 503, the
    // reservation released, nothing held.
    let a = app.token("full-a", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &a, 1).await;
    assert_eq!((s, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert_eq!(app.counters(round, items[0]).await, (3, 3, 0, 0));
    let held = app
        .state
        .sale
        .buyer_attempt(round, items[0], "full-a")
        .await
        .unwrap();
    assert_eq!(held, None);

    // Redis away too and the journal cannot be written: 503, never
    // "processing".
    redis.down();
    let b = app.token("full-b", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &b, 1).await;
    assert_eq!((s, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(app.state.durable.journal.is_empty());

    // Space returns: the journal takes the buy, and once Redis answers it
    // is reserved and its order spooled.
    std::fs::remove_file(&filler).unwrap();
    let (s, vb) = app.buy(round, items[0], &b, 1).await;
    assert_eq!(
        (s, vb["status"].as_str()),
        (202, Some("processing")),
        "{vb}"
    );
    redis.up();
    eventually(Duration::from_secs(15), || async {
        app.state.durable.journal.is_empty().then_some(())
    })
    .await;
    assert_eq!(app.state.durable.spool.len(), 1);
    assert_eq!(app.counters(round, items[0]).await, (3, 2, 1, 0));
    let (s, va) = app.buy(round, items[0], &a, 1).await;
    assert_eq!((s, va["status"].as_str()), (202, Some("queued")), "{va}");
    assert_eq!(app.counters(round, items[0]).await, (3, 1, 2, 0));
    app.teardown().await;
    drop(fs);
}

#[tokio::test]
async fn a_spool_directory_removed_under_the_backend_fails_closed() {
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", dead_addr().await)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(3, 1)]), -1_000, 3_600_000).await;
    std::fs::remove_dir_all(&app.config.durability.spool_dir).unwrap();
    let t = app.token("gone", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 1).await;
    assert_eq!((s, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert_eq!(app.counters(round, items[0]).await, (3, 3, 0, 0));
    app.teardown().await;
}

#[tokio::test]
async fn the_same_order_twice_in_one_batch_is_written_once_within_stock() {
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", dead_addr().await)),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(1, 1)]), -1_000, 3_600_000).await;
    let t = app.token("twice", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 1).await;
    assert_eq!(s, 202, "{v}");
    // The spooled message and, say, the sweep's republication of it reach
    // the writer together: the last unit is still this buyer's.
    let msg = app.state.durable.spool.oldest(1).remove(0).msg;
    app.order_writer()
        .write_direct(&[msg.clone(), msg])
        .await
        .unwrap();
    let f = app.poll_final(v["attempt_id"].as_str().unwrap(), &t).await;
    assert_eq!(f["status"], "ordered", "{f}");
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.counters(round, items[0]).await, (1, 0, 1, 0));
    app.teardown().await;
}

#[tokio::test]
async fn a_publish_group_whose_confirms_never_come_releases_every_reservation_in_it() {
    let proxy = FaultProxy::start(broker_addr().await).await;
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        amqp_url: Some(format!("amqp://guest:guest@{}/%2f", proxy.addr)),
        tweak: Some(Box::new(|c| {
            c.rabbitmq.confirm_timeout_ms = 600;
            // Groups, and a window long enough that buys sent together
            // form one.
            c.rabbitmq.publish_batch = 256;
            c.rabbitmq.publish_window_us = 10_000;
        })),
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(6, 1)]), -1_000, 3_600_000).await;
    // A warm buy: the publisher is connected through the proxy.
    let first = app.token("g-first", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &first, 1).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("queued")), "{v}");
    // Nothing can be spooled either: an unconfirmed buy must be released.
    std::fs::remove_dir_all(&app.config.durability.spool_dir).unwrap();

    proxy.blackhole();
    let tokens: Vec<String> = (0..4)
        .map(|i| app.token(&format!("g{i}"), Role::Buyer))
        .collect();
    let started = std::time::Instant::now();
    let answers =
        futures::future::join_all(tokens.iter().map(|t| app.buy(round, items[0], t, 1))).await;
    for (s, v) in &answers {
        assert_eq!((*s, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the group failed before its confirm deadline"
    );
    // Every reservation of the group went back; the warm one stays.
    assert_eq!(app.counters(round, items[0]).await, (6, 5, 1, 0));

    // The broker is reachable again: the next group reconnects and confirms.
    // (With no spool, a 202 now means a confirmed publish.)
    proxy.up();
    let again = &tokens[0];
    eventually(Duration::from_secs(10), || async {
        let (s, _) = app.buy(round, items[0], again, 1).await;
        (s == 202).then_some(())
    })
    .await;
    assert_eq!(app.counters(round, items[0]).await, (6, 4, 2, 0));
    app.teardown().await;
}
