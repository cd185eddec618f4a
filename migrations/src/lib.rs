//! Schema of the Seckill order database, one migration per change.
//!
//! Works unchanged on SQLite (the default, a file next to the backend) and on
//! PostgreSQL (production). Times are stored as `BIGINT` milliseconds since the
//! Unix epoch so both engines compare and index them the same way; prices are
//! integer cents. The backend runs [`Migrator::up`] at start-up.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_rounds_items_orders;
mod m20261122_000002_order_lifecycle;
mod m20261204_000003_round_fairness;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_rounds_items_orders::Migration),
            Box::new(m20261122_000002_order_lifecycle::Migration),
            Box::new(m20261204_000003_round_fairness::Migration),
        ]
    }
}
