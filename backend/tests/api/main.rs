//! Integration tests of the backend against real Redis, RabbitMQ, SQLite and
//! PostgreSQL. Each test gets its own Redis key prefix, queue names, pages
//! directory and database, so tests run in parallel.

mod admin;
mod bad_input;
mod broker;
#[path = "../common/browser.rs"]
mod browser;
mod buy;
mod challenge;
#[path = "../common/mod.rs"]
mod common;
mod console;
mod degraded;
mod faults;
mod helpers;
mod lifecycle;
mod openapi;
mod repairs;
mod resilience;
mod tickets;
mod writer;
