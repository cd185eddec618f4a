//! What the crowd saw, gathered while it runs: answers by request kind and
//! outcome, latency histograms, and the few counters the progress display
//! reads. Everything here is the client's view; the verdict never trusts it
//! for an invariant (see [`crate::verdict`]).

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The kinds of request a buyer makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Page,
    Time,
    Buy,
    Poll,
    Pay,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Page => "page",
            Kind::Time => "time",
            Kind::Buy => "buy",
            Kind::Poll => "poll",
            Kind::Pay => "pay",
        }
    }
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Live counters and histograms shared by every buyer task.
pub struct Stats {
    outcomes: Mutex<BTreeMap<(Kind, String), u64>>,
    latencies: Mutex<BTreeMap<Kind, Histogram<u64>>>,
    /// Buy answers that reserved (202).
    pub reserved: AtomicU64,
    /// Buy answers `410 sold_out`.
    pub sold_out: AtomicU64,
    /// Every other buy answer.
    pub refused: AtomicU64,
    /// Buyers that finished their script.
    pub buyers_done: AtomicU64,
    /// Buy requests sent.
    pub buys: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            outcomes: Mutex::new(BTreeMap::new()),
            latencies: Mutex::new(BTreeMap::new()),
            reserved: AtomicU64::new(0),
            sold_out: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            buyers_done: AtomicU64::new(0),
            buys: AtomicU64::new(0),
        }
    }

    /// Records one answer.
    pub fn record(&self, kind: Kind, outcome: &str, latency: Duration) {
        *self
            .outcomes
            .lock()
            .expect("stats lock")
            .entry((kind, outcome.to_owned()))
            .or_default() += 1;
        if !outcome.starts_with("error") {
            let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
            self.latencies
                .lock()
                .expect("stats lock")
                .entry(kind)
                .or_insert_with(histogram)
                .saturating_record(us);
        }
        if kind == Kind::Buy {
            self.buys.fetch_add(1, Ordering::Relaxed);
            if outcome.starts_with("202") {
                self.reserved.fetch_add(1, Ordering::Relaxed);
            } else if outcome == "410 sold_out" {
                self.sold_out.fetch_add(1, Ordering::Relaxed);
            } else {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers by kind, then outcome.
    pub fn outcomes(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((k, o), n) in self.outcomes.lock().expect("stats lock").iter() {
            out.entry(k.as_str().to_owned())
                .or_default()
                .insert(o.clone(), *n);
        }
        out
    }

    /// Latency percentiles by kind.
    pub fn latencies(&self) -> BTreeMap<String, Latency> {
        self.latencies
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(k, h)| (k.as_str().to_owned(), Latency::of(h)))
            .collect()
    }

    /// One line for the progress display.
    pub fn summary_line(&self) -> String {
        format!(
            "buys {} · 202 {} · sold out {} · other {}",
            self.buys.load(Ordering::Relaxed),
            self.reserved.load(Ordering::Relaxed),
            self.sold_out.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles() {
        let s = Stats::new();
        for ms in 1..=100u64 {
            s.record(Kind::Buy, "410 sold_out", Duration::from_millis(ms));
        }
        s.record(Kind::Buy, "202 queued", Duration::from_millis(5));
        s.record(Kind::Buy, "error connect", Duration::from_secs(3));
        let o = s.outcomes();
        assert_eq!(o["buy"]["410 sold_out"], 100);
        assert_eq!(o["buy"]["error connect"], 1);
        let l = &s.latencies()["buy"];
        assert_eq!(l.count, 101, "errors carry no latency");
        assert!((l.p50_ms - 50.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.5, "{l:?}");
        assert_eq!(s.reserved.load(Ordering::Relaxed), 1);
        assert_eq!(s.sold_out.load(Ordering::Relaxed), 100);
        assert_eq!(s.refused.load(Ordering::Relaxed), 1);
    }
}
