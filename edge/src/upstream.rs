//! The backend pool: health checks, selection (least loaded or round
//! robin), and requests-in-flight accounting.
//!
//! A backend that fails its health probe is skipped while any healthy one
//! remains. Which requests may be retried is decided by the proxy (connect
//! failures only); this module just avoids backends already tried.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::config::{Selection, UpstreamConfig};

/// One backend.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub label: String,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

/// All backends of this node.
#[derive(Clone, Debug)]
pub struct Upstreams {
    backends: Arc<Vec<Backend>>,
    selection: Selection,
    next: Arc<AtomicUsize>,
    health_path: String,
    interval: Duration,
    timeout: Duration,
}

/// A request counted against a backend until dropped.
#[derive(Debug)]
pub struct InFlight {
    pool: Upstreams,
    pub index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.backends[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstreams {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let backends = cfg
            .backends
            .iter()
            .filter_map(|b| b.parse::<SocketAddr>().ok())
            .map(|addr| Backend {
                addr,
                label: addr.to_string(),
                // Optimistic until the first probe says otherwise.
                healthy: AtomicBool::new(true),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        Self {
            backends: Arc::new(backends),
            selection: cfg.selection,
            next: Arc::new(AtomicUsize::new(0)),
            health_path: cfg.health_path.clone(),
            interval: Duration::from_millis(cfg.health_interval_ms),
            timeout: Duration::from_millis(cfg.connect_timeout_ms.max(200)),
        }
    }

    pub fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Picks a backend not in `tried`, healthy if possible.
    pub fn select(&self, tried: &[usize]) -> Option<InFlight> {
        let n = self.backends.len();
        let candidates = |want_healthy: bool| -> Vec<usize> {
            (0..n)
                .filter(|i| !tried.contains(i))
                .filter(|&i| !want_healthy || self.backends[i].healthy.load(Ordering::Relaxed))
                .collect()
        };
        let mut c = candidates(true);
        if c.is_empty() {
            c = candidates(false);
        }
        if c.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let pick = match self.selection {
            Selection::RoundRobin => c[start % c.len()],
            Selection::LeastLoaded => {
                // Rotate the start so ties spread evenly.
                let rotated = (0..c.len()).map(|k| c[(start + k) % c.len()]);
                rotated
                    .min_by_key(|&i| self.backends[i].in_flight.load(Ordering::Relaxed))
                    .expect("non-empty")
            }
        };
        self.backends[pick]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            pool: self.clone(),
            index: pick,
        })
    }

    /// Probes every backend once.
    pub async fn check_all(&self) {
        for b in self.backends.iter() {
            let ok = probe(b.addr, &self.health_path, self.timeout).await;
            let was = b.healthy.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    tracing::info!(backend = %b.label, "backend healthy again");
                } else {
                    tracing::warn!(backend = %b.label, "backend failed its health check");
                }
            }
        }
    }

    /// Probes forever, every `health_interval_ms`, until `shutdown` flips.
    pub async fn health_loop(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.check_all().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}

/// `GET path` over a fresh connection; healthy on any 2xx.
async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let m = s.read(&mut buf[n..]).await.ok()?;
            if m == 0 {
                break;
            }
            n += m;
        }
        let head = std::str::from_utf8(&buf[..n]).ok()?;
        let code = head.split_whitespace().nth(1)?;
        Some(code.starts_with('2'))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(selection: Selection) -> Upstreams {
        let cfg = UpstreamConfig {
            backends: vec![
                "127.0.0.1:1".into(),
                "127.0.0.1:2".into(),
                "127.0.0.1:3".into(),
            ],
            selection,
            ..UpstreamConfig::default()
        };
        Upstreams::new(&cfg)
    }

    #[test]
    fn round_robin_visits_every_backend() {
        let p = pool(Selection::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| p.select(&[]).unwrap().index).collect();
        for i in 0..3 {
            assert_eq!(picks.iter().filter(|&&x| x == i).count(), 2, "{picks:?}");
        }
    }

    #[test]
    fn least_loaded_avoids_busy_backends_and_tried_ones() {
        let p = pool(Selection::LeastLoaded);
        let a = p.select(&[]).unwrap();
        let b = p.select(&[]).unwrap();
        assert_ne!(a.index, b.index);
        let c = p.select(&[]).unwrap();
        let all = [a.index, b.index, c.index];
        assert!((0..3).all(|i| all.contains(&i)), "{all:?}");
        drop(b);
        let freed = all[1];
        assert_eq!(p.select(&[]).unwrap().index, freed);
        assert!(p.select(&[0, 1, 2]).is_none());
    }

    #[test]
    fn unhealthy_backends_are_skipped_while_others_are_up() {
        let p = pool(Selection::RoundRobin);
        p.backends[0].healthy.store(false, Ordering::Relaxed);
        p.backends[1].healthy.store(false, Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(p.select(&[]).unwrap().index, 2);
        }
        // With every backend down, still try one rather than fail outright.
        p.backends[2].healthy.store(false, Ordering::Relaxed);
        assert!(p.select(&[]).is_some());
    }
}
