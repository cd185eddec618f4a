//! Seckill load generator: simulates a flash-sale crowd against a running
//! edge (or the backend directly), shows live progress, and ends with a
//! summary and a verdict on the sale's invariants read from the stores.
//!
//! Layout:
//! - [`setup`] — opens a round through the admin API with minted tokens
//! - [`buyer`] — one simulated buyer's script: people and bot profiles
//! - [`profile`] — the crowd's profiles, bot mix and reaction times
//! - [`networks`] — which loopback address each buyer connects from
//! - [`fairness`] — who won the units: people against each bot profile
//! - [`client`] — the shared HTTP client and outcome labels
//! - [`stats`] — answers by outcome and latency histograms (client view)
//! - [`progress`] — live progress bar or log lines
//! - [`sale`] — a whole sale: setup, crowd, settle, verdict ([`run`])
//! - [`verdict`] — invariants I1–I5 checked against Redis and the database
//! - [`report`] — the human summary, its JSON form and the time line
//! - [`html`] — the report as one self-contained HTML page
//! - [`screenshot`] — the console's dashboard in headless Chromium, as a PNG
//! - [`blast`] — buy-path throughput for benchmarks
//! - [`orders`] — order-writing throughput for benchmarks
//! - [`confirms`] — RabbitMQ's confirmed-publish ceiling, for benchmarks
//! - [`cli`] — the command line

pub mod blast;
pub mod buyer;
pub mod cli;
pub mod client;
pub mod confirms;
pub mod fairness;
pub mod html;
pub mod networks;
pub mod orders;
pub mod profile;
pub mod progress;
pub mod report;
pub mod sale;
pub mod screenshot;
pub mod setup;
pub mod stats;
pub mod verdict;

pub use report::Report;
pub use sale::{SaleOptions, run};
pub use verdict::{Stores, Verdict};
