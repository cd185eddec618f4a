//! The order lifecycle: the buy itself (reserve, confirmed publish), and
//! after the order is written, payment, unpaid-order expiry, the sweep that
//! repairs what a lost message or a crash left behind, dead letters, and
//! reconciliation of Redis with the database.
//!
//! The database decides, Redis follows. Payment and expiry each make one
//! conditional update of the order row (`pending_payment → paying → paid`,
//! `pending_payment → cancelled`), so exactly one of them wins; the winner
//! then applies its effect to the counters with `settle.lua`, which moves
//! the units once however often it runs, and finally records
//! `counters_applied`. A crash between the two steps is repaired by the
//! sweep, which re-applies every settled order whose counters flag is still
//! false.
//!
//! - [`buy`] — reserve and publish, answered only after the confirm (or
//!   journaled / spooled while Redis or the broker is away)
//! - [`replay`] — journaled buys through the reserve script, in arrival
//!   order, once Redis answers
//! - [`spool_drain`] — spooled order messages to the broker (or straight to
//!   the order writer when it runs here and the broker stays away)
//! - [`settle`] — pay, expire, resolve a payment of unknown outcome
//! - [`expiry`] — expiry messages through a TTL queue, and their consumer
//! - [`sweep`] — the periodic backstop
//! - [`rebuild`] — reconciliation reports and rebuilding Redis from the
//!   database
//! - [`dead_letters`] — list, replay, discard
//! - [`stock_gauges`] — every open round's item counters as metrics, read
//!   from Redis when the metrics are scraped

pub mod buy;
pub mod dead_letters;
pub mod expiry;
pub mod rebuild;
pub mod replay;
pub mod settle;
pub mod spool_drain;
pub mod stock_gauges;
pub mod sweep;

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::{clock::Clock, config::Config, payment::PaymentProvider, store::SaleStore};

/// Everything lifecycle operations need; shared by the API, the order
/// writer and the background jobs.
pub struct Lifecycle {
    pub config: Arc<Config>,
    pub sale: SaleStore,
    pub db: DatabaseConnection,
    pub clock: Arc<dyn Clock>,
    pub provider: Arc<dyn PaymentProvider>,
    /// What the buy path knows of items without Redis (for journaling),
    /// read from the database and kept a few seconds.
    pub item_facts: moka::future::Cache<(i64, i64), Option<buy::ItemFacts>>,
    /// How this process's buys ended, for the operator's dashboard.
    pub outcomes: Arc<buy::Outcomes>,
}

impl Lifecycle {
    pub fn new(
        config: Arc<Config>,
        sale: SaleStore,
        db: DatabaseConnection,
        clock: Arc<dyn Clock>,
        provider: Arc<dyn PaymentProvider>,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            sale,
            db,
            clock,
            provider,
            item_facts: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(5))
                .build(),
            outcomes: Arc::default(),
        })
    }
}
