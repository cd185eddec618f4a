//! Builds the node from a validated [`Config`] and runs it: the proxy
//! service and one background service (health checks, Lua reload, lease
//! renewal, metrics listener); once Pingora has stopped, the node's unused
//! permits are handed back to Redis.
//!
//! Pingora owns signals: SIGTERM drains gracefully (stop accepting after
//! `grace_period_secs`, in-flight requests get `shutdown_timeout_secs`),
//! SIGINT stops fast.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_trait::async_trait;
use pingora::{
    server::{ShutdownWatch, configuration::ServerConf},
    services::background::{BackgroundService, background_service},
};

use crate::{
    access::LuaAccess,
    config::Config,
    identity::Identity,
    metrics::{self, Metrics},
    permits::{LeaseClient, Permits},
    proxy::Edge,
    static_files::StaticFiles,
    tickets::TicketGate,
    upstream::Upstreams,
};

/// The long-running tasks beside the proxy.
struct Background {
    upstreams: Upstreams,
    access: Arc<LuaAccess>,
    permits: Option<Permits>,
    renew_every: Duration,
    metrics: Metrics,
    metrics_listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.upstreams.clone().health_loop(shutdown.clone()));
        tasks.spawn(self.access.clone().watch(shutdown.clone()));
        if let Some(l) = self.metrics_listener.lock().expect("listener").take() {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tasks.spawn(self.metrics.clone().serve(l, shutdown.clone()));
                }
                Err(e) => tracing::error!(error = %e, "metrics listener unusable"),
            }
        }
        if let Some(p) = self.permits.clone() {
            // Connect before the first buyer needs it.
            p.connect();
            let every = self.renew_every;
            let mut stop = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(every) => p.renew().await,
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "background task failed");
            }
        }
    }
}

fn node_id(cfg: &Config) -> String {
    if !cfg.permits.node_id.is_empty() {
        return cfg.permits.node_id.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// Builds everything and serves until a signal; returns when drained.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let metrics_listener = cfg
        .http
        .metrics_listen
        .map(metrics::bind)
        .transpose()
        .context("binding the metrics listener")?;
    let permits = if cfg.permits.enabled {
        let node = node_id(&cfg);
        let client = LeaseClient::new(&cfg.permits.redis_url, &cfg.permits.key_prefix, &node)
            .context("permits.redis_url")?;
        tracing::info!(node = %node, batch = cfg.permits.batch, "permits leased from Redis");
        Some(Permits::new(
            client,
            cfg.permits.settings(),
            metrics.clone(),
        ))
    } else {
        None
    };
    let access = Arc::new(
        LuaAccess::new(&cfg.lua, permits.clone(), metrics.clone())
            .context("loading the Lua files")?,
    );
    let upstreams = Upstreams::new(&cfg.upstream);
    let release = permits.clone();
    let edge = Edge {
        static_files: StaticFiles::new(
            &cfg.pages.dir,
            Duration::from_millis(cfg.pages.cache_ttl_ms),
            cfg.pages.max_file_bytes,
            cfg.pages.asset_max_age_secs,
        ),
        identity: Identity::new(
            cfg.trusted_proxies(),
            cfg.auth.secret.as_bytes(),
            cfg.auth.leeway_secs,
        ),
        access: access.clone(),
        permits: permits.clone(),
        upstreams: upstreams.clone(),
        metrics: metrics.clone(),
        expose_admin: cfg.upstream.expose_admin,
        connect_retries: cfg.upstream.connect_retries,
        connect_timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
        read_timeout: Duration::from_millis(cfg.upstream.read_timeout_ms),
        max_body_bytes: cfg.lua.max_body_bytes,
        access_log: cfg.http.access_log,
        tickets: cfg
            .tickets
            .enabled
            .then(|| TicketGate::new(cfg.tickets.secret.as_bytes())),
    };

    let conf = ServerConf {
        threads: cfg.http.threads,
        pid_file: cfg.http.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: cfg.http.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(cfg.http.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(cfg.http.shutdown_timeout_secs),
        work_stealing: cfg.http.work_stealing,
        ..ServerConf::default()
    };
    let mut server = pingora::server::Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, edge);
    proxy.add_tcp(&cfg.http.listen.to_string());
    server.add_service(proxy);
    server.add_service(background_service(
        "edge background",
        Background {
            upstreams,
            access,
            permits,
            renew_every: Duration::from_millis(cfg.permits.lease_ttl_ms / 3),
            metrics,
            metrics_listener: std::sync::Mutex::new(metrics_listener),
        },
    ));
    tracing::info!(listen = %cfg.http.listen, metrics = ?cfg.http.metrics_listen, "edge serving");
    server.run(pingora::server::RunArgs::default());

    // Pingora has stopped its runtimes (background tasks are cancelled, not
    // awaited): hand the unused permits back from a runtime of our own.
    if let Some(p) = release {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("runtime for the final permit release")?;
        let released = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), p.release_all()).await
        });
        match released {
            Ok(()) => tracing::info!("permits handed back"),
            Err(_) => tracing::warn!(
                "permits not handed back in time; they return when the leases expire"
            ),
        }
    }
    tracing::info!("edge stopped");
    Ok(())
}
