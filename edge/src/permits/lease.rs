//! The Redis side of permits: `lua/redis/lease.lua`, run with EVALSHA
//! (reloaded on NOSCRIPT by `redis::Script`) on keys that share the item's
//! hash tag with the backend's stock hash.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};

use super::{ItemId, Report};

/// The lease script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// The item has no counters (not preheated, or not on sale).
    Unknown,
    Granted {
        granted: i64,
        /// Permits left in the shared pool.
        pool: i64,
        /// The item's `available` counter.
        available: i64,
        /// Our previous lease was reclaimed: drop what we held.
        void: bool,
        /// Permits other live nodes hold.
        others: i64,
    },
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis call timed out")]
    Timeout,
    #[error("unexpected reply from the lease script: {0}")]
    Reply(String),
}

/// Calls the lease script for this node.
#[derive(Clone)]
pub struct LeaseClient {
    client: redis::Client,
    /// Connected on first use, on the runtime that serves requests (a
    /// connection manager lives on the runtime that created it).
    conn: std::sync::Arc<tokio::sync::OnceCell<ConnectionManager>>,
    script: Script,
    prefix: String,
    node: String,
}

/// The lease script, shipped in `lua/redis/`.
pub const LEASE_LUA: &str = include_str!("../../../lua/redis/lease.lua");

impl LeaseClient {
    /// A client for `url`; nothing connects until the first lease.
    pub fn new(url: &str, prefix: &str, node: &str) -> Result<Self, LeaseError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: Default::default(),
            script: Script::new(LEASE_LUA),
            prefix: prefix.to_owned(),
            node: node.to_owned(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, LeaseError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                tokio::time::timeout(
                    Duration::from_secs(5),
                    ConnectionManager::new_with_config(self.client.clone(), cfg),
                )
                .await
                .map_err(|_| LeaseError::Timeout)?
                .map_err(LeaseError::from)
            })
            .await?;
        Ok(conn.clone())
    }

    /// The keys of one item: stock (the backend's), permits, leases, expiry.
    pub fn keys(&self, (round, item): ItemId) -> [String; 4] {
        let base = format!("{}:{{r{round}:i{item}}}", self.prefix);
        [
            format!("{base}:stock"),
            format!("{base}:permits"),
            format!("{base}:leases"),
            format!("{base}:lease_exp"),
        ]
    }

    /// Runs the script: asks for `want` permits, reporting `report`.
    pub async fn lease(
        &self,
        item: ItemId,
        want: i64,
        report: &Report,
        ttl: Duration,
        release: bool,
    ) -> Result<LeaseReply, LeaseError> {
        let keys = self.keys(item);
        let mut inv = self.script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(&self.node)
            .arg(want)
            .arg(report.unused)
            .arg(report.spent)
            .arg(report.give_back)
            .arg(report.void_back)
            .arg(ttl.as_millis() as u64)
            .arg(if release { "1" } else { "0" });
        let reply: Vec<redis::Value> = if release {
            // At shutdown the runtime that drives the shared connection may
            // already be gone: use a connection of the caller's own.
            tokio::time::timeout(Duration::from_secs(3), async {
                let mut conn = self.client.get_multiplexed_async_connection().await?;
                inv.invoke_async(&mut conn).await
            })
            .await
            .map_err(|_| LeaseError::Timeout)??
        } else {
            let mut conn = self.connection().await?;
            tokio::time::timeout(Duration::from_secs(3), inv.invoke_async(&mut conn))
                .await
                .map_err(|_| LeaseError::Timeout)??
        };
        parse(&reply)
    }
}

fn parse(v: &[redis::Value]) -> Result<LeaseReply, LeaseError> {
    let s = |i: usize| -> Option<String> {
        match v.get(i)? {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Some(s.clone()),
            redis::Value::Int(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let n = |i: usize| -> Result<i64, LeaseError> {
        s(i).and_then(|x| x.parse().ok())
            .ok_or_else(|| LeaseError::Reply(format!("{v:?}")))
    };
    match s(0).as_deref() {
        Some("unknown") => Ok(LeaseReply::Unknown),
        Some("ok") => Ok(LeaseReply::Granted {
            granted: n(1)?,
            pool: n(2)?,
            available: n(3)?,
            void: n(4)? == 1,
            others: n(5)?,
        }),
        _ => Err(LeaseError::Reply(format!("{v:?}"))),
    }
}
