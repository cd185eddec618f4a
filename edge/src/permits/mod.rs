//! Per-item buy permits: the edge forwards a buy request only while it holds
//! a permit for the item, so the requests forwarded by all nodes never
//! exceed the stock (plus permits handed back after failed attempts).
//!
//! Permits are leased from Redis in batches by `lua/redis/lease.lua` and
//! kept in memory; taking one is a mutex and a decrement. A permit whose
//! request did not end in a reservation (anything but 202) goes back to the
//! node's pool, except after a 410 (the backend found nothing left). When
//! Redis has nothing to lease the item is answered at the edge for
//! `recheck_ms` before Redis is asked again, so stock that comes back (a
//! cancelled order) is sold again.
//!
//! This module does not decide policy (the Lua access script calls
//! [`Permits::acquire`]) and never talks to the backend.

mod lease;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use lease::{LeaseClient, LeaseReply};

use crate::metrics::Metrics;

/// An item on sale: `(round id, item id)`.
pub type ItemId = (i64, i64);

/// What the access phase is told about one buy request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A permit was taken: forward the request.
    Granted(Permit),
    /// Nothing left in stock: answer 410 at the edge.
    SoldOut,
    /// Stock remains but every permit is held by requests in flight or by
    /// other nodes: ask the client to retry after this many ms.
    Wait(u64),
    /// The item is not on sale (no counters in Redis).
    Unknown,
    /// Redis could not be asked.
    Unavailable,
}

/// A permit held by one forwarded request. Hand it back with
/// [`Permits::finish`] once the backend's status is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    pub item: ItemId,
    generation: u64,
}

/// The node-local state of one item.
#[derive(Debug, Default)]
struct Local {
    /// Permits in hand.
    held: i64,
    /// Bumped whenever the lease is void; permits of an older generation are
    /// given back to Redis instead of the local pool.
    generation: u64,
    /// Our lease is believed valid until then (a margin before Redis'
    /// expiry).
    valid_until: Option<Instant>,
    /// Permits that became reservations since the last report.
    spent: i64,
    /// Refunds of permits from a void lease, for the pool.
    give_back: i64,
    /// Permits dropped because the lease looked expired.
    void_back: i64,
    /// Answer without Redis until then.
    blocked: Option<(Instant, Block)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    SoldOut,
    Wait,
    Unavailable,
}

struct Item {
    local: Mutex<Local>,
    /// One lease call at a time per item; others wait for its result.
    refill: tokio::sync::Mutex<()>,
}

/// The node's permits for every item it has seen.
#[derive(Clone)]
pub struct Permits {
    inner: Arc<Inner>,
}

struct Inner {
    client: LeaseClient,
    items: Mutex<HashMap<ItemId, Arc<Item>>>,
    /// Items Redis does not know (never on sale, or a guessed id): kept
    /// apart, bounded, and forgotten after `recheck`, so random ids can
    /// neither grow `items` nor reach Redis more than once per recheck.
    unknown: moka::sync::Cache<ItemId, ()>,
    batch: i64,
    ttl: Duration,
    recheck: Duration,
    metrics: Metrics,
}

impl Permits {
    pub fn new(
        client: LeaseClient,
        batch: u32,
        ttl: Duration,
        recheck: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                items: Mutex::new(HashMap::new()),
                unknown: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(recheck)
                    .build(),
                batch: i64::from(batch),
                ttl,
                recheck,
                metrics,
            }),
        }
    }

    fn item(&self, id: ItemId) -> Arc<Item> {
        let mut items = self.inner.items.lock().expect("permits lock");
        items
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Item {
                    local: Mutex::new(Local::default()),
                    refill: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// The answer without waiting, when there is one: a permit from the
    /// node's pool, or a cached "sold out" / "wait" / "unknown". `None`:
    /// Redis must be asked ([`Permits::acquire`]).
    pub fn try_acquire(&self, id: ItemId) -> Option<Verdict> {
        if self.inner.unknown.contains_key(&id) {
            return Some(Verdict::Unknown);
        }
        let item = self.item(id);
        self.try_local(id, &item)
    }

    /// Takes a permit for `item`, leasing a batch from Redis when the node
    /// has none.
    pub async fn acquire(&self, id: ItemId) -> Verdict {
        if self.inner.unknown.contains_key(&id) {
            return Verdict::Unknown;
        }
        let item = self.item(id);
        if let Some(v) = self.try_local(id, &item) {
            return v;
        }
        let _refill = item.refill.lock().await;
        // Someone else may have refilled while we waited.
        if let Some(v) = self.try_local(id, &item) {
            return v;
        }
        let report = {
            let mut l = item.local.lock().expect("permit lock");
            Report::take(&mut l)
        };
        let sent = Instant::now();
        let reply = self
            .inner
            .client
            .lease(id, self.inner.batch, &report, self.inner.ttl, false)
            .await;
        let mut l = item.local.lock().expect("permit lock");
        match reply {
            Err(e) => {
                tracing::warn!(round_id = id.0, item_id = id.1, error = %e, "permit lease failed");
                report.restore(&mut l);
                // Answer quickly for a while instead of queueing on Redis.
                l.blocked = Some((Instant::now() + self.inner.recheck, Block::Unavailable));
                Verdict::Unavailable
            }
            Ok(LeaseReply::Unknown) => {
                drop(l);
                self.inner.unknown.insert(id, ());
                let mut items = self.inner.items.lock().expect("permits lock");
                // Nothing can be held for an item Redis does not know.
                if items.get(&id).is_some_and(|i| {
                    let l = i.local.lock().expect("permit lock");
                    l.held == 0 && l.spent == 0 && l.give_back == 0 && l.void_back == 0
                }) {
                    items.remove(&id);
                }
                Verdict::Unknown
            }
            Ok(LeaseReply::Granted {
                granted,
                pool,
                available,
                void,
                ..
            }) => {
                self.apply(&mut l, sent, granted, void);
                if l.held > 0 {
                    l.held -= 1;
                    self.inner.metrics.permit_forwarded(id);
                    Verdict::Granted(Permit {
                        item: id,
                        generation: l.generation,
                    })
                } else if pool <= 0 && available <= 0 {
                    l.blocked = Some((Instant::now() + self.inner.recheck, Block::SoldOut));
                    Verdict::SoldOut
                } else {
                    l.blocked = Some((Instant::now() + self.inner.recheck, Block::Wait));
                    Verdict::Wait(self.recheck_ms())
                }
            }
        }
    }

    fn recheck_ms(&self) -> u64 {
        self.inner.recheck.as_millis() as u64
    }

    /// A permit from the local pool, or the cached answer, or `None` when
    /// Redis must be asked.
    fn try_local(&self, id: ItemId, item: &Item) -> Option<Verdict> {
        let mut l = item.local.lock().expect("permit lock");
        let now = Instant::now();
        if l.held > 0 && l.valid_until.is_some_and(|t| now >= t) {
            // The lease may have expired in Redis: these permits may be
            // someone else's by now.
            l.void_back += l.held;
            l.held = 0;
            l.generation += 1;
            l.valid_until = None;
        }
        if l.held > 0 {
            l.held -= 1;
            self.inner.metrics.permit_forwarded(id);
            return Some(Verdict::Granted(Permit {
                item: id,
                generation: l.generation,
            }));
        }
        match l.blocked {
            Some((until, block)) if now < until => Some(match block {
                Block::SoldOut => Verdict::SoldOut,
                Block::Unavailable => Verdict::Unavailable,
                Block::Wait => Verdict::Wait((until - now).as_millis().max(1) as u64),
            }),
            _ => None,
        }
    }

    fn apply(&self, l: &mut Local, sent: Instant, granted: i64, void: bool) {
        if void {
            l.held = 0;
            l.generation += 1;
        }
        l.held += granted;
        l.blocked = None;
        l.valid_until = if l.held > 0 {
            // Redis started the lease after we sent; keep a fifth as margin.
            Some(sent + self.inner.ttl * 4 / 5)
        } else {
            None
        };
    }

    /// Settles a permit once the backend answered `status` (`None`: no
    /// answer, e.g. the connection failed): 202 spends it, 410 drops it,
    /// anything else gives it back.
    pub fn finish(&self, permit: Permit, status: Option<u16>) {
        let item = self.item(permit.item);
        let mut l = item.local.lock().expect("permit lock");
        match status {
            Some(202) => {
                l.spent += 1;
            }
            Some(410) => {
                self.inner.metrics.permit_dropped(permit.item);
            }
            _ => {
                self.inner.metrics.permit_refunded(permit.item);
                if permit.generation == l.generation && l.valid_until.is_some() {
                    l.held += 1;
                    // A refund makes the item sellable again right away.
                    l.blocked = None;
                } else {
                    l.give_back += 1;
                }
            }
        }
    }

    /// Renews the leases of items holding permits and reports what was
    /// spent; called every third of the lease TTL.
    pub async fn renew(&self) {
        let items: Vec<(ItemId, Arc<Item>)> = {
            let items = self.inner.items.lock().expect("permits lock");
            items.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        for (id, item) in items {
            let Ok(_refill) = item.refill.try_lock() else {
                continue;
            };
            let report = {
                let mut l = item.local.lock().expect("permit lock");
                if l.held == 0 && l.spent == 0 && l.give_back == 0 && l.void_back == 0 {
                    continue;
                }
                Report::take(&mut l)
            };
            let sent = Instant::now();
            let reply = self
                .inner
                .client
                .lease(id, 0, &report, self.inner.ttl, false)
                .await;
            let mut l = item.local.lock().expect("permit lock");
            match reply {
                Ok(LeaseReply::Granted { void, .. }) => {
                    let blocked = l.blocked;
                    self.apply(&mut l, sent, 0, void);
                    l.blocked = blocked;
                }
                Ok(LeaseReply::Unknown) => {}
                Err(e) => {
                    tracing::warn!(round_id = id.0, item_id = id.1, error = %e, "lease renewal failed");
                    report.restore(&mut l);
                }
            }
        }
    }

    /// Hands every held permit back to Redis (graceful shutdown).
    pub async fn release_all(&self) {
        let items: Vec<(ItemId, Arc<Item>)> = {
            let items = self.inner.items.lock().expect("permits lock");
            items.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        for (id, item) in items {
            let _refill = item.refill.lock().await;
            let report = {
                let mut l = item.local.lock().expect("permit lock");
                let r = Report::take(&mut l);
                l.held = 0;
                l.generation += 1;
                l.valid_until = None;
                r
            };
            if let Err(e) = self
                .inner
                .client
                .lease(id, 0, &report, self.inner.ttl, true)
                .await
            {
                tracing::warn!(round_id = id.0, item_id = id.1, error = %e, "could not hand permits back; they return when the lease expires");
            }
        }
    }
}

/// What a node tells Redis about an item when it calls the lease script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub unused: i64,
    pub spent: i64,
    pub give_back: i64,
    pub void_back: i64,
}

impl Report {
    fn take(l: &mut Local) -> Self {
        let r = Self {
            unused: l.held,
            spent: l.spent,
            give_back: l.give_back,
            void_back: l.void_back,
        };
        l.spent = 0;
        l.give_back = 0;
        l.void_back = 0;
        r
    }

    /// Puts the counters back after a failed call, to report next time.
    fn restore(&self, l: &mut Local) {
        l.spent += self.spent;
        l.give_back += self.give_back;
        l.void_back += self.void_back;
    }
}
