//! The project's resty.limit.* modules, run through the crate with ngx.now
//! held still within a request (as nginx does).

mod common;

use std::time::Duration;

use common::{node, say};

const DICTS: &[(&str, usize)] = &[("store", 1 << 20), ("conn", 1 << 20)];

#[tokio::test]
async fn req_delays_and_excess_per_key() {
    let n = node(
        r#"
        local limit_req = require "resty.limit.req"
        local lim = assert(limit_req.new("store", 2, 10))
        for _, key in ipairs({"foo", "foo", "bar", "bar"}) do
            local delay, excess = lim:incoming(key, true)
            ngx.say(key, " ", delay, " ", excess)
        end
        "#,
        DICTS,
    );
    assert_eq!(say(&n.vm).await, "foo 0 0\nfoo 0.5 1\nbar 0 0\nbar 0.5 1\n");
}

#[tokio::test]
async fn req_first_rejection_follows_burst() {
    let n = node(
        r#"
        local limit_req = require "resty.limit.req"
        for _, burst in ipairs({0, 1, 2}) do
            ngx.shared.store:flush_all()
            local lim = assert(limit_req.new("store", 2, burst))
            for i = 1, 10 do
                local delay, err = lim:incoming("k", true)
                if not delay then
                    ngx.say("burst ", burst, ": call ", i, " ", tostring(delay), " ", err)
                    break
                end
            end
        end
        "#,
        DICTS,
    );
    assert_eq!(
        say(&n.vm).await,
        "burst 0: call 2 nil rejected\nburst 1: call 3 nil rejected\nburst 2: call 4 nil rejected\n"
    );
}

#[tokio::test]
async fn req_bucket_drains_with_time_and_dry_runs_do_not_count() {
    let n = node(
        r#"
        local limit_req = require "resty.limit.req"
        local lim = assert(limit_req.new("store", 2, 1))
        local d, e = lim:incoming("k", false)
        ngx.say("dry ", d, " ", e)
        d, e = lim:incoming("k", true)
        ngx.say("first ", d, " ", e)
        d, e = lim:incoming("k", true)
        ngx.say("second ", d, " ", e)
        d, e = lim:incoming("k", true)
        ngx.say("third ", tostring(d), " ", e)
        ngx.say("uncommit ", tostring(lim:uncommit("k")))
        d, e = lim:incoming("k", true)
        ngx.say("again ", d, " ", e)
        "#,
        DICTS,
    );
    assert_eq!(
        say(&n.vm).await,
        "dry 0 0\nfirst 0 0\nsecond 0.5 1\nthird nil rejected\nuncommit true\nagain 0.5 1\n"
    );
    // Half a second later the bucket has drained one request.
    n.clock.advance(Duration::from_millis(500));
    let n2_out = say(&n.vm).await;
    assert!(n2_out.contains("first 0.5 1\n"), "{n2_out}");
}

#[tokio::test]
async fn count_window_remaining_then_rejected() {
    let n = node(
        r#"
        local limit_count = require "resty.limit.count"
        local lim = assert(limit_count.new("store", 10, 100))
        for i = 1, 12 do
            local delay, remaining = lim:incoming("user:1", true)
            ngx.say(tostring(delay), " ", remaining)
        end
        "#,
        DICTS,
    );
    let mut expected = String::new();
    for r in (0..10).rev() {
        expected.push_str(&format!("0 {r}\n"));
    }
    expected.push_str("nil rejected\nnil rejected\n");
    assert_eq!(say(&n.vm).await, expected);
}

#[tokio::test]
async fn count_window_restarts_after_it_expires() {
    let n = node(
        r#"
        local limit_count = require "resty.limit.count"
        local lim = assert(limit_count.new("store", 2, 10))
        local out = {}
        for i = 1, 3 do
            local delay, remaining = lim:incoming("k", true)
            out[#out + 1] = tostring(delay) .. "/" .. tostring(remaining)
        end
        ngx.say(table.concat(out, " "))
        "#,
        DICTS,
    );
    assert_eq!(say(&n.vm).await, "0/1 0/0 nil/rejected\n");
    n.clock.advance(Duration::from_secs(9));
    assert_eq!(say(&n.vm).await, "nil/rejected nil/rejected nil/rejected\n");
    n.clock.advance(Duration::from_secs(1));
    assert_eq!(say(&n.vm).await, "0/1 0/0 nil/rejected\n");
}

#[tokio::test]
async fn conn_delays_grow_per_group_then_reject() {
    let n = node(
        r#"
        local limit_conn = require "resty.limit.conn"
        local lim = assert(limit_conn.new("conn", 2, 8, 1))
        for i = 1, 12 do
            local delay, err = lim:incoming("c", true)
            ngx.say(tostring(delay), " ", err, " ", tostring(lim:is_committed()))
        end
        "#,
        DICTS,
    );
    let out = say(&n.vm).await;
    let delays: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        delays,
        [
            "0", "0", "1", "1", "2", "2", "3", "3", "4", "4", "nil", "nil"
        ]
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[2], "1 3 true");
    assert_eq!(lines[10], "nil rejected false");
    // A rejected request is not counted.
    let count = n
        .engine
        .dicts()
        .get("conn")
        .expect("dict")
        .get(b"c", false)
        .expect("get")
        .expect("present");
    assert_eq!(count.value, nginx_compat::DictValue::Number(10.0));
}

#[tokio::test]
async fn conn_leaving_in_log_phase_releases_the_slot() {
    let scripts = nginx_compat::Scripts {
        log: Some(
            r#"
            local ctx = ngx.ctx
            if ctx.lim then
                local latency = tonumber(ngx.var.request_time)
                local conn = assert(ctx.lim:leaving(ctx.key, latency))
                ngx.shared.store:set("left", conn)
                ngx.shared.store:set("status", ngx.status)
                ngx.shared.store:set("latency", latency)
            end
            "#
            .into(),
        ),
        ..nginx_compat::Scripts::access(
            r#"
            local limit_conn = require "resty.limit.conn"
            local lim = assert(limit_conn.new("conn", 1, 0, 0.5))
            local delay, err = lim:incoming("c", true)
            if not delay then
                return ngx.exit(503)
            end
            if lim:is_committed() then
                ngx.ctx.lim = lim
                ngx.ctx.key = "c"
            end
            "#,
        )
    };
    let n = common::node_with(scripts, DICTS);
    let first =
        n.vm.run_access(nginx_compat::Request::new("GET", "/"))
            .await;
    assert!(matches!(
        first.outcome,
        nginx_compat::AccessOutcome::Continue { .. }
    ));
    let second =
        n.vm.run_access(nginx_compat::Request::new("GET", "/"))
            .await;
    assert!(matches!(
        second.outcome,
        nginx_compat::AccessOutcome::Respond { status: 503, .. }
    ));
    n.vm.run_log(second.ctx, 503, 0.001).await.expect("log");
    n.vm.run_log(first.ctx, 200, 0.25).await.expect("log");
    let store = n.engine.dicts().get("store").expect("dict");
    let get = |k: &[u8]| store.get(k, false).expect("get").expect("present").value;
    assert_eq!(get(b"left"), nginx_compat::DictValue::Number(0.0));
    assert_eq!(get(b"status"), nginx_compat::DictValue::Number(200.0));
    assert_eq!(get(b"latency"), nginx_compat::DictValue::Number(0.25));
    // The slot is free again.
    let third =
        n.vm.run_access(nginx_compat::Request::new("GET", "/"))
            .await;
    assert!(matches!(
        third.outcome,
        nginx_compat::AccessOutcome::Continue { .. }
    ));
}

#[tokio::test]
async fn traffic_combine_takes_max_delay_and_undoes_on_rejection() {
    let n = node(
        r#"
        local limit_req = require "resty.limit.req"
        local limit_conn = require "resty.limit.conn"
        local limit_traffic = require "resty.limit.traffic"
        local lim1 = assert(limit_req.new("store", 3, 2))
        local lim2 = assert(limit_req.new("store", 2, 3))
        local lim3 = assert(limit_conn.new("conn", 4, 1, 2))
        local limiters = {lim1, lim2, lim3}
        local keys = {"a", "b", "c"}
        for i = 1, 6 do
            local states = {}
            local delay, err = limit_traffic.combine(limiters, keys, states)
            if not delay then
                ngx.say(i, ": ", err)
            else
                ngx.say(i, ": ", string.format("%.3f", delay), " ", table.concat(states, ","))
            end
        end
        ngx.say("conn ", ngx.shared.conn:get("c"))
        "#,
        DICTS,
    );
    let out = say(&n.vm).await;
    // lim1 (rate 3, burst 2): excess 0,1,2 then rejected. lim2 (rate 2):
    // delays 0, 0.5, 1. lim3 counts 1..3. Calls 4-6 are rejected by lim1
    // and leave no trace in lim2/lim3.
    assert_eq!(
        out,
        "1: 0.000 0,0,1\n2: 0.500 1,1,2\n3: 1.000 2,2,3\n4: rejected\n5: rejected\n6: rejected\nconn 3\n"
    );
}
