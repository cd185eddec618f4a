//! Runs the campaign: starts the servers it needs once (a Redis per kind
//! of persistence, one RabbitMQ node, one PostgreSQL cluster), then per
//! scenario a fresh key prefix, queue and database, the Seckill processes,
//! a sale with its crowd, the fault, the wait for the sale to come to rest,
//! and the row. Every process is killed and the run directory removed at
//! the end, also on an error or Ctrl-C / SIGTERM (drop guards).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use sea_orm::{ConnectOptions, Database};
use seckill_loadgen::{
    setup::{Admin, RoundSpec},
    verdict::{StoreReader, Stores},
};
use tokio::time::Instant;

use crate::{
    cli::Options,
    crowd::{CrowdRun, CrowdSpec},
    measure::{self, Inputs, Row},
    proxy::FaultProxy,
    report::{self, CampaignReport},
    scenario::{self, FaultCtx, Scenario},
    services::{Persistence, Postgres, Rabbit, Redis},
    stack::{Stack, StackSpec},
};

/// How long, once the sale is at rest, edge leases have to be handed back
/// or expire (the edges' lease TTL is 5 s; an idle lease goes back at the
/// renewal after it, every third of the TTL).
const LEASES_REST: Duration = Duration::from_secs(15);

/// The run directory; removed on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("chaos: run directory kept: {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("chaos: could not remove {}: {e}", self.path.display());
        }
    }
}

/// The servers the campaign started.
struct Services {
    redis: Vec<Redis>,
    rabbit: Rabbit,
    pg: Postgres,
}

impl Services {
    fn redis_index(&self, p: Persistence) -> usize {
        self.redis
            .iter()
            .position(|r| r.persistence == p)
            .expect("every needed redis was started")
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs the campaign; `Ok(true)` when every row meets the goal.
pub async fn run(opts: Options) -> anyhow::Result<bool> {
    let scenarios: Vec<Scenario> = opts
        .selected()
        .into_iter()
        .map(|id| scenario::by_id(id).with_context(|| format!("no scenario {id} (0-12)")))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        opts.bin_dir.join("seckill-backend").exists() && opts.bin_dir.join("seckill-edge").exists(),
        "seckill-backend and seckill-edge not found in {} (build them, or pass --bin-dir)",
        opts.bin_dir.display()
    );
    anyhow::ensure!(
        opts.repo_dir.join("lua/edge/access.lua").exists(),
        "{} is not the repository root (no lua/edge/access.lua); pass --repo-dir",
        opts.repo_dir.display()
    );
    let path = match &opts.run_dir {
        Some(p) => p.clone(),
        None => std::env::temp_dir().join(format!(
            "seckill-chaos-{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S"),
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    let run_dir = RunDir {
        path: std::fs::canonicalize(&path)?,
        keep: opts.keep,
    };
    let json_path = opts
        .json
        .clone()
        .unwrap_or_else(|| run_dir.path.join("chaos.json"));
    tracing::info!(dir = %run_dir.path.display(), scenarios = ?opts.selected(), "campaign starting");

    let interrupted = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
        }
    };
    let report = tokio::select! {
        r = campaign(&opts, &scenarios, &run_dir.path) => r?,
        why = interrupted => anyhow::bail!("interrupted ({why}); everything started was stopped"),
    };
    print!("{}", report::text(&report));
    report::write_json(&report, &json_path)?;
    if json_path.starts_with(&run_dir.path) && !opts.keep {
        println!(
            "chaos: JSON report in {} (removed with the run directory; pass --json or --keep)",
            json_path.display()
        );
    } else {
        println!("chaos: JSON report in {}", json_path.display());
    }
    Ok(report.passed)
}

async fn campaign(
    opts: &Options,
    scenarios: &[Scenario],
    dir: &Path,
) -> anyhow::Result<CampaignReport> {
    let begun = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    let kinds: Vec<Persistence> = scenarios.iter().map(|s| s.redis).collect();
    let mut redis = Vec::new();
    for kind in [Persistence::Rdb, Persistence::Aof, Persistence::None] {
        if kinds.contains(&kind) {
            redis.push(
                Redis::start(&dir.join(format!("redis-{kind:?}").to_lowercase()), kind)
                    .await
                    .with_context(|| format!("starting redis ({kind:?})"))?,
            );
        }
    }
    let (rabbit_dir, pg_dir) = (dir.join("rabbitmq"), dir.join("postgres"));
    let (rabbit, pg) = tokio::join!(Rabbit::start(&rabbit_dir), Postgres::start(&pg_dir));
    let mut services = Services {
        redis,
        rabbit: rabbit.context("starting rabbitmq")?,
        pg: pg.context("starting postgresql")?,
    };
    let secret = random_hex(24)?;
    let run_id = random_hex(3)?;
    let mut rows = Vec::new();
    for (n, sc) in scenarios.iter().enumerate() {
        tracing::info!(scenario = sc.id, name = sc.name, "scenario starting");
        // Names carry the run's position too: a scenario may be repeated.
        let tag = format!("{run_id}n{n}");
        let row = run_scenario(opts, &mut services, *sc, dir, &secret, &tag)
            .await
            .with_context(|| format!("scenario {} ({})", sc.id, sc.name))?;
        tracing::info!(
            scenario = sc.id,
            passed = row.passed,
            secs = row.elapsed_secs,
            why = ?row.why,
            "scenario done"
        );
        if !row.passed {
            // The run directory goes with the campaign: keep what the
            // processes said about the fault where CI's output keeps it.
            print_log_tails(&dir.join(format!("{tag}-s{}", sc.id)), &rabbit_dir);
        }
        rows.push(row);
    }
    let Services { redis, rabbit, pg } = services;
    rabbit.stop().await;
    drop(pg);
    drop(redis);
    Ok(CampaignReport {
        started_at,
        elapsed_secs: begun.elapsed().as_secs_f64(),
        quick: opts.quick(),
        buyers: opts.buyers(),
        items: opts.items,
        stock_per_item: opts.stock,
        spread_secs: opts.spread_secs(),
        pay_probability: opts.pay_probability,
        payment_timeout_secs: opts.payment_timeout_secs,
        passed: rows.iter().all(|r| r.passed),
        rows,
    })
}

async fn run_scenario(
    opts: &Options,
    services: &mut Services,
    sc: Scenario,
    dir: &Path,
    secret: &str,
    run_id: &str,
) -> anyhow::Result<Row> {
    let begun = Instant::now();
    let sdir = dir.join(format!("{run_id}-s{}", sc.id));
    std::fs::create_dir_all(&sdir)?;
    let ri = services.redis_index(sc.redis);
    let redis_url = services.redis[ri].url();
    let proxy = FaultProxy::start(services.redis[ri].addr()).await?;
    let db_name = format!("chaos_{run_id}_s{}", sc.id);
    services.pg.create_db(&db_name).await?;
    let prefix = format!("chaos{run_id}s{}", sc.id);
    let spec = StackSpec {
        bin_dir: std::fs::canonicalize(&opts.bin_dir)?,
        repo_dir: std::fs::canonicalize(&opts.repo_dir)?,
        dir: sdir.clone(),
        secret: secret.to_owned(),
        redis_url: redis_url.clone(),
        backend_redis_url: proxy.url(),
        key_prefix: prefix.clone(),
        amqp_url: services.rabbit.url(),
        queue: format!("chaos.{run_id}.s{}.orders", sc.id),
        database_url: services.pg.url(&db_name),
        payment_timeout_secs: opts.payment_timeout_secs,
        sweep_interval_ms: 500,
        // Long enough for a RabbitMQ restart on two busy cores after the
        // outages of scenarios 4 and 12: the spooled orders are written,
        // not released as backlog.
        backlog_threshold_ms: 90_000,
        clock_offsets_ms: sc.clock_offsets_ms(),
        direct_writer: sc.direct_writer(),
        direct_after_ms: 3_000,
    };
    let mut stack = Stack::start(spec.clone()).await?;

    // The sale: starts in 3 s (buyers load the page and sync their clocks
    // meanwhile), buyers arrive over the spread.
    let spread = Duration::from_secs(opts.spread_secs());
    let buyers = opts.buyers();
    let starts = unix_ms() + 3_000;
    // The window stays open long enough for the wave after the slowest
    // fault (a RabbitMQ restart on busy cores); the crowd is done earlier.
    let ends = starts + spread.as_millis() as i64 + 30_000 + sc.extra().as_millis() as i64;
    let admin = Admin::new(&stack.admin_url(), secret)?;
    let round = admin
        .open_round(&RoundSpec {
            name: format!("chaos scenario {}", sc.id),
            items: opts.items,
            stock: opts.stock,
            per_user_limit: 1,
            starts_at_ms: starts,
            ends_at_ms: ends,
            admission_window_ms: None,
            pow_difficulty: None,
        })
        .await?;
    let crowd_spec = CrowdSpec {
        edges: stack.edge_urls(),
        buyers,
        spread,
        pay_probability: opts.pay_probability,
        requests_per_buyer: 5,
        concurrency: opts.concurrency,
        secret: secret.to_owned(),
        seed: opts.seed ^ u64::from(sc.id),
        cap: Duration::from_secs(3) + spread + Duration::from_secs(40) + sc.extra(),
    };
    let crowd = CrowdRun::spawn(&crowd_spec, &round)?;

    let db = {
        let mut o = ConnectOptions::new(spec.database_url.clone());
        o.max_connections(2).sqlx_logging(false);
        Database::connect(o)
            .await
            .context("connecting to the scenario's database")?
    };
    let fault_after = if opts.quick() { 3_000 } else { 4_000 };
    let fault = scenario::inject(
        sc,
        FaultCtx {
            redis: &mut services.redis[ri],
            rabbit: &mut services.rabbit,
            pg: &mut services.pg,
            stack: &mut stack,
            proxy: &proxy,
            db: &db,
            round: &round,
            prefix: &prefix,
            starts_ms: starts,
            at_ms: starts + fault_after,
            snapshot_at_ms: starts + 1_000,
        },
    )
    .await;
    // A wave after the fault is lifted: a quarter of the crowd over 3 s.
    let wave = match fault.lifted_ms {
        Some(lifted) if lifted < ends - 3_000 => Some(CrowdRun::spawn_wave(
            &CrowdSpec {
                buyers: crowd_spec.buyers / 4,
                spread: Duration::from_secs(3),
                ..crowd_spec.clone()
            },
            &round,
            crowd.ledger.clone(),
            crowd.stats.clone(),
            crowd_spec.buyers as usize,
            Duration::from_millis((lifted - starts).max(0) as u64),
        )?),
        _ => None,
    };
    let (ledger, stats, mut finished) = crowd.finish().await?;
    let mut buyers = buyers;
    if let Some(w) = wave {
        buyers += crowd_spec.buyers / 4;
        finished &= w.finish().await?.2;
    }
    tracing::info!(scenario = sc.id, finished, "crowd done");

    // Let the sale end and the payment timeout run out, then judge.
    let rest_limit = Duration::from_millis(opts.payment_timeout_secs * 1_000 + 25_000);
    let stores = Stores {
        redis_url: redis_url.clone(),
        redis_prefix: prefix.clone(),
        database_url: spec.database_url.clone(),
    };
    let reader = StoreReader::connect(&stores).await?;
    let snapshot = measure::quiesce(&reader, round.id, rest_limit).await?;
    let told = ledger.told_202.lock().expect("ledger").clone();
    let mut conn = services.redis[ri].connection().await?;
    let ids: Vec<&String> = told.keys().collect();
    let redis_attempts = measure::attempt_states(&mut conn, &prefix, &ids).await?;
    let leases = measure::leases_at_rest(&mut conn, &prefix, &round, LEASES_REST).await?;
    let reconcile = match spec.reconcile(round.id).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reconcile failed");
            None
        }
    };
    let outcomes = stats.outcomes();
    let empty = Default::default();
    let mut row = measure::row(&Inputs {
        scenario: sc,
        round: &round,
        buyers,
        told: &told,
        buy_outcomes: outcomes.get("buy").unwrap_or(&empty),
        snapshot: &snapshot,
        redis_attempts: &redis_attempts,
        reconcile: reconcile.as_ref().map(|(j, d)| (j, *d)),
        fault: &fault,
        crowd_capped: !finished,
        leases: &leases,
    });
    stack.stop().await;
    drop(proxy);
    row.elapsed_secs = begun.elapsed().as_secs_f64();
    row.spread_secs = spread.as_secs_f64();
    Ok(row)
}

/// Lines kept per log when a scenario fails.
const TAIL_LINES: usize = 30;

/// Prints to stderr the last warnings and errors of a failed scenario's
/// backends and worker, and of the broker.
fn print_log_tails(scenario_dir: &Path, rabbit_dir: &Path) {
    let mut logs: Vec<_> = std::fs::read_dir(scenario_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.extend(
        std::fs::read_dir(rabbit_dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log")),
    );
    logs.sort();
    for path in logs {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<String> = text
            .lines()
            .map(strip_ansi)
            .filter(|l| {
                [" WARN ", " ERROR ", "[warning]", "[error]"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        eprintln!("--- {}: last warnings and errors ---", path.display());
        for l in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
            eprintln!("{}", l.chars().take(300).collect::<String>());
        }
    }
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
