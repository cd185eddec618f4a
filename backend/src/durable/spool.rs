//! The order spool: order messages whose publish the broker did not
//! confirm, kept on local disk until they are delivered.
//!
//! A reservation whose order message was not confirmed is appended here
//! (fsync'd) before its buyer hears `202`; an entry is removed only after
//! its message was confirmed by the broker or its order committed by the
//! writer ([`crate::lifecycle::spool_drain`] does both). One spool per
//! backend process (the directory's lock says whose). This module owns the
//! entries and their file; it never talks to the broker.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use super::{
    DurableError,
    log::{self, Log},
};
use crate::queue::OrderMessage;

/// The log's file name in the spool directory.
pub const NAME: &str = "orders-spool";

/// One spooled order message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEntry {
    pub msg: OrderMessage,
    pub spooled_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Add(SpoolEntry),
    Done { attempt_id: String },
}

#[derive(Default)]
struct Entries {
    /// Oldest first.
    by_seq: BTreeMap<u64, SpoolEntry>,
    seq_of: HashMap<String, u64>,
    next: u64,
    /// Records in the file that are no longer live.
    dead: usize,
}

impl Entries {
    fn add(&mut self, e: SpoolEntry) {
        if self.seq_of.contains_key(&e.msg.attempt_id) {
            return;
        }
        self.seq_of.insert(e.msg.attempt_id.clone(), self.next);
        self.by_seq.insert(self.next, e);
        self.next += 1;
    }

    fn remove(&mut self, attempt_id: &str) -> bool {
        match self.seq_of.remove(attempt_id) {
            Some(s) => {
                self.by_seq.remove(&s);
                true
            }
            None => false,
        }
    }
}

/// The spool of one process.
pub struct Spool {
    log: Log,
    entries: std::sync::Mutex<Entries>,
    /// Appends share it; compaction takes it alone.
    gate: RwLock<()>,
    max_entries: usize,
    notify: Notify,
}

/// Replays the records of a log into its live entries.
fn live(records: Vec<Vec<u8>>) -> (Entries, usize) {
    let mut entries = Entries::default();
    let mut unreadable = 0;
    for r in records {
        match serde_json::from_slice::<Record>(&r) {
            Ok(Record::Add(e)) => entries.add(e),
            Ok(Record::Done { attempt_id }) => {
                entries.remove(&attempt_id);
            }
            Err(_) => unreadable += 1,
        }
    }
    (entries, unreadable)
}

/// The live entries of the spool in `dir`, oldest first, read without
/// taking it from its owner.
pub fn list(dir: &Path) -> Result<Vec<SpoolEntry>, DurableError> {
    let (entries, _) = live(log::read(dir, NAME)?);
    Ok(entries.by_seq.into_values().collect())
}

impl Spool {
    /// Opens the spool in `dir` (taking it for this process) and compacts
    /// it to its live entries.
    pub async fn open(dir: &Path, max_entries: usize) -> Result<Self, DurableError> {
        let (log, records) = Log::open(dir, NAME)?;
        let total = records.len();
        let (entries, unreadable) = live(records);
        if unreadable > 0 {
            tracing::error!(unreadable, path = %log.path().display(), "spool records that do not parse; dropped at compaction");
        }
        if entries.by_seq.len() < total {
            log.rewrite(Self::encode(&entries)).await?;
        }
        let spool = Self {
            log,
            entries: std::sync::Mutex::new(entries),
            gate: RwLock::new(()),
            max_entries,
            notify: Notify::new(),
        };
        spool.gauges();
        Ok(spool)
    }

    fn encode(entries: &Entries) -> Vec<Vec<u8>> {
        entries
            .by_seq
            .values()
            .map(|e| serde_json::to_vec(&Record::Add(e.clone())).expect("serializes"))
            .collect()
    }

    /// Appends an order message; `Ok` once it is on disk.
    pub async fn append(&self, msg: &OrderMessage, now_ms: i64) -> Result<(), DurableError> {
        let entry = SpoolEntry {
            msg: msg.clone(),
            spooled_at_ms: now_ms,
        };
        let _shared = self.gate.read().await;
        if self.len() >= self.max_entries {
            return Err(DurableError::Full {
                what: "spool",
                bound: self.max_entries,
            });
        }
        let rec = serde_json::to_vec(&Record::Add(entry.clone())).expect("serializes");
        if let Err(e) = self.log.append(&rec).await {
            metrics::counter!("seckill_durable_write_failures_total", "log" => "spool")
                .increment(1);
            return Err(e.into());
        }
        self.entries.lock().expect("spool").add(entry);
        metrics::counter!("seckill_spool_appended_total").increment(1);
        self.gauges();
        self.notify.notify_one();
        Ok(())
    }

    /// Removes an entry whose message was confirmed or whose order was
    /// committed; compacts the file once nothing is live.
    pub async fn remove(&self, attempt_id: &str) -> Result<(), DurableError> {
        {
            let _shared = self.gate.read().await;
            if !self
                .entries
                .lock()
                .expect("spool")
                .seq_of
                .contains_key(attempt_id)
            {
                return Ok(());
            }
            let rec = serde_json::to_vec(&Record::Done {
                attempt_id: attempt_id.to_owned(),
            })
            .expect("serializes");
            self.log.append(&rec).await?;
            let mut e = self.entries.lock().expect("spool");
            if e.remove(attempt_id) {
                e.dead += 2;
            }
        }
        self.gauges();
        self.compact_if_drained().await
    }

    async fn compact_if_drained(&self) -> Result<(), DurableError> {
        if !self.is_empty() {
            return Ok(());
        }
        let _alone = self.gate.write().await;
        let drained = {
            let e = self.entries.lock().expect("spool");
            e.by_seq.is_empty() && e.dead > 0
        };
        if drained {
            self.log.rewrite(Vec::new()).await?;
            self.entries.lock().expect("spool").dead = 0;
        }
        Ok(())
    }

    /// Up to `n` entries, oldest first.
    pub fn oldest(&self, n: usize) -> Vec<SpoolEntry> {
        self.entries
            .lock()
            .expect("spool")
            .by_seq
            .values()
            .take(n)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("spool").by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something is appended.
    pub async fn appended(&self) {
        self.notify.notified().await
    }

    /// Publishes the depth and the oldest entry's age.
    pub fn gauges(&self) {
        let (depth, oldest) = {
            let e = self.entries.lock().expect("spool");
            (
                e.by_seq.len(),
                e.by_seq.values().next().map(|e| e.spooled_at_ms),
            )
        };
        metrics::gauge!("seckill_spool_depth").set(depth as f64);
        let age = oldest
            .map(|t| (chrono::Utc::now().timestamp_millis() - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!("seckill_spool_oldest_age_seconds").set(age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> OrderMessage {
        OrderMessage {
            attempt_id: format!("1-1-{n:026}"),
            round_id: 1,
            item_id: 1,
            user_id: format!("u{n}"),
            qty: 1,
            unit_price_cents: 100,
            reserved_at_ms: n as i64,
        }
    }

    #[tokio::test]
    async fn entries_survive_a_restart_and_leave_once_done() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Spool::open(dir.path(), 10).await.unwrap();
            for n in 0..3 {
                s.append(&msg(n), 1_000 + n as i64).await.unwrap();
            }
            s.remove(&msg(1).attempt_id).await.unwrap();
        }
        let s = Spool::open(dir.path(), 10).await.unwrap();
        let ids: Vec<_> = s.oldest(10).into_iter().map(|e| e.msg.user_id).collect();
        assert_eq!(ids, ["u0", "u2"]);
        assert_eq!(list(dir.path()).unwrap().len(), 2);
        s.remove(&msg(0).attempt_id).await.unwrap();
        s.remove(&msg(2).attempt_id).await.unwrap();
        assert!(s.is_empty());
        // Drained: the file is compacted away.
        assert_eq!(
            std::fs::metadata(dir.path().join("orders-spool.log"))
                .unwrap()
                .len(),
            0
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1).await.unwrap();
        s.append(&msg(0), 0).await.unwrap();
        assert!(matches!(
            s.append(&msg(1), 0).await,
            Err(DurableError::Full { .. })
        ));
    }
}
