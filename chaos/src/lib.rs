//! Seckill's fault campaign: runs whole sales on servers of its own (Redis,
//! RabbitMQ, PostgreSQL, two backends, a worker, two edges, all on free
//! loopback ports with data under one run directory), injects one fault
//! per sale, lets the sale and its payment timeout run out, and judges what
//! the stores hold against what every buyer was told.
//!
//! Layout:
//! - [`cli`] — the command line
//! - [`procs`] — child processes in their own process groups, killed on drop
//! - [`services`] — Redis, RabbitMQ and PostgreSQL instances of the run's own
//! - [`proxy`] — a TCP proxy that passes, blackholes or resets (backends ↔ Redis)
//! - [`stack`] — the two backends, the worker and the two edges of one scenario
//! - [`crowd`] — the load generator's buyers, split over the edges
//! - [`scenario`] — the list of scenarios and how each injects its fault
//! - [`measure`] — one row of the table from the stores and the crowd's ledger
//! - [`report`] — the table as text and JSON
//! - [`campaign`] — runs the chosen scenarios one after another
//! - [`telemetry`] — tracing set-up
//!
//! It never touches the machine's shared services (Redis 6379, RabbitMQ
//! 5672, PostgreSQL 5432): every server it talks to is one it started.

pub mod campaign;
pub mod cli;
pub mod crowd;
pub mod measure;
pub mod procs;
pub mod proxy;
pub mod report;
pub mod scenario;
pub mod services;
pub mod stack;
pub mod telemetry;
