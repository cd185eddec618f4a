//! The end-of-run report: what a person reads (answers by outcome, latency
//! percentiles, time to sold out, units sold, the verdict) and the same as
//! JSON for scripts and for comparing runs.

use std::{collections::BTreeMap, collections::HashMap, fmt};

use serde::Serialize;

use crate::{setup::RoundInfo, stats::Latency, verdict::Verdict};

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
    pub sale: SaleFigures,
    pub payments: BTreeMap<String, u64>,
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
