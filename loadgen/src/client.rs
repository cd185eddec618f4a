//! The HTTP side of a simulated buyer: one shared connection pool, a bound on
//! requests in flight, and the mapping of every answer to a stable outcome
//! label (`"202 queued"`, `"410 sold_out"`, `"error connect"` …).
//!
//! Latency is measured from the moment a request holds its concurrency
//! permit to the end of its body, so it is the service's time, not the time
//! a request waited in the load generator's own queue.

use std::{sync::Arc, time::Duration};

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
    base: String,
    permits: Arc<Semaphore>,
}

impl Http {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with at most
    /// `concurrency` requests in flight.
    pub fn new(base: &str, concurrency: usize, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn base(&self) -> &str {
        &self.base
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
        let res = build.send().await;
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
    match code {
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
