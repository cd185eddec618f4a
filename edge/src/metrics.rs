//! Prometheus metrics of one edge node and the `/metrics` listener on its
//! own port. Phases record here; this module decides nothing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::permits::ItemId;

/// Every metric the edge exports (cheap to clone).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    rejections: IntCounterVec,
    permits: IntCounterVec,
    upstream_seconds: HistogramVec,
    reloads: IntCounterVec,
    lua_errors: IntCounterVec,
    admission_held: IntCounterVec,
    admission_hold_seconds: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("edge_requests_total", "Requests by route and outcome"),
            &["route", "outcome"],
        )
        .expect("metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "edge_rejections_total",
                "Requests answered at the edge, by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let permits = IntCounterVec::new(
            Opts::new(
                "edge_permits_total",
                "Buy permit units by item and what became of them (forwarded, spent, dropped, kept, void, lost, stale, expired, released)",
            ),
            &["item", "event"],
        )
        .expect("metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "edge_upstream_seconds",
                "Time to the backend's response header",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["backend"],
        )
        .expect("metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "edge_lua_reloads_total",
                "Lua (re)loads by result (ok, refused) and why refused (unreadable, load, trial)",
            ),
            &["result", "reason"],
        )
        .expect("metric");
        let lua_errors = IntCounterVec::new(
            Opts::new(
                "edge_lua_errors_total",
                "Lua errors raised while serving requests, by phase (access, log)",
            ),
            &["phase"],
        )
        .expect("metric");
        let admission_held = IntCounterVec::new(
            Opts::new(
                "edge_admission_held_total",
                "Buys held by an item's admission window, by how the hold ended (admitted, gone: the client left)",
            ),
            &["outcome"],
        )
        .expect("metric");
        let admission_hold_seconds = HistogramVec::new(
            HistogramOpts::new(
                "edge_admission_hold_seconds",
                "How long buys were held by an admission window",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["outcome"],
        )
        .expect("metric");
        for c in [
            &requests,
            &rejections,
            &permits,
            &reloads,
            &lua_errors,
            &admission_held,
        ] {
            registry.register(Box::new(c.clone())).expect("register");
        }
        for h in [&upstream_seconds, &admission_hold_seconds] {
            registry.register(Box::new(h.clone())).expect("register");
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                requests,
                rejections,
                permits,
                upstream_seconds,
                reloads,
                lua_errors,
                admission_held,
                admission_hold_seconds,
            }),
        }
    }

    pub fn request(&self, route: &str, outcome: &str) {
        self.inner
            .requests
            .with_label_values(&[route, outcome])
            .inc();
    }

    pub fn rejection(&self, reason: &str) {
        self.inner.rejections.with_label_values(&[reason]).inc();
    }

    /// Counts `n` permit units of `item` by what became of them:
    /// `forwarded`, then `spent`, `dropped`, `kept`, `void`, `lost` (no
    /// answer), `stale` (kept, but of an older lease); or `expired` (not
    /// renewed in time), `released` (handed back idle), `redis_failed`.
    pub fn permits(&self, (r, i): ItemId, event: &str, n: i64) {
        if n <= 0 {
            return;
        }
        self.inner
            .permits
            .with_label_values(&[&format!("r{r}:i{i}"), event])
            .inc_by(n as u64);
    }

    /// One event of `item` (see [`Metrics::permits`]).
    pub fn permit(&self, item: ItemId, event: &str) {
        self.permits(item, event, 1);
    }

    pub fn upstream(&self, backend: &str, elapsed: Duration) {
        self.inner
            .upstream_seconds
            .with_label_values(&[backend])
            .observe(elapsed.as_secs_f64());
    }

    /// A Lua reload: `result` `ok` (reason empty) or `refused` with why.
    pub fn reload(&self, result: &str, reason: &str) {
        self.inner
            .reloads
            .with_label_values(&[result, reason])
            .inc();
    }

    /// A Lua error in a request's `phase` (`access` or `log`).
    pub fn lua_error(&self, phase: &str) {
        self.inner.lua_errors.with_label_values(&[phase]).inc();
    }

    /// A buy held by an admission window for `held`, ending `outcome`
    /// (`admitted`, or `gone`: its client left during the hold).
    pub fn admission_hold(&self, outcome: &str, held: Duration) {
        self.inner
            .admission_held
            .with_label_values(&[outcome])
            .inc();
        self.inner
            .admission_hold_seconds
            .with_label_values(&[outcome])
            .observe(held.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.inner.registry.gather(), &mut buf);
        buf
    }

    /// Serves `GET /metrics` on `listener` until `shutdown` flips.
    pub async fn serve(
        self,
        listener: TcpListener,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => {
                    let Ok((mut stream, _)) = accepted else { continue };
                    let me = self.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut n = 0;
                        // Read the request head (bounded in size and time).
                        let read = tokio::time::timeout(Duration::from_secs(5), async {
                            while n < buf.len() {
                                let m = stream.read(&mut buf[n..]).await.ok()?;
                                if m == 0 { return None; }
                                n += m;
                                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") { return Some(()); }
                            }
                            None
                        }).await;
                        if !matches!(read, Ok(Some(()))) { return; }
                        let head = String::from_utf8_lossy(&buf[..n]);
                        let (status, body, ctype) = if head.starts_with("GET /metrics") {
                            ("200 OK", me.render(), "text/plain; version=0.0.4")
                        } else {
                            ("404 Not Found", b"not found\n".to_vec(), "text/plain")
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(resp.as_bytes()).await;
                        let _ = stream.write_all(&body).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        }
    }
}

/// Binds the metrics listener (before the proxy starts, so a bad address
/// fails the start).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}
