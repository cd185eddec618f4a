//! Command line: `sale` (the default: open a round, send a crowd, judge;
//! `--json` and `--html` keep the report), `setup`, `verify`, `blast`,
//! `orders`. Store and secret options read the same `SECKILL__…` variables
//! as the backend, so a script that configures the backend configures the
//! load generator too.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{
    blast::{self, BlastOptions},
    html,
    orders::{self, OrdersOptions},
    profile::{BotMix, Reaction},
    report::VerdictText,
    sale::{self, SaleOptions},
    setup::{Admin, RoundSpec},
    verdict::{self, Stores},
};

#[derive(Debug, Parser)]
#[command(
    name = "seckill-loadgen",
    version,
    about = "Simulates a flash-sale crowd and checks the sale's invariants against the stores"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command shares.
#[derive(Debug, Args)]
pub struct Common {
    /// Buyer-facing base URL: the edge, or the backend directly.
    #[arg(
        long,
        global = true,
        env = "SECKILL_TARGET",
        default_value = "http://127.0.0.1:8081"
    )]
    pub target: String,
    /// The backend's API base URL for admin calls (defaults to --target).
    #[arg(long, global = true, env = "SECKILL_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Shared token secret (default: the development secret, which a
    /// backend accepts only with `auth.allow_dev_secret = true`).
    #[arg(
        long,
        global = true,
        env = "SECKILL__AUTH__SECRET",
        default_value = "dev-only-secret-change-me-before-a-sale",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub secret: String,
    #[arg(
        long,
        global = true,
        env = "SECKILL__REDIS__URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,
    #[arg(
        long,
        global = true,
        env = "SECKILL__REDIS__KEY_PREFIX",
        default_value = "sk"
    )]
    pub redis_prefix: String,
    /// The backend's order database (SQLite or PostgreSQL URL).
    #[arg(
        long,
        global = true,
        env = "SECKILL__DATABASE__URL",
        default_value = "sqlite://seckill.db?mode=rwc"
    )]
    pub database_url: String,
    /// Also write the result as JSON to this file (`-` for stdout).
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// No progress display.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

impl Common {
    fn admin(&self) -> String {
        self.admin_url
            .clone()
            .unwrap_or_else(|| self.target.clone())
    }

    fn stores(&self) -> Stores {
        Stores {
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            database_url: self.database_url.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open a round (unless --round), send the crowd, print the summary and
    /// the verdict; exit 1 when an invariant fails.
    Sale(Box<SaleArgs>),
    /// Create, submit and approve a round; print it as JSON.
    Setup(SetupArgs),
    /// Judge a round's stores; exit 1 when an invariant fails.
    Verify {
        #[arg(long)]
        round: i64,
    },
    /// Buy-path throughput: distinct buyers at fixed concurrency.
    Blast(BlastArgs),
    /// Order-writing throughput into the database.
    Orders(OrdersArgs),
    /// RabbitMQ's confirmed-publish ceiling: one producer, persistent
    /// messages of an order message's size, a bounded number unconfirmed.
    Confirms(ConfirmsArgs),
    /// Print one value of a JSON file by JSON pointer (`/sale/orders`); for
    /// scripts that compare results without jq.
    #[command(hide = true)]
    JsonField { file: PathBuf, pointer: String },
}

#[derive(Debug, Args)]
pub struct RoundArgs {
    /// Items in the round.
    #[arg(long, default_value_t = 3)]
    pub items: usize,
    /// Units of each item.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: i64,
    /// Seconds from now to the sale's start.
    #[arg(long, default_value_t = 3.0)]
    pub start_in_secs: f64,
    /// Length of the sale window in seconds.
    #[arg(long, default_value_t = 600)]
    pub sale_length_secs: u64,
    /// The round's admission window at the edge, in ms (sent only when
    /// given: a backend without the field refuses it).
    #[arg(long)]
    pub admission_window_ms: Option<i64>,
    /// The round's proof-of-work difficulty for tickets (sent only when
    /// given; the crowd does not solve challenges yet).
    #[arg(long)]
    pub pow_difficulty: Option<i64>,
}

#[derive(Debug, Args)]
pub struct SaleArgs {
    #[command(flatten)]
    pub round_args: RoundArgs,
    /// Buy from this approved round instead of opening one.
    #[arg(long)]
    pub round: Option<i64>,
    #[arg(long, default_value_t = 2_000)]
    pub buyers: u32,
    /// Units each buy request asks for.
    #[arg(long, default_value_t = 1)]
    pub qty: i64,
    /// Buy requests a normal buyer may send (first click plus retries).
    #[arg(long, default_value_t = 3)]
    pub requests_per_buyer: u32,
    /// Requests a repeat clicker fires at once.
    #[arg(long, default_value_t = 5)]
    pub clicks: u32,
    /// Share of repeat clickers (0-1).
    #[arg(long, default_value_t = 0.05)]
    pub repeat_clickers: f64,
    /// Share of token forgers (0-1).
    #[arg(long, default_value_t = 0.02)]
    pub forgers: f64,
    /// Share of buyers firing before the start (0-1).
    #[arg(long, default_value_t = 0.05)]
    pub early_birds: f64,
    /// Probability a buyer pays its order.
    #[arg(long, default_value_t = 0.5)]
    pub pay_probability: f64,
    /// People's reaction times after the countdown ends, in ms: MIN-MAX
    /// (uniform), or N for 0-N.
    #[arg(long, default_value_t = Reaction::default())]
    pub reaction_ms: Reaction,
    /// Buy with purchase tickets: every buyer asks for a ticket once the
    /// ticket window opens, then buys with it (the backend's and the
    /// edge's `[tickets]` must be on).
    #[arg(long)]
    pub tickets: bool,
    /// How long before the start the ticket window opens, in ms (the
    /// backend's `tickets.lead_ms`).
    #[arg(long, default_value_t = 2_000)]
    pub ticket_lead_ms: u64,
    /// Percent of the crowd that are bots (0-100).
    #[arg(long, default_value_t = 0.0)]
    pub bots: f64,
    /// Weights of the bot profiles: early, hammer, network, sharing
    /// (default: each 1; sharing only with --tickets). `solver` is
    /// reserved for the proof-of-work challenge.
    #[arg(long)]
    pub bot_mix: Option<BotMix>,
    /// Most requests (tickets and buys) one bot sends.
    #[arg(long, default_value_t = 100)]
    pub bot_requests: u32,
    /// Buyers per loopback source address, each address in a /24 of its
    /// own (network bots share 127.254.254.0/24); 0: every connection from
    /// the default address. Default: 16 with --bots, else 0. Linux, loopback
    /// targets only.
    #[arg(long)]
    pub buyers_per_address: Option<u32>,
    /// Hard cap on the crowd's run, in seconds.
    #[arg(long, default_value_t = 120)]
    pub duration_secs: u64,
    /// Most requests in flight.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// How long the verdict waits for the order writer, in seconds.
    #[arg(long, default_value_t = 15)]
    pub settle_secs: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write the report as one self-contained HTML page (answers per
    /// second, units taken over time, latency histograms, the verdict).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Open the operator's console on the round's dashboard in headless
    /// Chromium (Debian's chromium and chromium-driver) and write it to
    /// this PNG file once every item sold out.
    #[arg(long)]
    pub console_screenshot: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub round_args: RoundArgs,
}

#[derive(Debug, Args)]
pub struct BlastArgs {
    /// Length of each phase in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stock of the reservation phase's item.
    #[arg(long, default_value_t = 10_000_000)]
    pub stock: i64,
    /// Skip the sold-out phase.
    #[arg(long)]
    pub reserve_only: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OrdersMode {
    /// The writer's insert statement, batch after batch.
    Insert,
    /// Pre-published messages drained by the real order writer.
    Writer,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    #[arg(long, value_enum, default_value = "insert")]
    pub mode: OrdersMode,
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// Rows per insert statement / writer batch.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Queue the `writer` mode creates (and deletes afterwards).
    #[arg(long)]
    pub queue: Option<String>,
}

/// The RabbitMQ the benchmarks that publish use.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[arg(
        long,
        env = "SECKILL__RABBITMQ__URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}

#[derive(Debug, Args)]
pub struct ConfirmsArgs {
    /// Unconfirmed messages at most.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
    /// Messages at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Seconds at most.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Queue to create (and delete afterwards).
    #[arg(long)]
    pub queue: Option<String>,
}

fn write_json<T: Serialize>(path: &Option<PathBuf>, value: &T) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    if path.as_os_str() == "-" {
        println!("{text}");
    } else {
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn verdict_code(passed: bool) -> ExitCode {
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs the parsed command; the exit code carries the verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let c = cli.common;
    let command = match cli.command {
        Some(cmd) => cmd,
        None => Cli::parse_from(["seckill-loadgen", "sale"])
            .command
            .expect("sale parses"),
    };
    match command {
        Command::Sale(a) => {
            let opts = SaleOptions {
                target: c.target.clone(),
                admin: c.admin(),
                secret: c.secret.clone(),
                stores: c.stores(),
                round: a.round,
                buyers: a.buyers,
                items: a.round_args.items,
                stock: a.round_args.stock,
                per_user_limit: a.round_args.per_user_limit,
                qty: a.qty,
                requests_per_buyer: a.requests_per_buyer,
                clicks: a.clicks,
                repeat_clickers: a.repeat_clickers,
                forgers: a.forgers,
                early_birds: a.early_birds,
                pay_probability: a.pay_probability,
                start_in: Duration::from_secs_f64(a.round_args.start_in_secs.max(0.0)),
                sale_length: Duration::from_secs(a.round_args.sale_length_secs),
                reaction: a.reaction_ms,
                tickets: a.tickets,
                ticket_lead: Duration::from_millis(a.ticket_lead_ms),
                bots_pct: a.bots,
                bot_mix: a.bot_mix.clone(),
                bot_requests: a.bot_requests,
                buyers_per_address: a.buyers_per_address,
                admission_window_ms: a.round_args.admission_window_ms,
                pow_difficulty: a.round_args.pow_difficulty,
                duration: Duration::from_secs(a.duration_secs),
                concurrency: a.concurrency,
                request_timeout: Duration::from_secs(10),
                settle: Duration::from_secs(a.settle_secs),
                progress: !c.no_progress,
                seed: a.seed,
                console_screenshot: a.console_screenshot.clone(),
            };
            let report = sale::run(opts).await?;
            println!("{report}");
            write_json(&c.json, &report)?;
            if let Some(path) = &a.html {
                html::write(&report, path)?;
            }
            Ok(verdict_code(report.verdict.passed))
        }
        Command::Setup(a) => {
            let admin = Admin::new(&c.admin(), &c.secret)?;
            let now = chrono::Utc::now().timestamp_millis();
            let starts = now + (a.round_args.start_in_secs * 1000.0) as i64;
            let round = admin
                .open_round(&RoundSpec {
                    name: "Flash sale".into(),
                    items: a.round_args.items,
                    stock: a.round_args.stock,
                    per_user_limit: a.round_args.per_user_limit,
                    starts_at_ms: starts,
                    ends_at_ms: starts + a.round_args.sale_length_secs as i64 * 1000,
                    admission_window_ms: a.round_args.admission_window_ms,
                    pow_difficulty: a.round_args.pow_difficulty,
                })
                .await?;
            println!("{}", serde_json::to_string_pretty(&round)?);
            write_json(&c.json, &round)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { round } => {
            let v = verdict::check(&c.stores(), round, None).await?;
            print!("{}", VerdictText(&v));
            write_json(&c.json, &v)?;
            Ok(verdict_code(v.passed))
        }
        Command::Blast(a) => {
            let r = blast::run(BlastOptions {
                target: c.target.clone(),
                admin: c.admin(),
                secret: c.secret.clone(),
                seconds: Duration::from_secs(a.seconds),
                concurrency: a.concurrency,
                stock: a.stock,
                reserve_only: a.reserve_only,
            })
            .await?;
            for p in std::iter::once(&r.reserve).chain(r.sold_out.as_ref()) {
                println!(
                    "{:<9} {:>10.0}/s  ({} requests in {:.1} s; p50 {:.2} ms, p99 {:.2} ms; {:?})",
                    p.name,
                    p.per_sec,
                    p.requests,
                    p.seconds,
                    p.latency.p50_ms,
                    p.latency.p99_ms,
                    p.outcomes
                );
            }
            write_json(&c.json, &r)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::JsonField { file, pointer } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            match v.pointer(&pointer) {
                Some(serde_json::Value::String(s)) => println!("{s}"),
                Some(other) => println!("{other}"),
                None => anyhow::bail!("{} has no {pointer}", file.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Confirms(a) => {
            let opts = crate::confirms::ConfirmsOptions {
                amqp_url: a.broker.amqp_url.clone(),
                queue: a.queue.clone().unwrap_or_else(|| {
                    format!(
                        "seckill.bench.confirms.{}",
                        chrono::Utc::now().timestamp_millis()
                    )
                }),
                in_flight: a.in_flight,
                messages: a.messages,
                seconds: a.seconds,
            };
            let r = crate::confirms::run(&opts).await?;
            println!(
                "confirms: {} messages of {} bytes in {:.2} s = {:.0} confirmed/s ({} in flight)",
                r.messages, r.message_bytes, r.seconds, r.per_sec, r.in_flight
            );
            write_json(&c.json, &r)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Orders(a) => {
            let opts = OrdersOptions {
                database_url: c.database_url.clone(),
                rows: a.rows,
                batch: a.batch,
                amqp_url: a.broker.amqp_url.clone(),
                redis_url: c.redis_url.clone(),
                redis_prefix: c.redis_prefix.clone(),
                queue: a.queue.clone().unwrap_or_else(|| {
                    format!("seckill.bench.{}", chrono::Utc::now().timestamp_millis())
                }),
            };
            let r = match a.mode {
                OrdersMode::Insert => orders::insert(&opts).await?,
                OrdersMode::Writer => orders::writer(&opts).await?,
            };
            println!(
                "orders {}: {} rows in {:.2} s = {:.0} rows/s (batch {})",
                r.mode, r.rows, r.seconds, r.rows_per_sec, r.batch
            );
            write_json(&c.json, &r)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
