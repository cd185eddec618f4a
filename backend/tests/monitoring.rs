//! The shipped monitoring files: `docker/prometheus.yml` passes
//! `promtool check config` (when promtool is installed; Debian package
//! `prometheus`) and scrapes the metrics ports the compose stack opens, and
//! the Grafana dashboard parses and asks only for metrics the backend and
//! the edge really export — read from their sources, so a renamed metric
//! fails here rather than as an empty panel.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The string literal right after each `marker` (whitespace allowed).
fn names_after(text: &str, marker: &str) -> Vec<String> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = text[at + marker.len()..].trim_start().strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

/// Series names Prometheus gets from the code: backend `metrics::…!`
/// macros and edge `Opts::new` / `HistogramOpts::new`; a histogram also
/// yields its `_bucket`, `_sum` and `_count` series.
fn exported() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_sources(&root().join("backend/src"), &mut files);
    rust_sources(&root().join("edge/src"), &mut files);
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let plain = ["metrics::counter!(", "metrics::gauge!("]
            .iter()
            .flat_map(|m| names_after(&text, m));
        names.extend(plain);
        let edge_opts = names_after(&text, " Opts::new(");
        names.extend(edge_opts);
        let histograms = names_after(&text, "metrics::histogram!(")
            .into_iter()
            .chain(names_after(&text, "HistogramOpts::new("));
        for h in histograms {
            for suffix in ["", "_bucket", "_sum", "_count"] {
                names.insert(format!("{h}{suffix}"));
            }
        }
    }
    names
}

/// PromQL words that are not series names.
const PROMQL: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "time",
    "timestamp",
    "vector",
    "scalar",
    "abs",
    "ceil",
    "floor",
    "round",
    "label_replace",
];

/// Ends the identifier in `word`: `by`/`without` open a label list, a
/// PromQL word or a number is dropped, anything else is a series name.
fn flush(word: &mut String, grouping: &mut bool, out: &mut Vec<String>) {
    if word.is_empty() {
        return;
    }
    if word == "by" || word == "without" {
        *grouping = true;
    } else if !PROMQL.contains(&word.as_str()) && !word.starts_with(|c: char| c.is_ascii_digit()) {
        out.push(word.clone());
    }
    word.clear();
}

/// The series names an expression selects: identifiers outside string
/// literals, label matchers, range brackets and `by (…)` lists that are
/// not PromQL words.
fn series_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let mut grouping = false;
    while let Some(c) = chars.next() {
        match c {
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' => word.push(c),
            '{' | '[' | '"' | '(' if c != '(' || grouping => {
                flush(&mut word, &mut grouping, &mut out);
                grouping = false;
                let close = match c {
                    '{' => '}',
                    '[' => ']',
                    '"' => '"',
                    _ => ')',
                };
                let mut in_string = false;
                for d in chars.by_ref() {
                    if d == '"' && c != '"' {
                        in_string = !in_string;
                    } else if d == close && !in_string {
                        break;
                    }
                }
            }
            _ => flush(&mut word, &mut grouping, &mut out),
        }
    }
    flush(&mut word, &mut grouping, &mut out);
    out
}

fn panels(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(p, out);
    }
}

#[test]
fn prometheus_config_passes_promtool() {
    let path = root().join("docker/prometheus.yml");
    match Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check config {}: {}\n{}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "skipped: promtool is not installed (Debian package `prometheus`), \
                 so `promtool check config docker/prometheus.yml` did not run"
            );
        }
        Err(e) => panic!("running promtool: {e}"),
    }
}

#[test]
fn prometheus_scrapes_the_ports_the_stack_opens() {
    let prom = read("docker/prometheus.yml");
    let compose = read("docker/compose.yaml");
    let edge = read("docker/edge.toml");
    let targets: Vec<&str> = prom
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- targets: ["))
        .flat_map(|l| l.trim_end_matches(']').split(','))
        .map(|t| t.trim().trim_matches('"'))
        .collect();
    assert_eq!(targets, ["edge:9180", "backend:9181"]);
    assert!(compose.contains("\n  edge:\n") && compose.contains("\n  backend:\n"));
    assert!(edge.contains("metrics_listen = \"0.0.0.0:9180\""));
    assert!(compose.contains("SECKILL__HTTP__METRICS_LISTEN: 0.0.0.0:9181"));
    assert!(compose.contains("./prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
}

#[test]
fn the_dashboard_asks_only_for_exported_metrics() {
    let text = read("docker/grafana/dashboards/seckill.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let known = exported();
    for must in [
        "seckill_buy_total",
        "edge_rejections_total",
        "edge_permits_total",
        "seckill_order_lag_seconds_bucket",
    ] {
        assert!(known.contains(must), "{must} not found in the sources");
    }
    let mut all = Vec::new();
    panels(&dash, &mut all);
    assert!(all.len() >= 8, "{} panels", all.len());
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("a Prometheus query");
            let series = series_in(expr);
            assert!(!series.is_empty(), "{title:?}: {expr} selects no series");
            for s in series {
                if !known.contains(&s) {
                    unknown.push(format!("{title:?}: {s} (in {expr})"));
                }
                used.insert(s);
            }
        }
    }
    assert!(unknown.is_empty(), "not exported: {unknown:#?}");
    eprintln!("the dashboard uses {used:?}");

    // The datasource the panels name is the one provisioned.
    let uid = dash["panels"][0]["datasource"]["uid"].as_str().unwrap();
    let ds = read("docker/grafana/provisioning/datasources/prometheus.yaml");
    assert!(ds.contains(&format!("uid: {uid}")), "{uid}");
    let provider = read("docker/grafana/provisioning/dashboards/seckill.yaml");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
}

#[test]
fn series_names_are_told_from_promql_words() {
    assert_eq!(
        series_in(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{a="b}", c=~"d"}[$__rate_interval])))"#
        ),
        ["x_bucket"]
    );
    assert_eq!(
        series_in("sum(rate(a_total[1m])) / sum(rate(b_total[1m]))"),
        ["a_total", "b_total"]
    );
    assert_eq!(
        series_in("sum by (item) (edge_permits_total{event=\"spent\"})"),
        ["edge_permits_total"]
    );
}
