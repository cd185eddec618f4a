//! Per-request cost of a typical access script run through the crate: a
//! node token bucket (resty.limit.req), a per-user window
//! (resty.limit.count) and a shared-dict read (a sold-out flag).
//!
//! Besides criterion's timings it prints allocations per request, counted
//! by a global allocator that wraps the system one (Lua's own allocations go
//! through it too, so they are included).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use nginx_compat::{AccessOutcome, Engine, LuaVm, Request, Scripts, SharedDicts, SystemClock};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TYPICAL: &str = r#"
local limit_req = require "resty.limit.req"
local limit_count = require "resty.limit.count"

-- node token bucket, set high enough that the benchmark is never limited
local bucket = limit_req.new("limit_req", 10000000, 5000000)
local delay, err = bucket:incoming("node", true)
if not delay then
    if err == "rejected" then
        return ngx.exit(429)
    end
    return ngx.exit(500)
end

-- per-user fixed window (again never reached by the benchmark)
local per_user = limit_count.new("limit_count", 1000000000, 60)
local user = ngx.var.user_id
local ok, remaining = per_user:incoming(user, true)
if not ok then
    return ngx.exit(429)
end

-- sold-out flag for the item
if ngx.shared.flags:get("sold_out:" .. ngx.var.arg_item) then
    ngx.status = 410
    ngx.say('{"error":"sold_out"}')
    return ngx.exit(410)
end
"#;

fn setup(access: &str) -> LuaVm {
    let clock = Arc::new(SystemClock);
    let dicts = SharedDicts::new(
        [
            ("limit_req", 16 << 20),
            ("limit_count", 16 << 20),
            ("flags", 1 << 20),
        ],
        clock.clone(),
    )
    .expect("dicts");
    let engine = Engine::new(Scripts::access(access), dicts, clock).expect("engine");
    engine.new_vm().expect("vm")
}

fn request(i: u64) -> Request {
    Request::new("POST", "/api/rounds/1/items/7/buy?item=7")
        .header("Authorization", "Bearer x")
        .var("user_id", &format!("u{}", i % 1000))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (name, script) in [("access_typical", TYPICAL), ("access_empty", "")] {
        let vm = setup(script);
        let mut i = 0u64;
        c.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let a = rt.block_on(vm.run_access(request(i)));
                assert!(matches!(a.outcome, AccessOutcome::Continue { .. }));
                a
            })
        });
    }
}

/// CPU time consumed by this thread, in nanoseconds: unlike wall time it
/// does not grow when other processes compete for the cores.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Allocations and mean time per request over a fixed run, outside
/// criterion so the counts are not mixed with its own bookkeeping.
fn report() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (name, script) in [("access_typical", TYPICAL), ("access_empty", "")] {
        let vm = setup(script);
        for i in 0..10_000 {
            rt.block_on(vm.run_access(request(i)));
        }
        let n = 100_000u64;
        let requests: Vec<Request> = (0..n).map(request).collect();
        let before = ALLOCS.load(Ordering::Relaxed);
        let cpu_start = thread_cpu_ns();
        let start = Instant::now();
        for req in requests {
            let a = rt.block_on(vm.run_access(req));
            std::hint::black_box(a);
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu_ns() - cpu_start;
        let allocs = ALLOCS.load(Ordering::Relaxed) - before;
        println!(
            "{name}: {:.0} ns/request wall, {:.0} ns/request CPU, {:.1} allocations/request (request built outside the loop)",
            elapsed.as_nanos() as f64 / n as f64,
            cpu as f64 / n as f64,
            allocs as f64 / n as f64
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
