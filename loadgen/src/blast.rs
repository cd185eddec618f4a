//! Blast mode, for benchmarks: many distinct buyers at a fixed concurrency
//! for a fixed time, no page, no clock sync, no polling — the buy path's
//! throughput. Two phases on a round it opens itself:
//!
//! 1. `reserve` — an item with a huge stock: every request is a new buyer,
//!    so every answer is a full reservation (Redis script, confirmed
//!    publish, `202`). Reports reservations per second.
//! 2. `sold_out` — an item whose only unit is already taken: every answer
//!    is `410 sold_out`. Reports sold-out answers per second.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use seckill_backend::auth::{Role, TokenKeys};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    client::Http,
    setup::{Admin, RoundSpec},
    stats::{Kind, Latency, Stats},
};

/// What a blast needs.
#[derive(Clone, Debug)]
pub struct BlastOptions {
    pub target: String,
    pub admin: String,
    pub secret: String,
    /// Length of each phase.
    pub seconds: Duration,
    pub concurrency: usize,
    /// Stock of the `reserve` phase's item (must outlast the phase).
    pub stock: i64,
    /// Skip the `sold_out` phase.
    pub reserve_only: bool,
}

/// One phase's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub item_id: i64,
    pub seconds: f64,
    pub requests: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Answers of the phase's expected kind (`202` or `410 sold_out`) per second.
    pub per_sec: f64,
    pub latency: Latency,
}

/// Both phases.
#[derive(Clone, Debug, Serialize)]
pub struct BlastReport {
    pub target: String,
    pub round_id: i64,
    pub concurrency: usize,
    pub reserve: Phase,
    pub sold_out: Option<Phase>,
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Opens the round and runs the phases.
pub async fn run(opts: BlastOptions) -> anyhow::Result<BlastReport> {
    let admin = Admin::new(&opts.admin, &opts.secret)?;
    let now = unix_ms();
    let reserve_round = admin
        .open_round(&RoundSpec {
            name: "Blast: reservations".into(),
            items: 1,
            stock: opts.stock,
            per_user_limit: 1,
            starts_at_ms: now - 1_000,
            ends_at_ms: now + 3_600_000,
            admission_window_ms: None,
            pow_difficulty: None,
        })
        .await?;
    let keys = Arc::new(TokenKeys::new(opts.secret.as_bytes(), 5));
    let http = Http::new(&opts.target, opts.concurrency, Duration::from_secs(10))?;
    let item = reserve_round.items[0].id;
    let reserve = phase(
        "reserve",
        &http,
        &keys,
        reserve_round.id,
        item,
        &opts,
        "202 queued",
    )
    .await;

    let sold_out = if opts.reserve_only {
        None
    } else {
        let r = admin
            .open_round(&RoundSpec {
                name: "Blast: sold out".into(),
                items: 1,
                stock: 1,
                per_user_limit: 1,
                starts_at_ms: now - 1_000,
                ends_at_ms: now + 3_600_000,
                admission_window_ms: None,
                pow_difficulty: None,
            })
            .await?;
        let item = r.items[0].id;
        // Take the only unit.
        let a = http
            .send(
                http.post(&format!("/api/rounds/{}/items/{item}/buy", r.id))
                    .bearer_auth(keys.mint("blast-first", Role::Buyer, 3600))
                    .json(&json!({"qty": 1})),
            )
            .await;
        anyhow::ensure!(a.status == 202, "taking the only unit: {}", a.outcome);
        Some(phase("sold_out", &http, &keys, r.id, item, &opts, "410 sold_out").await)
    };
    Ok(BlastReport {
        target: opts.target,
        round_id: reserve_round.id,
        concurrency: opts.concurrency,
        reserve,
        sold_out,
    })
}

async fn phase(
    name: &str,
    http: &Http,
    keys: &Arc<TokenKeys>,
    round: i64,
    item: i64,
    opts: &BlastOptions,
    expected: &str,
) -> Phase {
    let stats = Arc::new(Stats::new());
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + opts.seconds;
    let path = format!("/api/rounds/{round}/items/{item}/buy");
    let workers = (0..opts.concurrency).map(|_| {
        let (http, keys, stats, next, path) = (
            http.clone(),
            keys.clone(),
            stats.clone(),
            next.clone(),
            path.clone(),
        );
        let tag = format!("{name}-r{round}");
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let token = keys.mint(&format!("{tag}-{n}"), Role::Buyer, 3600);
                let a = http
                    .send(http.post(&path).bearer_auth(token).json(&json!({"qty": 1})))
                    .await;
                stats.record(Kind::Buy, &a.outcome, a.latency);
            }
        })
    });
    futures::future::join_all(workers).await;
    let secs = start.elapsed().as_secs_f64();
    let outcomes = stats.outcomes().remove("buy").unwrap_or_default();
    let requests = outcomes.values().sum();
    let ok = outcomes.get(expected).copied().unwrap_or(0);
    Phase {
        name: name.into(),
        item_id: item,
        seconds: secs,
        requests,
        outcomes,
        per_sec: ok as f64 / secs,
        latency: stats.latencies().remove("buy").unwrap_or_default(),
    }
}
