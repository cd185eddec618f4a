//! Starts the real edge binary on free ports (own pid file, upgrade socket,
//! Redis prefix and copy of the Lua files) and an in-process backend with
//! isolated stores, plus a counting TCP proxy between them.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::{EntityTrait, PaginatorTrait};
use seckill_backend::{
    config::{Config, QueueType},
    startup::{Application, BuildOptions},
    store::entities::order,
};
use seckill_proto::auth::{Role, TokenKeys};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

pub fn unique() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn redis_url() -> String {
    std::env::var("SECKILL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

pub fn amqp_url() -> String {
    std::env::var("SECKILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Retries `check` until it returns `Some`, failing after `limit`.
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
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A backend in this process, with its own key prefix, queue and SQLite.
pub struct Backend {
    pub addr: SocketAddr,
    pub secret: String,
    pub prefix: String,
    pub pages: PathBuf,
    pub state: seckill_backend::routes::AppState,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    queue: String,
    _dir: tempfile::TempDir,
}

impl Backend {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A backend whose config `adjust` changes first (e.g. its own Redis).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let id = unique();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.http.listen = "127.0.0.1:0".parse().unwrap();
        cfg.http.metrics_listen = None;
        cfg.auth.secret = format!("edge-test-secret-{id}");
        cfg.redis.url = redis_url();
        cfg.redis.key_prefix = format!("te{id}");
        cfg.rabbitmq.url = amqp_url();
        cfg.rabbitmq.queue = format!("seckill.edgetest.{id}");
        cfg.rabbitmq.queue_type = QueueType::Classic;
        // A test that fails before its teardown leaves no queues behind.
        cfg.rabbitmq.queue_expires_ms = Some(900_000);
        cfg.sale.rounds_cache_ms = 50;
        cfg.pages.dir = dir.path().join("pages");
        std::fs::create_dir_all(&cfg.pages.dir).unwrap();
        // One spool and journal per backend: tests run side by side.
        cfg.durability.spool_dir = dir.path().join("spool");
        cfg.durability.journal_dir = dir.path().join("journal");
        cfg.database.url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("orders.db").display()
        );
        adjust(&mut cfg);
        cfg.validate().expect("valid backend config");
        let app = Application::build(cfg.clone(), BuildOptions::default())
            .await
            .expect("backend builds");
        let addr = app.local_addr();
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until(shutdown.clone()));
        Self {
            addr,
            secret: cfg.auth.secret.clone(),
            prefix: cfg.redis.key_prefix.clone(),
            pages: cfg.pages.dir.clone(),
            state,
            client: reqwest::Client::new(),
            shutdown,
            task: Some(task),
            queue: cfg.rabbitmq.queue.clone(),
            _dir: dir,
        }
    }

    pub fn keys(&self) -> TokenKeys {
        TokenKeys::new(self.secret.as_bytes(), 0)
    }

    pub fn token(&self, sub: &str, role: Role) -> String {
        self.keys().mint(sub, role, 3600)
    }

    /// Creates, submits and approves a round of `items`, open now, without
    /// an admission window (tests about the window set their own:
    /// [`Backend::approve_round`]).
    pub async fn open_round(&self, items: Value) -> (i64, Vec<i64>) {
        let starts = chrono::Utc::now().timestamp_millis() + 300;
        let opened = self.approve_round(items, starts, 0).await;
        // Wait for the window to open.
        let wait = starts - chrono::Utc::now().timestamp_millis();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64 + 20)).await;
        }
        opened
    }

    /// Creates, submits and approves a round of `items` starting at
    /// `starts_ms` (ms since the epoch), for an hour, with the admission
    /// window `window_ms`; does not wait for the start.
    pub async fn approve_round(
        &self,
        items: Value,
        starts_ms: i64,
        window_ms: i64,
    ) -> (i64, Vec<i64>) {
        let ts = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let body = json!({
            "name": "Edge test round",
            "starts_at": ts(starts_ms),
            "ends_at": ts(starts_ms + 3_600_000),
            "items": items,
            "admission_window_ms": window_ms,
        });
        let url = |p: &str| format!("http://{}{p}", self.addr);
        let op = self.token("operator-1", Role::Operator);
        let r = self
            .client
            .post(url("/admin/rounds"))
            .bearer_auth(&op)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "create round");
        let round: Value = r.json().await.unwrap();
        assert_eq!(round["admission_window_ms"], window_ms);
        let id = round["id"].as_i64().unwrap();
        let r = self
            .client
            .post(url(&format!("/admin/rounds/{id}/submit")))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "submit");
        let ap = self.token("approver-1", Role::Approver);
        let r = self
            .client
            .post(url(&format!("/admin/rounds/{id}/approve")))
            .bearer_auth(&ap)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "approve");
        let items = round["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        (id, items)
    }

    /// `(total, available, reserved, sold)` from Redis.
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

    /// Stops the backend and deletes its keys and queues.
    pub async fn teardown(mut self) {
        self.shutdown.cancel();
        // Let the order writer finish before its keys are deleted.
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        cleanup_prefix(&self.prefix).await;
        use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
        if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in [self.queue.clone(), format!("{}.dead", self.queue)] {
                let _ = ch
                    .queue_delete(q.into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
    }
}

/// A redis-server of the test's own (no persistence), for tests that stop
/// it; killed when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let me = Self {
            port,
            child: Some(child),
            _dir: dir,
        };
        let url = me.url();
        eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let c = redis::Client::open(url).ok()?;
                let mut c = c.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut c).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
        me
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// SIGSTOP: the server stops answering, connections stay open.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `(available, units held by edge leases)` of an item, read from Redis at
/// `url`; fails if the leases hold more than is available.
pub async fn lease_state(url: &str, prefix: &str, round: i64, item: i64) -> (i64, i64) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let base = format!("{prefix}:{{r{round}:i{item}}}");
    let available: i64 = redis::cmd("HGET")
        .arg(format!("{base}:stock"))
        .arg("available")
        .query_async(&mut c)
        .await
        .unwrap();
    let leases: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(format!("{base}:leases"))
        .query_async(&mut c)
        .await
        .unwrap();
    let leased: i64 = leases.values().sum();
    assert!(
        leased <= available,
        "edge leases hold {leased} units, more than the {available} available"
    );
    (available, leased)
}

pub async fn cleanup_prefix(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
    }
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

/// A loopback TCP proxy that counts buy requests passing to the backend.
pub struct HitCounter {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const BUY_MARK: &[u8] = b"POST /api/rounds/";

impl HitCounter {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut tail: Vec<u8> = Vec::new();
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let mut scan = std::mem::take(&mut tail);
                            scan.extend_from_slice(&buf[..n]);
                            let found = scan
                                .windows(BUY_MARK.len())
                                .filter(|w| *w == BUY_MARK)
                                .count();
                            h.fetch_add(found as u64, Ordering::SeqCst);
                            let keep = scan.len().min(BUY_MARK.len() - 1);
                            tail = scan[scan.len() - keep..].to_vec();
                            if wo.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = wo.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut ro, &mut wi).await;
                        let _ = wi.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Self { addr, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for HitCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings a test changes in the edge's config and Lua limits.
#[derive(Clone)]
pub struct EdgeOptions {
    pub backends: Vec<SocketAddr>,
    pub secret: String,
    pub prefix: String,
    pub pages: PathBuf,
    pub node_id: String,
    pub batch: u32,
    pub lease_ttl_ms: u64,
    pub limits: String,
    pub trusted_proxies: Vec<String>,
    pub redis_url: String,
    /// `permits.redis_timeout_ms`: generous by default, so a loaded test
    /// machine does not turn slow Redis answers into 503s.
    pub redis_timeout_ms: u64,
}

impl EdgeOptions {
    pub fn new(secret: &str, prefix: &str) -> Self {
        Self {
            backends: Vec::new(),
            secret: secret.to_owned(),
            prefix: prefix.to_owned(),
            pages: PathBuf::from("/nonexistent-pages"),
            node_id: format!("node-{}", unique()),
            batch: 5,
            lease_ttl_ms: 5_000,
            limits: limits(100_000.0, 100_000.0, 100, 1.0, true),
            trusted_proxies: Vec::new(),
            redis_url: redis_url(),
            redis_timeout_ms: 1_000,
        }
    }
}

/// A limits.lua body.
pub fn limits(
    rate: f64,
    burst: f64,
    user_count: u32,
    user_window: f64,
    require_token: bool,
) -> String {
    format!(
        r#"return {{
  buy_path = [[^/api/rounds/(\d+)/items/(\d+)/buy$]],
  node = {{ rate = {rate}, burst = {burst} }},
  user = {{ count = {user_count}, window = {user_window} }},
  api = {{ count = 1000, window = 1 }},
  require_token = {require_token},
}}
"#
    )
}

/// Lua files and settings for [`Edge::start_with`].
#[derive(Clone, Default)]
pub struct LuaSetup {
    /// Replaces the shipped access.lua.
    pub access: Option<String>,
    /// The log chunk (`[lua] log`), written as `log.lua` beside access.lua.
    pub log: Option<String>,
    /// Modules written under the edge's own lib dir (listed first in
    /// `lib_dirs`), by path relative to it (`policy/answer.lua`).
    pub lib_files: Vec<(String, String)>,
    /// `[lua] max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// Extra environment for the edge (`SECKILL_EDGE__...`).
    pub env: Vec<(String, String)>,
}

/// The edge binary running as a child process.
pub struct Edge {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub lua_dir: PathBuf,
    /// The edge's own lib dir (first in `lib_dirs`).
    pub lib_dir: PathBuf,
    pub client: reqwest::Client,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Edge {
    pub async fn start(opts: &EdgeOptions) -> Self {
        Self::start_with(opts, &LuaSetup::default()).await
    }

    pub async fn start_with(opts: &EdgeOptions, setup: &LuaSetup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lua_dir = dir.path().join("edge");
        std::fs::create_dir_all(&lua_dir).unwrap();
        for f in ["access.lua", "check.lua"] {
            std::fs::copy(repo_root().join("lua/edge").join(f), lua_dir.join(f)).unwrap();
        }
        std::fs::write(lua_dir.join("limits.lua"), &opts.limits).unwrap();
        if let Some(src) = &setup.access {
            std::fs::write(lua_dir.join("access.lua"), src).unwrap();
        }
        let lib_dir = dir.path().join("lib");
        for (rel, src) in &setup.lib_files {
            let p = lib_dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, src).unwrap();
        }
        let mut lua_extra = String::new();
        if let Some(src) = &setup.log {
            std::fs::write(lua_dir.join("log.lua"), src).unwrap();
            lua_extra.push_str(&format!("log = \"{}/log.lua\"\n", lua_dir.display()));
        }
        if let Some(n) = setup.max_body_bytes {
            lua_extra.push_str(&format!("max_body_bytes = {n}\n"));
        }
        let libs = if setup.lib_files.is_empty() {
            format!("\"{}\"", repo_root().join("lua").display())
        } else {
            format!(
                "\"{}\", \"{}\"",
                lib_dir.display(),
                repo_root().join("lua").display()
            )
        };
        let port = free_port();
        let mport = free_port();
        let backends: Vec<String> = if opts.backends.is_empty() {
            vec![format!("\"127.0.0.1:{}\"", free_port())]
        } else {
            opts.backends.iter().map(|a| format!("\"{a}\"")).collect()
        };
        let trusted: Vec<String> = opts
            .trusted_proxies
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect();
        let toml = format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{mport}"
threads = 2
trusted_proxies = [{trusted}]
grace_period_secs = 0
shutdown_timeout_secs = 2
pid_file = "{d}/edge.pid"
upgrade_sock = "{d}/upgrade.sock"

[auth]
secret = "{secret}"
leeway_secs = 0

[pages]
dir = "{pages}"
cache_ttl_ms = 200

[lua]
access = "{lua}/access.lua"
lib_dirs = [{libs}]
reload_interval_ms = 100
{lua_extra}
[upstream]
backends = [{backends}]
health_interval_ms = 200
connect_timeout_ms = 500

[permits]
redis_url = "{redis}"
key_prefix = "{prefix}"
node_id = "{node}"
batch = {batch}
lease_ttl_ms = {ttl}
recheck_ms = 100
redis_timeout_ms = {rt}
"#,
            trusted = trusted.join(", "),
            d = dir.path().display(),
            secret = opts.secret,
            pages = opts.pages.display(),
            lua = lua_dir.display(),
            backends = backends.join(", "),
            redis = opts.redis_url,
            prefix = opts.prefix,
            node = opts.node_id,
            batch = opts.batch,
            ttl = opts.lease_ttl_ms,
            rt = opts.redis_timeout_ms,
        );
        let cfg_path = dir.path().join("edge.toml");
        std::fs::write(&cfg_path, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("edge.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_seckill-edge"))
            .arg("--config")
            .arg(&cfg_path)
            .env(
                "RUST_LOG",
                std::env::var("EDGE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(setup.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("edge starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let metrics_addr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .unwrap();
        let mut edge = Self {
            addr,
            metrics_addr,
            lua_dir,
            lib_dir,
            client,
            child: Some(child),
            _dir: dir,
        };
        let c = edge.client.clone();
        let url = edge.url("/healthz");
        let logp = edge._dir.path().join("edge.log");
        let child = edge.child.as_mut().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "edge exited with {status}: {}",
                    std::fs::read_to_string(&logp).unwrap_or_default()
                );
            }
            if let Ok(r) = c.get(&url).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edge did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        edge
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("edge.log")).unwrap_or_default()
    }

    /// POSTs a buy; `(status, body)`.
    pub async fn buy(&self, round: i64, item: i64, token: Option<&str>) -> (u16, Value) {
        let mut req = self
            .client
            .post(self.url(&format!("/api/rounds/{round}/items/{item}/buy")))
            .json(&json!({ "qty": 1 }));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => panic!("request failed: {e:?}\n{}", self.log()),
        }
    }

    /// The metrics page.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sum of a metric's samples whose label set contains all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels.iter().all(|lab| l.contains(lab))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
