//! Command line: `serve` (default), `worker`, `check-config FILE`,
//! `mint-token`, `reconcile [--repair]`, `dead-letters list|replay|discard`,
//! `spool list|drain`, `journal list|replay`.
//!
//! `list` reads a spool or journal without taking it (it works while the
//! backend that owns it runs); `drain` and `replay` take the directory's
//! lock, so they refuse while that backend runs (it drains by itself).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use serde_json::json;

use crate::{
    auth::Role,
    config::Config,
    durable::{Durable, Spool, journal, spool},
    lifecycle::{dead_letters, rebuild, replay, spool_drain},
    queue::{Publisher, topology::Topology},
    startup,
};

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[derive(Debug, Parser)]
#[command(
    name = "seckill-backend",
    version,
    about = "Seckill flash-sale backend"
)]
pub struct Cli {
    /// TOML configuration file (defaults are built in; SECKILL__* variables override).
    #[arg(long, short, global = true, env = "SECKILL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API and (unless disabled) the order writer.
    Serve,
    /// Run only the order writer.
    Worker,
    /// Validate a configuration file and exit (non-zero when invalid).
    CheckConfig { file: PathBuf },
    /// Print a bearer token signed with the configured secret.
    MintToken {
        #[arg(long)]
        sub: String,
        /// buyer, operator or approver.
        #[arg(long, default_value = "buyer")]
        role: Role,
        /// Lifetime in seconds (negative mints an expired token).
        #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
        ttl_secs: i64,
    },
    /// Compare every item's Redis counters and attempts with the database
    /// and print the differences (JSON); exits 2 when any item differs.
    Reconcile {
        /// Rebuild every item that differs from the database.
        #[arg(long)]
        repair: bool,
        /// Only this round.
        #[arg(long)]
        round: Option<i64>,
    },
    /// Dead-lettered order messages.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// The order spool: order messages the broker did not confirm.
    #[command(subcommand)]
    Spool(SpoolCommand),
    /// The buy journal: buys that could not reach Redis.
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Print the spooled order messages, oldest first (JSON).
    List,
    /// Publish them with confirms, oldest first, removing each once
    /// confirmed; exits 2 when some are left (the broker did not confirm).
    Drain,
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Print the journaled buys in arrival order (JSON).
    List,
    /// Run them through the reserve script in arrival order; exits 2 when
    /// some are left (Redis away, or units held by edges).
    Replay,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// Print dead letters (JSON) without consuming them.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Reserve the units again (if still available) and requeue the orders.
    Replay(Select),
    /// Drop dead letters, releasing any units they still hold.
    Discard(Select),
}

#[derive(Debug, clap::Args)]
pub struct Select {
    /// Every dead letter.
    #[arg(long, conflicts_with = "attempt_ids")]
    pub all: bool,
    /// Attempt ids to act on.
    #[arg(required_unless_present = "all")]
    pub attempt_ids: Vec<String>,
}

impl Select {
    fn selection(self) -> dead_letters::Selection {
        if self.all {
            dead_letters::Selection::All
        } else {
            dead_letters::Selection::Attempts(self.attempt_ids.into_iter().collect())
        }
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { file } => {
            Config::load(Some(&file))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::MintToken {
            sub,
            role,
            ttl_secs,
        } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let keys = cfg.auth.keys();
            println!("{}", keys.mint(&sub, role, ttl_secs));
            Ok(())
        }
        Command::Serve => {
            crate::telemetry::init_tracing();
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            tracing::info!(config = ?cfg, "starting");
            let app = startup::Application::build(cfg, Default::default()).await?;
            tracing::info!(api = %app.local_addr(), metrics = ?app.metrics_addr(), "listening");
            app.run_until(startup::shutdown_on_signal()).await
        }
        Command::Reconcile { repair, round } => {
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            let lc = startup::lifecycle_from(cfg).await?;
            let items = rebuild::reconcile(&lc, round, repair).await?;
            let consistent = items.iter().all(|i| i.consistent());
            let repaired = items.iter().filter(|i| i.repaired).count();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "consistent": consistent,
                    "repaired": repaired,
                    "items": items,
                }))?
            );
            if !consistent && !repair {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::DeadLetters(cmd) => {
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            let topology = Topology::from_config(&cfg);
            let lc = startup::lifecycle_from(cfg).await?;
            let out = match cmd {
                DeadLetterCommand::List { limit } => serde_json::to_value(
                    dead_letters::list(&lc, &topology, limit.clamp(1, dead_letters::MAX_SCAN))
                        .await?,
                )?,
                DeadLetterCommand::Replay(sel) => {
                    let publisher = Publisher::new(lc.config.rabbitmq.clone(), topology);
                    serde_json::to_value(
                        dead_letters::replay(&lc, &publisher, &sel.selection()).await?,
                    )?
                }
                DeadLetterCommand::Discard(sel) => serde_json::to_value(
                    dead_letters::discard(&lc, &topology, &sel.selection()).await?,
                )?,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Spool(cmd) => {
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            let dir = &cfg.durability.spool_dir;
            match cmd {
                SpoolCommand::List => {
                    let entries = spool::list(dir)?;
                    print_json(&json!({
                        "dir": dir,
                        "depth": entries.len(),
                        "oldest_spooled_at_ms": entries.first().map(|e| e.spooled_at_ms),
                        "entries": entries,
                    }))
                }
                SpoolCommand::Drain => {
                    let s = Spool::open(dir, cfg.durability.spool_max_entries).await?;
                    let publisher =
                        Publisher::new(cfg.rabbitmq.clone(), Topology::from_config(&cfg));
                    let mut published = 0;
                    let mut error = None;
                    while !s.is_empty() {
                        match spool_drain::publish_oldest(&s, &publisher, 64).await {
                            Ok(n) => published += n,
                            Err(e) => {
                                error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    print_json(&json!({"published": published, "left": s.len(), "error": error}))?;
                    if !s.is_empty() {
                        std::process::exit(2);
                    }
                    Ok(())
                }
            }
        }
        Command::Journal(cmd) => {
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            match cmd {
                JournalCommand::List => {
                    let dir = &cfg.durability.journal_dir;
                    let entries = journal::list(dir)?;
                    print_json(&json!({
                        "dir": dir,
                        "depth": entries.len(),
                        "oldest_arrived_ms": entries.first().map(|e| e.arrived_ms),
                        "entries": entries,
                    }))
                }
                JournalCommand::Replay => {
                    let durable = Durable::open(&cfg.durability).await?;
                    let publisher =
                        Publisher::new(cfg.rabbitmq.clone(), Topology::from_config(&cfg));
                    let lc = startup::lifecycle_from(cfg).await?;
                    let mut decided = 0;
                    let mut last = replay::Pass::default();
                    while !durable.journal.is_empty() {
                        last = replay::pass(&lc, &publisher, &durable).await;
                        decided += last.decided;
                        if last.decided == 0 {
                            break;
                        }
                    }
                    let left = durable.journal.len();
                    print_json(&json!({
                        "decided": decided,
                        "left": left,
                        "redis_unreachable": last.redis_unreachable,
                        "spooled": durable.spool.len(),
                    }))?;
                    if left > 0 {
                        std::process::exit(2);
                    }
                    Ok(())
                }
            }
        }
        Command::Worker => {
            crate::telemetry::init_tracing();
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            startup::run_worker(cfg, startup::shutdown_on_signal()).await
        }
    }
}
