//! Storage: Redis (live sale state, changed only through the scripts in
//! `lua/redis/`) and the SQL database (rounds, items, orders) through sea-orm.
//!
//! Nothing here knows about HTTP; callers get typed results and
//! [`StoreError`]s.

pub mod db;
pub mod entities;
pub mod keys;
pub mod orders;
pub mod rounds;
pub mod sale;
pub mod tickets;

pub use sale::SaleStore;

/// A storage call that failed for a reason the caller cannot fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("unexpected reply from a redis script: {0}")]
    Protocol(String),
    /// A rebuild held the item for longer than a caller waits.
    #[error("the item's redis state is being rebuilt")]
    Held,
}

impl StoreError {
    /// Redis did not answer (refused, dropped, timed out): the call may or
    /// may not have run.
    pub fn redis_unreachable(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }
}
