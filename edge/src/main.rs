//! `seckill-edge [--config FILE]` serves; `seckill-edge check-config FILE`
//! validates a config and its Lua files and exits non-zero if they are bad.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use seckill_edge::{access::LuaAccess, config::Config};

// Every request allocates a little (headers, the Lua request state); with
// glibc's allocator the worker threads contend on its arena locks.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "seckill-edge", about = "The Seckill edge proxy")]
struct Cli {
    /// The TOML config (defaults apply without one).
    #[arg(long, short, env = "SECKILL_EDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate a config file and the Lua files it names, then exit.
    CheckConfig { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            let cfg = Config::load(Some(&file))?;
            LuaAccess::check(&cfg.lua).context("the Lua files")?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Some(Command::Run) | None => {
            let cfg = Config::load(cli.config.as_deref())?;
            tracing::info!(config = ?cfg, "configuration loaded");
            seckill_edge::server::run(cfg)
        }
    }
}
