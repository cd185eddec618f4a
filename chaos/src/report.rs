//! The campaign's table: printed as text (one row per scenario, then why
//! each failing row fails) and written as JSON.

use std::{fmt::Write as _, path::Path};

use anyhow::Context;
use serde::Serialize;

use crate::measure::Row;

/// The whole campaign as JSON.
#[derive(Debug, Serialize)]
pub struct CampaignReport {
    pub started_at: String,
    pub elapsed_secs: f64,
    pub quick: bool,
    pub buyers: u32,
    pub items: usize,
    pub stock_per_item: i64,
    pub spread_secs: u64,
    pub pay_probability: f64,
    pub payment_timeout_secs: u64,
    pub passed: bool,
    pub rows: Vec<Row>,
}

fn opt_f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

fn opt_u(v: Option<u64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

/// The table as text.
pub fn text(report: &CampaignReport) -> String {
    let mut out = String::new();
    let header = [
        "#",
        "scenario",
        "buyers",
        "202",
        "sold",
        "503",
        "503_be",
        "oversold",
        "stranded",
        "permits",
        "false_acc",
        "destroyed",
        "journaled",
        "proc_refused",
        "no_final",
        "acked_lost",
        "disagree",
        "recovery_s",
        "goal",
    ];
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.scenario.to_string(),
                r.name.clone(),
                r.buyers.to_string(),
                r.accepted.to_string(),
                r.units_sold.to_string(),
                r.answers_503.to_string(),
                r.answers_503_backend.to_string(),
                r.oversold.to_string(),
                r.stranded.to_string(),
                (r.permits_over + r.permits_held_at_rest).to_string(),
                r.false_accepts.to_string(),
                opt_u(r.destroyed),
                r.journaled.to_string(),
                r.processing_refused.to_string(),
                r.no_final_answer.to_string(),
                r.acked_lost.to_string(),
                r.counters_disagree.to_string(),
                opt_f(r.recovery_secs),
                if r.passed { "pass" } else { "FAIL" }.into(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>, out: &mut String| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 1 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", s.join("  "));
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r, &mut out);
    }
    for r in &report.rows {
        if !r.why.is_empty() {
            let _ = writeln!(out, "\n{} {} — fails:", r.scenario, r.name);
            for w in &r.why {
                let _ = writeln!(out, "  - {w}");
            }
        }
        if !r.notes.is_empty() {
            if r.why.is_empty() {
                let _ = writeln!(out, "\n{} {}:", r.scenario, r.name);
            }
            for n in &r.notes {
                let _ = writeln!(out, "  · {n}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{} of {} scenarios meet the goal; {:.0} s in all",
        report.rows.iter().filter(|r| r.passed).count(),
        report.rows.len(),
        report.elapsed_secs
    );
    out
}

pub fn write_json(report: &CampaignReport, path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}
