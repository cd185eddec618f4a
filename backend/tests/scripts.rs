//! The Redis scripts against a model: random sequences of reserve, release,
//! claim and mark-ordered on a real Redis must give the same outcomes and
//! counters as a plain Rust model of the rules, and keep
//! `available + reserved + sold == total` after every step.

mod common;

use std::{collections::HashMap, time::Duration};

use seckill_backend::{
    domain::AttemptId,
    store::{
        SaleStore,
        sale::{Preheat, ReserveOutcome},
    },
};

/// xorshift64*: deterministic, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Debug)]
struct ModelAttempt {
    id: AttemptId,
    user: String,
    qty: i64,
    key: String,
    status: &'static str,
}

#[derive(Default)]
struct Model {
    total: i64,
    available: i64,
    reserved: i64,
    limit: i64,
    buyers: HashMap<String, usize>,
    attempts: Vec<ModelAttempt>,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Reserved,
    Duplicate,
    Limit,
    SoldOut,
    Insufficient,
}

fn kind(o: &ReserveOutcome) -> Kind {
    match o {
        ReserveOutcome::Reserved { .. } => Kind::Reserved,
        ReserveOutcome::Duplicate { .. } => Kind::Duplicate,
        ReserveOutcome::Limit { .. } => Kind::Limit,
        ReserveOutcome::SoldOut => Kind::SoldOut,
        ReserveOutcome::Insufficient { .. } => Kind::Insufficient,
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn scripts_follow_the_model() {
    let url = std::env::var("SECKILL_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
    let store = SaleStore::connect(&url, &prefix, Duration::from_secs(2))
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();

    for seed in 1..=4u64 {
        let (round, item) = (seed as i64, 1);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut m = Model {
            total: 5 + rng.below(20) as i64,
            limit: 1 + rng.below(3) as i64,
            ..Default::default()
        };
        m.available = m.total;
        let created = store
            .preheat(&Preheat {
                round_id: round,
                item_id: item,
                stock: m.total,
                starts_ms: now - 1000,
                ends_ms: now + 3_600_000,
                per_user_limit: m.limit,
                price_cents: 1,
                info: vec![],
                admission_window_ms: 0,
            })
            .await
            .unwrap();
        assert!(created);
        // Preheating again never resets live counters.
        assert!(
            !store
                .preheat(&Preheat {
                    round_id: round,
                    item_id: item,
                    stock: 999,
                    starts_ms: now - 1000,
                    ends_ms: now + 3_600_000,
                    per_user_limit: m.limit,
                    price_cents: 1,
                    info: vec![],
                    admission_window_ms: 0,
                })
                .await
                .unwrap()
        );

        for step in 0..600 {
            let op = rng.below(10);
            if op < 6 || m.attempts.is_empty() {
                let user = format!("u{}", rng.below(12));
                let qty = 1 + rng.below(3) as i64;
                let key = if rng.below(2) == 0 {
                    String::new()
                } else {
                    format!("k{}", rng.below(3))
                };
                let id = AttemptId::new(round, item, now + step);
                let got = store
                    .reserve(&id, &user, qty, now, &key, None)
                    .await
                    .unwrap()
                    .outcome;
                let want = match m.buyers.get(&user) {
                    Some(&i) => {
                        let a = &m.attempts[i];
                        let same_key = !key.is_empty() && key == a.key;
                        let plain = (key.is_empty() || a.key.is_empty()) && a.qty == qty;
                        if same_key || plain {
                            Kind::Duplicate
                        } else {
                            Kind::Limit
                        }
                    }
                    None if qty > m.limit => Kind::Limit,
                    None if m.available < qty && m.available <= 0 => Kind::SoldOut,
                    None if m.available < qty => Kind::Insufficient,
                    None => {
                        m.available -= qty;
                        m.reserved += qty;
                        m.attempts.push(ModelAttempt {
                            id: id.clone(),
                            user: user.clone(),
                            qty,
                            key,
                            status: "queued",
                        });
                        m.buyers.insert(user, m.attempts.len() - 1);
                        Kind::Reserved
                    }
                };
                assert_eq!(kind(&got), want, "seed {seed} step {step}: {got:?}");
            } else {
                let i = rng.below(m.attempts.len() as u64) as usize;
                let a = m.attempts[i].clone();
                match op {
                    6 | 7 => {
                        let allow = rng.below(2) == 0;
                        let got = store.release(&a.id, "test", now, allow).await.unwrap();
                        let releasable = a.status == "queued" || (a.status == "writing" && allow);
                        if releasable {
                            assert_eq!(got, "released");
                            m.available += a.qty;
                            m.reserved -= a.qty;
                            m.buyers.remove(&a.user);
                            m.attempts[i].status = "cancelled";
                        } else {
                            assert_eq!(got, a.status, "seed {seed} step {step}");
                        }
                    }
                    8 => {
                        let got = store.claim(&a.id, now).await.unwrap();
                        if a.status == "queued" {
                            assert_eq!(got, "claimed");
                            m.attempts[i].status = "writing";
                        } else {
                            assert_eq!(got, a.status);
                        }
                    }
                    _ => {
                        let got = store
                            .mark_ordered(&a.id, &a.id.to_string(), now, now)
                            .await
                            .unwrap();
                        if a.status == "cancelled" {
                            assert_eq!(got, "cancelled");
                        } else {
                            assert_eq!(got, "ordered");
                            m.attempts[i].status = "ordered";
                        }
                    }
                }
            }
            let c = store.counters(round, item).await.unwrap().unwrap();
            assert_eq!(
                (c.total, c.available, c.reserved, c.sold),
                (m.total, m.available, m.reserved, 0),
                "seed {seed} step {step}"
            );
            assert_eq!(c.available + c.reserved + c.sold, c.total);
            assert!(c.available >= 0 && c.reserved >= 0);
        }
        // Every reserved unit belongs to a live attempt.
        let live: i64 = m
            .attempts
            .iter()
            .filter(|a| a.status != "cancelled")
            .map(|a| a.qty)
            .sum();
        assert_eq!(live, m.reserved);
    }

    common::delete_keys(&store, &prefix).await;
}
