//! The scenarios of the campaign — one fault each, injected mid-sale — and
//! how each is injected. Scenario 0 injects nothing: it is the baseline
//! that checks the harness itself (a failing row then means the fault, not
//! the measuring).

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect,
};
use seckill_backend::store::{entities::order, keys::ItemKeys};
use seckill_loadgen::setup::RoundInfo;
use tokio::time::Instant;

use crate::{
    procs::Sig,
    proxy::{FaultProxy, Mode},
    services::{Persistence, Postgres, Rabbit, Redis},
    stack::Stack,
};

/// One row of the campaign.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub id: u32,
    pub name: &'static str,
    /// Which Redis instance the scenario's sale runs on.
    pub redis: Persistence,
}

pub const ALL: [Scenario; 13] = [
    Scenario {
        id: 0,
        name: "no fault (baseline)",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 1,
        name: "redis kill -9, restart from an older snapshot",
        redis: Persistence::Rdb,
    },
    Scenario {
        id: 2,
        name: "redis kill -9, restart empty",
        redis: Persistence::None,
    },
    Scenario {
        id: 3,
        name: "redis SIGSTOP 5 s",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 4,
        name: "rabbitmq kill -9, down 10 s, restart",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 5,
        name: "rabbitmq SIGSTOP 5 s",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 6,
        name: "postgresql kill -9 (postmaster), restart",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 7,
        name: "backend kill -9 with buys in flight",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 8,
        name: "worker kill -9 between commit and ack, restart",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 9,
        name: "edge kill -9 with permits in flight",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 10,
        name: "redis <-> backends blackholed 3 s",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 11,
        name: "one backend's clock 2 s ahead",
        redis: Persistence::Aof,
    },
    Scenario {
        id: 12,
        name: "rabbitmq kill -9, down 20 s: spool handed to the writer",
        redis: Persistence::Aof,
    },
];

/// How long scenario 4 keeps the broker down, and scenario 12.
const BROKER_DOWN: Duration = Duration::from_secs(10);
const BROKER_DOWN_LONG: Duration = Duration::from_secs(20);

pub fn by_id(id: u32) -> Option<Scenario> {
    ALL.iter().copied().find(|s| s.id == id)
}

impl Scenario {
    /// `clock.offset_ms` of the two backends.
    pub fn clock_offsets_ms(&self) -> [i64; 2] {
        if self.id == 11 { [0, 2_000] } else { [0, 0] }
    }

    /// Whether the fault may destroy reservations by itself (Redis losing
    /// acknowledged writes); elsewhere the goal for false accepts is 0.
    pub fn can_destroy(&self) -> bool {
        matches!(self.id, 1 | 2)
    }

    /// Whether the backends run an order writer of their own (the spool's
    /// direct hand-off needs one in the same process).
    pub fn direct_writer(&self) -> bool {
        self.id == 12
    }

    /// Extra time the sale window and the crowd get for a long fault (the
    /// broker kept down, then restarted: up to 40 s on two busy cores).
    pub fn extra(&self) -> Duration {
        match self.id {
            4 => Duration::from_secs(45),
            12 => Duration::from_secs(60),
            _ => Duration::ZERO,
        }
    }

    /// Whether a `503` fails the row: the broker's outage is taken by the
    /// spool.
    pub fn no_503(&self) -> bool {
        matches!(self.id, 4 | 12)
    }

    /// Whether a fault is injected at a moment (scenario 11's skew lasts
    /// the whole sale, 0 has none).
    pub fn has_moment(&self) -> bool {
        !matches!(self.id, 0 | 11)
    }
}

/// What happened when the fault was injected.
#[derive(Clone, Debug, Default)]
pub struct FaultRecord {
    /// Wall-clock ms of the injection and of the end of the fault (the
    /// resume, the restart being up, the proxy passing again).
    pub injected_ms: Option<i64>,
    pub lifted_ms: Option<i64>,
    /// Units available, and units not yet sold (paid), over all items
    /// just before the injection.
    pub available_at_fault: Option<i64>,
    pub unsold_at_fault: Option<i64>,
    /// For Redis restarts: attempts Redis held right after the restart
    /// (read before any backend could reach it) and attempts that had an
    /// order in the database at that moment.
    pub after_restart: Option<(HashSet<String>, HashSet<String>)>,
    pub notes: Vec<String>,
    /// The fault could not be injected as planned.
    pub error: Option<String>,
    /// The row fails on any 503 (the spool takes what the broker does not).
    pub no_503_goal: bool,
    /// (Scenario 12) orders written between the broker's kill and its
    /// restart.
    pub orders_while_down: Option<u64>,
}

/// Everything an injection may touch.
pub struct FaultCtx<'a> {
    pub redis: &'a mut Redis,
    pub rabbit: &'a mut Rabbit,
    pub pg: &'a mut Postgres,
    pub stack: &'a mut Stack,
    pub proxy: &'a FaultProxy,
    pub db: &'a DatabaseConnection,
    pub round: &'a RoundInfo,
    pub prefix: &'a str,
    /// Wall-clock ms the sale starts at.
    pub starts_ms: i64,
    /// Wall-clock ms to inject at, at the latest (scenarios other than 1
    /// inject earlier, once half the stock is reserved).
    pub at_ms: i64,
    /// Wall-clock ms to take scenario 1's early snapshot at.
    pub snapshot_at_ms: i64,
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn sleep_until_ms(target: i64) {
    let wait = target - unix_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Injects the scenario's fault at `ctx.at_ms` and lifts it; never fails
/// (what went wrong goes into the record, and fails the row).
pub async fn inject(sc: Scenario, ctx: FaultCtx<'_>) -> FaultRecord {
    let mut rec = FaultRecord {
        no_503_goal: sc.no_503(),
        ..Default::default()
    };
    if let Err(e) = inject_inner(sc, ctx, &mut rec).await {
        tracing::error!(scenario = sc.id, error = %format!("{e:#}"), "fault injection failed");
        rec.error = Some(format!("{e:#}"));
    }
    rec
}

/// Units available and units not yet sold, over all items (Redis).
async fn stock_left(ctx: &FaultCtx<'_>) -> anyhow::Result<(i64, i64)> {
    let mut c = ctx.redis.connection().await?;
    let (mut available, mut unsold) = (0, 0);
    for it in &ctx.round.items {
        let k = ItemKeys::new(ctx.prefix, ctx.round.id, it.id);
        let (a, s): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(k.stock())
            .arg("available")
            .arg("sold")
            .query_async(&mut c)
            .await?;
        available += a.unwrap_or(0);
        unsold += it.stock - s.unwrap_or(0);
    }
    Ok((available, unsold))
}

/// Waits from the sale's start until Redis shows at most half the stock
/// available, or until `ctx.at_ms` at the latest.
async fn wait_half_reserved(ctx: &FaultCtx<'_>) {
    sleep_until_ms(ctx.starts_ms).await;
    let total = ctx.round.total_stock();
    while unix_ms() < ctx.at_ms {
        if let Ok((available, _)) = stock_left(ctx).await
            && available * 2 <= total
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn inject_inner(
    sc: Scenario,
    ctx: FaultCtx<'_>,
    rec: &mut FaultRecord,
) -> anyhow::Result<()> {
    let mut held_at_snapshot = 0;
    if sc.id == 1 {
        // An early snapshot, then no more: the restart goes back to it.
        // Taken once the sale is under way (a quarter of the stock
        // reserved, or 2 s after the planned moment at the latest).
        sleep_until_ms(ctx.snapshot_at_ms).await;
        let quarter = ctx.round.total_stock() / 4;
        wait_for_attempts(&ctx, quarter as usize, Duration::from_secs(2)).await?;
        let mut c = ctx.redis.connection().await?;
        // No more automatic snapshots; then one now (waiting out an
        // automatic one that may be under way).
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("save")
            .arg("")
            .query_async(&mut c)
            .await
            .context("CONFIG SET save")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis::cmd("SAVE").query_async::<()>(&mut c).await {
                Ok(()) => break,
                Err(e) if e.to_string().contains("in progress") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context("SAVE"),
            }
        }
        held_at_snapshot = attempts_in_redis(&ctx).await?.len();
    }
    if !sc.has_moment() {
        return Ok(());
    }
    if sc.id == 1 {
        sleep_until_ms(ctx.at_ms).await;
    } else {
        // Mid-sale: while units are still on sale, so the fault meets buys
        // that could be served.
        wait_half_reserved(&ctx).await;
    }
    if sc.id == 1 {
        // Kill once a fifth of the stock more was reserved after the
        // snapshot (or 3 s late at the latest), so the snapshot is older.
        let more = held_at_snapshot + (ctx.round.total_stock() / 5) as usize;
        let now = wait_for_attempts(&ctx, more, Duration::from_secs(3)).await?;
        rec.notes.push(format!(
            "snapshot held {held_at_snapshot} attempts of the round; {now} at the kill"
        ));
    }
    if let Ok((available, unsold)) = stock_left(&ctx).await {
        rec.available_at_fault = Some(available);
        rec.unsold_at_fault = Some(unsold);
    }
    let now = unix_ms();
    rec.injected_ms = Some(now);
    tracing::info!(scenario = sc.id, name = sc.name, "injecting");
    match sc.id {
        1 | 2 => {
            ctx.redis.kill9().await?;
            // Keep the backends off the new Redis until its content is read.
            ctx.proxy.set(Mode::Reset);
            ctx.redis.restart().await?;
            let present = attempts_in_redis(&ctx).await?;
            let ordered = orders_in_db(&ctx).await?;
            rec.notes.push(format!(
                "after the restart Redis held {} attempts of the round; the database {} orders",
                present.len(),
                ordered.len()
            ));
            rec.after_restart = Some((present, ordered));
            ctx.proxy.set(Mode::Pass);
        }
        3 => {
            ctx.redis.signal(Sig::Stop)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            ctx.redis.signal(Sig::Cont)?;
        }
        4 => {
            ctx.rabbit.kill9().await?;
            tokio::time::sleep(BROKER_DOWN).await;
            ctx.rabbit.restart().await?;
        }
        12 => {
            ctx.rabbit.kill9().await?;
            // Batches the writers had in hand at the kill settle first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = count_orders(&ctx).await?;
            tokio::time::sleep(BROKER_DOWN_LONG - Duration::from_secs(1)).await;
            let during = count_orders(&ctx).await?.saturating_sub(before);
            rec.orders_while_down = Some(during);
            rec.notes.push(format!(
                "{during} orders written while the broker was down (the spool's direct hand-off)"
            ));
            ctx.rabbit.restart().await?;
        }
        5 => {
            ctx.rabbit.signal(Sig::Stop)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            ctx.rabbit.signal(Sig::Cont)?;
        }
        6 => ctx.pg.kill9_and_restart().await?,
        7 => {
            let mut p = ctx.stack.backends[1]
                .take()
                .context("backend 1 not running")?;
            p.kill9().await?;
        }
        8 => {
            // Kill right after a commit: the moment the round's order count
            // moves, the writer has committed a batch and not yet acked it.
            let before = count_orders(&ctx).await?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut aligned = false;
            while Instant::now() < deadline {
                if count_orders(&ctx).await? != before {
                    aligned = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rec.injected_ms = Some(unix_ms());
            let mut p = ctx.stack.worker.take().context("worker not running")?;
            p.kill9().await?;
            drop(p);
            rec.notes.push(if aligned {
                "killed the moment a commit showed in the database".into()
            } else {
                "no commit seen within 5 s; killed anyway".into()
            });
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.stack.start_worker().await?;
        }
        9 => {
            let mut p = ctx.stack.edges[1].take().context("edge 1 not running")?;
            p.kill9().await?;
        }
        10 => {
            ctx.proxy.set(Mode::Blackhole);
            tokio::time::sleep(Duration::from_secs(3)).await;
            ctx.proxy.set(Mode::Pass);
        }
        other => anyhow::bail!("no fault for scenario {other}"),
    }
    rec.lifted_ms = Some(unix_ms());
    tracing::info!(
        scenario = sc.id,
        secs = (unix_ms() - now) as f64 / 1000.0,
        "fault lifted"
    );
    Ok(())
}

/// Polls until Redis holds at least `n` attempts of the round, or `limit`
/// passes; returns the last count.
async fn wait_for_attempts(ctx: &FaultCtx<'_>, n: usize, limit: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        let held = attempts_in_redis(ctx).await?.len();
        if held >= n || Instant::now() >= deadline {
            return Ok(held);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count_orders(ctx: &FaultCtx<'_>) -> anyhow::Result<u64> {
    Ok(order::Entity::find()
        .filter(order::Column::RoundId.eq(ctx.round.id))
        .count(ctx.db)
        .await?)
}

async fn orders_in_db(ctx: &FaultCtx<'_>) -> anyhow::Result<HashSet<String>> {
    let ids: Vec<String> = order::Entity::find()
        .select_only()
        .column(order::Column::AttemptId)
        .filter(order::Column::RoundId.eq(ctx.round.id))
        .into_tuple()
        .all(ctx.db)
        .await
        .context("reading orders after the restart")?;
    Ok(ids.into_iter().collect())
}

async fn attempts_in_redis(ctx: &FaultCtx<'_>) -> anyhow::Result<HashSet<String>> {
    let mut c = ctx.redis.connection().await?;
    let mut out = HashSet::new();
    for it in &ctx.round.items {
        let prefix = ItemKeys::new(ctx.prefix, ctx.round.id, it.id).attempt_prefix();
        let mut iter: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(&mut c, format!("{prefix}*")).await?;
        while let Some(k) = iter.next_item().await {
            out.insert(k?[prefix.len()..].to_owned());
        }
    }
    Ok(out)
}
