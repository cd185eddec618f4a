//! Per-item buy permits: the edge forwards a buy only with permits for all
//! its units, so the buys forwarded by all nodes never exceed the units no
//! other node holds.
//!
//! Permits are leased from Redis in batches (`lua/redis/lease.lua`) and kept
//! in memory; taking some is a mutex and a subtraction. A forwarded buy
//! names its permits (node, lease generation, units) in a request header;
//! the backend's `reserve.lua` takes them out of this node's lease in the
//! same step that reserves the units, and the answer says what it did
//! ([`Effect`]). So Redis always knows exactly what each node holds, in its
//! hand or in flight, and never depends on what a node reports:
//!
//! - `spent` / `dropped`: the units left the lease; the node forgets them;
//! - `kept`: the lease is unchanged; the permits go back to the hand;
//! - `void`, or no answer at all (a timeout, a lost connection): the node
//!   cannot know, so at the next renewal it ends its lease and starts a new
//!   one ([`Mode::Resync`]); whatever the old one still held goes back to
//!   the pool exactly, and late buys naming it are treated as carrying no
//!   permit.
//!
//! The invariant Redis keeps for each item (`lua/redis/permits.lua`):
//! `pool + units held by leases + reserved + sold = total`, with the pool
//! computed as `available - units held by leases`; a lease that is not
//! renewed (its node died, or cannot reach Redis) expires and its units are
//! in the pool again, and an idle node hands its lease back, so once no one
//! is buying, `pool == available`.
//!
//! Redis being away costs buyers nothing but a fast answer: calls on the
//! request path have a short deadline (`permits.redis_timeout_ms`), only
//! one buy at a time probes a Redis that failed (the others are answered
//! `Unavailable` at once), and a node that cannot renew stops using its
//! permits before Redis could hand them to someone else.
//!
//! Within an item's admission window ([`admission`](crate::admission)),
//! a buy takes no permit on arrival: it is held first and asks at its
//! random moment. The window (the item's start and length) comes with
//! every lease reply and is kept with the item, so it costs no Redis call
//! of its own; an item this node has never leased learns it from its first
//! lease, before that buy takes anything.
//!
//! This module does not decide policy (the Lua access script calls
//! [`Permits::acquire`]) and never talks to the backend.

mod lease;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

pub use lease::{LEASE_LUA, LeaseCall, LeaseClient, LeaseError, LeaseReply, Mode};
pub use seckill_proto::permit::{EdgePermit, Effect};

use crate::{
    admission::{self, Held, Window},
    clock,
    metrics::Metrics,
};

/// An item on sale: `(round id, item id)`.
pub type ItemId = (i64, i64);

/// What the access phase is told about one buy request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Permits were taken: forward the request.
    Granted(Permit),
    /// Nothing left in stock: answer 410 at the edge.
    SoldOut,
    /// Fewer units left than asked for.
    Insufficient(i64),
    /// Stock remains but every permit is held by requests in flight or by
    /// other nodes: ask the client to retry after this many ms.
    Wait(u64),
    /// The item is not on sale (no counters in Redis).
    Unknown,
    /// Redis could not be asked: retry after this many ms.
    Unavailable(u64),
    /// The client went away while the buy was held by the admission
    /// window: nothing was taken, nothing is to be forwarded.
    Gone,
}

/// Permits held by one forwarded request. Settle them with
/// [`Permits::finish`] once the backend's answer is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    pub item: ItemId,
    pub generation: u64,
    pub units: i64,
}

/// Tuning, from `[permits]` in the config.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Permits leased at a time.
    pub batch: i64,
    /// Lease lifetime in Redis.
    pub ttl: Duration,
    /// How long "sold out" or "no permit free" is believed.
    pub recheck: Duration,
    /// Deadline of a call on the request path.
    pub redis_timeout: Duration,
}

/// The node-local state of one item.
#[derive(Debug)]
struct Local {
    /// The generation of our lease (0: none).
    generation: u64,
    /// Permits in hand.
    hand: i64,
    /// Units of this generation in buys forwarded and not yet answered.
    in_flight: i64,
    /// Our lease is believed valid until then (a margin before Redis'
    /// expiry).
    valid_until: Option<Instant>,
    /// A buy of this generation ended without telling what it did: end the
    /// lease and start a new one.
    resync: bool,
    /// Last time a buy asked for the item (idle leases are handed back).
    last_used: Instant,
    /// Answer without Redis until then.
    blocked: Option<(Instant, Block)>,
    /// The item's admission window, from the last lease reply (`None`:
    /// never leased yet).
    window: Option<Window>,
}

impl Local {
    fn new() -> Self {
        Self {
            generation: 0,
            hand: 0,
            in_flight: 0,
            valid_until: None,
            resync: false,
            last_used: Instant::now(),
            blocked: None,
            window: None,
        }
    }

    fn sold_out(&self, now: Instant) -> bool {
        matches!(self.blocked, Some((until, Block::SoldOut)) if now < until)
    }

    /// A buy now must be held first: the item is in its admission window
    /// (and not known to be sold out, which needs no order).
    fn in_window(&self, now: Instant) -> bool {
        !self.sold_out(now) && self.window.is_some_and(|w| w.covers(clock::now_ms()))
    }

    fn holds_lease(&self) -> bool {
        self.generation != 0 || self.resync
    }

    /// Forgets the lease (its units are Redis' to reclaim).
    fn forget(&mut self) -> i64 {
        let dropped = self.hand;
        self.generation = 0;
        self.hand = 0;
        self.in_flight = 0;
        self.valid_until = None;
        self.resync = false;
        dropped
    }

    fn call(&self, want: i64) -> (Mode, u64, i64) {
        if self.resync {
            (Mode::Resync, 0, want)
        } else {
            (Mode::Lease, self.generation, want)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    SoldOut,
    Insufficient(i64),
    Wait,
}

struct Item {
    local: Mutex<Local>,
    /// One lease call at a time per item; others wait for its result (at
    /// most the request deadline).
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
    settings: Settings,
    /// Redis failed the last call: only one probe at a time until it
    /// answers again.
    down: AtomicBool,
    probing: AtomicBool,
    metrics: Metrics,
}

/// Clears the probe flag when the probe ends, however it ends.
struct Probe<'a>(Option<&'a AtomicBool>);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            f.store(false, Ordering::Release);
        }
    }
}

impl Permits {
    pub fn new(client: LeaseClient, settings: Settings, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                items: Mutex::new(HashMap::new()),
                unknown: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(settings.recheck)
                    .build(),
                settings,
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// Starts connecting to Redis (in the background; buyers never wait
    /// on it for longer than their deadline).
    pub fn connect(&self) {
        self.inner.client.start_connecting();
    }

    /// This node's name in the lease table.
    pub fn node(&self) -> &str {
        self.inner.client.node()
    }

    /// The request header naming `permit`.
    pub fn header(&self, permit: &Permit) -> String {
        EdgePermit {
            node: self.node().to_owned(),
            generation: permit.generation,
            units: permit.units,
        }
        .to_string()
    }

    fn item(&self, id: ItemId) -> Arc<Item> {
        let mut items = self.inner.items.lock().expect("permits lock");
        items
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Item {
                    local: Mutex::new(Local::new()),
                    refill: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    fn unavailable(&self) -> Verdict {
        Verdict::Unavailable(self.inner.settings.recheck.as_millis().max(1) as u64)
    }

    /// The answer without waiting, when there is one: permits from the
    /// node's hand, or a cached "sold out" / "wait" / "unknown". `None`:
    /// Redis must be asked ([`Permits::acquire`]).
    pub fn try_acquire(&self, id: ItemId, units: i64) -> Option<Verdict> {
        if self.inner.unknown.contains_key(&id) {
            return Some(Verdict::Unknown);
        }
        let item = self.item(id);
        self.try_local(id, &item, units, true)
    }

    /// Takes permits for `units` of `item`, leasing from Redis when the
    /// node's hand has too few. Within the item's admission window the buy
    /// is held first ([`admission::hold`]) and takes nothing before its
    /// moment; a buy whose client leaves meanwhile gets [`Verdict::Gone`].
    pub async fn acquire(&self, id: ItemId, units: i64) -> Verdict {
        let mut may_hold = true;
        loop {
            if self.inner.unknown.contains_key(&id) {
                return Verdict::Unknown;
            }
            let item = self.item(id);
            if may_hold && let Some(wait) = self.hold_for(&item) {
                may_hold = false;
                if admission::hold(wait, &self.inner.metrics).await == Held::Gone {
                    return Verdict::Gone;
                }
            }
            // `None`: the lease reply showed the item in its window; hold.
            if let Some(v) = self.acquire_from(id, &item, units, may_hold).await {
                return v;
            }
        }
    }

    /// How long a buy of `item` asking now is held (`None`: not at all).
    fn hold_for(&self, item: &Item) -> Option<Duration> {
        let l = item.local.lock().expect("permit lock");
        if !l.in_window(Instant::now()) {
            return None;
        }
        l.window?.hold(clock::now_ms(), fastrand::f64())
    }

    /// [`Permits::acquire`] past the hold (`may_hold`: none happened yet).
    /// `None` when a lease reply just showed the item in its admission
    /// window: nothing was taken, the buy must be held first.
    async fn acquire_from(
        &self,
        id: ItemId,
        item: &Item,
        units: i64,
        may_hold: bool,
    ) -> Option<Verdict> {
        // In the window, `try_local` takes nothing: hold first.
        let hold_first = || {
            may_hold
                && item
                    .local
                    .lock()
                    .expect("permit lock")
                    .in_window(Instant::now())
        };
        if let Some(v) = self.try_local(id, item, units, may_hold) {
            return Some(v);
        }
        if hold_first() {
            return None;
        }
        // Redis failed lately: one buy probes it, the others are answered.
        let probe = if self.inner.down.load(Ordering::Acquire) {
            if self.inner.probing.swap(true, Ordering::AcqRel) {
                return Some(self.unavailable());
            }
            Probe(Some(&self.inner.probing))
        } else {
            Probe(None)
        };
        let deadline = self.inner.settings.redis_timeout;
        // Whoever holds the lock is in a lease call bounded by the same
        // deadline.
        let Ok(_refill) = tokio::time::timeout(deadline * 2, item.refill.lock()).await else {
            return Some(self.unavailable());
        };
        // Someone else may have refilled while we waited.
        if let Some(v) = self.try_local(id, item, units, may_hold) {
            return Some(v);
        }
        if hold_first() {
            // Someone else's lease reply showed the window meanwhile.
            return None;
        }
        let (mode, generation, want) = {
            let l = item.local.lock().expect("permit lock");
            l.call(self.inner.settings.batch.max(units))
        };
        let call = LeaseCall {
            item: id,
            mode,
            generation,
            want,
        };
        let sent = Instant::now();
        let reply = self
            .inner
            .client
            .lease(call, self.inner.settings.ttl, deadline)
            .await;
        drop(probe);
        let mut l = item.local.lock().expect("permit lock");
        Some(match reply {
            Err(e) => {
                self.failed(id, &e);
                // A call that timed out may still run later: our view of
                // the lease is no longer certain.
                if matches!(e, LeaseError::Timeout) && want > 0 {
                    l.resync = true;
                }
                self.unavailable()
            }
            Ok(LeaseReply::Unknown) => {
                self.inner.down.store(false, Ordering::Release);
                let idle = l.generation == 0 && l.in_flight == 0 && !l.resync;
                drop(l);
                self.inner.unknown.insert(id, ());
                if idle {
                    self.inner.items.lock().expect("permits lock").remove(&id);
                }
                Verdict::Unknown
            }
            Ok(LeaseReply::Granted {
                granted,
                pool,
                available,
                generation,
                held,
                starts_ms,
                admission_window_ms,
                ..
            }) => {
                self.inner.down.store(false, Ordering::Release);
                self.apply(id, &mut l, sent, mode, granted, generation, held);
                l.window = Some(Window {
                    starts_ms,
                    window_ms: admission_window_ms,
                });
                if may_hold && available > 0 && l.in_window(Instant::now()) {
                    // The item is in its admission window: this buy is
                    // held before it takes anything (the grant stays in
                    // the hand).
                    return None;
                }
                if l.hand >= units {
                    Verdict::Granted(self.take(id, &mut l, units))
                } else {
                    let recheck = Instant::now() + self.inner.settings.recheck;
                    let (block, verdict) = if available <= 0 {
                        (Block::SoldOut, Verdict::SoldOut)
                    } else if available < units {
                        (
                            Block::Insufficient(available),
                            Verdict::Insufficient(available),
                        )
                    } else {
                        let _ = pool;
                        (Block::Wait, Verdict::Wait(self.recheck_ms()))
                    };
                    l.blocked = Some((recheck, block));
                    verdict
                }
            }
        })
    }

    fn failed(&self, id: ItemId, e: &LeaseError) {
        if !self.inner.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(round_id = id.0, item_id = id.1, error = %e,
                "permit lease failed; buyers needing permits are answered 503 until Redis answers");
        }
        self.inner.metrics.permit(id, "redis_failed");
    }

    fn recheck_ms(&self) -> u64 {
        self.inner.settings.recheck.as_millis() as u64
    }

    fn take(&self, id: ItemId, l: &mut Local, units: i64) -> Permit {
        l.hand -= units;
        l.in_flight += units;
        l.last_used = Instant::now();
        self.inner.metrics.permits(id, "forwarded", units);
        Permit {
            item: id,
            generation: l.generation,
            units,
        }
    }

    /// Permits from the hand, or the cached answer, or `None` when Redis
    /// must be asked — or, with `may_hold`, when the item is in its
    /// admission window (the buy is held before it takes anything).
    fn try_local(&self, id: ItemId, item: &Item, units: i64, may_hold: bool) -> Option<Verdict> {
        let mut l = item.local.lock().expect("permit lock");
        let now = Instant::now();
        l.last_used = now;
        if l.generation != 0 && l.valid_until.is_some_and(|t| now >= t) {
            // Not renewed in time: Redis may reclaim the lease any moment
            // and hand its units to another node. Stop using them.
            let dropped = l.forget();
            self.inner.metrics.permits(id, "expired", dropped);
        }
        if may_hold && l.in_window(now) {
            return None;
        }
        if l.hand >= units && l.generation != 0 {
            return Some(Verdict::Granted(self.take(id, &mut l, units)));
        }
        match l.blocked {
            Some((until, block)) if now < until => Some(match block {
                Block::SoldOut => Verdict::SoldOut,
                Block::Insufficient(n) if n < units => Verdict::Insufficient(n),
                Block::Insufficient(_) => return None,
                Block::Wait => Verdict::Wait((until - now).as_millis().max(1) as u64),
            }),
            _ => None,
        }
    }

    /// Applies a lease reply.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        id: ItemId,
        l: &mut Local,
        sent: Instant,
        mode: Mode,
        granted: i64,
        generation: u64,
        held: i64,
    ) {
        if generation != l.generation {
            // A new lease (or none): whatever the old one held is void, and
            // its buys in flight are settled as someone else's.
            if l.hand > 0 {
                self.inner.metrics.permits(id, "void", l.hand);
            }
            l.hand = 0;
            l.in_flight = 0;
            l.generation = generation;
        }
        if mode == Mode::Resync {
            l.resync = false;
        }
        l.hand += granted;
        if generation != 0 && held < l.hand {
            // Redis holds fewer than our hand: never forward on permits it
            // does not count. Start over at the next call.
            tracing::warn!(
                round_id = id.0,
                item_id = id.1,
                held,
                hand = l.hand,
                "lease holds fewer permits than the node's hand; renewing it"
            );
            l.hand = 0;
            l.resync = true;
        }
        l.blocked = None;
        l.valid_until = (generation != 0).then(|| sent + self.inner.settings.ttl * 4 / 5);
    }

    /// Settles permits once the backend answered: `effect` is what its
    /// reserve did to them (`None`: no answer, or an answer that does not
    /// say).
    pub fn finish(&self, permit: Permit, effect: Option<Effect>) {
        let item = self.item(permit.item);
        let mut l = item.local.lock().expect("permit lock");
        let current = permit.generation != 0 && permit.generation == l.generation;
        if current {
            l.in_flight = (l.in_flight - permit.units).max(0);
        }
        let event = match effect {
            Some(Effect::Spent) => "spent",
            Some(Effect::Dropped) => "dropped",
            Some(Effect::Kept) if current && l.valid_until.is_some() => {
                l.hand += permit.units;
                // Permits back in hand make the item sellable again.
                l.blocked = None;
                "kept"
            }
            Some(Effect::Kept) => "stale",
            Some(Effect::Void) => {
                l.resync |= current;
                "void"
            }
            None => {
                l.resync |= current;
                "lost"
            }
        };
        self.inner.metrics.permits(permit.item, event, permit.units);
    }

    /// Renews every lease in one round trip: a lease whose permits got
    /// uncertain is started anew, an idle one (no buy for a lease TTL, none
    /// in flight) is handed back. Called every third of the lease TTL.
    ///
    /// A plain renewal takes no lock, so buyers never wait for it: it
    /// cannot end or start a lease (`lease.lua`), and its answer is applied
    /// only if no buy changed the lease meanwhile. Restarting or handing
    /// back a lease takes the item's refill lock, if free.
    pub async fn renew(&self) {
        let items: Vec<(ItemId, Arc<Item>)> = {
            let items = self.inner.items.lock().expect("permits lock");
            items.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let ttl = self.inner.settings.ttl;
        let now = Instant::now();
        let mut calls = Vec::new();
        let mut held = Vec::new();
        for (id, item) in &items {
            let l = item.local.lock().expect("permit lock");
            if !l.holds_lease() {
                continue;
            }
            let idle = now.duration_since(l.last_used) >= ttl && l.in_flight == 0;
            let (mode, generation, want) = if l.resync {
                l.call(self.inner.settings.batch)
            } else if idle {
                (Mode::Release, l.generation, 0)
            } else {
                (Mode::Lease, l.generation, 0)
            };
            drop(l);
            let guard = if mode == Mode::Lease {
                None
            } else {
                match item.refill.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => continue,
                }
            };
            calls.push(LeaseCall {
                item: *id,
                mode,
                generation,
                want,
            });
            held.push((item.clone(), guard));
        }
        if calls.is_empty() {
            return;
        }
        let sent = Instant::now();
        let deadline = (ttl / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let replies = self.inner.client.lease_many(&calls, ttl, deadline).await;
        let replies = match replies {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, items = calls.len(), "lease renewal failed");
                self.inner.down.store(true, Ordering::Release);
                for ((item, _), call) in held.iter().zip(&calls) {
                    if call.mode != Mode::Lease {
                        // It may still run: start over at the next call.
                        item.local.lock().expect("permit lock").resync = true;
                    }
                }
                return;
            }
        };
        self.inner.down.store(false, Ordering::Release);
        for (((item, _), call), reply) in held.iter().zip(&calls).zip(replies) {
            let mut l = item.local.lock().expect("permit lock");
            if call.mode == Mode::Lease && l.generation != call.generation {
                // A buy renewed or restarted the lease meanwhile.
                continue;
            }
            match reply {
                Ok(LeaseReply::Granted {
                    granted,
                    generation,
                    held,
                    starts_ms,
                    admission_window_ms,
                    ..
                }) => {
                    l.window = Some(Window {
                        starts_ms,
                        window_ms: admission_window_ms,
                    });
                    if call.mode == Mode::Release {
                        let dropped = l.forget();
                        self.inner.metrics.permits(call.item, "released", dropped);
                    } else {
                        let blocked = l.blocked;
                        self.apply(
                            call.item, &mut l, sent, call.mode, granted, generation, held,
                        );
                        l.blocked = blocked;
                    }
                }
                Ok(LeaseReply::Unknown) => {
                    l.forget();
                }
                Err(e) => {
                    tracing::warn!(round_id = call.item.0, item_id = call.item.1, error = %e,
                        "lease renewal refused");
                    l.resync = true;
                }
            }
        }
    }

    /// Hands every lease back to Redis (graceful shutdown).
    pub async fn release_all(&self) {
        let items: Vec<(ItemId, Arc<Item>)> = {
            let items = self.inner.items.lock().expect("permits lock");
            items.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        for (id, item) in items {
            let _refill = item.refill.lock().await;
            let generation = {
                let mut l = item.local.lock().expect("permit lock");
                if !l.holds_lease() {
                    continue;
                }
                let g = l.generation;
                l.forget();
                g
            };
            let call = LeaseCall {
                item: id,
                mode: Mode::Release,
                generation,
                want: 0,
            };
            if let Err(e) = self
                .inner
                .client
                .release_own(call, self.inner.settings.ttl)
                .await
            {
                tracing::warn!(round_id = id.0, item_id = id.1, error = %e, "could not hand permits back; they return when the lease expires");
            }
        }
    }
}
