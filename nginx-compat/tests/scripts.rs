//! Whole OpenResty-style access scripts (from `tests/lua/`) run unchanged.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::node;
use nginx_compat::{AccessOutcome, Request};

fn from(ip: [u8; 4]) -> Request {
    Request::new("GET", "/sale/1").remote(IpAddr::V4(Ipv4Addr::from(ip)))
}

#[tokio::test(start_paused = true)]
async fn limit_req_script_delays_the_burst_and_rejects_beyond_it() {
    let n = node(
        include_str!("lua/limit_req_access.lua"),
        &[("my_limit_req_store", 1 << 20)],
    );
    let started = tokio::time::Instant::now();
    let mut statuses = Vec::new();
    let mut excess_of_last = None;
    for _ in 0..102 {
        let a = n.vm.run_access(from([10, 0, 0, 1])).await;
        assert!(a.error.is_none(), "{:?}", a.error);
        match a.outcome {
            AccessOutcome::Continue {
                response_headers, ..
            } => {
                statuses.push(0);
                excess_of_last = response_headers.first().map(|(_, v)| v.clone());
            }
            AccessOutcome::Respond { status, .. } => statuses.push(status),
        }
    }
    // ngx.now stands still (manual clock): 1 free, 100 delayed, then 503.
    assert!(statuses[..101].iter().all(|&s| s == 0));
    assert_eq!(statuses[101], 503);
    assert_eq!(excess_of_last.as_deref(), Some("100"));
    // The 100 delayed requests slept 1/200 s .. 100/200 s on tokio's timer.
    let slept = started.elapsed();
    assert!(slept >= Duration::from_secs_f64(25.25), "{slept:?}");

    // Another client is not affected.
    let other = n.vm.run_access(from([10, 0, 0, 2])).await;
    assert!(matches!(other.outcome, AccessOutcome::Continue { .. }));

    // Half a second later 100 requests have drained.
    n.clock.advance(Duration::from_millis(500));
    let again = n.vm.run_access(from([10, 0, 0, 1])).await;
    assert!(matches!(again.outcome, AccessOutcome::Continue { .. }));
}
