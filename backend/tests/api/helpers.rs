//! Spawns a backend on port 0 with isolated stores, and helpers to drive it.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use sea_orm::{ConnectionTrait, Database, EntityTrait, PaginatorTrait};
use seckill_backend::{
    auth::Role,
    clock::ManualClock,
    config::{Config, QueueType},
    payment::SimulatedProvider,
    queue::OrderWriter,
    routes::AppState,
    startup::{Application, BuildOptions},
    store::entities::order,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A last change to a test app's configuration.
pub type Tweak = Box<dyn Fn(&mut Config) + Send + Sync>;

pub struct TestOptions {
    pub db: Db,
    pub writer: bool,
    /// Overrides the AMQP URL (e.g. an unreachable port or a proxy).
    pub amqp_url: Option<String>,
    /// Overrides the Redis URL (e.g. a proxy that can be cut).
    pub redis_url: Option<String>,
    pub clock: Option<ManualClock>,
    pub payment_timeout_secs: u64,
    pub delivery_limit: Option<u32>,
    /// Replaces the simulated payment provider (tests steer and count it).
    pub provider: Option<Arc<SimulatedProvider>>,
    /// Last changes to the configuration.
    pub tweak: Option<Tweak>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            db: Db::Sqlite,
            writer: true,
            amqp_url: None,
            redis_url: None,
            clock: None,
            payment_timeout_secs: 600,
            delivery_limit: None,
            provider: None,
            tweak: None,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub state: AppState,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    pg_db: Option<String>,
    _pages: tempfile::TempDir,
}

fn unique() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

pub fn amqp_url() -> String {
    std::env::var("SECKILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("SECKILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

pub fn pg_admin_url() -> String {
    std::env::var("SECKILL_TEST_PG_URL").unwrap_or_else(|_| PG_ADMIN_URL.into())
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    pub async fn spawn_with(opts: TestOptions) -> Self {
        let id = unique();
        let pages = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::default();
        cfg.http.listen = "127.0.0.1:0".parse().unwrap();
        cfg.http.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.http.shutdown_grace_ms = 5_000;
        cfg.auth.secret = format!("test-secret-{id}");
        cfg.redis.url = opts.redis_url.clone().unwrap_or_else(redis_url);
        cfg.redis.key_prefix = format!("t{id}");
        cfg.rabbitmq.url = opts.amqp_url.clone().unwrap_or_else(amqp_url);
        cfg.rabbitmq.queue = format!("seckill.test.{id}");
        cfg.rabbitmq.queue_type = QueueType::Quorum;
        cfg.rabbitmq.confirm_timeout_ms = 3_000;
        cfg.rabbitmq.connect_timeout_ms = 2_000;
        // A test that fails before its teardown leaves no queues behind.
        cfg.rabbitmq.queue_expires_ms = Some(900_000);
        if let Some(n) = opts.delivery_limit {
            cfg.rabbitmq.delivery_limit = n;
        }
        cfg.writer.enabled = opts.writer;
        cfg.writer.retry_backoff_ms = 100;
        cfg.sale.payment_timeout_secs = opts.payment_timeout_secs;
        cfg.sale.rounds_cache_ms = 50;
        // Tests move their clocks to the deadline exactly; the grace for
        // nodes whose clocks disagree has its own test.
        cfg.lifecycle.expiry_grace_ms = 0;
        cfg.pages.dir = pages.path().to_path_buf();
        cfg.durability.spool_dir = pages.path().join("spool");
        cfg.durability.journal_dir = pages.path().join("journal");
        let mut pg_db = None;
        cfg.database.url = match opts.db {
            Db::Sqlite => format!(
                "sqlite://{}?mode=rwc",
                pages.path().join("orders.db").display()
            ),
            Db::Postgres => {
                let name = format!("seckill_test_{id}");
                let admin = Database::connect(pg_admin_url())
                    .await
                    .expect("postgres reachable");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                pg_db = Some(name.clone());
                let base = pg_admin_url();
                let base = base
                    .rsplit_once('/')
                    .map(|(b, _)| b.to_owned())
                    .unwrap_or(base);
                format!("{base}/{name}")
            }
        };
        if let Some(t) = &opts.tweak {
            t(&mut cfg);
        }
        cfg.validate().expect("valid test config");

        let mut build = BuildOptions::default();
        if let Some(c) = &opts.clock {
            build.clock = Arc::new(c.clone());
        }
        if let Some(p) = &opts.provider {
            build.provider = Some(p.clone());
        }
        let app = Application::build(cfg.clone(), build)
            .await
            .expect("app builds");
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr();
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until(shutdown.clone()));
        TestApp {
            addr,
            metrics_addr,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            state,
            config: cfg,
            shutdown,
            task: Some(task),
            pg_db,
            _pages: pages,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        self.state.tokens.mint(sub, role, 3600)
    }

    pub fn now_ms(&self) -> i64 {
        self.state.clock.now_ms()
    }

    /// Creates, submits and approves a round; returns (round id, item ids).
    pub async fn open_round(
        &self,
        items: Value,
        starts_in_ms: i64,
        ends_in_ms: i64,
    ) -> (i64, Vec<i64>) {
        let round = self.create_round(items, starts_in_ms, ends_in_ms).await;
        let id = round["id"].as_i64().unwrap();
        let op = self.token("operator-1", Role::Operator);
        let r = self
            .post_json(&format!("/admin/rounds/{id}/submit"), &op, None)
            .await;
        assert_eq!(r.status(), 200, "submit");
        let ap = self.token("approver-1", Role::Approver);
        let r = self
            .post_json(&format!("/admin/rounds/{id}/approve"), &ap, None)
            .await;
        assert_eq!(r.status(), 200, "approve: {:?}", r.text().await);
        let items = round["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        (id, items)
    }

    /// Creates a draft round as `operator-1`; returns the round JSON.
    pub async fn create_round(&self, items: Value, starts_in_ms: i64, ends_in_ms: i64) -> Value {
        let now = self.now_ms();
        let ts = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let body = json!({
            "name": "Test round",
            "starts_at": ts(now + starts_in_ms),
            "ends_at": ts(now + ends_in_ms),
            "items": items,
        });
        let op = self.token("operator-1", Role::Operator);
        let r = self.post_json("/admin/rounds", &op, Some(body)).await;
        assert_eq!(r.status(), 201, "create round");
        r.json().await.unwrap()
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request sent")
    }

    pub async fn buy(&self, round: i64, item: i64, token: &str, qty: i64) -> (u16, Value) {
        let r = self
            .post_json(
                &format!("/api/rounds/{round}/items/{item}/buy"),
                token,
                Some(json!({ "qty": qty })),
            )
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The item's counters straight from Redis.
    pub async fn counters(&self, round: i64, item: i64) -> (i64, i64, i64, i64) {
        let c = self
            .state
            .sale
            .counters(round, item)
            .await
            .unwrap()
            .expect("item preheated");
        (c.total, c.available, c.reserved, c.sold)
    }

    pub async fn order_count(&self) -> u64 {
        order::Entity::find().count(&self.state.db).await.unwrap()
    }

    /// Polls an attempt (as its owner) until its status is final.
    pub async fn poll_final(&self, attempt_id: &str, token: &str) -> Value {
        let path = format!("/api/attempts/{attempt_id}");
        eventually(Duration::from_secs(30), || async {
            let (s, v) = self.get(&path, token).await;
            assert_eq!(s, 200, "poll {attempt_id}: {v}");
            (v["status"] != "queued" && v["status"] != "processing").then_some(v)
        })
        .await
    }

    /// A standalone order writer over this app's stores.
    pub fn order_writer(&self) -> OrderWriter {
        OrderWriter::new(self.state.lifecycle.clone(), Default::default())
    }

    /// Stops the app (gracefully) and leaves its stores and directories as
    /// they are, for a restarted app to take over; returns its
    /// configuration and its directory.
    pub async fn stop(mut self) -> (Config, tempfile::TempDir) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = std::mem::replace(&mut self._pages, dir);
        (self.config.clone(), pages)
    }

    /// Starts a graceful shutdown and waits for the app to finish it (10 s
    /// at most); returns how long it took. The stores stay for `teardown`.
    pub async fn shut_down(&mut self) -> Duration {
        let start = tokio::time::Instant::now();
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("the app stops within 10 s")
                .expect("the app task ends")
                .expect("the app ran cleanly");
        }
        start.elapsed()
    }

    /// Stops the app and removes what the test created.
    pub async fn teardown(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        crate::common::delete_keys(&self.state.sale, &self.config.redis.key_prefix).await;
        crate::common::delete_topology(
            &amqp_url(),
            &seckill_backend::queue::topology::Topology::from_config(&self.config),
        )
        .await;
        if let Some(name) = self.pg_db.take() {
            self.state.db.clone().close().await.ok();
            if let Ok(admin) = Database::connect(pg_admin_url()).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Retries `check` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A loopback TCP proxy that passes traffic, refuses it (cutting every open
/// connection), or blackholes it (connections stay open, nothing flows), to
/// fake an outage of a server without touching the shared one.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: tokio::sync::watch::Sender<Mode>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Refuse,
    Blackhole,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = tokio::sync::watch::channel(Mode::Pass);
        let mode2 = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = mode2.subscribe();
                tokio::spawn(async move {
                    loop {
                        let now = *rx.borrow_and_update();
                        match now {
                            Mode::Refuse => return,
                            Mode::Blackhole => {
                                // Hold the socket, forward nothing, until the mode changes.
                                if rx.changed().await.is_err() {
                                    return;
                                }
                                if *rx.borrow() == Mode::Pass {
                                    return; // the held connection is dropped; clients reconnect
                                }
                            }
                            Mode::Pass => {
                                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                                else {
                                    return;
                                };
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                                    _ = rx.changed() => {
                                        if *rx.borrow() == Mode::Refuse {
                                            return;
                                        }
                                        drop(outbound);
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, mode, task }
    }

    /// Refuses new connections and drops the open ones.
    pub fn down(&self) {
        self.mode.send_replace(Mode::Refuse);
    }

    /// Keeps connections open but lets nothing through.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    pub fn up(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// `n` user ids, `<prefix>-0` …
pub fn users(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

pub fn item(stock: i64, limit: i64) -> Value {
    json!({
        "title": "Phone",
        "description": "A phone at a very low price",
        "image_url": "/assets/phone.png",
        "original_price_cents": 99_900,
        "sale_price_cents": 100,
        "stock": stock,
        "per_user_limit": limit,
    })
}
