//! Builds the application from a validated [`Config`] and runs it until a
//! shutdown signal: API server, metrics server, order writer, and the
//! lifecycle jobs (expiry consumer, sweep) wherever the writer runs.
//!
//! A `serve` process also owns a buy journal and an order spool on local
//! disk (`durability.*`), opened before anything binds; one left non-empty
//! by an earlier run is drained first (published / replayed once before the
//! API accepts buys, then by the background drainer and replayer).
//!
//! Shutdown order: stop accepting and finish in-flight requests (every buy
//! ends confirmed, spooled, journaled or released; event streams end at
//! once), then stop the spool
//! drainer, the journal replayer (what they hold stays on disk), the writer,
//! which commits and acks the batch in hand, and the lifecycle jobs; all
//! within the configured grace period.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, routing::get};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{self, Clock, SystemClock},
    config::Config,
    durable::Durable,
    lifecycle::{self, Lifecycle},
    pages::PageRenderer,
    payment::{self, PaymentProvider},
    queue::{OrderWriter, Publisher, WriterHooks, topology::Topology},
    routes::{self, AppState},
    store::{SaleStore, db},
    telemetry,
};

/// Things tests (and only tests) replace.
#[derive(Clone)]
pub struct BuildOptions {
    pub clock: Arc<dyn Clock>,
    pub writer_hooks: WriterHooks,
    /// Replaces the configured payment provider.
    pub provider: Option<Arc<dyn PaymentProvider>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            writer_hooks: WriterHooks::default(),
            provider: None,
        }
    }
}

/// The background jobs of a node that writes orders.
#[derive(Clone)]
pub struct Workers {
    pub writer: OrderWriter,
    pub lifecycle: Option<Arc<Lifecycle>>,
}

impl Workers {
    pub fn new(config: &Config, lc: Arc<Lifecycle>, hooks: WriterHooks) -> Self {
        Self {
            writer: OrderWriter::new(lc.clone(), hooks),
            lifecycle: config.lifecycle.enabled.then_some(lc),
        }
    }

    /// Spawns the writer, the expiry consumer and the sweep; they stop when
    /// `stop` is cancelled.
    pub fn spawn(self, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(self.writer.clone().run(stop.clone()))];
        if let Some(lc) = self.lifecycle {
            let topology = self.writer.topology.clone();
            tasks.push(tokio::spawn(lifecycle::expiry::run(
                lc.clone(),
                topology,
                stop.clone(),
            )));
            tasks.push(tokio::spawn(lifecycle::sweep::run(
                lc,
                self.writer.publisher.clone(),
                stop.clone(),
            )));
        }
        tasks
    }
}

/// A built, bound, not yet running backend.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    workers: Option<Workers>,
}

impl Application {
    /// Connects to Redis and the database (running migrations), prepares the
    /// publisher, and binds the listeners.
    pub async fn build(config: Config, mut opts: BuildOptions) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        opts.clock = clock::with_offset(opts.clock, config.clock.offset_ms);
        let durable = Durable::open(&config.durability)
            .await
            .context("opening the buy journal and the order spool")?;
        let (sale, db) = connect_stores(&config).await?;
        let provider = opts
            .provider
            .clone()
            .unwrap_or_else(|| payment::from_config(&config.payment));
        let lc = Lifecycle::new(
            config.clone(),
            sale.clone(),
            db.clone(),
            opts.clock.clone(),
            provider,
        );
        let publisher = Arc::new(Publisher::new(
            config.rabbitmq.clone(),
            Topology::from_config(&config),
        ));
        if let Err(e) = publisher.warm_up().await {
            tracing::warn!(error = %e, "rabbitmq not reachable yet; order messages are spooled until it is");
        }
        let pages = Arc::new(
            PageRenderer::new(config.pages.dir.clone())
                .with_tickets(config.tickets.enabled.then_some(config.tickets.lead_ms)),
        );
        pages
            .write_assets()
            .await
            .with_context(|| format!("writing assets into {}", config.pages.dir.display()))?;
        let state = AppState {
            tokens: Arc::new(config.auth.keys()),
            sale: sale.clone(),
            db: db.clone(),
            publisher,
            clock: opts.clock.clone(),
            rounds_cache: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(Duration::from_millis(config.sale.rounds_cache_ms.max(1)))
                .build(),
            pages,
            config: config.clone(),
            lifecycle: lc.clone(),
            durable,
            stopping: CancellationToken::new(),
            tickets: config.tickets.enabled.then(|| {
                Arc::new(seckill_proto::ticket::TicketKeys::new(
                    config.tickets.secret.as_bytes(),
                ))
            }),
            pow: config.tickets.enabled.then(|| {
                Arc::new(seckill_proto::pow::PowKeys::new(
                    config.tickets.secret.as_bytes(),
                ))
            }),
        };
        let workers = config
            .writer
            .enabled
            .then(|| Workers::new(&config, lc, opts.writer_hooks.clone()));
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| format!("binding {}", config.http.listen))?;
        let metrics_listener = match config.http.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding metrics {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            state,
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let grace = self.state.config.shutdown_grace();
        let writer_stop = CancellationToken::new();
        let direct = self.workers.as_ref().map(|w| w.writer.clone());
        drain_first(&self.state).await;
        let mut worker_tasks = self
            .workers
            .map(|w| w.spawn(&writer_stop))
            .unwrap_or_default();
        let st = &self.state;
        worker_tasks.push(tokio::spawn(lifecycle::spool_drain::run(
            st.durable.spool.clone(),
            st.publisher.clone(),
            direct,
            Duration::from_millis(st.config.durability.direct_after_ms),
            writer_stop.clone(),
        )));
        worker_tasks.push(tokio::spawn(lifecycle::replay::run(
            st.lifecycle.clone(),
            st.publisher.clone(),
            st.durable.clone(),
            writer_stop.clone(),
        )));

        let metrics_task = self.metrics_listener.map(|l| {
            let handle = telemetry::metrics_handle();
            let lc = self.state.lifecycle.clone();
            let app = Router::new().route(
                "/metrics",
                get(move || async move {
                    lifecycle::stock_gauges::refresh(&lc).await;
                    handle.render()
                }),
            );
            let stop = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            })
        });
        telemetry::metrics_handle();

        let app = routes::router(self.state.clone());
        let stopping = self.state.stopping.clone();
        let server = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            // Event streams end now, so their connections do not hold up
            // the drain.
            stopping.cancel();
        });
        let served = server.await;
        tracing::info!("api server stopped accepting; in-flight requests finished");

        writer_stop.cancel();
        if tokio::time::timeout(grace, futures::future::join_all(worker_tasks))
            .await
            .is_err()
        {
            tracing::warn!(?grace, "order writer did not stop within the grace period");
        }
        if let Some(t) = metrics_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
        served.context("api server")
    }
}

/// Drains what an earlier run left in the spool and the journal before the
/// API takes buys, as far as the broker and Redis allow right now (bounded
/// by the confirm timeout); the background jobs do the rest.
async fn drain_first(st: &AppState) {
    let spool = &st.durable.spool;
    let journal = &st.durable.journal;
    if !spool.is_empty() {
        tracing::info!(
            depth = spool.len(),
            "draining the order spool left by an earlier run"
        );
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(st.config.rabbitmq.confirm_timeout_ms);
        while !spool.is_empty() && tokio::time::Instant::now() < deadline {
            if lifecycle::spool_drain::publish_oldest(spool, &st.publisher, 64)
                .await
                .is_err()
            {
                break;
            }
        }
    }
    if !journal.is_empty() {
        tracing::info!(
            depth = journal.len(),
            "replaying the buy journal left by an earlier run"
        );
        if st.sale.ping().await.is_ok() {
            let p = lifecycle::replay::pass(&st.lifecycle, &st.publisher, &st.durable).await;
            tracing::info!(
                decided = p.decided,
                waiting = p.waiting,
                "journal replayed before serving"
            );
        }
    }
}

/// Runs only the order writer and the lifecycle jobs until `shutdown` (the
/// `worker` mode).
pub async fn run_worker(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let lc = lifecycle_from(config).await?;
    let workers = Workers::new(&lc.config.clone(), lc, WriterHooks::default());
    futures::future::join_all(workers.spawn(&shutdown)).await;
    Ok(())
}

/// Connects the stores and builds the lifecycle with the configured
/// provider and the system clock (for the CLI's one-shot commands).
pub async fn lifecycle_from(config: Config) -> anyhow::Result<Arc<Lifecycle>> {
    let (sale, db) = connect_stores(&config).await?;
    let provider = payment::from_config(&config.payment);
    let clock = clock::with_offset(Arc::new(SystemClock), config.clock.offset_ms);
    Ok(Lifecycle::new(Arc::new(config), sale, db, clock, provider))
}

/// Connects to Redis (loading the scripts) and to the database (running
/// migrations).
pub async fn connect_stores(config: &Config) -> anyhow::Result<(SaleStore, DatabaseConnection)> {
    let sale = SaleStore::connect(
        &config.redis.url,
        &config.redis.key_prefix,
        Duration::from_millis(config.redis.timeout_ms),
    )
    .await
    .context("connecting to redis")?;
    let db = db::connect_and_migrate(&config.database.url, config.database.max_connections)
        .await
        .context("connecting to the database")?;
    Ok((sale, db))
}

/// Cancels the returned token on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => tracing::info!("ctrl-c: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        t.cancel();
    });
    token
}
