//! The Redis side of permits: `lua/redis/lease.lua` (with the shared
//! `permits.lua` helpers), run with EVALSHA on keys that share the item's
//! hash tag with the backend's stock hash.
//!
//! Redis being away must never make buyers wait: every call has a short
//! deadline, the connection is made by a task of its own (no caller waits
//! on another's connect for longer than its deadline, and no lock is held
//! across it), and renewals of all items go out as one pipeline.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use tokio::sync::watch;

use super::ItemId;

/// `lease.lua` with the helpers it needs.
pub const LEASE_LUA: &str = concat!(
    include_str!("../../../lua/redis/permits.lua"),
    include_str!("../../../lua/redis/lease.lua")
);

/// What the node asks of its lease on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Renew it and add up to `want` permits.
    Lease,
    /// End it (its units go back to the pool) and start a new one.
    Resync,
    /// End it: the node hands everything back.
    Release,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Lease => "lease",
            Mode::Resync => "resync",
            Mode::Release => "release",
        }
    }
}

/// One call of the lease script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCall {
    pub item: ItemId,
    pub mode: Mode,
    /// The generation of the lease the node holds (0: none).
    pub generation: u64,
    pub want: i64,
}

/// The lease script's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// The item has no counters (not preheated, or not on sale).
    Unknown,
    Granted {
        granted: i64,
        /// Units no node holds, after this grant.
        pool: i64,
        /// The item's `available` counter.
        available: i64,
        /// The node's lease generation now (0: it holds no lease).
        generation: u64,
        /// What the node's lease holds now, as Redis counts it.
        held: i64,
        /// Units other nodes' leases hold.
        others: i64,
        /// The sale's start (ms since the epoch; 0: not recorded).
        starts_ms: i64,
        /// The round's admission window in ms (0: none).
        admission_window_ms: i64,
    },
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("not connected to redis yet")]
    NotConnected,
    #[error("unexpected reply from the lease script: {0}")]
    Reply(String),
}

/// Calls the lease script for this node.
#[derive(Clone)]
pub struct LeaseClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    client: redis::Client,
    /// Set once the connecting task succeeds; the manager reconnects by
    /// itself after that.
    conn: watch::Sender<Option<ConnectionManager>>,
    connecting: Mutex<bool>,
    script: Script,
    prefix: String,
    node: String,
}

impl LeaseClient {
    /// A client for `url`; nothing connects until the first call.
    pub fn new(url: &str, prefix: &str, node: &str) -> Result<Self, LeaseError> {
        Ok(Self {
            inner: Arc::new(ClientInner {
                client: redis::Client::open(url)?,
                conn: watch::channel(None).0,
                connecting: Mutex::new(false),
                script: Script::new(LEASE_LUA),
                prefix: prefix.to_owned(),
                node: node.to_owned(),
            }),
        })
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The shared connection, waiting at most `wait` for it. The connect
    /// runs on a task of its own, started by the first caller, retried
    /// until it succeeds; callers only watch for it.
    async fn connection(&self, wait: Duration) -> Result<ConnectionManager, LeaseError> {
        let mut rx = self.inner.conn.subscribe();
        if let Some(c) = rx.borrow().clone() {
            return Ok(c);
        }
        self.start_connecting();
        let ready = tokio::time::timeout(wait, rx.wait_for(|c| c.is_some())).await;
        match ready {
            Ok(Ok(c)) => Ok(c.clone().expect("checked")),
            _ => Err(LeaseError::NotConnected),
        }
    }

    /// Starts the connecting task unless it runs or has succeeded.
    pub fn start_connecting(&self) {
        {
            let mut busy = self.inner.connecting.lock().expect("connect flag");
            if *busy {
                return;
            }
            *busy = true;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut step = Duration::from_millis(50);
            loop {
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(2)));
                let made = tokio::time::timeout(
                    Duration::from_secs(3),
                    ConnectionManager::new_with_config(inner.client.clone(), cfg),
                )
                .await;
                match made {
                    Ok(Ok(c)) => {
                        inner.conn.send_replace(Some(c));
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to redis for permits"),
                    Err(_) => tracing::warn!("connecting to redis for permits timed out"),
                }
                tokio::time::sleep(step).await;
                step = (step * 2).min(Duration::from_secs(1));
            }
        });
    }

    /// The keys of one item: stock (the backend's), leases, expiries,
    /// generations.
    pub fn keys(&self, (round, item): ItemId) -> [String; 4] {
        let base = seckill_proto::permit::item_base(&self.inner.prefix, round, item);
        [
            format!("{base}:stock"),
            format!("{base}:leases"),
            format!("{base}:lease_exp"),
            format!("{base}:lease_gen"),
        ]
    }

    fn invocation(&self, c: &LeaseCall, ttl: Duration) -> redis::ScriptInvocation<'_> {
        let mut inv = self.inner.script.prepare_invoke();
        for k in self.keys(c.item) {
            inv.key(k);
        }
        inv.arg(&self.inner.node)
            .arg(c.generation)
            .arg(c.want)
            .arg(ttl.as_millis() as u64)
            .arg(c.mode.as_str());
        inv
    }

    /// One lease call, answered within `deadline` (connecting included).
    pub async fn lease(
        &self,
        call: LeaseCall,
        ttl: Duration,
        deadline: Duration,
    ) -> Result<LeaseReply, LeaseError> {
        let inv = self.invocation(&call, ttl);
        tokio::time::timeout(deadline, async {
            let mut conn = self.connection(deadline).await?;
            let v: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
            parse(&v)
        })
        .await
        .map_err(|_| LeaseError::Timeout)?
    }

    /// Several calls in one round trip (renewals): one answer per call, in
    /// order.
    pub async fn lease_many(
        &self,
        calls: &[LeaseCall],
        ttl: Duration,
        deadline: Duration,
    ) -> Result<Vec<Result<LeaseReply, LeaseError>>, LeaseError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let invs: Vec<_> = calls.iter().map(|c| self.invocation(c, ttl)).collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&self.inner.script).ignore();
        for inv in &invs {
            pipe.invoke_script(inv);
        }
        let replies: Vec<redis::Value> = tokio::time::timeout(deadline, async {
            let mut conn = self.connection(deadline).await?;
            Ok::<_, LeaseError>(pipe.query_async(&mut conn).await?)
        })
        .await
        .map_err(|_| LeaseError::Timeout)??;
        Ok(replies
            .into_iter()
            .map(|v| match v {
                redis::Value::Array(items) => parse(&items),
                redis::Value::ServerError(e) => Err(LeaseError::Reply(format!("{e:?}"))),
                other => Err(LeaseError::Reply(format!("{other:?}"))),
            })
            .collect())
    }

    /// Hands a lease back from a connection of the caller's own (at
    /// shutdown the runtime that drives the shared connection may be gone).
    pub async fn release_own(&self, call: LeaseCall, ttl: Duration) -> Result<(), LeaseError> {
        let inv = self.invocation(&call, ttl);
        tokio::time::timeout(Duration::from_secs(3), async {
            let mut conn = self.inner.client.get_multiplexed_async_connection().await?;
            let v: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
            parse(&v).map(|_| ())
        })
        .await
        .map_err(|_| LeaseError::Timeout)?
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
    // Absent from a stock hash preheated without them: no window.
    let opt = |i: usize| s(i).and_then(|x| x.parse().ok()).unwrap_or(0);
    match s(0).as_deref() {
        Some("unknown") => Ok(LeaseReply::Unknown),
        Some("ok") => Ok(LeaseReply::Granted {
            granted: n(1)?,
            pool: n(2)?,
            available: n(3)?,
            generation: n(4)? as u64,
            held: n(5)?,
            others: n(6)?,
            starts_ms: opt(7),
            admission_window_ms: opt(8),
        }),
        _ => Err(LeaseError::Reply(format!("{v:?}"))),
    }
}
