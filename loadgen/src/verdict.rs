//! The verdict: checks the sale's invariants (I1–I5 of the design) against
//! what the stores hold — counters, buyers and attempts in Redis, items and
//! orders in the database — never against the load generator's own counts.
//! The crowd's view is used only for what only the crowd knows: which
//! attempts were answered `202` (I5) and which users forged their tokens.
//!
//! This module reads; it never writes to a store.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use redis::{AsyncCommands, aio::MultiplexedConnection};
use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
};
use seckill_backend::store::{
    entities::{item, order},
    keys::ItemKeys,
};
use serde::Serialize;

use crate::buyer::Told;

/// Where the sale's state lives.
#[derive(Clone, Debug)]
pub struct Stores {
    pub redis_url: String,
    pub redis_prefix: String,
    pub database_url: String,
}

/// An attempt as stored in Redis.
#[derive(Clone, Debug, Default)]
pub struct StoredAttempt {
    pub user: String,
    pub qty: i64,
    pub status: String,
    pub created_ms: i64,
}

/// Statuses that hold units (reserved or sold).
pub fn is_live(status: &str) -> bool {
    matches!(status, "queued" | "writing" | "ordered" | "paid")
}

/// Statuses a buyer may stop polling at.
pub fn is_final(status: &str) -> bool {
    matches!(status, "ordered" | "paid" | "cancelled")
}

/// One item's state in both stores.
#[derive(Clone, Debug)]
pub struct ItemSnapshot {
    pub item: item::Model,
    /// total, available, reserved, sold (`None`: never preheated).
    pub counters: Option<[i64; 4]>,
    pub buyers: HashMap<String, String>,
    pub attempts: HashMap<String, StoredAttempt>,
}

/// A round's state in both stores, read after the crowd is done.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub round_id: i64,
    pub items: Vec<ItemSnapshot>,
    pub orders: Vec<order::Model>,
}

impl Snapshot {
    /// Attempts still on their way (`queued` or `writing`).
    pub fn pending(&self) -> usize {
        self.items
            .iter()
            .flat_map(|i| i.attempts.values())
            .filter(|a| !is_final(&a.status))
            .count()
    }
}

/// Open connections to both stores.
pub struct StoreReader {
    redis: MultiplexedConnection,
    db: DatabaseConnection,
    prefix: String,
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl StoreReader {
    pub async fn connect(stores: &Stores) -> anyhow::Result<Self> {
        let redis = redis::Client::open(stores.redis_url.as_str())
            .context("redis url")?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to redis at {}", stores.redis_url))?;
        let mut opts = ConnectOptions::new(stores.database_url.clone());
        opts.max_connections(2)
            .min_connections(1)
            .sqlx_logging(false);
        let db = Database::connect(opts)
            .await
            .context("connecting to the order database")?;
        Ok(Self {
            redis,
            db,
            prefix: stores.redis_prefix.clone(),
        })
    }

    /// Reads everything the verdict looks at for one round.
    pub async fn snapshot(&self, round_id: i64) -> anyhow::Result<Snapshot> {
        let items = item::Entity::find()
            .filter(item::Column::RoundId.eq(round_id))
            .order_by_asc(item::Column::Id)
            .all(&self.db)
            .await
            .context("reading items")?;
        anyhow::ensure!(
            !items.is_empty(),
            "round {round_id} has no items in the database"
        );
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            out.push(self.item(round_id, it).await?);
        }
        let orders = order::Entity::find()
            .filter(order::Column::RoundId.eq(round_id))
            .all(&self.db)
            .await
            .context("reading orders")?;
        Ok(Snapshot {
            round_id,
            items: out,
            orders,
        })
    }

    async fn item(&self, round_id: i64, it: item::Model) -> anyhow::Result<ItemSnapshot> {
        let mut c = self.redis.clone();
        let k = ItemKeys::new(&self.prefix, round_id, it.id);
        let v: Vec<Option<i64>> = redis::cmd("HMGET")
            .arg(k.stock())
            .arg(&["total", "available", "reserved", "sold"])
            .query_async(&mut c)
            .await?;
        let counters = match v.as_slice() {
            [Some(t), Some(a), Some(r), Some(s)] => Some([*t, *a, *r, *s]),
            _ => None,
        };
        let buyers: HashMap<String, String> = c.hgetall(k.buyers()).await?;
        let prefix = k.attempt_prefix();
        let mut keys = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> =
                c.scan_match(format!("{}*", glob_escape(&prefix))).await?;
            while let Some(key) = iter.next_item().await {
                keys.push(key?);
            }
        }
        let mut attempts = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.hgetall(key);
            }
            let maps: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
            for (key, m) in chunk.iter().zip(maps) {
                let num = |f: &str| m.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                attempts.insert(
                    key[prefix.len()..].to_owned(),
                    StoredAttempt {
                        user: m.get("user").cloned().unwrap_or_default(),
                        qty: num("qty"),
                        status: m.get("status").cloned().unwrap_or_default(),
                        created_ms: num("created_ms"),
                    },
                );
            }
        }
        Ok(ItemSnapshot {
            item: it,
            counters,
            buyers,
            attempts,
        })
    }

    /// Waits until no attempt of the round is `queued` or `writing`, or
    /// `limit` passes; returns the last snapshot either way.
    pub async fn settled(
        &self,
        round_id: i64,
        limit: std::time::Duration,
    ) -> anyhow::Result<Snapshot> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let s = self.snapshot(round_id).await?;
            if s.pending() == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }
}

/// One invariant's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One item's state as the verdict saw it.
#[derive(Clone, Debug, Serialize)]
pub struct ItemState {
    pub item_id: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    pub total: Option<i64>,
    pub available: Option<i64>,
    pub reserved: Option<i64>,
    pub sold: Option<i64>,
    pub attempts: BTreeMap<String, u64>,
    pub orders: u64,
    pub order_units: i64,
    /// Server time of the latest reservation (any attempt's `created_ms`).
    pub last_reservation_ms: Option<i64>,
}

/// All checks, and whether all passed.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
    pub items: Vec<ItemState>,
}

/// What only the crowd knows.
#[derive(Clone, Debug, Default)]
pub struct ClientView {
    /// Attempts answered `202` (or `200` to a retry that found them), with
    /// the last status their buyer saw.
    pub told_202: HashMap<String, Told>,
    /// Users whose tokens were forged.
    pub forgers: HashSet<String>,
}

/// Collects failures of one check, keeping a few examples.
struct Failures {
    count: usize,
    examples: Vec<String>,
}

impl Failures {
    fn new() -> Self {
        Self {
            count: 0,
            examples: Vec::new(),
        }
    }

    fn add(&mut self, what: String) {
        self.count += 1;
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }

    fn check(self, id: &str, name: &str, ok_detail: String) -> Check {
        let passed = self.count == 0;
        Check {
            id: id.into(),
            name: name.into(),
            passed,
            detail: if passed {
                ok_detail
            } else {
                format!("{} violation(s): {}", self.count, self.examples.join("; "))
            },
        }
    }
}

/// Judges a snapshot. `client` is `None` when only the stores are known
/// (then I5 is checked store-side only: no attempt left unfinished).
pub fn judge(snap: &Snapshot, client: Option<&ClientView>) -> Verdict {
    let mut i1 = Failures::new();
    let mut oversell = Failures::new();
    let mut i2 = Failures::new();
    let mut i3 = Failures::new();
    let mut i4 = Failures::new();
    let mut orders_ck = Failures::new();
    let mut i5 = Failures::new();
    let mut forged = Failures::new();

    let mut orders_by_attempt: HashMap<&str, &order::Model> = HashMap::new();
    let mut orders_by_buyer: HashMap<(i64, &str), Vec<&order::Model>> = HashMap::new();
    for o in &snap.orders {
        orders_by_attempt.insert(o.attempt_id.as_str(), o);
        if o.status != order::status::CANCELLED {
            orders_by_buyer
                .entry((o.item_id, o.user_id.as_str()))
                .or_default()
                .push(o);
        }
    }
    let known_items: HashSet<i64> = snap.items.iter().map(|i| i.item.id).collect();
    for o in &snap.orders {
        if !known_items.contains(&o.item_id) {
            i4.add(format!("order {} is for unknown item {}", o.id, o.item_id));
        }
    }

    let mut states = Vec::new();
    let (mut total_units, mut total_stock, mut total_orders, mut total_attempts) = (0, 0, 0, 0);
    for is in &snap.items {
        let it = &is.item;
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for a in is.attempts.values() {
            *by_status.entry(a.status.clone()).or_default() += 1;
        }
        total_attempts += is.attempts.len();
        total_stock += it.stock;

        // I1 and no oversell.
        match is.counters {
            None => i1.add(format!("item {}: no counters in redis", it.id)),
            Some([t, a, r, s]) => {
                if a + r + s != t || a < 0 || r < 0 || s < 0 {
                    i1.add(format!(
                        "item {}: available {a} + reserved {r} + sold {s} != total {t}",
                        it.id
                    ));
                }
                if t != it.stock {
                    i1.add(format!(
                        "item {}: redis total {t} != stock {}",
                        it.id, it.stock
                    ));
                }
                if r + s > it.stock {
                    oversell.add(format!(
                        "item {}: reserved {r} + sold {s} > stock {}",
                        it.id, it.stock
                    ));
                }
                total_units += r + s;
            }
        }

        // I2: one live attempt and one live order per buyer, within the limit.
        let mut live_by_user: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut live_units = 0;
        for (id, a) in &is.attempts {
            if is_live(&a.status) {
                live_units += a.qty;
                live_by_user.entry(a.user.as_str()).or_default().push(id);
                if a.qty > it.per_user_limit {
                    i2.add(format!(
                        "attempt {id}: qty {} > limit {}",
                        a.qty, it.per_user_limit
                    ));
                }
            }
        }
        for (user, ids) in &live_by_user {
            if ids.len() > 1 {
                i2.add(format!(
                    "item {}: user {user} holds {} live attempts",
                    it.id,
                    ids.len()
                ));
            }
        }
        let mut item_orders = 0u64;
        let mut item_order_units = 0i64;
        for ((item_id, user), os) in &orders_by_buyer {
            if *item_id != it.id {
                continue;
            }
            if os.len() > 1 {
                i2.add(format!(
                    "item {}: user {user} has {} orders",
                    it.id,
                    os.len()
                ));
            }
            for o in os {
                item_orders += 1;
                item_order_units += o.qty;
                if o.qty > it.per_user_limit {
                    i2.add(format!(
                        "order {}: qty {} > limit {}",
                        o.id, o.qty, it.per_user_limit
                    ));
                }
            }
        }
        total_orders += item_orders;

        // I3: every attempt final; ordered ones have their order, cancelled
        // ones none.
        let mut ordered_attempts = 0u64;
        let mut ordered_units = 0i64;
        for (id, a) in &is.attempts {
            let order = orders_by_attempt.get(id.as_str());
            match a.status.as_str() {
                "ordered" | "paid" => {
                    ordered_attempts += 1;
                    ordered_units += a.qty;
                    match order {
                        None => i3.add(format!("attempt {id} is {} without an order", a.status)),
                        Some(o) if o.status == order::status::CANCELLED => i3.add(format!(
                            "attempt {id} is {} but its order is cancelled",
                            a.status
                        )),
                        _ => {}
                    }
                }
                "cancelled" => {
                    if order.is_some_and(|o| o.status != order::status::CANCELLED) {
                        i3.add(format!("attempt {id} is cancelled but has a live order"));
                    }
                }
                other => i3.add(format!("attempt {id} stranded in {other:?}")),
            }
        }

        // I4: every reserved unit has an attempt; every order an attempt.
        if let Some([_, _, r, s]) = is.counters
            && live_units != r + s
        {
            i4.add(format!(
                "item {}: live attempts hold {live_units} unit(s), counters say reserved {r} + sold {s}",
                it.id
            ));
        }
        for (user, aid) in &is.buyers {
            match is.attempts.get(aid) {
                Some(a) if a.user == *user && is_live(&a.status) => {}
                // An expired order keeps its buyer: one order per buyer and item.
                Some(a)
                    if a.user == *user
                        && a.status == "cancelled"
                        && orders_by_attempt.contains_key(aid.as_str()) => {}
                Some(a) => i4.add(format!(
                    "buyer {user} points at attempt {aid} ({}, user {})",
                    a.status, a.user
                )),
                None => i4.add(format!("buyer {user} points at missing attempt {aid}")),
            }
        }
        for (user, ids) in &live_by_user {
            if ids
                .iter()
                .all(|id| is.buyers.get(*user) != Some(&id.to_string()))
            {
                i4.add(format!(
                    "live attempt {} of {user} is not in buyers",
                    ids[0]
                ));
            }
        }
        for o in snap.orders.iter().filter(|o| o.item_id == it.id) {
            match is.attempts.get(&o.attempt_id) {
                None => i4.add(format!("order {} has no attempt", o.id)),
                Some(a) if a.user != o.user_id || a.qty != o.qty => i4.add(format!(
                    "order {} (user {}, qty {}) differs from its attempt (user {}, qty {})",
                    o.id, o.user_id, o.qty, a.user, a.qty
                )),
                Some(a)
                    if o.status != order::status::CANCELLED
                        && !matches!(a.status.as_str(), "ordered" | "paid") =>
                {
                    i4.add(format!(
                        "order {} is live but its attempt is {}",
                        o.id, a.status
                    ))
                }
                _ => {}
            }
        }

        // Orders in the database match the ordered attempts.
        if item_orders != ordered_attempts || item_order_units != ordered_units {
            orders_ck.add(format!(
                "item {}: {item_orders} order(s) / {item_order_units} unit(s) in the database, {ordered_attempts} ordered attempt(s) / {ordered_units} unit(s) in redis",
                it.id
            ));
        }

        // Forged tokens never reserve.
        if let Some(cv) = client {
            for a in is.attempts.values() {
                if cv.forgers.contains(&a.user) {
                    forged.add(format!("forger {} holds an attempt", a.user));
                }
            }
        }

        let [t, a, r, s] = is.counters.map(|c| c.map(Some)).unwrap_or([None; 4]);
        states.push(ItemState {
            item_id: it.id,
            stock: it.stock,
            per_user_limit: it.per_user_limit,
            total: t,
            available: a,
            reserved: r,
            sold: s,
            attempts: by_status,
            orders: item_orders,
            order_units: item_order_units,
            last_reservation_ms: is.attempts.values().map(|a| a.created_ms).max(),
        });
    }

    // I5: every buyer told 202 got a final answer, and the store agrees.
    let mut i5_detail = "no attempt is left unfinished in the store".to_owned();
    if let Some(cv) = client {
        let attempts: HashMap<&str, &StoredAttempt> = snap
            .items
            .iter()
            .flat_map(|i| i.attempts.iter().map(|(k, v)| (k.as_str(), v)))
            .collect();
        for (id, told) in &cv.told_202 {
            match attempts.get(id.as_str()) {
                None => i5.add(format!("attempt {id} told 202 is unknown to redis")),
                Some(a) if !is_final(&a.status) => {
                    i5.add(format!("attempt {id} told 202 is still {}", a.status))
                }
                Some(_) if !is_final(&told.status) => i5.add(format!(
                    "buyer {} never saw a final status for {id}",
                    told.user
                )),
                Some(_) => {}
            }
        }
        i5_detail = format!(
            "{} attempt(s) answered 202 (or 200 to a retry), all reached a final status",
            cv.told_202.len()
        );
    }

    let mut checks = vec![
        i1.check(
            "I1",
            "counters balance: available + reserved + sold == stock, none negative",
            format!("{} item(s) balanced", snap.items.len()),
        ),
        oversell.check(
            "no-oversell",
            "no oversell: reserved + sold <= stock",
            format!("{total_units} of {total_stock} unit(s) taken"),
        ),
        i2.check(
            "I2",
            "no duplicate buyer: one order per (round, item, user), within the per-user limit",
            format!("{total_orders} order(s), one per buyer and item"),
        ),
        i3.check(
            "I3",
            "no stranded reservation: every attempt ended ordered or cancelled",
            format!("{total_attempts} attempt(s), all final"),
        ),
        i4.check(
            "I4",
            "every order has its attempt; every reserved unit has an attempt",
            format!("{total_units} unit(s) held by live attempts, every order matched"),
        ),
        orders_ck.check(
            "orders",
            "orders in the database == ordered attempts (count and units)",
            format!("{total_orders} order(s) match"),
        ),
    ];
    if client.is_none() {
        // Store-side I5: nothing left queued (the same test as I3).
        let pending = snap.pending();
        let mut f = Failures::new();
        if pending > 0 {
            f.add(format!("{pending} attempt(s) not final"));
        }
        checks.push(f.check("I5", "every buyer told 202 got a final answer", i5_detail));
    } else {
        checks.push(i5.check("I5", "every buyer told 202 got a final answer", i5_detail));
        checks.push(forged.check(
            "forged-tokens",
            "forged tokens never reserve",
            "no forger holds an attempt".into(),
        ));
    }
    Verdict {
        passed: checks.iter().all(|c| c.passed),
        checks,
        items: states,
    }
}

/// Reads both stores and judges them.
pub async fn check(
    stores: &Stores,
    round_id: i64,
    client: Option<&ClientView>,
) -> anyhow::Result<Verdict> {
    let reader = StoreReader::connect(stores).await?;
    let snap = reader.snapshot(round_id).await?;
    Ok(judge(&snap, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item_model(id: i64, stock: i64) -> item::Model {
        item::Model {
            id,
            round_id: 1,
            title: "x".into(),
            description: String::new(),
            image_url: String::new(),
            original_price_cents: 1,
            sale_price_cents: 1,
            stock,
            per_user_limit: 1,
        }
    }

    fn order_model(attempt: &str, user: &str) -> order::Model {
        order::Model {
            id: attempt.into(),
            attempt_id: attempt.into(),
            round_id: 1,
            item_id: 2,
            user_id: user.into(),
            qty: 1,
            unit_price_cents: 1,
            status: order::status::PENDING_PAYMENT.into(),
            reserved_at_ms: 0,
            created_at_ms: 0,
            pay_by_ms: 0,
            paid_at_ms: None,
            cancelled_at_ms: None,
            cancel_reason: None,
            payment_started_at_ms: None,
            charge_id: None,
            counters_applied: true,
        }
    }

    fn attempt(user: &str, status: &str) -> StoredAttempt {
        StoredAttempt {
            user: user.into(),
            qty: 1,
            status: status.into(),
            created_ms: 5,
        }
    }

    /// Two units: one ordered for u1, one cancelled attempt of u2.
    fn healthy() -> Snapshot {
        Snapshot {
            round_id: 1,
            items: vec![ItemSnapshot {
                item: item_model(2, 2),
                counters: Some([2, 1, 1, 0]),
                buyers: HashMap::from([("u1".into(), "a1".into())]),
                attempts: HashMap::from([
                    ("a1".into(), attempt("u1", "ordered")),
                    ("a2".into(), attempt("u2", "cancelled")),
                ]),
            }],
            orders: vec![order_model("a1", "u1")],
        }
    }

    fn failed(v: &Verdict) -> Vec<&str> {
        v.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.id.as_str())
            .collect()
    }

    #[test]
    fn a_healthy_sale_passes() {
        let v = judge(&healthy(), None);
        assert!(v.passed, "{:?}", v.checks);
    }

    #[test]
    fn a_unit_added_to_sold_fails_i1_and_i4() {
        let mut s = healthy();
        s.items[0].counters = Some([2, 1, 1, 1]);
        let v = judge(&s, None);
        assert!(!v.passed);
        assert_eq!(failed(&v), ["I1", "I4"]);
    }

    #[test]
    fn oversell_and_duplicates_are_caught() {
        let mut s = healthy();
        s.items[0].counters = Some([2, -1, 3, 0]);
        s.orders.push(order_model("a3", "u1"));
        s.items[0]
            .attempts
            .insert("a3".into(), attempt("u1", "ordered"));
        let v = judge(&s, None);
        let f = failed(&v);
        for id in ["I1", "no-oversell", "I2", "I4"] {
            assert!(f.contains(&id), "{id} in {f:?}");
        }
    }

    #[test]
    fn a_stranded_attempt_fails_i3_and_i5() {
        let mut s = healthy();
        s.items[0].attempts.get_mut("a1").unwrap().status = "queued".into();
        s.orders.clear();
        let cv = ClientView {
            told_202: HashMap::from([(
                "a1".into(),
                Told {
                    user: "u1".into(),
                    item_id: 2,
                    status: "queued".into(),
                    ..Default::default()
                },
            )]),
            forgers: HashSet::new(),
        };
        let v = judge(&s, Some(&cv));
        let f = failed(&v);
        assert!(f.contains(&"I3") && f.contains(&"I5"), "{f:?}");
    }

    #[test]
    fn an_order_without_attempt_fails_i4() {
        let mut s = healthy();
        s.orders.push(order_model("ghost", "u9"));
        let v = judge(&s, None);
        assert!(failed(&v).contains(&"I4"));
    }

    #[test]
    fn forgers_must_not_hold_attempts() {
        let s = healthy();
        let cv = ClientView {
            told_202: HashMap::new(),
            forgers: HashSet::from(["u2".to_owned()]),
        };
        assert_eq!(failed(&judge(&s, Some(&cv))), ["forged-tokens"]);
    }

    #[test]
    fn glob_specials_are_escaped() {
        assert_eq!(glob_escape("sk:{r1:i2}:attempt:"), "sk:{r1:i2}:attempt:");
        assert_eq!(glob_escape("a*b?"), "a\\*b\\?");
    }
}
