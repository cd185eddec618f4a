//! Live sale state in Redis: preheat, reserve, release, claim, mark ordered,
//! and the reads behind status polling and the counters endpoint.
//!
//! Every write is one of the Lua scripts in `lua/redis/`, embedded at build
//! time (those that need `guard.lua`'s helpers with it prepended), run with
//! EVALSHA (`redis::Script` reloads a script and retries when the server
//! answers NOSCRIPT, e.g. after a restart or failover).
//!
//! Two guards keep Redis honest after it lost data (`guard.lua`): counters
//! carry the run id of the server that verified them, and the scripts that
//! take units refuse counters another server process verified (the item is
//! rebuilt from the database first); a rebuild holds the item's lock, and
//! the scripts that follow a database decision wait for it here.

use std::{collections::HashMap, time::Duration};

use redis::{
    AsyncCommands, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde::Serialize;

use seckill_proto::permit::{EdgePermit, Effect};

use super::{StoreError, keys::ItemKeys};
use crate::domain::AttemptId;

/// A script with `guard.lua`'s helpers prepended.
macro_rules! guarded {
    ($file:literal) => {
        concat!(
            include_str!("../../../lua/redis/guard.lua"),
            include_str!(concat!("../../../lua/redis/", $file))
        )
    };
}

const RESERVE: &str = concat!(
    include_str!("../../../lua/redis/guard.lua"),
    include_str!("../../../lua/redis/permits.lua"),
    include_str!("../../../lua/redis/reserve.lua")
);
const RELEASE: &str = include_str!("../../../lua/redis/release.lua");
const CLAIM: &str = include_str!("../../../lua/redis/claim.lua");
const MARK_ORDERED: &str = guarded!("mark_ordered.lua");
const PREHEAT: &str = guarded!("preheat.lua");
const SETTLE: &str = guarded!("settle.lua");
const ADOPT: &str = guarded!("adopt.lua");
const REVIVE: &str = guarded!("revive.lua");
const RESTORE: &str = guarded!("restore.lua");
/// Deletes a lock only if it still holds the caller's token.
const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) end return 0";

/// How long a script that follows a database decision waits for a rebuild
/// holding its item (a rebuild takes milliseconds; its lock expires after
/// [`REBUILD_LOCK_MS`] if its holder died).
const HOLD_WAIT: Duration = Duration::from_millis(12_000);
const HOLD_STEP: Duration = Duration::from_millis(20);

/// How long the answer of a refused journaled buy stays pollable.
const JOURNAL_OUTCOME_SECS: i64 = 7 * 24 * 3600;

/// Lifetime of an item's rebuild lock.
pub const REBUILD_LOCK_MS: u64 = 10_000;

struct Scripts {
    reserve: Script,
    release: Script,
    claim: Script,
    mark_ordered: Script,
    preheat: Script,
    settle: Script,
    adopt: Script,
    revive: Script,
    restore: Script,
    unlock: Script,
}

/// Handle on the sale state of every item under one key prefix.
#[derive(Clone)]
pub struct SaleStore {
    conn: ConnectionManager,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

/// What the reserve script decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved {
        price_cents: i64,
    },
    Duplicate {
        attempt_id: String,
        status: String,
    },
    Limit {
        held_attempt: Option<String>,
        held_qty: i64,
        limit: i64,
    },
    Unknown,
    NotStarted {
        starts_ms: i64,
    },
    Ended,
    SoldOut,
    Insufficient {
        available: i64,
    },
    /// Units are available, but every free one is leased to edge nodes
    /// whose buyers are on their way (the buy carried no live permit).
    Held {
        free: i64,
    },
    /// The counters were not verified by the running Redis server (it
    /// restarted, or the database refused an order): rebuild first.
    Stale,
}

/// The reserve script's answer: its decision, and what it did to the edge
/// permit the buy carried (`None` when it carried none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub outcome: ReserveOutcome,
    pub permit: Option<Effect>,
}

/// An item's counters; `available + reserved + sold == total` always.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Counters {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// The data preheat loads for one item.
#[derive(Clone, Debug)]
pub struct Preheat<'a> {
    pub round_id: i64,
    pub item_id: i64,
    pub stock: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    pub price_cents: i64,
    pub info: Vec<(&'a str, String)>,
    /// The round's admission window (ms from the start, 0: off), read by
    /// the edge with its permit lease.
    pub admission_window_ms: i64,
}

/// An attempt as stored in Redis.
#[derive(Clone, Debug, Default)]
pub struct AttemptRecord {
    pub user: String,
    pub qty: i64,
    pub status: String,
    pub created_ms: i64,
    pub price_cents: i64,
    pub order_id: Option<String>,
    pub pay_by_ms: Option<i64>,
    pub reason: Option<String>,
}

/// A settlement decided in the database, applied to the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// `reserved → sold`.
    Paid,
    /// `reserved → available`.
    Expired,
}

impl Settlement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Expired => "expired",
        }
    }
}

/// How `restore` treats counters that exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreMode {
    /// Write only when the item has no counters, or counters the running
    /// server did not verify (Redis lost or rolled back its data).
    Verify,
    /// Replace them (a repair).
    Overwrite,
}

/// An item's state as the database has it, for `restore`.
#[derive(Clone, Debug)]
pub struct Restore {
    pub round_id: i64,
    pub item_id: i64,
    pub total: i64,
    /// Units of orders awaiting payment (`pending_payment`, `paying`).
    pub unpaid: i64,
    pub sold: i64,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub per_user_limit: i64,
    pub price_cents: i64,
    pub attempts: Vec<RestoredAttempt>,
}

/// One order's attempt as `restore` writes it.
#[derive(Clone, Debug)]
pub struct RestoredAttempt {
    pub attempt_id: String,
    pub user: String,
    pub qty: i64,
    /// `ordered`, `paid` or `cancelled`.
    pub status: &'static str,
    pub pay_by_ms: i64,
    pub created_ms: i64,
    pub reason: Option<String>,
    pub price_cents: i64,
}

/// What `restore` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// Whether it wrote (`Verify` writes nothing when the counters were
    /// verified by the running server).
    pub written: bool,
    pub counters: Counters,
    /// Units of attempts on their way, counted as reserved.
    pub in_flight: i64,
    /// Units the database holds beyond the stock (should be 0).
    pub over: i64,
}

/// The fields `adopt` and `revive` recreate an attempt from (the order
/// message's data).
#[derive(Clone, Debug)]
pub struct AttemptSeed<'a> {
    pub id: &'a AttemptId,
    pub user: &'a str,
    pub qty: i64,
    pub price_cents: i64,
    pub created_ms: i64,
}

impl SaleStore {
    /// Connects (the manager reconnects by itself afterwards) and loads the
    /// scripts.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        let store = Self {
            conn,
            prefix: prefix.to_owned(),
            scripts: std::sync::Arc::new(Scripts {
                reserve: Script::new(RESERVE),
                release: Script::new(RELEASE),
                claim: Script::new(CLAIM),
                mark_ordered: Script::new(MARK_ORDERED),
                preheat: Script::new(PREHEAT),
                settle: Script::new(SETTLE),
                adopt: Script::new(ADOPT),
                revive: Script::new(REVIVE),
                restore: Script::new(RESTORE),
                unlock: Script::new(UNLOCK),
            }),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// SCRIPT LOAD every script, so the hot path only sends EVALSHA.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let s = &self.scripts;
        for script in [
            &s.reserve,
            &s.release,
            &s.claim,
            &s.mark_ordered,
            &s.preheat,
            &s.settle,
            &s.adopt,
            &s.revive,
            &s.restore,
            &s.unlock,
        ] {
            script.prepare_invoke().load_async(&mut c).await?;
        }
        Ok(())
    }

    pub fn keys(&self, round_id: i64, item_id: i64) -> ItemKeys {
        ItemKeys::new(&self.prefix, round_id, item_id)
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Creates an item's counters unless they exist; returns whether it did.
    pub async fn preheat(&self, p: &Preheat<'_>) -> Result<bool, StoreError> {
        let k = self.keys(p.round_id, p.item_id);
        let mut inv = self.scripts.preheat.key(k.stock());
        inv.key(k.info())
            .arg(p.stock)
            .arg(p.starts_ms)
            .arg(p.ends_ms)
            .arg(p.per_user_limit)
            .arg(p.price_cents)
            .arg(p.admission_window_ms);
        for (f, v) in &p.info {
            inv.arg(*f).arg(v);
        }
        let created: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(created == 1)
    }

    /// Runs the reserve script for one buyer.
    pub async fn reserve(
        &self,
        id: &AttemptId,
        user: &str,
        qty: i64,
        now_ms: i64,
        idempotency_key: &str,
        permit: Option<&EdgePermit>,
    ) -> Result<Reserved, StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let attempt_id = id.to_string();
        let mut inv = self.scripts.reserve.key(k.stock());
        inv.key(k.buyers())
            .key(k.attempt(&attempt_id))
            .key(k.inflight())
            .key(k.leases())
            .key(k.lease_exp())
            .key(k.lease_gen())
            .arg(user)
            .arg(qty)
            .arg(now_ms)
            .arg(&attempt_id)
            .arg(idempotency_key)
            .arg(k.attempt_prefix());
        match permit {
            Some(p) => inv.arg(&p.node).arg(p.generation).arg(p.units),
            None => inv.arg("").arg(0).arg(0),
        };
        let reply: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
        parse_reserve(&reply)
    }

    /// Gives a live attempt's units back. Returns `released`, `missing`, or
    /// the attempt's status when it had already moved on.
    pub async fn release(
        &self,
        id: &AttemptId,
        reason: &str,
        now_ms: i64,
        allow_writing: bool,
    ) -> Result<String, StoreError> {
        self.run_release(id, reason, now_ms, allow_writing, false)
            .await
    }

    /// Cancels an attempt the database refused for lack of stock without
    /// making its units available: the counters said there was stock the
    /// database does not have, so the item is marked unverified and is
    /// rebuilt from the database before it sells again.
    pub async fn release_distrusted(
        &self,
        id: &AttemptId,
        reason: &str,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        self.run_release(id, reason, now_ms, true, true).await
    }

    async fn run_release(
        &self,
        id: &AttemptId,
        reason: &str,
        now_ms: i64,
        allow_writing: bool,
        distrust: bool,
    ) -> Result<String, StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let attempt_id = id.to_string();
        let flag = |b: bool| if b { "1" } else { "0" };
        Ok(self
            .scripts
            .release
            .key(k.stock())
            .key(k.buyers())
            .key(k.attempt(&attempt_id))
            .key(k.inflight())
            .arg(&attempt_id)
            .arg(reason)
            .arg(now_ms)
            .arg(flag(allow_writing))
            .arg(flag(distrust))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    /// Runs `inv` again while the script answers `held` (a rebuild holds
    /// the item), up to [`HOLD_WAIT`].
    async fn unheld(&self, inv: redis::ScriptInvocation<'_>) -> Result<String, StoreError> {
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        loop {
            let r: String = inv.invoke_async(&mut self.conn.clone()).await?;
            if r != "held" {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Held);
            }
            tokio::time::sleep(HOLD_STEP).await;
        }
    }

    /// The order writer's claim on an attempt (see `claim.lua`).
    pub async fn claim(&self, id: &AttemptId, now_ms: i64) -> Result<String, StoreError> {
        one(self.claim_many(&[id], now_ms).await?)
    }

    /// Claims attempts of one item in one call (see `claim.lua`); the
    /// replies are in the order of `ids`.
    pub async fn claim_many(
        &self,
        ids: &[&AttemptId],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let Some(first) = ids.first() else {
            return Ok(Vec::new());
        };
        let k = self.keys(first.round_id, first.item_id);
        let mut inv = self.scripts.claim.prepare_invoke();
        for id in ids {
            debug_assert_eq!((id.round_id, id.item_id), (first.round_id, first.item_id));
            inv.key(k.attempt(&id.to_string()));
        }
        inv.arg(now_ms);
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Records the durable order on the attempt.
    pub async fn mark_ordered(
        &self,
        id: &AttemptId,
        order_id: &str,
        pay_by_ms: i64,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        one(self
            .mark_ordered_many(&[(id, order_id, pay_by_ms)], now_ms)
            .await?)
    }

    /// Records durable orders of attempts of one item in one call, waiting
    /// out a rebuild that holds the item (see `mark_ordered.lua`): each
    /// mark is `(attempt, order id, pay_by_ms)`; the replies are in order.
    pub async fn mark_ordered_many(
        &self,
        marks: &[(&AttemptId, &str, i64)],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let Some((first, _, _)) = marks.first() else {
            return Ok(Vec::new());
        };
        let k = self.keys(first.round_id, first.item_id);
        let mut inv = self.scripts.mark_ordered.prepare_invoke();
        inv.key(k.inflight()).key(k.rebuild_lock()).arg(now_ms);
        for (id, order_id, pay_by_ms) in marks {
            debug_assert_eq!((id.round_id, id.item_id), (first.round_id, first.item_id));
            inv.key(k.attempt(&id.to_string()))
                .arg(*order_id)
                .arg(*pay_by_ms);
        }
        let deadline = tokio::time::Instant::now() + HOLD_WAIT;
        loop {
            let r: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
            if r.first().map(String::as_str) != Some("held") || marks.is_empty() {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Held);
            }
            tokio::time::sleep(HOLD_STEP).await;
        }
    }

    /// Applies a settlement the database decided (see `settle.lua`).
    /// Returns `applied`, `already`, `missing` or a conflicting status.
    pub async fn settle(
        &self,
        id: &AttemptId,
        outcome: Settlement,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let attempt_id = id.to_string();
        let mut inv = self.scripts.settle.key(k.stock());
        inv.key(k.attempt(&attempt_id))
            .key(k.inflight())
            .key(k.rebuild_lock())
            .arg(outcome.as_str())
            .arg(&attempt_id)
            .arg(now_ms);
        self.unheld(inv).await
    }

    /// Re-reserves an attempt Redis lost (see `adopt.lua`).
    pub async fn adopt(&self, seed: &AttemptSeed<'_>, now_ms: i64) -> Result<String, StoreError> {
        self.seeded(&self.scripts.adopt, seed, now_ms, true).await
    }

    /// Re-reserves a dead-lettered attempt for a replay (see `revive.lua`).
    pub async fn revive(&self, seed: &AttemptSeed<'_>, now_ms: i64) -> Result<String, StoreError> {
        self.seeded(&self.scripts.revive, seed, now_ms, false).await
    }

    async fn seeded(
        &self,
        script: &Script,
        seed: &AttemptSeed<'_>,
        now_ms: i64,
        user_first: bool,
    ) -> Result<String, StoreError> {
        let k = self.keys(seed.id.round_id, seed.id.item_id);
        let attempt_id = seed.id.to_string();
        let mut inv = script.key(k.stock());
        inv.key(k.buyers())
            .key(k.attempt(&attempt_id))
            .key(k.inflight());
        if user_first {
            inv.arg(seed.user).arg(seed.qty).arg(&attempt_id);
        } else {
            inv.arg(&attempt_id).arg(seed.user).arg(seed.qty);
        }
        inv.arg(now_ms).arg(seed.price_cents).arg(seed.created_ms);
        Ok(inv.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Writes an item's counters, buyers and attempts from the database
    /// (see `restore.lua`), counting the units of attempts still on their
    /// way in the same atomic step. The caller holds the item's rebuild
    /// lock with `token`; the script releases it.
    pub async fn restore(
        &self,
        r: &Restore,
        mode: RestoreMode,
        token: &str,
    ) -> Result<Restored, StoreError> {
        let k = self.keys(r.round_id, r.item_id);
        let mut inv = self.scripts.restore.key(k.stock());
        inv.key(k.buyers())
            .key(k.inflight())
            .key(k.rebuild_lock())
            .key(k.leases())
            .key(k.lease_exp())
            .key(k.lease_gen());
        for a in &r.attempts {
            inv.key(k.attempt(&a.attempt_id));
        }
        inv.arg(match mode {
            RestoreMode::Verify => "verify",
            RestoreMode::Overwrite => "overwrite",
        })
        .arg(token)
        .arg(k.attempt_prefix())
        .arg(r.total)
        .arg(r.unpaid)
        .arg(r.sold)
        .arg(r.starts_ms)
        .arg(r.ends_ms)
        .arg(r.per_user_limit)
        .arg(r.price_cents);
        for a in &r.attempts {
            inv.arg(&a.attempt_id)
                .arg(&a.user)
                .arg(a.qty)
                .arg(a.status)
                .arg(&a.attempt_id)
                .arg(a.pay_by_ms)
                .arg(a.created_ms)
                .arg(a.reason.as_deref().unwrap_or(""))
                .arg(a.price_cents);
        }
        let v: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
        let [written, available, reserved, sold, in_flight, over] = v[..] else {
            return Err(StoreError::Protocol(format!("restore: {v:?}")));
        };
        Ok(Restored {
            written: written == 1,
            counters: Counters {
                total: r.total,
                available,
                reserved,
                sold,
            },
            in_flight,
            over,
        })
    }

    /// Attempts that entered the in-flight set (reserved without an order
    /// yet) at or before `cutoff_ms`.
    pub async fn in_flight_since(
        &self,
        round_id: i64,
        item_id: i64,
        cutoff_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let k = self.keys(round_id, item_id);
        Ok(self
            .conn
            .clone()
            .zrangebyscore_limit(k.inflight(), "-inf", cutoff_ms, 0, 1000)
            .await?)
    }

    /// Moves an attempt's in-flight time to `now_ms` (only if it is in the
    /// set), so the sweep does not republish it again at once.
    pub async fn touch_in_flight(&self, id: &AttemptId, now_ms: i64) -> Result<(), StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let _: i64 = redis::cmd("ZADD")
            .arg(k.inflight())
            .arg("XX")
            .arg(now_ms)
            .arg(id.to_string())
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether the item's counters exist and were verified by the server
    /// whose run id is `run_id` (see `guard.lua`; [`Self::server_run_id`]
    /// gives the running server's, once for many items).
    pub async fn verified_by(
        &self,
        round_id: i64,
        item_id: i64,
        run_id: &str,
    ) -> Result<bool, StoreError> {
        let k = self.keys(round_id, item_id);
        let v: Option<String> = self.conn.clone().hget(k.stock(), "verified").await?;
        Ok(v.as_deref() == Some(run_id))
    }

    /// Every attempt Redis holds for an item (SCAN; for reconciliation,
    /// never on the buy path).
    pub async fn item_attempts(
        &self,
        round_id: i64,
        item_id: i64,
    ) -> Result<Vec<(String, AttemptRecord)>, StoreError> {
        let k = self.keys(round_id, item_id);
        let prefix = k.attempt_prefix();
        let mut c = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut ids = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            ids.extend(
                keys.into_iter()
                    .filter_map(|key| key.strip_prefix(&prefix).map(str::to_owned)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = Vec::with_capacity(ids.len());
        for raw in ids {
            if let Ok(id) = raw.parse::<AttemptId>()
                && let Some(rec) = self.attempt(&id).await?
            {
                out.push((raw, rec));
            }
        }
        Ok(out)
    }

    /// The Redis server's run id: it changes when the server restarts, i.e.
    /// when it may have come back with less (or older) data.
    pub async fn server_run_id(&self) -> Result<String, StoreError> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn.clone())
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| StoreError::Protocol("INFO server without run_id".into()))
    }

    /// Takes the item's rebuild lock (SET NX PX); returns the token that
    /// proves this caller holds it, `None` when someone else does.
    pub async fn lock_item(
        &self,
        round_id: i64,
        item_id: i64,
    ) -> Result<Option<String>, StoreError> {
        let k = self.keys(round_id, item_id);
        let token = ulid::Ulid::new().to_string();
        let ok: Option<String> = redis::cmd("SET")
            .arg(k.rebuild_lock())
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(REBUILD_LOCK_MS)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(ok.map(|_| token))
    }

    /// Releases the item's rebuild lock if `token` still holds it.
    pub async fn unlock_item(
        &self,
        round_id: i64,
        item_id: i64,
        token: &str,
    ) -> Result<(), StoreError> {
        let k = self.keys(round_id, item_id);
        let _: i64 = self
            .scripts
            .unlock
            .key(k.rebuild_lock())
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Whether a rebuild holds the item.
    pub async fn item_locked(&self, round_id: i64, item_id: i64) -> Result<bool, StoreError> {
        let k = self.keys(round_id, item_id);
        Ok(self.conn.clone().exists(k.rebuild_lock()).await?)
    }

    /// An item's counters, `None` if it was never preheated.
    pub async fn counters(
        &self,
        round_id: i64,
        item_id: i64,
    ) -> Result<Option<Counters>, StoreError> {
        let k = self.keys(round_id, item_id);
        let v: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(k.stock())
            .arg(&["total", "available", "reserved", "sold"])
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(match v.as_slice() {
            [Some(total), Some(available), Some(reserved), Some(sold)] => Some(Counters {
                total: *total,
                available: *available,
                reserved: *reserved,
                sold: *sold,
            }),
            _ => None,
        })
    }

    /// An attempt's record, `None` if unknown.
    pub async fn attempt(&self, id: &AttemptId) -> Result<Option<AttemptRecord>, StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let map: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(k.attempt(&id.to_string()))
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| map.get(f).and_then(|v| v.parse::<i64>().ok());
        Ok(Some(AttemptRecord {
            user: map.get("user").cloned().unwrap_or_default(),
            qty: num("qty").unwrap_or(0),
            status: map.get("status").cloned().unwrap_or_default(),
            created_ms: num("created_ms").unwrap_or(0),
            price_cents: num("price_cents").unwrap_or(0),
            order_id: map.get("order_id").cloned(),
            pay_by_ms: num("pay_by_ms"),
            reason: map.get("reason").cloned(),
        }))
    }

    /// Records the final answer of a journaled buy the replay refused,
    /// unless one is recorded (the first answer stands).
    pub async fn record_journal_refusal(
        &self,
        id: &AttemptId,
        user: &str,
        qty: i64,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let key = k.journaled(&id.to_string());
        let _: () = redis::pipe()
            .atomic()
            .hset_nx(&key, "status", crate::domain::attempt::stored::CANCELLED)
            .hset_nx(&key, "user", user)
            .hset_nx(&key, "qty", qty)
            .hset_nx(&key, "reason", reason)
            .hset_nx(&key, "created_ms", now_ms)
            .expire(&key, JOURNAL_OUTCOME_SECS)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The recorded answer of a journaled buy the replay refused.
    pub async fn journal_refusal(
        &self,
        id: &AttemptId,
    ) -> Result<Option<AttemptRecord>, StoreError> {
        let k = self.keys(id.round_id, id.item_id);
        let map: HashMap<String, String> = self
            .conn
            .clone()
            .hgetall(k.journaled(&id.to_string()))
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| map.get(f).and_then(|v| v.parse::<i64>().ok());
        Ok(Some(AttemptRecord {
            user: map.get("user").cloned().unwrap_or_default(),
            qty: num("qty").unwrap_or(0),
            status: map.get("status").cloned().unwrap_or_default(),
            created_ms: num("created_ms").unwrap_or(0),
            price_cents: 0,
            order_id: None,
            pay_by_ms: None,
            reason: map.get("reason").cloned(),
        }))
    }

    /// Whether Redis answers at all.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// The attempt a buyer holds for an item, if any.
    pub async fn buyer_attempt(
        &self,
        round_id: i64,
        item_id: i64,
        user: &str,
    ) -> Result<Option<String>, StoreError> {
        let k = self.keys(round_id, item_id);
        Ok(self.conn.clone().hget(k.buyers(), user).await?)
    }
}

fn parse_reserve(full: &[String]) -> Result<Reserved, StoreError> {
    let bad = || StoreError::Protocol(format!("reserve: {full:?}"));
    let (effect, reply) = full.split_last().ok_or_else(bad)?;
    let permit = match effect.as_str() {
        "" => None,
        e => Some(Effect::parse(e).ok_or_else(bad)?),
    };
    let num = |i: usize| -> Result<i64, StoreError> {
        reply.get(i).and_then(|v| v.parse().ok()).ok_or_else(bad)
    };
    let s = |i: usize| -> Result<String, StoreError> { reply.get(i).cloned().ok_or_else(bad) };
    let outcome = match reply.first().map(String::as_str) {
        Some("reserved") => ReserveOutcome::Reserved {
            price_cents: num(2)?,
        },
        Some("duplicate") => ReserveOutcome::Duplicate {
            attempt_id: s(1)?,
            status: s(2)?,
        },
        Some("limit") => ReserveOutcome::Limit {
            held_attempt: Some(s(1)?).filter(|v| !v.is_empty()),
            held_qty: num(2)?,
            limit: num(3)?,
        },
        Some("unknown") => ReserveOutcome::Unknown,
        Some("not_started") => ReserveOutcome::NotStarted { starts_ms: num(1)? },
        Some("ended") => ReserveOutcome::Ended,
        Some("sold_out") => ReserveOutcome::SoldOut,
        Some("insufficient") => ReserveOutcome::Insufficient { available: num(1)? },
        Some("held") => ReserveOutcome::Held { free: num(1)? },
        Some("stale") => ReserveOutcome::Stale,
        _ => return Err(bad()),
    };
    Ok(Reserved { outcome, permit })
}

/// The one reply of a script called for one key.
fn one(mut replies: Vec<String>) -> Result<String, StoreError> {
    match (replies.pop(), replies.is_empty()) {
        (Some(r), true) => Ok(r),
        _ => Err(StoreError::Protocol("expected one reply".into())),
    }
}
