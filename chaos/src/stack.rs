//! The Seckill processes of one scenario: two API backends (`serve`, order
//! writer off), one `worker` (order writer, expiry consumer, sweep) and
//! two edges in front of both backends, sharing the scenario's Redis for
//! permits. Everything is configured through `SECKILL__*` variables (the
//! secret never goes into a file) and, for the edges, a generated TOML
//! file; each process logs into the scenario's directory.
//!
//! The backends and the worker reach Redis through the scenario's
//! [`FaultProxy`](crate::proxy::FaultProxy); the edges reach it directly.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;
use tokio::time::Instant;

use crate::procs::{self, Proc};

/// What the processes of one scenario share.
#[derive(Clone, Debug)]
pub struct StackSpec {
    pub bin_dir: PathBuf,
    pub repo_dir: PathBuf,
    /// The scenario's directory (logs, pages, edge configs).
    pub dir: PathBuf,
    pub secret: String,
    /// Redis as the edges reach it.
    pub redis_url: String,
    /// Redis as the backends and the worker reach it (the fault proxy).
    pub backend_redis_url: String,
    pub key_prefix: String,
    pub amqp_url: String,
    pub queue: String,
    pub database_url: String,
    pub payment_timeout_secs: u64,
    pub sweep_interval_ms: u64,
    pub backlog_threshold_ms: u64,
    /// `clock.offset_ms` of each backend.
    pub clock_offsets_ms: [i64; 2],
    /// The backends run an order writer of their own, so their spools can
    /// be handed to it directly while the broker stays away.
    pub direct_writer: bool,
    /// `durability.direct_after_ms` of the backends.
    pub direct_after_ms: u64,
}

impl StackSpec {
    /// Backend `i`'s own directory (its spool and journal).
    pub fn backend_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("backend-{i}"))
    }

    pub fn pages_dir(&self) -> PathBuf {
        self.dir.join("pages")
    }

    /// The variables every backend process (serve, worker, CLI) gets.
    pub fn backend_env(&self) -> Vec<(String, String)> {
        let v = |k: &str, val: String| (format!("SECKILL__{k}"), val);
        vec![
            v("AUTH__SECRET", self.secret.clone()),
            v("REDIS__URL", self.backend_redis_url.clone()),
            v("REDIS__KEY_PREFIX", self.key_prefix.clone()),
            v("RABBITMQ__URL", self.amqp_url.clone()),
            v("RABBITMQ__QUEUE", self.queue.clone()),
            v("DATABASE__URL", self.database_url.clone()),
            v(
                "SALE__PAYMENT_TIMEOUT_SECS",
                self.payment_timeout_secs.to_string(),
            ),
            v(
                "LIFECYCLE__SWEEP_INTERVAL_MS",
                self.sweep_interval_ms.to_string(),
            ),
            v(
                "LIFECYCLE__BACKLOG_THRESHOLD_MS",
                self.backlog_threshold_ms.to_string(),
            ),
            // Retry tiers short enough for a run that lasts a minute; the
            // last tier still outlasts a database restart.
            v("WRITER__RETRY_DELAYS_MS", "[1000, 3000, 10000]".into()),
            v("PAGES__DIR", self.pages_dir().display().to_string()),
            ("RUST_LOG".into(), "info".into()),
        ]
    }

    fn backend_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("seckill-backend"));
        cmd.args(args)
            .current_dir(&self.dir)
            .env_remove("SECKILL_CONFIG")
            .envs(self.backend_env());
        cmd
    }

    /// `seckill-backend reconcile --round N` (no repair): its JSON and
    /// whether it exited 2 (differences).
    pub async fn reconcile(&self, round_id: i64) -> anyhow::Result<(serde_json::Value, bool)> {
        let mut cmd = tokio::process::Command::from(self.backend_cmd(&[
            "reconcile",
            "--round",
            &round_id.to_string(),
        ]));
        // The check reads Redis directly, not through the fault proxy.
        cmd.env("SECKILL__REDIS__URL", &self.redis_url)
            .env("RUST_LOG", "warn");
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .context("reconcile did not finish within 60 s")?
            .context("running seckill-backend reconcile")?;
        let code = out.status.code();
        anyhow::ensure!(
            matches!(code, Some(0) | Some(2)),
            "reconcile exited {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "reconcile printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        Ok((json, code == Some(2)))
    }
}

/// One backend node's addresses.
#[derive(Clone, Copy, Debug)]
pub struct BackendAddrs {
    pub api: SocketAddr,
    pub metrics: SocketAddr,
}

/// One edge node's addresses.
#[derive(Clone, Copy, Debug)]
pub struct EdgeAddrs {
    pub http: SocketAddr,
    pub metrics: SocketAddr,
}

/// The running processes of one scenario.
pub struct Stack {
    pub spec: StackSpec,
    pub backend_addrs: [BackendAddrs; 2],
    pub edge_addrs: [EdgeAddrs; 2],
    pub backends: [Option<Proc>; 2],
    pub worker: Option<Proc>,
    pub edges: [Option<Proc>; 2],
    http: reqwest::Client,
}

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

impl Stack {
    /// Starts both backends (the first alone, so it runs the migrations),
    /// the worker and both edges, and waits until each is ready.
    pub async fn start(spec: StackSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(spec.pages_dir())?;
        let b = || -> anyhow::Result<BackendAddrs> {
            Ok(BackendAddrs {
                api: loopback(procs::free_port()?),
                metrics: loopback(procs::free_port()?),
            })
        };
        let e = || -> anyhow::Result<EdgeAddrs> {
            Ok(EdgeAddrs {
                http: loopback(procs::free_port()?),
                metrics: loopback(procs::free_port()?),
            })
        };
        let mut stack = Self {
            backend_addrs: [b()?, b()?],
            edge_addrs: [e()?, e()?],
            spec,
            backends: [None, None],
            worker: None,
            edges: [None, None],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        stack.start_backend(0).await?;
        stack.start_backend(1).await?;
        stack.start_worker().await?;
        stack.start_edge(0).await?;
        stack.start_edge(1).await?;
        Ok(stack)
    }

    /// The API address admin calls go to (backend 0).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.backend_addrs[0].api)
    }

    pub fn edge_urls(&self) -> Vec<String> {
        self.edge_addrs
            .iter()
            .map(|e| format!("http://{}", e.http))
            .collect()
    }

    pub async fn start_backend(&mut self, i: usize) -> anyhow::Result<()> {
        let a = self.backend_addrs[i];
        let mut cmd = self.spec.backend_cmd(&["serve"]);
        cmd.env("SECKILL__HTTP__LISTEN", a.api.to_string())
            .env("SECKILL__HTTP__METRICS_LISTEN", a.metrics.to_string())
            .env("SECKILL__HTTP__SHUTDOWN_GRACE_MS", "2000")
            .env(
                "SECKILL__WRITER__ENABLED",
                self.spec.direct_writer.to_string(),
            )
            .env("SECKILL__LIFECYCLE__ENABLED", "false")
            .env(
                "SECKILL__DURABILITY__SPOOL_DIR",
                self.spec.backend_dir(i).join("spool"),
            )
            .env(
                "SECKILL__DURABILITY__JOURNAL_DIR",
                self.spec.backend_dir(i).join("journal"),
            )
            .env(
                "SECKILL__DURABILITY__DIRECT_AFTER_MS",
                self.spec.direct_after_ms.to_string(),
            )
            .env(
                "SECKILL__CLOCK__OFFSET_MS",
                self.spec.clock_offsets_ms[i].to_string(),
            );
        let log = self.spec.dir.join(format!("backend-{i}.log"));
        let mut p = Proc::spawn(&format!("backend-{i}"), cmd, &log)?;
        self.await_http(&mut p, &format!("http://{}/readyz", a.api))
            .await?;
        self.backends[i] = Some(p);
        Ok(())
    }

    pub async fn start_worker(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.spec.backend_cmd(&["worker"]);
        cmd.env("SECKILL__HTTP__SHUTDOWN_GRACE_MS", "2000");
        let log = self.spec.dir.join("worker.log");
        let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut p = Proc::spawn("worker", cmd, &log)?;
        // Ready once the order writer consumes.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read(&log).unwrap_or_default();
            let fresh = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]);
            if fresh.contains("order writer consuming") {
                break;
            }
            anyhow::ensure!(
                p.running() && Instant::now() < deadline,
                "the worker did not start consuming: {}",
                p.log_tail(15)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.worker = Some(p);
        Ok(())
    }

    pub async fn start_edge(&mut self, i: usize) -> anyhow::Result<()> {
        let a = self.edge_addrs[i];
        let file = self.write_edge_config(i)?;
        let mut cmd = Command::new(self.spec.bin_dir.join("seckill-edge"));
        cmd.arg("--config")
            .arg(&file)
            .current_dir(&self.spec.dir)
            .env_remove("SECKILL_EDGE_CONFIG")
            .env("SECKILL_EDGE__AUTH__SECRET", &self.spec.secret)
            // CHAOS_EDGE_LOG=access=info logs every request an edge answers.
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_EDGE_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let log = self.spec.dir.join(format!("edge-{i}.log"));
        let mut p = Proc::spawn(&format!("edge-{i}"), cmd, &log)?;
        self.await_http(&mut p, &format!("http://{}/healthz", a.http))
            .await?;
        self.edges[i] = Some(p);
        Ok(())
    }

    fn write_edge_config(&self, i: usize) -> anyhow::Result<PathBuf> {
        let a = self.edge_addrs[i];
        let dir = &self.spec.dir;
        let repo = std::fs::canonicalize(&self.spec.repo_dir)
            .with_context(|| format!("repository dir {}", self.spec.repo_dir.display()))?;
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let backends = self
            .backend_addrs
            .iter()
            .map(|b| format!("\"{}\"", b.api))
            .collect::<Vec<_>>()
            .join(", ");
        let toml = format!(
            r#"# Generated by seckill-chaos for one scenario.
[http]
listen = "{listen}"
metrics_listen = "{metrics}"
threads = 1
grace_period_secs = 0
shutdown_timeout_secs = 2
pid_file = {pid}
upgrade_sock = {sock}

[pages]
dir = {pages}

[lua]
access = {access}
lib_dirs = [{lib}]

[upstream]
backends = [{backends}]
health_interval_ms = 500
connect_timeout_ms = 1000
read_timeout_ms = 10000

[permits]
redis_url = "{redis}"
key_prefix = "{prefix}"
node_id = "chaos-edge-{i}"
# Debug binaries on two loaded cores: Redis answers slower than in a shop.
redis_timeout_ms = 250
"#,
            listen = a.http,
            metrics = a.metrics,
            pid = q(&dir.join(format!("edge-{i}.pid"))),
            sock = q(&dir.join(format!("edge-{i}-upgrade.sock"))),
            pages = q(&self.spec.pages_dir()),
            access = q(&repo.join("lua/edge/access.lua")),
            lib = q(&repo.join("lua")),
            redis = self.spec.redis_url,
            prefix = self.spec.key_prefix,
        );
        let file = dir.join(format!("edge-{i}.toml"));
        std::fs::write(&file, toml)?;
        Ok(file)
    }

    /// Polls `url` until it answers 2xx, the process dies, or 30 s pass.
    async fn await_http(&self, p: &mut Proc, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            anyhow::ensure!(
                p.running() && Instant::now() < deadline,
                "{} not ready at {url}: {}",
                p.name(),
                p.log_tail(15)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every process (SIGTERM, then the group is killed).
    pub async fn stop(&mut self) {
        let mut all: Vec<Proc> = Vec::new();
        all.extend(self.edges.iter_mut().filter_map(Option::take));
        all.extend(self.backends.iter_mut().filter_map(Option::take));
        all.extend(self.worker.take());
        futures::future::join_all(all.into_iter().map(|p| p.stop(Duration::from_secs(3)))).await;
    }
}
