//! Seckill edge: a Pingora proxy in front of the backends that serves the
//! sale pages and the clock itself, runs the operator's Lua access policy,
//! and forwards only as many buy requests per item as there is stock.
//!
//! Layout (modules are named after what they own in a request's life):
//! - [`config`]: the typed config (TOML + `SECKILL_EDGE__*`), validated
//!   before anything binds.
//! - [`proxy`]: the one `ProxyHttp`; its phases delegate to the modules
//!   below and hold no policy of their own.
//! - [`static_files`]: pages and assets from memory (ETag, gzip/br, no
//!   escape from the pages directory).
//! - [`clock`]: `GET /api/time`.
//! - [`identity`]: client address (trusted proxies) and bearer tokens.
//! - [`tickets`]: the purchase-ticket check of buys (`[tickets]`), before
//!   the Lua access phase.
//! - [`access`]: the Lua access and log phases on nginx-compat, one VM per
//!   worker thread, hot reload after a trial run.
//! - [`rate`]: node-wide token buckets the access script calls.
//! - [`permits`]: per-item buy permits leased from Redis in batches.
//! - [`admission`]: the admission window, in which buys ask for permits
//!   in random order rather than arrival order.
//! - [`upstream`]: backend pool, health checks, selection.
//! - [`metrics`]: Prometheus metrics on their own port.
//! - [`server`]: wires it all into a Pingora server and runs it.

pub mod access;
pub mod admission;
pub mod clock;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod permits;
pub mod proxy;
pub mod rate;
pub mod server;
pub mod static_files;
pub mod tickets;
pub mod upstream;
