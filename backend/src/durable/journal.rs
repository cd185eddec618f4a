//! The buy journal: buys that could not reach Redis, kept on local disk in
//! arrival order until they are replayed through the reserve script
//! ([`crate::lifecycle::replay`]).
//!
//! A buy is appended here (fsync'd) before its buyer hears `202
//! processing`; its entry is removed only once the replay decided it (an
//! attempt reserved and its order message confirmed or spooled, or a
//! refusal recorded in Redis for the buyer to poll). A buyer holds at most
//! one entry per item (a retry gets the same attempt back), and an item
//! holds at most `bound` entries, so the journal never promises far more
//! than exists. One journal per backend process (the directory's lock).
//!
//! The journal also carries the buy path's view of Redis
//! ([`Journal::mark_unreachable`]): while Redis is known to be unreachable,
//! new buys go to the journal straight away instead of waiting for a
//! timeout each. Once Redis answers, new buys go to Redis again (an edge's
//! buy carries a permit for units leased to it, which journaled buys
//! cannot use): journaled buys are decided in arrival order among
//! themselves, from the units no edge holds.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use super::{
    DurableError,
    log::{self, Log},
};

/// The log's file name in the journal directory.
pub const NAME: &str = "buy-journal";

/// One journaled buy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub attempt_id: String,
    pub round_id: i64,
    pub item_id: i64,
    pub user: String,
    pub qty: i64,
    pub idempotency_key: String,
    pub arrived_ms: i64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Add(JournalEntry),
    Done { attempt_id: String },
}

type Buyer = (i64, i64, String);

#[derive(Default)]
struct Entries {
    by_seq: BTreeMap<u64, JournalEntry>,
    seq_of: HashMap<String, u64>,
    by_buyer: HashMap<Buyer, String>,
    per_item: HashMap<(i64, i64), usize>,
    next: u64,
    dead: usize,
}

impl Entries {
    fn add(&mut self, e: JournalEntry) {
        if self.seq_of.contains_key(&e.attempt_id) {
            return;
        }
        self.by_buyer.insert(
            (e.round_id, e.item_id, e.user.clone()),
            e.attempt_id.clone(),
        );
        *self.per_item.entry((e.round_id, e.item_id)).or_default() += 1;
        self.seq_of.insert(e.attempt_id.clone(), self.next);
        self.by_seq.insert(self.next, e);
        self.next += 1;
    }

    fn remove(&mut self, attempt_id: &str) -> bool {
        let Some(s) = self.seq_of.remove(attempt_id) else {
            return false;
        };
        if let Some(e) = self.by_seq.remove(&s) {
            let buyer = (e.round_id, e.item_id, e.user);
            if self.by_buyer.get(&buyer).map(String::as_str) == Some(attempt_id) {
                self.by_buyer.remove(&buyer);
            }
            let key = (e.round_id, e.item_id);
            if let Some(n) = self.per_item.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.per_item.remove(&key);
                }
            }
        }
        true
    }
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The buy is journaled.
    New,
    /// The buyer already has this journaled attempt for the item.
    Existing { attempt_id: String, qty: i64 },
}

/// The journal of one process.
pub struct Journal {
    log: Log,
    entries: std::sync::Mutex<Entries>,
    gate: RwLock<()>,
    notify: Notify,
    redis_unreachable: AtomicBool,
}

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

/// The live entries of the journal in `dir`, in arrival order, read
/// without taking it from its owner.
pub fn list(dir: &Path) -> Result<Vec<JournalEntry>, DurableError> {
    let (entries, _) = live(log::read(dir, NAME)?);
    Ok(entries.by_seq.into_values().collect())
}

impl Journal {
    /// Opens the journal in `dir` (taking it for this process) and compacts
    /// it to its live entries.
    pub async fn open(dir: &Path) -> Result<Self, DurableError> {
        let (log, records) = Log::open(dir, NAME)?;
        let total = records.len();
        let (entries, unreadable) = live(records);
        if unreadable > 0 {
            tracing::error!(unreadable, path = %log.path().display(), "journal records that do not parse; dropped at compaction");
        }
        if entries.by_seq.len() < total {
            let recs = entries
                .by_seq
                .values()
                .map(|e| serde_json::to_vec(&Record::Add(e.clone())).expect("serializes"))
                .collect();
            log.rewrite(recs).await?;
        }
        let j = Self {
            log,
            entries: std::sync::Mutex::new(entries),
            gate: RwLock::new(()),
            notify: Notify::new(),
            redis_unreachable: AtomicBool::new(false),
        };
        j.gauges();
        Ok(j)
    }

    /// Journals a buy unless its buyer already has an entry for the item;
    /// refuses once the item has `bound` entries. `Ok(New)` once on disk.
    pub async fn append(&self, e: &JournalEntry, bound: usize) -> Result<Appended, DurableError> {
        let _shared = self.gate.read().await;
        let buyer = (e.round_id, e.item_id, e.user.clone());
        {
            let mut st = self.entries.lock().expect("journal");
            if let Some(a) = st.by_buyer.get(&buyer) {
                let qty = st
                    .seq_of
                    .get(a)
                    .and_then(|s| st.by_seq.get(s))
                    .map_or(e.qty, |x| x.qty);
                return Ok(Appended::Existing {
                    attempt_id: a.clone(),
                    qty,
                });
            }
            let n = st
                .per_item
                .get(&(e.round_id, e.item_id))
                .copied()
                .unwrap_or(0);
            if n >= bound {
                return Err(DurableError::Full {
                    what: "journal",
                    bound,
                });
            }
            // Hold the buyer's and the item's place while the write runs,
            // so concurrent buys cannot pass the bound or journal twice.
            st.add(e.clone());
        }
        let rec = serde_json::to_vec(&Record::Add(e.clone())).expect("serializes");
        if let Err(err) = self.log.append(&rec).await {
            self.entries.lock().expect("journal").remove(&e.attempt_id);
            metrics::counter!("seckill_durable_write_failures_total", "log" => "journal")
                .increment(1);
            return Err(err.into());
        }
        metrics::counter!("seckill_journal_appended_total").increment(1);
        self.gauges();
        self.notify.notify_one();
        Ok(Appended::New)
    }

    /// Removes a decided entry; compacts the file once nothing is live.
    pub async fn remove(&self, attempt_id: &str) -> Result<(), DurableError> {
        {
            let _shared = self.gate.read().await;
            if !self
                .entries
                .lock()
                .expect("journal")
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
            let mut st = self.entries.lock().expect("journal");
            if st.remove(attempt_id) {
                st.dead += 2;
            }
        }
        self.gauges();
        if self.is_empty() {
            let _alone = self.gate.write().await;
            let drained = {
                let st = self.entries.lock().expect("journal");
                st.by_seq.is_empty() && st.dead > 0
            };
            if drained {
                self.log.rewrite(Vec::new()).await?;
                self.entries.lock().expect("journal").dead = 0;
            }
        }
        Ok(())
    }

    /// The journaled entry of an attempt, if it is still waiting.
    pub fn pending(&self, attempt_id: &str) -> Option<JournalEntry> {
        let st = self.entries.lock().expect("journal");
        st.seq_of
            .get(attempt_id)
            .and_then(|s| st.by_seq.get(s))
            .cloned()
    }

    /// Every waiting entry, in arrival order.
    pub fn entries(&self) -> Vec<JournalEntry> {
        self.entries
            .lock()
            .expect("journal")
            .by_seq
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("journal").by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether new buys must be journaled: Redis is known unreachable.
    pub fn active(&self) -> bool {
        self.redis_unreachable.load(Ordering::Acquire)
    }

    /// How many buys of an item wait in the journal.
    pub fn waiting_for_item(&self, round_id: i64, item_id: i64) -> usize {
        self.entries
            .lock()
            .expect("journal")
            .per_item
            .get(&(round_id, item_id))
            .copied()
            .unwrap_or(0)
    }

    /// The attempt a buyer has waiting in the journal for an item.
    pub fn buyer_entry(&self, round_id: i64, item_id: i64, user: &str) -> Option<String> {
        self.entries
            .lock()
            .expect("journal")
            .by_buyer
            .get(&(round_id, item_id, user.to_owned()))
            .cloned()
    }

    /// The buy path could not reach Redis.
    pub fn mark_unreachable(&self) {
        if !self.redis_unreachable.swap(true, Ordering::AcqRel) {
            tracing::warn!("redis unreachable: journaling buys until it answers");
        }
        self.notify.notify_one();
    }

    /// Redis answered the replayer.
    pub fn mark_reachable(&self) {
        if self.redis_unreachable.swap(false, Ordering::AcqRel) {
            tracing::info!("redis answers again");
        }
    }

    pub fn redis_unreachable(&self) -> bool {
        self.redis_unreachable.load(Ordering::Acquire)
    }

    /// Waits until something is appended or Redis was marked unreachable.
    pub async fn changed(&self) {
        self.notify.notified().await
    }

    /// Publishes the depth and the oldest entry's age.
    pub fn gauges(&self) {
        let (depth, oldest) = {
            let st = self.entries.lock().expect("journal");
            (
                st.by_seq.len(),
                st.by_seq.values().next().map(|e| e.arrived_ms),
            )
        };
        metrics::gauge!("seckill_journal_depth").set(depth as f64);
        let age = oldest
            .map(|t| (chrono::Utc::now().timestamp_millis() - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!("seckill_journal_oldest_age_seconds").set(age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32, item: i64, user: &str) -> JournalEntry {
        JournalEntry {
            attempt_id: format!("1-{item}-{n:026}"),
            round_id: 1,
            item_id: item,
            user: user.into(),
            qty: 1,
            idempotency_key: String::new(),
            arrived_ms: n as i64,
        }
    }

    #[tokio::test]
    async fn arrival_order_bound_and_one_entry_per_buyer() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).await.unwrap();
            assert_eq!(j.append(&entry(1, 1, "a"), 2).await.unwrap(), Appended::New);
            assert_eq!(
                j.append(&entry(2, 1, "a"), 2).await.unwrap(),
                Appended::Existing {
                    attempt_id: entry(1, 1, "a").attempt_id,
                    qty: 1
                }
            );
            assert_eq!(j.append(&entry(3, 1, "b"), 2).await.unwrap(), Appended::New);
            assert!(matches!(
                j.append(&entry(4, 1, "c"), 2).await,
                Err(DurableError::Full { .. })
            ));
            // Another item has its own bound.
            assert_eq!(j.append(&entry(5, 2, "c"), 2).await.unwrap(), Appended::New);
            j.remove(&entry(1, 1, "a").attempt_id).await.unwrap();
        }
        let j = Journal::open(dir.path()).await.unwrap();
        let users: Vec<_> = j.entries().into_iter().map(|e| e.user).collect();
        assert_eq!(users, ["b", "c"]);
        assert!(!j.active());
        j.mark_unreachable();
        assert!(j.active());
        assert_eq!(j.buyer_entry(1, 1, "b"), Some(entry(3, 1, "b").attempt_id));
        assert_eq!(j.append(&entry(6, 1, "d"), 2).await.unwrap(), Appended::New);
    }
}
