//! What the crowd saw, gathered while it runs: answers by request kind and
//! outcome, latency histograms, buy answers per wall-clock second by class,
//! and the few counters the progress display reads. Everything here is the
//! client's view; the verdict never trusts it for an invariant (see
//! [`crate::verdict`]).
//!
//! Each answer of a sale's crowd is also counted under its buyer's
//! [`Profile`] (people or a bot profile), for the fairness report.
//!
//! Memory stays bounded however long a crowd runs: the histograms have
//! fixed bounds, and the time line keeps one small bucket per second for at
//! most [`MAX_SECONDS`] seconds (later seconds are counted, not kept).

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

use crate::profile::Profile;

/// The kinds of request a buyer makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Page,
    Time,
    /// A proof-of-work challenge request.
    Challenge,
    /// A purchase ticket request.
    Ticket,
    Buy,
    Poll,
    Pay,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Page => "page",
            Kind::Time => "time",
            Kind::Challenge => "challenge",
            Kind::Ticket => "ticket",
            Kind::Buy => "buy",
            Kind::Poll => "poll",
            Kind::Pay => "pay",
        }
    }
}

/// What a buy answer meant, for the time line: the few classes an operator
/// watches, everything else in `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `202`: a reservation.
    Reserved,
    /// `410 sold_out`.
    SoldOut,
    /// `429`.
    RateLimited,
    /// `503`, from the edge or the backend.
    Unavailable,
    /// Any other answer (`200` to a repeat click, `401`, `425` …).
    Other,
    /// No answer: connect failure, timeout.
    Error,
}

impl Class {
    /// Every class, in the order of [`Second::counts`].
    pub const ALL: [Class; 6] = [
        Class::Reserved,
        Class::SoldOut,
        Class::RateLimited,
        Class::Unavailable,
        Class::Other,
        Class::Error,
    ];

    pub fn of(outcome: &str) -> Self {
        if outcome.starts_with("error") {
            Class::Error
        } else if outcome.starts_with("202") {
            Class::Reserved
        } else if outcome == "410 sold_out" {
            Class::SoldOut
        } else if outcome.starts_with("429") {
            Class::RateLimited
        } else if outcome.starts_with("503") {
            Class::Unavailable
        } else {
            Class::Other
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Reserved => "reserved",
            Class::SoldOut => "sold_out",
            Class::RateLimited => "rate_limited",
            Class::Unavailable => "unavailable",
            Class::Other => "other",
            Class::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Most seconds the time line keeps (a day of answers).
pub const MAX_SECONDS: usize = 86_400;

/// Buy answers of one wall-clock second, by [`Class`] (indexed as
/// [`Class::ALL`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Second {
    pub counts: [u64; 6],
}

impl Second {
    pub fn get(&self, c: Class) -> u64 {
        self.counts[c.index()]
    }
}

/// One bar of a latency histogram: answers that took at most `upto_ms`
/// (and more than the previous bar's bound; `None`: slower than 60 s).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bin {
    pub upto_ms: Option<f64>,
    pub count: u64,
}

/// Upper bounds of the histogram bars, in µs: 1-2-5 steps from 0.1 ms to
/// 60 s (the last bar takes everything slower).
const BIN_BOUNDS_US: [u64; 18] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 60_000_000,
];

/// A histogram as bars, from the first non-empty one to the last.
pub fn bins(h: &Histogram<u64>) -> Vec<Bin> {
    let mut counts = [0u64; BIN_BOUNDS_US.len() + 1];
    for v in h.iter_recorded() {
        let us = h.highest_equivalent(v.value_iterated_to());
        let i = BIN_BOUNDS_US.partition_point(|b| *b < us);
        counts[i] += v.count_at_value();
    }
    let bound = |i: usize| BIN_BOUNDS_US.get(i).map(|us| *us as f64 / 1000.0);
    let (Some(first), Some(last)) = (
        counts.iter().position(|c| *c > 0),
        counts.iter().rposition(|c| *c > 0),
    ) else {
        return Vec::new();
    };
    (first..=last)
        .map(|i| Bin {
            upto_ms: bound(i),
            count: counts[i],
        })
        .collect()
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
    /// Buy answers by Unix second, at most [`MAX_SECONDS`] of them.
    timeline: Mutex<BTreeMap<i64, Second>>,
    /// Answers by buyer profile, request kind and outcome.
    by_profile: Mutex<BTreeMap<(Profile, Kind, String), u64>>,
    /// Ticket answers that came back before the ticket window opened (by
    /// the buyer's estimate of the server's clock), by profile and outcome.
    before_window: Mutex<BTreeMap<(Profile, String), u64>>,
    /// Buy answers whose second did not fit in the time line.
    pub timeline_dropped: AtomicU64,
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
            timeline: Mutex::new(BTreeMap::new()),
            by_profile: Mutex::new(BTreeMap::new()),
            before_window: Mutex::new(BTreeMap::new()),
            timeline_dropped: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            sold_out: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            buyers_done: AtomicU64::new(0),
            buys: AtomicU64::new(0),
        }
    }

    /// Records one answer, received now.
    pub fn record(&self, kind: Kind, outcome: &str, latency: Duration) {
        self.record_at(kind, outcome, latency, chrono::Utc::now().timestamp());
    }

    /// Records one answer received in Unix second `unix_sec`.
    pub fn record_at(&self, kind: Kind, outcome: &str, latency: Duration, unix_sec: i64) {
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
            let mut t = self.timeline.lock().expect("stats lock");
            if t.len() < MAX_SECONDS || t.contains_key(&unix_sec) {
                t.entry(unix_sec).or_default().counts[Class::of(outcome).index()] += 1;
            } else {
                self.timeline_dropped.fetch_add(1, Ordering::Relaxed);
            }
            drop(t);
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

    /// Counts one answer under the buyer's profile (beside [`Self::record`]).
    pub fn record_profile(&self, profile: Profile, kind: Kind, outcome: &str) {
        *self
            .by_profile
            .lock()
            .expect("stats lock")
            .entry((profile, kind, outcome.to_owned()))
            .or_default() += 1;
    }

    /// Counts a ticket answer that came back before the ticket window.
    pub fn record_before_window(&self, profile: Profile, outcome: &str) {
        *self
            .before_window
            .lock()
            .expect("stats lock")
            .entry((profile, outcome.to_owned()))
            .or_default() += 1;
    }

    /// Answers by profile, then kind, then outcome.
    pub fn profile_outcomes(&self) -> BTreeMap<Profile, BTreeMap<String, BTreeMap<String, u64>>> {
        let mut out: BTreeMap<Profile, BTreeMap<String, BTreeMap<String, u64>>> = BTreeMap::new();
        for ((p, k, o), n) in self.by_profile.lock().expect("stats lock").iter() {
            out.entry(*p)
                .or_default()
                .entry(k.as_str().to_owned())
                .or_default()
                .insert(o.clone(), *n);
        }
        out
    }

    /// Ticket answers received before the ticket window, by profile, then
    /// outcome.
    pub fn before_window(&self) -> BTreeMap<Profile, BTreeMap<String, u64>> {
        let mut out: BTreeMap<Profile, BTreeMap<String, u64>> = BTreeMap::new();
        for ((p, o), n) in self.before_window.lock().expect("stats lock").iter() {
            out.entry(*p).or_default().insert(o.clone(), *n);
        }
        out
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

    /// Buy answers by Unix second (seconds without answers are absent).
    pub fn buy_timeline(&self) -> BTreeMap<i64, Second> {
        self.timeline.lock().expect("stats lock").clone()
    }

    /// Latency histograms by kind, as bars.
    pub fn latency_bars(&self) -> BTreeMap<String, Vec<Bin>> {
        self.latencies
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(k, h)| (k.as_str().to_owned(), bins(h)))
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

    #[test]
    fn buy_answers_fall_into_seconds_by_class() {
        let s = Stats::new();
        let ms = Duration::from_millis(1);
        s.record_at(Kind::Buy, "202 queued", ms, 100);
        s.record_at(Kind::Buy, "202 queued", ms, 100);
        s.record_at(Kind::Buy, "410 sold_out", ms, 101);
        s.record_at(Kind::Buy, "429 rate_limited", ms, 101);
        s.record_at(Kind::Buy, "503 unavailable at_edge", ms, 101);
        s.record_at(Kind::Buy, "error timeout", ms, 103);
        s.record_at(Kind::Buy, "401 unauthorized", ms, 103);
        s.record_at(Kind::Poll, "200 ordered", ms, 103);
        let t = s.buy_timeline();
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [100, 101, 103]);
        assert_eq!(t[&100].get(Class::Reserved), 2);
        assert_eq!(t[&101].counts, [0, 1, 1, 1, 0, 0]);
        assert_eq!(t[&103].get(Class::Error), 1);
        assert_eq!(t[&103].get(Class::Other), 1, "polls are not buy answers");
    }

    #[test]
    fn the_time_line_is_bounded() {
        let s = Stats::new();
        let ms = Duration::from_millis(1);
        for sec in 0..MAX_SECONDS as i64 + 10 {
            s.record_at(Kind::Buy, "410 sold_out", ms, sec);
        }
        s.record_at(Kind::Buy, "410 sold_out", ms, 0);
        let t = s.buy_timeline();
        assert_eq!(t.len(), MAX_SECONDS);
        assert_eq!(t[&0].get(Class::SoldOut), 2, "a kept second still counts");
        assert_eq!(s.timeline_dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn histogram_bars_span_the_recorded_values() {
        let mut h = histogram();
        h.record(300).unwrap(); // 0.3 ms
        h.record(1_500).unwrap(); // 1.5 ms
        h.record(1_800).unwrap();
        h.record(90_000_000).unwrap(); // 90 s: past the last bound
        let b = bins(&h);
        let bar = |upto_ms, count| Bin { upto_ms, count };
        assert_eq!(b.first(), Some(&bar(Some(0.5), 1)));
        assert_eq!(b[2], bar(Some(2.0), 2));
        assert_eq!(b.last(), Some(&bar(None, 1)));
        assert_eq!(b.iter().map(|x| x.count).sum::<u64>(), 4);
        assert!(bins(&histogram()).is_empty());
    }
}
