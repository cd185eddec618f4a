//! The end-of-run report: what a person reads (answers by outcome, latency
//! percentiles, time to sold out, units sold, the fairness line, the
//! verdict), the same as
//! JSON for scripts and for comparing runs, and the per-second time line
//! and latency bars the HTML page ([`crate::html`]) draws.

use std::{collections::BTreeMap, collections::HashMap, fmt};

use serde::Serialize;

use crate::{
    fairness::Fairness,
    setup::RoundInfo,
    stats::{Bin, Class, Latency, MAX_SECONDS, Second},
    verdict::Verdict,
};

/// One second of the sale's time line.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimelineRow {
    /// Start of this (Unix) second, in ms from the sale's start; negative
    /// before it.
    pub t_ms: i64,
    /// Buy answers received in this second, by class.
    pub reserved: u64,
    pub sold_out: u64,
    pub rate_limited: u64,
    pub unavailable: u64,
    pub other: u64,
    pub error: u64,
    /// Units held at the end of the run by attempts the store created up
    /// to the end of this second (attempts cancelled later, e.g. unpaid
    /// ones that expired, are not counted at all).
    pub units_taken: i64,
}

impl TimelineRow {
    pub fn count(&self, c: Class) -> u64 {
        match c {
            Class::Reserved => self.reserved,
            Class::SoldOut => self.sold_out,
            Class::RateLimited => self.rate_limited,
            Class::Unavailable => self.unavailable,
            Class::Other => self.other,
            Class::Error => self.error,
        }
    }

    pub fn answers(&self) -> u64 {
        Class::ALL.iter().map(|c| self.count(*c)).sum()
    }
}

/// The sale second by second: every second from the first buy answer or
/// reservation to the last, without gaps.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    /// Unix ms the rows' offsets count from (the round's start).
    pub zero_ms: i64,
    pub seconds: Vec<TimelineRow>,
    /// Buy answers not in any row (the time line was full).
    pub dropped: u64,
}

impl Timeline {
    /// Joins the crowd's buy answers (by Unix second) with the store's live
    /// reservations (`(created_ms, qty)`), at most [`MAX_SECONDS`] rows.
    pub fn build(
        zero_ms: i64,
        buys: &BTreeMap<i64, Second>,
        reservations: impl IntoIterator<Item = (i64, i64)>,
        dropped: u64,
    ) -> Self {
        let mut units: BTreeMap<i64, i64> = BTreeMap::new();
        for (created_ms, qty) in reservations {
            *units.entry(created_ms.div_euclid(1000)).or_default() += qty;
        }
        let first = buys.keys().chain(units.keys()).min().copied();
        let last = buys.keys().chain(units.keys()).max().copied();
        let (Some(first), Some(last)) = (first, last) else {
            return Self {
                zero_ms,
                seconds: Vec::new(),
                dropped,
            };
        };
        let last = last.min(first + MAX_SECONDS as i64 - 1);
        // Reservations before the first row still count towards it.
        let mut taken: i64 = units.range(..first).map(|(_, q)| q).sum();
        let seconds = (first..=last)
            .map(|sec| {
                taken += units.get(&sec).copied().unwrap_or(0);
                let b = buys.get(&sec).copied().unwrap_or_default();
                TimelineRow {
                    t_ms: sec * 1000 - zero_ms,
                    reserved: b.get(Class::Reserved),
                    sold_out: b.get(Class::SoldOut),
                    rate_limited: b.get(Class::RateLimited),
                    unavailable: b.get(Class::Unavailable),
                    other: b.get(Class::Other),
                    error: b.get(Class::Error),
                    units_taken: taken,
                }
            })
            .collect();
        Self {
            zero_ms,
            seconds,
            dropped,
        }
    }
}

/// The sale's figures, taken from the stores where the stores know them.
#[derive(Clone, Debug, Serialize)]
pub struct SaleFigures {
    pub units_on_sale: i64,
    /// reserved + sold, from the Redis counters.
    pub units_taken: i64,
    /// Units paid (`sold` counter).
    pub units_paid: i64,
    /// Live orders in the database.
    pub orders: u64,
    pub order_units: i64,
    /// Attempts answered 202.
    pub answered_202: usize,
    /// Whether every item's `available` reached 0.
    pub sold_out: bool,
    /// From the start to the first `410 sold_out` answer of the item that
    /// sold out last (the client's view).
    pub first_sold_out_answer_after_ms: Option<i64>,
    /// From the start to the last reservation (the store's `created_ms`).
    pub last_reservation_after_ms: Option<i64>,
}

impl SaleFigures {
    pub fn from_verdict(
        round: &RoundInfo,
        v: &Verdict,
        first_sold_out_ms: &HashMap<i64, i64>,
        answered_202: usize,
    ) -> Self {
        let taken: i64 = v
            .items
            .iter()
            .map(|i| i.reserved.unwrap_or(0) + i.sold.unwrap_or(0))
            .sum();
        let sold_out = v.items.iter().all(|i| i.available == Some(0));
        let first = if sold_out && first_sold_out_ms.len() == v.items.len() {
            first_sold_out_ms
                .values()
                .max()
                .map(|ms| ms - round.starts_at_ms)
        } else {
            None
        };
        Self {
            units_on_sale: v.items.iter().map(|i| i.stock).sum(),
            units_taken: taken,
            units_paid: v.items.iter().map(|i| i.sold.unwrap_or(0)).sum(),
            orders: v.items.iter().map(|i| i.orders).sum(),
            order_units: v.items.iter().map(|i| i.order_units).sum(),
            answered_202,
            sold_out,
            first_sold_out_answer_after_ms: first,
            last_reservation_after_ms: v
                .items
                .iter()
                .filter_map(|i| i.last_reservation_ms)
                .max()
                .map(|ms| ms - round.starts_at_ms),
        }
    }
}

/// Everything a sale run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub round: RoundInfo,
    pub buyers: u32,
    pub behaviours: BTreeMap<String, u64>,
    pub concurrency: usize,
    pub started_at: String,
    pub elapsed_ms: u64,
    pub stopped_by_cap: bool,
    /// Answers by request kind, then outcome (`"410 sold_out"` …).
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub latency: BTreeMap<String, Latency>,
    /// The latency histograms as bars, by request kind.
    pub latency_bars: BTreeMap<String, Vec<Bin>>,
    pub timeline: Timeline,
    pub sale: SaleFigures,
    pub payments: BTreeMap<String, u64>,
    /// Who won the units: people and each bot profile.
    pub fairness: Fairness,
    pub verdict: Verdict,
}

fn secs(ms: Option<i64>) -> String {
    ms.map(|m| format!("{:.3} s", m as f64 / 1000.0))
        .unwrap_or_else(|| "—".into())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.round;
        writeln!(
            f,
            "Sale of round {} against {}: {} item(s), {} unit(s), {} buyers, concurrency {}",
            r.id,
            self.target,
            r.items.len(),
            r.total_stock(),
            self.buyers,
            self.concurrency
        )?;
        let mix: Vec<String> = self
            .behaviours
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  crowd: {}", mix.join(", "))?;
        writeln!(
            f,
            "  ran {:.1} s{}",
            self.elapsed_ms as f64 / 1000.0,
            if self.stopped_by_cap {
                " (stopped by the duration cap)"
            } else {
                ""
            }
        )?;
        writeln!(f, "\nRequests by outcome")?;
        for (kind, outcomes) in &self.requests {
            for (i, (o, n)) in outcomes.iter().enumerate() {
                let k = if i == 0 { kind.as_str() } else { "" };
                writeln!(f, "  {k:<6} {o:<28} {n:>9}")?;
            }
        }
        writeln!(
            f,
            "\nLatency (ms)        count      p50      p90      p99      max"
        )?;
        for (kind, l) in &self.latency {
            writeln!(
                f,
                "  {kind:<12} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )?;
        }
        let s = &self.sale;
        writeln!(f, "\nSale (from the stores)")?;
        writeln!(
            f,
            "  units taken {} of {} ({}), paid {}; orders in the database {} ({} unit(s)); answered 202: {}",
            s.units_taken,
            s.units_on_sale,
            if s.sold_out {
                "sold out"
            } else {
                "not sold out"
            },
            s.units_paid,
            s.orders,
            s.order_units,
            s.answered_202
        )?;
        writeln!(
            f,
            "  time to sold out: {} (first sold-out answer), last unit reserved after {}",
            secs(s.first_sold_out_answer_after_ms),
            secs(s.last_reservation_after_ms)
        )?;
        if !self.payments.is_empty() {
            let p: Vec<String> = self
                .payments
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "  payments: {}", p.join(", "))?;
        }
        writeln!(f)?;
        write!(f, "{}", self.fairness)?;
        write!(f, "{}", VerdictText(&self.verdict))
    }
}

/// The verdict as lines of text.
pub struct VerdictText<'a>(pub &'a Verdict);

impl fmt::Display for VerdictText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        writeln!(f, "Verdict: {}", if v.passed { "PASS" } else { "FAIL" })?;
        for c in &v.checks {
            writeln!(
                f,
                "  [{}] {:<13} {} — {}",
                if c.passed { "ok" } else { "FAIL" },
                c.id,
                c.name,
                c.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_line_has_no_gaps_and_accumulates_units() {
        let mut buys = BTreeMap::new();
        buys.insert(
            1_000,
            Second {
                counts: [3, 0, 0, 0, 0, 0],
            },
        );
        buys.insert(
            1_003,
            Second {
                counts: [0, 5, 0, 0, 0, 1],
            },
        );
        // The sale starts at 1000.5 s; one reservation a second early.
        let t = Timeline::build(
            1_000_500,
            &buys,
            [(999_100, 1), (1_000_200, 2), (1_002_999, 1)],
            0,
        );
        let offsets: Vec<i64> = t.seconds.iter().map(|r| r.t_ms).collect();
        assert_eq!(offsets, [-1_500, -500, 500, 1_500, 2_500]);
        let units: Vec<i64> = t.seconds.iter().map(|r| r.units_taken).collect();
        assert_eq!(units, [1, 3, 3, 4, 4]);
        assert_eq!(t.seconds[1].reserved, 3);
        assert_eq!(t.seconds[4].answers(), 6);
        assert_eq!(
            t.seconds[2],
            TimelineRow {
                t_ms: 500,
                units_taken: 3,
                ..Default::default()
            }
        );
        assert!(
            Timeline::build(0, &BTreeMap::new(), [], 0)
                .seconds
                .is_empty()
        );
    }
}
