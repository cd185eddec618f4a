//! The HTTP side of a simulated buyer: one shared connection pool, a bound on
//! requests in flight, and the mapping of every answer to a stable outcome
//! label (`"202 queued"`, `"410 sold_out"`, `"error connect"` …).
//!
//! Latency is measured from the moment a request holds its concurrency
//! permit to the end of its body, so it is the service's time, not the time
//! a request waited in the load generator's own queue.
//!
//! A client may know several base URLs (edge nodes): requests go to the
//! first one not marked down; a request that could not connect (so it was
//! never sent) is marked down for a moment and sent once to the next one,
//! the way a client behind a list of addresses moves to a surviving node.
//!
//! A crowd may connect from several local addresses ([`Http::per_source`]):
//! one client per source address, all sharing one bound on requests in
//! flight.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{sync::Semaphore, time::Instant};

/// A finished request: status (0 when none came back), outcome label, body,
/// and the time it took.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub outcome: String,
    pub body: Value,
    pub latency: Duration,
    /// Wall-clock time (Unix ms) the request was sent, after its permit.
    pub sent_ms: i64,
}

impl Answer {
    /// The stable error code of a JSON error body, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.body.get("error").and_then(Value::as_str)
    }
}

/// The buyer-facing HTTP client, shared by every simulated buyer.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    bases: Arc<Vec<String>>,
    /// Per base: Unix ms until which it is skipped after a connect failure.
    down_until: Arc<Vec<AtomicI64>>,
    permits: Arc<Semaphore>,
}

/// How long a base that refused a connection is skipped.
const DOWN_FOR_MS: i64 = 1_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Http {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with at most
    /// `concurrency` requests in flight.
    pub fn new(base: &str, concurrency: usize, timeout: Duration) -> anyhow::Result<Self> {
        Self::with_bases(&[base.to_owned()], concurrency, timeout)
    }

    /// A client for several equivalent bases, preferred in the given order.
    pub fn with_bases(
        bases: &[String],
        concurrency: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        Self::build(bases, concurrency, timeout, None, permits)
    }

    /// One client per source address (`None`: the system's default), in
    /// the order given, sharing one bound of `concurrency` requests in
    /// flight.
    pub fn per_source(
        bases: &[String],
        concurrency: usize,
        timeout: Duration,
        sources: &[Option<IpAddr>],
    ) -> anyhow::Result<Vec<Self>> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        sources
            .iter()
            .map(|s| Self::build(bases, concurrency, timeout, *s, permits.clone()))
            .collect()
    }

    fn build(
        bases: &[String],
        concurrency: usize,
        timeout: Duration,
        source: Option<IpAddr>,
        permits: Arc<Semaphore>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!bases.is_empty(), "no base URL");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .local_address(source)
            .build()?;
        Ok(Self {
            client,
            bases: Arc::new(
                bases
                    .iter()
                    .map(|b| b.trim_end_matches('/').to_owned())
                    .collect(),
            ),
            down_until: Arc::new(bases.iter().map(|_| AtomicI64::new(0)).collect()),
            permits,
        })
    }

    /// The first base not marked down (the first one if all are).
    fn current(&self) -> usize {
        let now = now_ms();
        (0..self.bases.len())
            .find(|&i| self.down_until[i].load(Ordering::Relaxed) <= now)
            .unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.bases[self.current()], path)
    }

    /// The preferred base.
    pub fn base(&self) -> &str {
        &self.bases[0]
    }

    /// Sends `req`; after a connect failure marks its base down and sends
    /// it once more to the next base that is up (nothing reached the first).
    async fn execute(&self, req: reqwest::Request) -> reqwest::Result<reqwest::Response> {
        let retry = (self.bases.len() > 1).then(|| req.try_clone()).flatten();
        let res = self.client.execute(req).await;
        let (Err(e), Some(mut again)) = (&res, retry) else {
            return res;
        };
        if !e.is_connect() {
            return res;
        }
        let url = again.url().as_str().to_owned();
        let Some(from) = self.bases.iter().position(|b| url.starts_with(b.as_str())) else {
            return res;
        };
        self.down_until[from].store(now_ms() + DOWN_FOR_MS, Ordering::Relaxed);
        let to = self.current();
        if to == from {
            return res;
        }
        let Ok(moved) = reqwest::Url::parse(&format!(
            "{}{}",
            self.bases[to],
            &url[self.bases[from].len()..]
        )) else {
            return res;
        };
        *again.url_mut() = moved;
        self.client.execute(again).await
    }

    /// Sends a request built by `build` once a permit is free.
    pub async fn send(&self, build: reqwest::RequestBuilder) -> Answer {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let start = Instant::now();
        let sent_ms = chrono::Utc::now().timestamp_millis();
        let res = match build.build() {
            Ok(req) => self.execute(req).await,
            Err(e) => Err(e),
        };
        let (status, body) = match res {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.bytes().await {
                    Ok(b) => (
                        status,
                        serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
                    ),
                    Err(e) => {
                        return Answer {
                            status: 0,
                            outcome: error_label(&e),
                            body: Value::Null,
                            latency: start.elapsed(),
                            sent_ms,
                        };
                    }
                }
            }
            Err(e) => {
                return Answer {
                    status: 0,
                    outcome: error_label(&e),
                    body: Value::Null,
                    latency: start.elapsed(),
                    sent_ms,
                };
            }
        };
        let latency = start.elapsed();
        let outcome = label(status, &body);
        Answer {
            status,
            outcome,
            body,
            latency,
            sent_ms,
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }
}

/// `"<status> <code>"`, e.g. `"410 sold_out"`, `"202 queued"`, `"200"`.
pub fn label(status: u16, body: &Value) -> String {
    let code = body
        .get("error")
        .and_then(Value::as_str)
        .or_else(|| body.get("status").and_then(Value::as_str));
    // The edge's own 503 (no permit could be leased: Redis did not answer
    // it in time) carries `retry_after_ms`; a backend's does not.
    let at_edge = status == 503 && body.get("retry_after_ms").is_some();
    match code {
        Some(c) if at_edge => format!("{status} {c} at_edge"),
        Some(c) => format!("{status} {c}"),
        None => status.to_string(),
    }
}

fn error_label(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "error timeout".into()
    } else if e.is_connect() {
        "error connect".into()
    } else {
        "error other".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_use_the_stable_code() {
        assert_eq!(label(410, &json!({"error": "sold_out"})), "410 sold_out");
        assert_eq!(
            label(202, &json!({"attempt_id": "1-2-x", "status": "queued"})),
            "202 queued"
        );
        assert_eq!(label(200, &Value::Null), "200");
    }
}
