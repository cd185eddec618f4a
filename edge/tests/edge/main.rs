//! Integration tests: the real `seckill-edge` binary on free ports, in
//! front of an in-process backend (real Redis, RabbitMQ, SQLite).

mod admission;
#[path = "../../../backend/tests/common/browser.rs"]
mod browser;
mod helpers;
mod lease;
mod limits;
mod lua_phases;
mod permits;
mod sale;
mod sale_page;
mod static_pages;
mod tickets;
mod upstream;
