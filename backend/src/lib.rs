//! Seckill backend: the admin API that opens a sale, the buy path that
//! reserves stock atomically in Redis and queues a confirmed order message,
//! the order writer that turns messages into orders, status polling, and
//! the order lifecycle (payment, expiry, dead letters, reconciliation).
//!
//! Layout:
//! - [`config`] — typed, layered, validated configuration
//! - [`auth`] — HS256 bearer tokens shared with the edge
//! - [`domain`] — pure types: rounds and approval, attempts, buy requests
//! - [`durable`] — the buy journal and the order spool on local disk
//! - [`store`] — Redis sale state (scripts in `lua/redis/`) and the database
//! - [`queue`] — RabbitMQ topology, confirmed publisher, order writer
//! - [`lifecycle`] — payment, expiry, the sweep, dead letters, reconciling
//!   Redis with the database
//! - [`payment`] — the payment-provider trait and a simulated provider
//! - [`routes`] — thin HTTP handlers, the JSON error type, the route table
//!   and its OpenAPI document (`GET /api/openapi.json`)
//! - [`pages`] — static sale pages rendered at approval
//! - [`startup`] — wiring, serving, graceful shutdown
//! - [`cli`], [`telemetry`], [`clock`]

pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod durable;
pub mod lifecycle;
pub mod pages;
pub mod payment;
pub mod queue;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;

/// Bearer tokens, shared with the edge.
pub use seckill_proto::auth;
