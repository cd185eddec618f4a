//! The report as one self-contained HTML page (`--html FILE`): buy answers
//! per second by class over the sale's time line, units taken over time,
//! latency histograms for buy and poll, who won the units (people against
//! each bot profile), the verdict with its checks, and the answer and item
//! tables.
//!
//! Charts are inline SVG built here with plain formatting; the page has
//! inline CSS only and no script, so it opens anywhere and fetches nothing.
//! Every piece of text that comes from outside (item titles, outcome
//! labels, check details, the target URL) goes through [`escape`]. The
//! markup is kept well-formed (void elements self-closed) so a strict
//! parser reads it too.

use std::{fmt::Write as _, path::Path};

use anyhow::Context;

use crate::{
    report::{Report, Timeline},
    stats::{Bin, Class},
};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes the page for `report` to `path`.
pub fn write(report: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, render(report)).with_context(|| format!("writing {}", path.display()))
}

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
.pass { color: #fff; background: #2e7d32; padding: 2px 8px; border-radius: 4px; }
.fail { color: #fff; background: #c62828; padding: 2px 8px; border-radius: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fdecea; }
.meta { color: #555; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
svg { display: block; background: #fafafa; border: 1px solid #eee; }
svg text { font: 11px sans-serif; fill: #555; }
.charts { display: flex; gap: 16px; flex-wrap: wrap; }
";

fn color(c: Class) -> &'static str {
    match c {
        Class::Reserved => "#2e7d32",
        Class::SoldOut => "#9e9e9e",
        Class::RateLimited => "#f9a825",
        Class::Unavailable => "#c62828",
        Class::Other => "#1565c0",
        Class::Error => "#6a1b9a",
    }
}

fn label(c: Class) -> &'static str {
    match c {
        Class::Reserved => "reserved (202)",
        Class::SoldOut => "sold out (410)",
        Class::RateLimited => "rate limited (429)",
        Class::Unavailable => "unavailable (503)",
        Class::Other => "other answers",
        Class::Error => "errors (no answer)",
    }
}

fn secs(ms: Option<i64>) -> String {
    ms.map(|m| format!("{:.3} s", m as f64 / 1000.0))
        .unwrap_or_else(|| "—".into())
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v` (at least 1).
fn nice_max(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|x| *x >= v)
        .unwrap_or(10.0 * p)
}

/// A chart's frame: plot area, horizontal grid lines and y labels.
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
    y_max: f64,
}

impl Frame {
    fn new(w: f64, h: f64, y_max: f64) -> Self {
        Self {
            w,
            h,
            left: 56.0,
            top: 10.0,
            right: 10.0,
            bottom: 34.0,
            y_max: nice_max(y_max),
        }
    }

    fn plot_w(&self) -> f64 {
        self.w - self.left - self.right
    }

    fn plot_h(&self) -> f64 {
        self.h - self.top - self.bottom
    }

    fn y(&self, v: f64) -> f64 {
        self.top + self.plot_h() * (1.0 - v / self.y_max)
    }

    fn open(&self, out: &mut String, name: &str) {
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{name}">"#,
            w = self.w,
            h = self.h,
            name = escape(name)
        );
        for i in 0..=4 {
            let v = self.y_max * i as f64 / 4.0;
            let y = self.y(v);
            let _ = write!(
                out,
                r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#e0e0e0" /><text x="{tx}" y="{ty:.1}" text-anchor="end">{v}</text>"##,
                l = self.left,
                r = self.w - self.right,
                tx = self.left - 6.0,
                ty = y + 4.0,
                v = v
            );
        }
    }

    fn x_label(&self, out: &mut String, x: f64, text: &str) {
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{t}</text>"#,
            y = self.h - self.bottom + 14.0,
            t = escape(text)
        );
    }

    fn caption(&self, out: &mut String, text: &str) {
        let _ = write!(
            out,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{t}</text>"#,
            x = self.left + self.plot_w() / 2.0,
            y = self.h - 4.0,
            t = escape(text)
        );
    }
}

fn t_label(t_ms: i64) -> String {
    format!("{:+}", t_ms.div_euclid(1000))
}

/// Every `step`-th row gets an x label, about ten in all.
fn label_step(rows: usize) -> usize {
    (rows / 10).max(1)
}

fn answers_chart(out: &mut String, t: &Timeline) {
    let rows = &t.seconds;
    let max = rows.iter().map(|r| r.answers()).max().unwrap_or(0);
    let f = Frame::new(900.0, 260.0, max as f64);
    f.open(out, "buy answers per second");
    let bw = f.plot_w() / rows.len().max(1) as f64;
    let mut base = vec![0u64; rows.len()];
    for c in Class::ALL {
        let _ = write!(
            out,
            r#"<g data-series="{}" fill="{}">"#,
            c.as_str(),
            color(c)
        );
        for (i, r) in rows.iter().enumerate() {
            let n = r.count(c);
            if n == 0 {
                continue;
            }
            let y0 = f.y(base[i] as f64);
            base[i] += n;
            let y1 = f.y(base[i] as f64);
            let _ = write!(
                out,
                r#"<rect x="{x:.2}" y="{y1:.2}" width="{w:.2}" height="{h:.2}"><title>{t} s: {n} {l}</title></rect>"#,
                x = f.left + i as f64 * bw,
                w = (bw * 0.9).max(0.5),
                h = (y0 - y1).max(0.5),
                t = t_label(r.t_ms),
                l = label(c)
            );
        }
        out.push_str("</g>");
    }
    let step = label_step(rows.len());
    for (i, r) in rows.iter().enumerate().step_by(step) {
        f.x_label(out, f.left + (i as f64 + 0.5) * bw, &t_label(r.t_ms));
    }
    f.caption(out, "seconds from the sale's start");
    out.push_str("</svg>");
}

fn units_chart(out: &mut String, t: &Timeline, on_sale: i64) {
    let rows = &t.seconds;
    let top = rows
        .iter()
        .map(|r| r.units_taken)
        .max()
        .unwrap_or(0)
        .max(on_sale);
    let f = Frame::new(900.0, 220.0, top as f64);
    f.open(out, "units taken over time");
    let bw = f.plot_w() / rows.len().max(1) as f64;
    let y_sale = f.y(on_sale as f64);
    let _ = write!(
        out,
        r##"<line x1="{l}" y1="{y_sale:.1}" x2="{r}" y2="{y_sale:.1}" stroke="#c62828" stroke-dasharray="4 3" /><text x="{r}" y="{ty:.1}" text-anchor="end">units on sale: {on_sale}</text>"##,
        l = f.left,
        r = f.w - f.right,
        ty = y_sale - 4.0
    );
    let mut points = format!("{:.2},{:.2}", f.left, f.y(0.0));
    for (i, r) in rows.iter().enumerate() {
        let y = f.y(r.units_taken as f64);
        let _ = write!(
            points,
            " {:.2},{y:.2} {:.2},{y:.2}",
            f.left + i as f64 * bw,
            f.left + (i + 1) as f64 * bw
        );
    }
    let _ = write!(
        out,
        r##"<polyline data-series="units_taken" fill="none" stroke="#2e7d32" stroke-width="2" points="{points}" />"##
    );
    let step = label_step(rows.len());
    for (i, r) in rows.iter().enumerate().step_by(step) {
        f.x_label(out, f.left + (i as f64 + 0.5) * bw, &t_label(r.t_ms));
    }
    f.caption(
        out,
        "seconds from the sale's start (stores' reservation times)",
    );
    out.push_str("</svg>");
}

fn bound_label(upto_ms: Option<f64>) -> String {
    match upto_ms {
        None => ">60 s".into(),
        Some(ms) if ms >= 1000.0 => format!("≤{} s", ms / 1000.0),
        Some(ms) => format!("≤{ms} ms"),
    }
}

fn histogram_chart(out: &mut String, kind: &str, bars: &[Bin]) {
    let max = bars.iter().map(|b| b.count).max().unwrap_or(0);
    let f = Frame::new(440.0, 220.0, max as f64);
    f.open(out, &format!("{kind} latency"));
    let bw = f.plot_w() / bars.len().max(1) as f64;
    let _ = write!(
        out,
        r##"<g data-series="latency_{}" fill="#1565c0">"##,
        escape(kind)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = f.y(b.count as f64);
        let _ = write!(
            out,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}"><title>{l}: {n}</title></rect>"#,
            x = f.left + i as f64 * bw + bw * 0.05,
            w = bw * 0.9,
            h = (f.y(0.0) - y).max(if b.count > 0 { 0.5 } else { 0.0 }),
            l = escape(&bound_label(b.upto_ms)),
            n = b.count
        );
    }
    out.push_str("</g>");
    for (i, b) in bars.iter().enumerate() {
        f.x_label(out, f.left + (i as f64 + 0.5) * bw, &bound_label(b.upto_ms));
    }
    f.caption(out, &format!("{kind}: answers by latency"));
    out.push_str("</svg>");
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let v = &r.verdict;
    let (verdict_class, verdict_text) = if v.passed {
        ("pass", "PASS")
    } else {
        ("fail", "FAIL")
    };
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8" /><meta name="viewport" content="width=device-width, initial-scale=1" />
<title>Sale of round {id}: {verdict_text}</title><style>{STYLE}</style></head><body>
<h1>Sale of round {id} <span class="{verdict_class}">{verdict_text}</span></h1>
"#,
        id = r.round.id
    );
    let s = &r.sale;
    let _ = writeln!(
        o,
        r#"<p class="meta">Against {target}, started {started}: {items} item(s), {buyers} buyers, concurrency {conc}; ran {ran:.1} s{cap}.<br />Units taken {taken} of {on_sale} ({sold_out}), paid {paid}; orders in the database {orders}; answered 202: {a202}. Time to sold out: {tso} (first sold-out answer), last unit reserved after {last}.</p>"#,
        target = escape(&r.target),
        started = escape(&r.started_at),
        items = r.round.items.len(),
        buyers = r.buyers,
        conc = r.concurrency,
        ran = r.elapsed_ms as f64 / 1000.0,
        cap = if r.stopped_by_cap {
            " (stopped by the duration cap)"
        } else {
            ""
        },
        taken = s.units_taken,
        on_sale = s.units_on_sale,
        sold_out = if s.sold_out {
            "sold out"
        } else {
            "not sold out"
        },
        paid = s.units_paid,
        orders = s.orders,
        a202 = s.answered_202,
        tso = secs(s.first_sold_out_answer_after_ms),
        last = secs(s.last_reservation_after_ms),
    );

    o.push_str("<h2>Buy answers per second</h2>\n<p class=\"legend\">");
    for c in Class::ALL {
        let _ = write!(
            o,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            color(c),
            label(c)
        );
    }
    o.push_str("</p>\n");
    answers_chart(&mut o, &r.timeline);
    if r.timeline.dropped > 0 {
        let _ = write!(
            o,
            "<p class=\"meta\">{} buy answer(s) fell after the time line's last second.</p>",
            r.timeline.dropped
        );
    }

    o.push_str("\n<h2>Units taken over time</h2>\n");
    units_chart(&mut o, &r.timeline, s.units_on_sale);

    o.push_str("\n<h2>Latency</h2>\n<div class=\"charts\">");
    for kind in ["buy", "poll"] {
        match r.latency_bars.get(kind) {
            Some(bars) if !bars.is_empty() => histogram_chart(&mut o, kind, bars),
            _ => {
                let _ = write!(o, "<p>No {kind} answers with a latency.</p>");
            }
        }
    }
    o.push_str("</div>\n<table><tr><th>kind</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th></tr>");
    for (kind, l) in &r.latency {
        let _ = write!(
            o,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{:.2}</td><td class="n">{:.2}</td><td class="n">{:.2}</td><td class="n">{:.2}</td></tr>"#,
            escape(kind),
            l.count,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    o.push_str("</table>\n");

    let fair = &r.fairness;
    let _ = write!(
        o,
        "<h2>Who won the units</h2>\n<p class=\"meta\" data-series=\"fairness\">{}</p>\n<table><tr><th>profile</th><th>buyers</th><th>share of buyers</th><th>units won</th><th>share of units</th><th>requests</th><th>per buyer</th></tr>",
        escape(&fair.line)
    );
    for p in &fair.profiles {
        let per = if p.buyers > 0 {
            p.requests_total as f64 / p.buyers as f64
        } else {
            0.0
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td><td>{:.1}%</td><td>{}</td><td>{per:.1}</td></tr>",
            p.profile,
            p.buyers,
            p.share_of_buyers_pct,
            p.units_won,
            p.share_of_units_pct,
            p.requests_total
        );
    }
    o.push_str("</table>\n");

    let _ = write!(
        o,
        "<h2>Verdict: <span class=\"{verdict_class}\">{verdict_text}</span></h2>\n<table><tr><th>check</th><th>name</th><th>result</th><th>detail</th></tr>"
    );
    for c in &v.checks {
        let _ = write!(
            o,
            r#"<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            if c.passed { "" } else { r#" class="bad""# },
            escape(&c.id),
            escape(&c.name),
            if c.passed { "ok" } else { "FAIL" },
            escape(&c.detail)
        );
    }
    o.push_str("</table>\n<h2>Items</h2>\n<table><tr><th>item</th><th>title</th><th>stock</th><th>available</th><th>reserved</th><th>sold</th><th>orders</th><th>order units</th></tr>");
    for i in &v.items {
        let title = r
            .round
            .items
            .iter()
            .find(|it| it.id == i.item_id)
            .map(|it| it.title.as_str())
            .unwrap_or("");
        let _ = write!(
            o,
            r#"<tr><td class="n">{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            i.item_id,
            escape(title),
            i.stock,
            opt(i.available),
            opt(i.reserved),
            opt(i.sold),
            i.orders,
            i.order_units
        );
    }
    o.push_str("</table>\n<h2>Answers by outcome</h2>\n<table><tr><th>kind</th><th>outcome</th><th>answers</th></tr>");
    for (kind, outcomes) in &r.requests {
        for (outcome, n) in outcomes {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td>{}</td><td class="n">{n}</td></tr>"#,
                escape(kind),
                escape(outcome)
            );
        }
    }
    o.push_str("</table>\n");
    if !r.payments.is_empty() {
        o.push_str("<h2>Payments</h2>\n<table><tr><th>outcome</th><th>count</th></tr>");
        for (k, n) in &r.payments {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td class="n">{n}</td></tr>"#,
                escape(k)
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        report::SaleFigures,
        setup::{ItemInfo, RoundInfo},
        stats::Second,
        verdict::{Check, ItemState, Verdict},
    };

    const HOSTILE: &str = r#"</title><script>alert("x")</script> & 'co'"#;

    fn report() -> Report {
        let mut buys = BTreeMap::new();
        buys.insert(
            2_000,
            Second {
                counts: [7, 0, 2, 1, 3, 0],
            },
        );
        buys.insert(
            2_001,
            Second {
                counts: [3, 40, 0, 0, 0, 1],
            },
        );
        let timeline = Timeline::build(2_000_000, &buys, [(2_000_100, 7), (2_001_300, 3)], 0);
        let mut requests = BTreeMap::new();
        requests.insert(
            "buy".to_owned(),
            BTreeMap::from([
                ("202 queued".to_owned(), 10),
                ("410 sold_out".to_owned(), 40),
            ]),
        );
        Report {
            target: "http://127.0.0.1:8080/?a=1&b=<2>".into(),
            round: RoundInfo {
                id: 77,
                status: "approved".into(),
                starts_at_ms: 2_000_000,
                ends_at_ms: 2_600_000,
                items: vec![ItemInfo {
                    id: 5,
                    title: HOSTILE.into(),
                    stock: 10,
                    per_user_limit: 1,
                }],
            },
            buyers: 60,
            behaviours: BTreeMap::new(),
            concurrency: 8,
            started_at: "2025-01-01T00:00:00Z".into(),
            elapsed_ms: 2_500,
            stopped_by_cap: false,
            requests,
            latency: BTreeMap::new(),
            latency_bars: BTreeMap::from([(
                "buy".to_owned(),
                vec![
                    Bin {
                        upto_ms: Some(0.5),
                        count: 4,
                    },
                    Bin {
                        upto_ms: None,
                        count: 1,
                    },
                ],
            )]),
            timeline,
            sale: SaleFigures {
                units_on_sale: 10,
                units_taken: 10,
                units_paid: 0,
                orders: 10,
                order_units: 10,
                answered_202: 10,
                sold_out: true,
                first_sold_out_answer_after_ms: Some(1_200),
                last_reservation_after_ms: Some(1_300),
            },
            payments: BTreeMap::new(),
            fairness: crate::fairness::Fairness::build(
                &BTreeMap::from([
                    (crate::profile::Profile::People, 9),
                    (crate::profile::Profile::Hammer, 1),
                ]),
                &BTreeMap::from([(crate::profile::Profile::People, 10)]),
                BTreeMap::new(),
                BTreeMap::new(),
            ),
            verdict: Verdict {
                passed: false,
                checks: vec![Check {
                    id: "I1".into(),
                    name: "counters add up".into(),
                    passed: false,
                    detail: "item 5: sold < 0 <oops>".into(),
                }],
                items: vec![ItemState {
                    item_id: 5,
                    stock: 10,
                    per_user_limit: 1,
                    total: Some(10),
                    available: Some(0),
                    reserved: Some(10),
                    sold: Some(0),
                    attempts: BTreeMap::new(),
                    orders: 10,
                    order_units: 10,
                    last_reservation_ms: Some(2_001_300),
                }],
            },
        }
    }

    /// Checks that every tag is closed in order; returns the tag names seen.
    fn balanced(html: &str) -> Result<Vec<String>, String> {
        const VOID: [&str; 4] = ["meta", "br", "line", "polyline"];
        let body = html.strip_prefix("<!DOCTYPE html>").ok_or("no doctype")?;
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = body;
        while let Some(start) = rest.find('<') {
            if rest[..start].contains('>') {
                return Err(format!("stray '>' before {:?}", &rest[start..]));
            }
            let end = rest[start..].find('>').ok_or("unclosed tag")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if name.is_empty() {
                return Err(format!("bad tag <{tag}>"));
            }
            if name == "style" {
                let close = rest.find("</style>").ok_or("unclosed style")?;
                rest = &rest[close + "</style>".len()..];
                seen.push(name);
                continue;
            }
            if tag.ends_with('/') {
                seen.push(name);
                continue;
            }
            if VOID.contains(&name.as_str()) {
                return Err(format!("<{name}> is not self-closed"));
            }
            seen.push(name.clone());
            stack.push(name);
        }
        if rest.contains('>') {
            return Err("stray '>' at the end".into());
        }
        match stack.as_slice() {
            [] => Ok(seen),
            open => Err(format!("unclosed: {open:?}")),
        }
    }

    #[test]
    fn the_page_is_well_formed_and_holds_the_series() {
        let html = render(&report());
        let tags = balanced(&html).unwrap_or_else(|e| panic!("{e}\n{html}"));
        assert!(!tags.iter().any(|t| t == "script"), "no script at all");
        assert!(!html.contains("http-equiv") && !html.contains(" src="));
        for c in Class::ALL {
            assert!(
                html.contains(&format!(r#"data-series="{}""#, c.as_str())),
                "{c:?}"
            );
        }
        assert!(html.contains(r#"data-series="units_taken""#));
        assert!(html.contains(r#"data-series="latency_buy""#));
        assert!(html.contains("No poll answers with a latency."));
        assert!(html.contains("<title>+0 s: 7 reserved (202)</title>"));
        assert!(html.contains("<title>+1 s: 40 sold out (410)</title>"));
        assert!(html.contains("<title>&gt;60 s: 1</title>"));
        assert!(html.contains(r#"<span class="fail">FAIL</span>"#));
        assert!(html.contains("item 5: sold &lt; 0 &lt;oops&gt;"));
        assert!(html.contains(
            "fairness: people 90.0% of buyers won 100.0% of units; bots 10.0% won 0.0% (hammer 0/1)"
        ));
        assert!(
            html.contains("<tr><td>hammer</td><td>1</td><td>10.0%</td><td>0</td><td>0.0%</td>")
        );
        assert!(html.contains("units on sale: 10"));
    }

    #[test]
    fn a_hostile_item_title_is_escaped() {
        let html = render(&report());
        assert!(!html.contains(HOSTILE));
        assert!(!html.contains("<script>"));
        assert!(html.contains(
            "&lt;/title&gt;&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;co&#39;"
        ));
        assert!(html.contains("http://127.0.0.1:8080/?a=1&amp;b=&lt;2&gt;"));
    }

    #[test]
    fn an_empty_sale_still_renders() {
        let mut r = report();
        r.timeline = Timeline::default();
        r.latency_bars.clear();
        r.requests.clear();
        let html = render(&r);
        balanced(&html).unwrap_or_else(|e| panic!("{e}\n{html}"));
        assert!(html.contains("No buy answers with a latency."));
    }

    #[test]
    fn axes_end_at_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(420.0), 500.0);
        assert_eq!(nice_max(5000.0), 5000.0);
    }
}
