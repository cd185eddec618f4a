//! Helpers shared by the integration tests: a node with a manual clock, and
//! running one access chunk to get what it printed.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use nginx_compat::{
    Access, AccessOutcome, Engine, LuaVm, ManualClock, Request, Scripts, SharedDicts,
};

/// A fixed, round start time: 2026-01-01T00:00:00Z.
pub const T0: Duration = Duration::from_secs(1_767_225_600);

pub struct Node {
    pub clock: Arc<ManualClock>,
    pub engine: Engine,
    pub vm: LuaVm,
}

/// A node whose access chunk is `access`, with the given dicts.
pub fn node(access: &str, dicts: &[(&str, usize)]) -> Node {
    node_with(Scripts::access(access), dicts)
}

pub fn node_with(scripts: Scripts, dicts: &[(&str, usize)]) -> Node {
    let clock = ManualClock::new(T0);
    let shared =
        SharedDicts::new(dicts.iter().map(|(n, c)| (*n, *c)), clock.clone()).expect("dicts");
    let engine = Engine::new(scripts, shared, clock.clone()).expect("engine");
    let vm = engine.new_vm().expect("vm");
    Node { clock, engine, vm }
}

/// Runs the access chunk for a plain GET and returns the whole result.
pub async fn access(vm: &LuaVm, req: Request) -> Access {
    let a = vm.run_access(req).await;
    if let Some(e) = &a.error {
        panic!("lua error: {e}");
    }
    a
}

/// The body the chunk printed (it must have answered).
pub fn body(a: &Access) -> String {
    match &a.outcome {
        AccessOutcome::Respond { body, .. } => String::from_utf8_lossy(body).into_owned(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// Runs a chunk on a GET / and returns what it printed.
pub async fn say(vm: &LuaVm) -> String {
    body(&access(vm, Request::new("GET", "/")).await)
}
