//! The load generator against the real stack: a backend started in-process
//! on port 0 with its own Redis key prefix, queue and SQLite file, a crowd
//! of a few hundred buyers (some misbehaving), and the verdict read from the
//! stores. Then the store is corrupted by hand and the recomputed verdict
//! must fail: the verdict comes from Redis and the database, not from the
//! crowd's own counts. A second, smaller sale runs the real binary with
//! `--json` and `--html` and reads both files back.

use std::{net::SocketAddr, time::Duration};

use sea_orm::ConnectionTrait;
use seckill_backend::{
    config::{Config, QueueType},
    startup::Application,
    store::keys::ItemKeys,
};
use seckill_loadgen::{SaleOptions, Stores, orders::delete_queue, verdict};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct Backend {
    addr: SocketAddr,
    config: Config,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Backend {
    async fn spawn() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = format!(
            "{}{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let mut cfg = Config::default();
        cfg.http.listen = ([127, 0, 0, 1], 0).into();
        cfg.http.metrics_listen = None;
        cfg.redis.url = REDIS_URL.into();
        cfg.redis.key_prefix = format!("lgtest{id}");
        cfg.rabbitmq.url = AMQP_URL.into();
        cfg.rabbitmq.queue = format!("seckill.loadgen-test.{id}");
        cfg.rabbitmq.queue_type = QueueType::Quorum;
        cfg.rabbitmq.queue_expires_ms = Some(900_000);
        cfg.database.url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("orders.db").display()
        );
        cfg.pages.dir = dir.path().join("pages");
        cfg.durability.spool_dir = dir.path().join("spool");
        cfg.durability.journal_dir = dir.path().join("journal");
        cfg.sale.rounds_cache_ms = 50;
        // The load generator's default secret is the development one.
        cfg.auth.allow_dev_secret = true;
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

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn teardown(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let mut c = redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.config.redis.key_prefix))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
        }
        delete_queue(AMQP_URL, &self.config.rabbitmq.queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_sale_passes_and_a_corrupted_store_fails_the_verdict() {
    let backend = Backend::spawn().await;
    let url = format!("http://{}", backend.addr);
    let opts = SaleOptions {
        target: url.clone(),
        admin: url,
        stores: backend.stores(),
        buyers: 300,
        items: 2,
        stock: 40,
        repeat_clickers: 0.1,
        forgers: 0.05,
        early_birds: 0.1,
        pay_probability: 0.5,
        start_in: Duration::from_millis(1_500),
        duration: Duration::from_secs(40),
        concurrency: 64,
        settle: Duration::from_secs(10),
        progress: false,
        ..Default::default()
    };
    let report = seckill_loadgen::run(opts).await.expect("the sale runs");
    println!("{report}");

    assert!(
        report.verdict.passed,
        "verdict: {:#?}",
        report.verdict.checks
    );
    assert!(!report.stopped_by_cap);
    // 285 honest buyers over 2 items of 40 units: both sell out.
    assert!(report.sale.sold_out, "{:?}", report.sale);
    assert_eq!(report.sale.units_taken, 80);
    assert_eq!(report.sale.orders, 80);
    assert_eq!(report.sale.answered_202, 80);
    let buy = &report.requests["buy"];
    assert_eq!(buy["202 queued"], 80);
    assert!(
        buy["401 unauthorized"] >= 15,
        "forgers are refused: {buy:?}"
    );
    assert!(buy.get("425 not_started").is_some(), "early birds: {buy:?}");
    assert!(
        buy.get("200 queued").is_some() || buy.get("200 ordered").is_some(),
        "repeat clicks answer 200: {buy:?}"
    );
    assert!(report.latency["buy"].count > 0 && report.latency["poll"].count > 0);
    assert!(report.sale.first_sold_out_answer_after_ms.is_some());

    // Recomputed from the stores alone, the verdict still passes…
    let stores = backend.stores();
    let round = report.round.id;
    let v = verdict::check(&stores, round, None).await.unwrap();
    assert!(v.passed, "{:#?}", v.checks);

    // …and fails on I1 once a unit is added to `sold` by hand.
    let item = report.round.items[0].id;
    let stock_key = ItemKeys::new(&backend.config.redis.key_prefix, round, item).stock();
    let mut c = backend.redis().await;
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&stock_key)
        .arg("sold")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let v = verdict::check(&stores, round, None).await.unwrap();
    assert!(!v.passed);
    let i1 = v.checks.iter().find(|c| c.id == "I1").unwrap();
    assert!(!i1.passed, "{i1:?}");
    assert!(i1.detail.contains(&format!("item {item}")), "{i1:?}");

    // Putting it back makes it pass again; losing an order from the
    // database fails I3 (an ordered attempt without its order).
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&stock_key)
        .arg("sold")
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(verdict::check(&stores, round, None).await.unwrap().passed);
    let db = sea_orm::Database::connect(backend.config.database.url.as_str())
        .await
        .unwrap();
    db.execute_unprepared("DELETE FROM orders WHERE id IN (SELECT id FROM orders LIMIT 1)")
        .await
        .unwrap();
    let v = verdict::check(&stores, round, None).await.unwrap();
    let failed: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.id.as_str())
        .collect();
    assert!(
        failed.contains(&"I3") && failed.contains(&"orders"),
        "{failed:?}"
    );

    // The binary itself, on a fresh round, keeping the report as JSON and
    // as an HTML page.
    let dir = tempfile::tempdir().unwrap();
    let (html, json) = (dir.path().join("sale.html"), dir.path().join("sale.json"));
    let url = format!("http://{}", backend.addr);
    let args: Vec<String> = [
        "--target",
        &url,
        "--redis-url",
        REDIS_URL,
        "--redis-prefix",
        &backend.config.redis.key_prefix,
        "--database-url",
        &backend.config.database.url,
        "--no-progress",
        "--json",
        json.to_str().unwrap(),
        "sale",
        "--buyers",
        "60",
        "--items",
        "1",
        "--stock",
        "10",
        "--start-in-secs",
        "1",
        "--reaction-ms",
        "200",
        "--duration-secs",
        "30",
        "--settle-secs",
        "10",
        "--html",
        html.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_seckill-loadgen"))
            .args(&args)
            .env_remove("SECKILL__AUTH__SECRET")
            .env_remove("SECKILL_ADMIN_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let round = report["round"]["id"].as_i64().unwrap();
    let seconds = report["timeline"]["seconds"].as_array().unwrap();
    let answered: u64 = seconds
        .iter()
        .map(|s| s["reserved"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, 10, "ten 202s on the time line: {seconds:?}");
    assert_eq!(seconds.last().unwrap()["units_taken"], 10);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
    assert!(page.contains(&format!(
        "<h1>Sale of round {round} <span class=\"pass\">PASS</span></h1>"
    )));
    for series in [
        "reserved",
        "sold_out",
        "units_taken",
        "latency_buy",
        "latency_poll",
    ] {
        assert!(
            page.contains(&format!("data-series=\"{series}\"")),
            "{series}"
        );
    }
    assert!(page.contains("<title>") && !page.contains("<script"));
    let title = report["round"]["items"][0]["title"].as_str().unwrap();
    assert!(page.contains(&seckill_loadgen::html::escape(title)));

    backend.teardown().await;
}
