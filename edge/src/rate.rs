//! Token buckets in Rust, shared by every Lua VM of the node and exposed to
//! the access script as `seckill.token_bucket(key, rate, burst)`.
//!
//! `resty.limit.req` keeps its state in a shared dict with a read, compute,
//! write sequence: atomic inside one nginx worker, but not across our
//! worker threads running Lua at the same time, which admits more than the
//! burst under a spike. Here each take is one short critical section.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Named token buckets; rate and burst are given on each take, so new
/// limits (a Lua reload) apply to the existing state.
#[derive(Debug, Default)]
pub struct TokenBuckets {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl TokenBuckets {
    /// Takes one token from `key` (capacity `max(burst, 1)`, refilled at
    /// `rate` per second). `Err` carries the wait until a token is free.
    pub fn take(&self, key: &str, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let cap = burst.max(1.0);
        let mut map = self.buckets.lock().expect("bucket lock");
        let b = match map.get_mut(key) {
            Some(b) => b,
            None => map.entry(key.to_owned()).or_insert(Bucket {
                tokens: cap,
                last: now,
            }),
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(cap);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = if rate > 0.0 {
                (1.0 - b.tokens) / rate
            } else {
                1.0
            };
            Err(Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t = TokenBuckets::default();
        let start = Instant::now();
        let admitted = (0..100)
            .filter(|_| t.take("n", 10.0, 5.0, start).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // One second later: ten more tokens, capped at the burst of five.
        let later = start + Duration::from_secs(1);
        let admitted = (0..100)
            .filter(|_| t.take("n", 10.0, 5.0, later).is_ok())
            .count();
        assert_eq!(admitted, 5);
        // Steady: one request every 100 ms at rate 10 is always admitted.
        for i in 1..=20 {
            assert!(
                t.take("n", 10.0, 5.0, later + Duration::from_millis(100 * i))
                    .is_ok()
            );
        }
        let wait = t
            .take("n", 10.0, 5.0, later + Duration::from_millis(2000))
            .unwrap_err();
        assert!(wait <= Duration::from_millis(100));
    }
}
