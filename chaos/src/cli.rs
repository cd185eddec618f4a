//! The command line: which scenarios, how big a crowd, where the binaries
//! and the run directory are, where the JSON report goes.

use std::path::PathBuf;

use clap::Parser;

/// Runs a sale per scenario with one fault injected mid-sale and reports,
/// per scenario, what the shop would ask: oversold, stranded, false
/// accepts, buyers without a final answer, acknowledged buys lost,
/// counters that disagree with the database, and time to recover.
#[derive(Clone, Debug, Parser)]
#[command(name = "seckill-chaos", version)]
pub struct Options {
    /// Scenarios to run, in order, e.g. `0,1,4,7` (0 is the no-fault
    /// baseline; `3,3,3` runs scenario 3 three times). Default: all, 0–11.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<u32>,
    /// The CI subset: scenarios 0, 1, 4 and 7 with a smaller crowd
    /// (unless --scenarios is given).
    #[arg(long)]
    pub ci: bool,
    /// A smaller, shorter crowd per scenario.
    #[arg(long)]
    pub quick: bool,
    /// Directory holding `seckill-backend` and `seckill-edge`.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Repository root (the edge's Lua policy is read from `lua/`).
    #[arg(long, default_value = ".")]
    pub repo_dir: PathBuf,
    /// Where servers keep their data and logs (a fresh directory under the
    /// system's temp dir by default); removed at the end unless --keep.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Keep the run directory (logs, data) after the campaign.
    #[arg(long)]
    pub keep: bool,
    /// Where to write the table as JSON (default: `<run dir>/chaos.json`,
    /// which survives only with --keep; `scripts/chaos` passes
    /// `run/chaos/<time>.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Buyers per sale (default 3000, 1200 with --quick).
    #[arg(long)]
    pub buyers: Option<u32>,
    /// Items per sale.
    #[arg(long, default_value_t = 5)]
    pub items: usize,
    /// Units per item.
    #[arg(long, default_value_t = 40)]
    pub stock: i64,
    /// Seconds over which buyers arrive after the start (default 12, 8
    /// with --quick).
    #[arg(long)]
    pub spread_secs: Option<u64>,
    /// Probability a buyer pays its order; the others expire and their
    /// units sell again.
    #[arg(long, default_value_t = 0.35)]
    pub pay_probability: f64,
    /// The backends' `sale.payment_timeout_secs`.
    #[arg(long, default_value_t = 3)]
    pub payment_timeout_secs: u64,
    /// Requests in flight per edge.
    #[arg(long, default_value_t = 96)]
    pub concurrency: usize,
    /// Seed of the crowd (reaction times, who pays).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl Options {
    /// The scenarios to run, in order.
    pub fn selected(&self) -> Vec<u32> {
        if !self.scenarios.is_empty() {
            self.scenarios.clone()
        } else if self.ci {
            vec![0, 1, 4, 7]
        } else {
            crate::scenario::ALL.iter().map(|s| s.id).collect()
        }
    }

    pub fn quick(&self) -> bool {
        self.quick || self.ci
    }

    pub fn buyers(&self) -> u32 {
        self.buyers
            .unwrap_or(if self.quick() { 1_200 } else { 3_000 })
    }

    pub fn spread_secs(&self) -> u64 {
        self.spread_secs
            .unwrap_or(if self.quick() { 8 } else { 12 })
    }
}
