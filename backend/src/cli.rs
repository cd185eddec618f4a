//! Command line: `serve` (default), `worker`, `check-config FILE`,
//! `mint-token`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{auth::Role, config::Config, startup};

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
        Command::Worker => {
            crate::telemetry::init_tracing();
            let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
            startup::run_worker(cfg, startup::shutdown_on_signal()).await
        }
    }
}
