//! What the backend keeps on its own disk while Redis or RabbitMQ cannot
//! take it: the buy [`journal`] (buys that could not reach Redis) and the
//! order [`spool`] (order messages the broker did not confirm), both on the
//! fsync'd, checksummed append-only [`log`] format.
//!
//! These modules own the files and their entries only; replaying the
//! journal through the reserve script and draining the spool to the broker
//! or the order writer live in [`crate::lifecycle`]. Whatever cannot be
//! written here fails the buy closed: no `202` without a durable record.

pub mod journal;
pub mod log;
pub mod spool;

use std::sync::Arc;

pub use journal::{Journal, JournalEntry};
pub use log::LogError;
pub use spool::{Spool, SpoolEntry};

use crate::config::DurabilityConfig;

/// Why a record could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the {what} holds its bound of {bound} entries")]
    Full { what: &'static str, bound: usize },
}

/// The journal and the spool of one `serve` process.
#[derive(Clone)]
pub struct Durable {
    pub journal: Arc<Journal>,
    pub spool: Arc<Spool>,
}

impl Durable {
    /// Opens (and takes, for this process) both directories.
    pub async fn open(cfg: &DurabilityConfig) -> Result<Self, DurableError> {
        Ok(Self {
            journal: Arc::new(Journal::open(&cfg.journal_dir).await?),
            spool: Arc::new(Spool::open(&cfg.spool_dir, cfg.spool_max_entries).await?),
        })
    }
}
