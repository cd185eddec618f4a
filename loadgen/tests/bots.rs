//! People and bots through a real edge with purchase tickets on: an
//! in-process backend (own key prefix, queue, SQLite, `[tickets]` on) and
//! the edge binary (own ports, pid file, Redis prefix, copy of the Lua
//! files with the per-network limit on) in front of it.
//!
//! The edge binary is the one beside this test's load generator binary
//! (`cargo test --workspace` builds it), built here with cargo when it is
//! missing; `SECKILL_EDGE_BIN` names another.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use seckill_backend::{
    auth::{Role, TokenKeys},
    config::{Config, QueueType},
    startup::Application,
};
use seckill_loadgen::{
    SaleOptions, Stores,
    client::Http,
    orders::delete_queue,
    profile::{BotMix, Profile},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TICKET_SECRET: &str = "loadgen-test-ticket-secret";

fn unique() -> String {
    format!(
        "{}{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The edge binary: `SECKILL_EDGE_BIN`, or the one beside the load
/// generator's, built once with cargo when it is not there.
fn edge_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("SECKILL_EDGE_BIN") {
            return PathBuf::from(p);
        }
        let dir = Path::new(env!("CARGO_BIN_EXE_seckill-loadgen"))
            .parent()
            .expect("the binary has a directory")
            .to_path_buf();
        let bin = dir.join("seckill-edge");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "seckill-edge", "--bin", "seckill-edge"])
                .arg("--target-dir")
                .arg(dir.parent().expect("a target directory"))
                .current_dir(repo_root())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building seckill-edge failed");
        }
        bin
    })
    .clone()
}

struct Backend {
    addr: SocketAddr,
    config: Config,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Backend {
    async fn spawn(secret: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = unique();
        let mut cfg = Config::default();
        cfg.http.listen = ([127, 0, 0, 1], 0).into();
        cfg.http.metrics_listen = None;
        cfg.auth.secret = secret.into();
        cfg.redis.url = REDIS_URL.into();
        cfg.redis.key_prefix = format!("lgbots{id}");
        cfg.rabbitmq.url = AMQP_URL.into();
        cfg.rabbitmq.queue = format!("seckill.loadgen-bots.{id}");
        cfg.rabbitmq.queue_type = QueueType::Classic;
        cfg.rabbitmq.queue_expires_ms = Some(900_000);
        cfg.database.url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("orders.db").display()
        );
        cfg.pages.dir = dir.path().join("pages");
        std::fs::create_dir_all(&cfg.pages.dir).unwrap();
        cfg.durability.spool_dir = dir.path().join("spool");
        cfg.durability.journal_dir = dir.path().join("journal");
        cfg.sale.rounds_cache_ms = 50;
        cfg.tickets.enabled = true;
        cfg.tickets.secret = TICKET_SECRET.into();
        cfg.validate().unwrap();
        let app = Application::build(cfg.clone(), Default::default())
            .await
            .expect("backend builds");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until(shutdown.clone()));
        Self {
            addr,
            config: cfg,
            shutdown,
            task,
            _dir: dir,
        }
    }

    fn stores(&self) -> Stores {
        Stores {
            redis_url: self.config.redis.url.clone(),
            redis_prefix: self.config.redis.key_prefix.clone(),
            database_url: self.config.database.url.clone(),
        }
    }

    async fn teardown(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        cleanup_prefix(&self.config.redis.key_prefix).await;
        delete_queue(AMQP_URL, &self.config.rabbitmq.queue).await;
    }
}

async fn cleanup_prefix(prefix: &str) {
    let mut c = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
    }
}

/// A limits.lua with the per-network limit on.
fn limits(net_count: u32, net_window: u32) -> String {
    format!(
        r#"return {{
  buy_path = [[^/api/rounds/(\d+)/items/(\d+)/buy$]],
  node = {{ rate = 100000, burst = 100000 }},
  net = {{ count = {net_count}, window = {net_window}, v4_prefix = 24, v6_prefix = 64 }},
  user = {{ count = 5, window = 1 }},
  api = {{ count = 1000, window = 1 }},
  require_token = true,
}}
"#
    )
}

/// The edge binary as a child process (tickets on or off).
struct Edge {
    url: String,
    metrics_url: String,
    prefix: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Edge {
    async fn start(
        secret: &str,
        prefix: &str,
        backend: Option<SocketAddr>,
        limits: &str,
        tickets: bool,
        pages: Option<&Path>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lua = dir.path().join("edge");
        std::fs::create_dir_all(&lua).unwrap();
        for f in ["access.lua", "check.lua"] {
            std::fs::copy(repo_root().join("lua/edge").join(f), lua.join(f)).unwrap();
        }
        std::fs::write(lua.join("limits.lua"), limits).unwrap();
        let (port, mport) = (free_port(), free_port());
        let backend =
            backend.map_or_else(|| format!("127.0.0.1:{}", free_port()), |a| a.to_string());
        let toml = format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
metrics_listen = "127.0.0.1:{mport}"
threads = 2
grace_period_secs = 0
shutdown_timeout_secs = 2
pid_file = "{d}/edge.pid"
upgrade_sock = "{d}/upgrade.sock"

[auth]
secret = "{secret}"
leeway_secs = 5

[pages]
dir = "{pages}"

[lua]
access = "{lua}/access.lua"
lib_dirs = ["{libs}"]
reload_interval_ms = 100

[upstream]
backends = ["{backend}"]
health_interval_ms = 200
connect_timeout_ms = 500

[permits]
redis_url = "{REDIS_URL}"
key_prefix = "{prefix}"
node_id = "lgbots-{port}"
batch = 5
redis_timeout_ms = 1000

[tickets]
enabled = {tickets}
secret = "{TICKET_SECRET}"
"#,
            d = dir.path().display(),
            pages = pages
                .map_or_else(|| dir.path().join("pages"), Path::to_path_buf)
                .display(),
            lua = lua.display(),
            libs = repo_root().join("lua").display(),
        );
        let cfg = dir.path().join("edge.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("edge.log")).unwrap();
        let child = Command::new(edge_bin())
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the edge starts");
        let mut edge = Self {
            url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{mport}/metrics"),
            prefix: prefix.to_owned(),
            child,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = edge.child.try_wait() {
                panic!("the edge exited with {status}: {}", edge.log());
            }
            if let Ok(r) = reqwest::get(format!("{}/api/time", edge.url)).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the edge did not come up: {}",
                edge.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        edge
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("edge.log")).unwrap_or_default()
    }

    /// Sum of the edge's rejections for `reason`.
    async fn rejections(&self, reason: &str) -> f64 {
        let text = reqwest::get(&self.metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mark = format!("reason=\"{reason}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains("rejections") && l.contains(&mark))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_sources_reach_the_edge_as_client_networks() {
    let secret = format!("loadgen-bots-secret-{}", unique());
    let prefix = format!("lgnet{}", unique());
    // One buy per /24 per minute; no backend needed: the buys are for an
    // item that does not exist, answered 404 by the edge after the limits.
    let edge = Edge::start(&secret, &prefix, None, &limits(1, 60), false, None).await;
    let sources: Vec<Option<IpAddr>> = ["127.11.1.1", "127.11.2.1", "127.11.1.7"]
        .iter()
        .map(|a| Some(a.parse().unwrap()))
        .collect();
    let clients = Http::per_source(
        std::slice::from_ref(&edge.url),
        4,
        Duration::from_secs(5),
        &sources,
    )
    .unwrap();
    let keys = TokenKeys::new(secret.as_bytes(), 5);
    let mut statuses = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let a = c
            .send(
                c.post("/api/rounds/999999/items/999999/buy")
                    .bearer_auth(keys.mint(&format!("net-user-{n}"), Role::Buyer, 600)),
            )
            .await;
        statuses.push(a.status);
    }
    // Two networks pass the limit; the third address shares the first
    // one's /24 and is refused.
    assert_eq!(statuses, [404, 404, 429], "{}", edge.log());
    assert_eq!(edge.rejections("network_limit").await, 1.0);
    cleanup_prefix(&edge.prefix).await;
}

/// A backend with tickets on, an edge in front of it, and the options of a
/// crowd with tickets and 20% bots sent through the edge.
async fn crowd_through_an_edge(name: &str) -> (Backend, Edge, SaleOptions) {
    let secret = format!("loadgen-{name}-secret-{}", unique());
    let backend = Backend::spawn(&secret).await;
    let edge = Edge::start(
        &secret,
        &backend.config.redis.key_prefix,
        Some(backend.addr),
        &limits(20, 1),
        true,
        Some(&backend.config.pages.dir),
    )
    .await;
    let opts = SaleOptions {
        target: edge.url.clone(),
        admin: format!("http://{}", backend.addr),
        secret,
        stores: backend.stores(),
        items: 1,
        repeat_clickers: 0.0,
        forgers: 0.0,
        early_birds: 0.0,
        // The ticket window opens 2 s before the start: time for the crowd
        // to sync its clock first, so early bots fire ahead of it.
        start_in: Duration::from_millis(5_000),
        duration: Duration::from_secs(60),
        concurrency: 64,
        settle: Duration::from_secs(15),
        progress: false,
        tickets: true,
        bots_pct: 20.0,
        buyers_per_address: Some(2),
        ..Default::default()
    };
    (backend, edge, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_crowd_with_tickets_reports_who_won() {
    let (backend, edge, base) = crowd_through_an_edge("bots").await;
    let opts = SaleOptions {
        buyers: 200,
        stock: 20,
        bot_mix: Some(
            "early=1,hammer=1,network=1,sharing=1"
                .parse::<BotMix>()
                .unwrap(),
        ),
        bot_requests: 60,
        ..base
    };
    let report = seckill_loadgen::run(opts).await.expect("the sale runs");
    println!("{report}");

    // The invariants hold: exactly the stock sold.
    assert!(
        report.verdict.passed,
        "verdict: {:#?}\n{}",
        report.verdict.checks,
        edge.log()
    );
    assert!(report.sale.sold_out, "{:?}", report.sale);
    assert_eq!(report.sale.units_taken, 20);
    assert_eq!(report.sale.orders, 20);

    // The fairness report: people first, then each bot profile; shares of
    // the crowd and of the units add up to 100 %.
    let f = &report.fairness;
    let text = report.to_string();
    assert!(
        text.lines()
            .any(|l| l == f.line && l.starts_with("fairness: people 80.0% of buyers")),
        "{text}"
    );
    let names: Vec<Profile> = f.profiles.iter().map(|p| p.profile).collect();
    assert_eq!(
        names,
        [
            Profile::People,
            Profile::Early,
            Profile::Hammer,
            Profile::Network,
            Profile::Sharing
        ]
    );
    assert_eq!(f.buyers, 200);
    assert_eq!(f.units_won, 20, "units won are the confirmed orders");
    let sum = |g: fn(&seckill_loadgen::fairness::ProfileRow) -> f64| {
        f.profiles.iter().map(g).sum::<f64>()
    };
    assert!((sum(|p| p.share_of_buyers_pct) - 100.0).abs() < 1e-6);
    assert!((sum(|p| p.share_of_units_pct) - 100.0).abs() < 1e-6);
    assert!((f.people.share_of_buyers_pct + f.bots.share_of_buyers_pct - 100.0).abs() < 1e-6);
    for p in &f.profiles {
        assert!(p.requests_total > 0, "{:?} sent nothing", p.profile);
    }
    let row = |p: Profile| f.profiles.iter().find(|r| r.profile == p).unwrap();

    assert_eq!(
        report.requests["page"]["200"], 160,
        "the edge serves the pages; only people load them"
    );

    // Every person and bot asked for a ticket; people bought with theirs.
    assert!(row(Profile::People).requests["ticket"] >= 160);
    assert!(row(Profile::People).answers["ticket"]["200"] >= 150);

    // Sharing bots buy with another account's ticket: refused, no unit.
    let sharing = row(Profile::Sharing);
    assert_eq!(sharing.units_won, 0);
    let buys = &sharing.answers["buy"];
    assert!(buys.get("403 ticket_other_user").is_some(), "{buys:?}");
    assert!(
        !buys
            .keys()
            .any(|o| o.starts_with("202") || o.starts_with("200"))
    );

    // Early bots fired before the ticket window and got no ticket there.
    let early = row(Profile::Early);
    assert!(
        early.tickets_before_window.values().sum::<u64>() > 0,
        "early bots asked before the window: {early:?}"
    );
    assert!(
        !early.tickets_before_window.contains_key("200"),
        "{:?}",
        early.tickets_before_window
    );
    assert!(early.tickets_before_window.contains_key("425 not_started"));
    // Only early bots asked before the window.
    for p in f.profiles.iter().filter(|p| p.profile != Profile::Early) {
        assert!(p.tickets_before_window.is_empty(), "{p:?}");
    }

    // The JSON report carries the same.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["fairness"]["line"], f.line);
    assert_eq!(json["fairness"]["profiles"][4]["profile"], "sharing");
    assert_eq!(json["fairness"]["bots"]["buyers"], 40);

    drop(edge);
    backend.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_challenge_only_those_who_solve_it_get_tickets() {
    let (backend, edge, base) = crowd_through_an_edge("pow").await;
    let opts = SaleOptions {
        buyers: 100,
        stock: 10,
        pow_difficulty: Some(3),
        bot_mix: Some("hammer=1,solver=1".parse::<BotMix>().unwrap()),
        bot_requests: 40,
        ..base
    };
    let report = seckill_loadgen::run(opts).await.expect("the sale runs");
    println!("{report}");
    assert!(
        report.verdict.passed,
        "verdict: {:#?}\n{}",
        report.verdict.checks,
        edge.log()
    );
    assert_eq!(report.sale.units_taken, 10);
    let f = &report.fairness;
    let row = |p: Profile| f.profiles.iter().find(|r| r.profile == p).unwrap();

    // Hammer bots skip the challenge: every ticket they ask for is refused
    // and they win nothing.
    let hammer = row(Profile::Hammer);
    assert_eq!(hammer.units_won, 0);
    let tickets = &hammer.answers["ticket"];
    // (Before the ticket window the window's 425 comes first.)
    assert!(
        tickets.contains_key("403 challenge_required")
            && tickets
                .keys()
                .all(|o| o == "403 challenge_required" || o == "425 not_started"),
        "{tickets:?}"
    );
    assert!(!hammer.requests.contains_key("challenge"));

    // Solver bots and people solve one challenge per ticket and get them.
    for p in [Profile::Solver, Profile::People] {
        let r = row(p);
        assert!(r.answers["challenge"]["200"] > 0, "{r:?}");
        assert!(r.answers["ticket"]["200"] > 0, "{r:?}");
        assert!(
            !r.answers["ticket"].contains_key("403 challenge_failed")
                && !r.answers["ticket"].contains_key("403 challenge_required"),
            "{r:?}"
        );
    }
    assert!(row(Profile::People).answers["ticket"]["200"] >= 70);

    drop(edge);
    backend.teardown().await;
}
