//! The default Lua policy's limits: node token bucket, per-user limit,
//! spoofed X-Forwarded-For, hot reload of the limits file.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use seckill_proto::auth::{Role, TokenKeys};

use crate::helpers::*;

fn setup(limits_src: String) -> (EdgeOptions, TokenKeys, String) {
    let secret = format!("edge-limit-secret-{}", unique());
    let prefix = format!("tl{}", unique());
    let mut opts = EdgeOptions::new(&secret, &prefix);
    opts.limits = limits_src;
    (opts, TokenKeys::new(secret.as_bytes(), 0), prefix)
}

/// Fires `tokens` at once; returns how many passed the limits (the item is
/// unknown, so a request that passes is answered 404 by the permit step).
async fn fire(edge: &Arc<Edge>, tokens: Vec<Option<String>>, xff: bool) -> (usize, usize) {
    let results: Vec<u16> = stream::iter(tokens.into_iter().enumerate())
        .map(|(i, t)| {
            let edge = edge.clone();
            async move {
                let mut req = edge
                    .client
                    .post(edge.url("/api/rounds/999999/items/1/buy"))
                    .json(&serde_json::json!({"qty": 1}));
                if let Some(t) = t {
                    req = req.bearer_auth(t);
                }
                if xff {
                    req = req.header("x-forwarded-for", format!("198.51.100.{}", i % 250));
                }
                req.send().await.unwrap().status().as_u16()
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let passed = results.iter().filter(|s| **s == 404).count();
    let limited = results.iter().filter(|s| **s == 429).count();
    assert_eq!(passed + limited, results.len(), "{results:?}");
    (passed, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_admits_burst_then_rate() {
    let (opts, keys, prefix) = setup(limits(20.0, 10.0, 1000, 1.0, true));
    let edge = Arc::new(Edge::start(&opts).await);
    let tokens = |n: usize, tag: &str| -> Vec<Option<String>> {
        (0..n)
            .map(|u| Some(keys.mint(&format!("{tag}-{u}"), Role::Buyer, 3600)))
            .collect()
    };

    // b (± 1), plus what the rate refills while the requests are in flight
    // (the machine is shared; firing 100 requests takes some milliseconds).
    let burst = tokens(100, "burst");
    let start = tokio::time::Instant::now();
    let (passed, _) = fire(&edge, burst, false).await;
    let refill = (20.0 * start.elapsed().as_secs_f64()).floor() as usize;
    assert!(
        (9..=11 + refill).contains(&passed),
        "burst admitted {passed} (refill {refill})"
    );

    // Let the bucket drain, then a steady 50 req/s for 3 s: 20·3 + 10.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let all = tokens(150, "steady");
    let start = tokio::time::Instant::now();
    let mut passed = 0;
    for (i, t) in all.into_iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_millis(20 * i as u64)).await;
        let (s, _) = edge.buy(999_999, 1, t.as_deref()).await;
        if s == 404 {
            passed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let expected = 20.0 * secs + 10.0;
    assert!(
        (passed as f64 - expected).abs() <= 8.0,
        "steady admitted {passed}, expected about {expected:.0} over {secs:.2}s"
    );
    // Stop the edge first: it may still renew leases under the prefix.
    drop(edge);
    cleanup_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_holds_across_connections_and_spoofed_addresses() {
    let (opts, keys, prefix) = setup(limits(100_000.0, 100_000.0, 5, 30.0, false));
    let edge = Arc::new(Edge::start(&opts).await);

    // One buyer over many connections.
    let t = keys.mint("one-buyer", Role::Buyer, 3600);
    let many: Vec<Option<String>> = (0..40).map(|_| Some(t.clone())).collect();
    let (passed, limited) = fire(&edge, many, false).await;
    assert_eq!((passed, limited), (5, 35));

    // Anonymous, from one untrusted peer with 100 different X-Forwarded-For.
    let anon: Vec<Option<String>> = (0..100).map(|_| None).collect();
    let (passed, limited) = fire(&edge, anon, true).await;
    assert_eq!(
        (passed, limited),
        (5, 95),
        "spoofed X-Forwarded-For bought fresh limits"
    );

    // Behind a trusted proxy the forwarded address is the client: 100
    // addresses, 100 separate limits.
    let mut trusting = opts.clone();
    trusting.trusted_proxies = vec!["127.0.0.1/32".into()];
    trusting.node_id = format!("trusting-{}", unique());
    let behind_proxy = Arc::new(Edge::start(&trusting).await);
    let anon: Vec<Option<String>> = (0..100).map(|_| None).collect();
    let (passed, _) = fire(&behind_proxy, anon, true).await;
    assert_eq!(passed, 100, "trusted proxy's X-Forwarded-For ignored");

    // A forged token is refused at the edge.
    let forged = TokenKeys::new(b"not-the-secret-at-all", 0).mint("x", Role::Buyer, 3600);
    let (s, body) = edge.buy(1, 1, Some(&forged)).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("unauthorized")));
    // Stop the edges first: they may still renew leases under the prefix.
    drop(edge);
    drop(behind_proxy);
    cleanup_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reload_without_restart_and_bad_files_are_refused() {
    let (opts, keys, prefix) = setup(limits(1.0, 0.0, 1000, 1.0, true));
    let edge = Arc::new(Edge::start(&opts).await);
    let tokens = |n: usize, tag: &str| -> Vec<Option<String>> {
        (0..n)
            .map(|u| Some(keys.mint(&format!("{tag}-{u}"), Role::Buyer, 3600)))
            .collect()
    };
    let (passed, _) = fire(&edge, tokens(20, "a"), false).await;
    assert!(passed <= 2, "rate 1, burst 0 admitted {passed}");

    // Traffic keeps flowing while the file changes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bg = {
        let (edge, stop, t) = (
            edge.clone(),
            stop.clone(),
            keys.mint("bg", Role::Buyer, 3600),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (s, _) = edge.buy(999_999, 1, Some(&t)).await;
                assert!(s == 404 || s == 429, "status {s} during reload");
                n += 1;
            }
            n
        })
    };

    let path = edge.lua_dir.join("limits.lua");
    std::fs::write(&path, limits(10_000.0, 10_000.0, 1000, 1.0, true)).unwrap();
    eventually(Duration::from_secs(10), || async {
        (edge
            .metric("edge_lua_reloads_total", &["result=\"ok\""])
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // (the new rate applies; the bucket refills at the new rate within milliseconds)
    eventually(Duration::from_secs(5), || {
        let (edge, batch) = (edge.clone(), tokens(20, "b"));
        async move { (fire(&edge, batch, false).await.0 == 20).then_some(()) }
    })
    .await;

    // A syntax error and an invalid value are both refused.
    std::fs::write(&path, "return { node = { rate = ").unwrap();
    eventually(Duration::from_secs(10), || async {
        (edge
            .metric("edge_lua_reloads_total", &["result=\"refused\""])
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    std::fs::write(&path, limits(-5.0, 0.0, 1000, 1.0, true)).unwrap();
    eventually(Duration::from_secs(10), || async {
        (edge
            .metric("edge_lua_reloads_total", &["result=\"refused\""])
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    // (the previous policy keeps serving; the bucket refills at the new rate within milliseconds)
    eventually(Duration::from_secs(5), || {
        let (edge, batch) = (edge.clone(), tokens(20, "c"));
        async move { (fire(&edge, batch, false).await.0 == 20).then_some(()) }
    })
    .await;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let n = bg.await.expect("no request failed during reloads");
    assert!(n > 0);
    // Stop the edge first: it may still renew leases under the prefix.
    drop(edge);
    cleanup_prefix(&prefix).await;
}

#[test]
fn check_config_refuses_bad_files() {
    let bin = env!("CARGO_BIN_EXE_seckill-edge");
    let root = repo_root();
    let ok = std::process::Command::new(bin)
        .current_dir(&root)
        .args(["check-config", "edge/edge.toml"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Environment overrides are validated too.
    let out = std::process::Command::new(bin)
        .current_dir(&root)
        .args(["check-config", "edge/edge.toml"])
        .env("SECKILL_EDGE__HTTP__THREADS", "0")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "threads = 0 from the environment accepted"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstream]\nbackends = []\n").unwrap();
    let out = std::process::Command::new(bin)
        .current_dir(&root)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A config whose Lua does not compile.
    let lua = dir.path().join("edge");
    std::fs::create_dir_all(&lua).unwrap();
    std::fs::write(lua.join("access.lua"), "if then").unwrap();
    let cfg = dir.path().join("lua.toml");
    std::fs::write(
        &cfg,
        format!("[lua]\naccess = \"{}/access.lua\"\n", lua.display()),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .current_dir(&root)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rotating_through_one_network_is_limited_as_one() {
    let src = limits(100_000.0, 100_000.0, 1000, 30.0, true).replace(
        "require_token =",
        "net = { count = 10, window = 30, v4_prefix = 24 },\n  require_token =",
    );
    let (mut opts, keys, prefix) = setup(src);
    opts.trusted_proxies = vec!["127.0.0.1/32".into()];
    let edge = Arc::new(Edge::start(&opts).await);

    // 256 accounts, each from its own address of 203.0.113.0/24.
    let fire_from = |net: &'static str, tag: &'static str| {
        let (edge, keys) = (edge.clone(), keys.clone());
        async move {
            let statuses: Vec<(u16, String)> = stream::iter(0..256)
                .map(|i| {
                    let (edge, t) = (
                        edge.clone(),
                        keys.mint(&format!("{tag}-{i}"), Role::Buyer, 3600),
                    );
                    async move {
                        let r = edge
                            .client
                            .post(edge.url("/api/rounds/999999/items/1/buy"))
                            .bearer_auth(t)
                            .header("x-forwarded-for", format!("{net}.{i}"))
                            .json(&serde_json::json!({"qty": 1}))
                            .send()
                            .await
                            .unwrap();
                        let s = r.status().as_u16();
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        (s, v["message"].as_str().unwrap_or("").to_owned())
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            let passed = statuses.iter().filter(|(s, _)| *s == 404).count();
            let by_net = statuses
                .iter()
                .filter(|(s, m)| *s == 429 && m.contains("network"))
                .count();
            (passed, by_net)
        }
    };
    assert_eq!(fire_from("203.0.113", "rot").await, (10, 246));
    // Another network has a limit of its own.
    assert_eq!(fire_from("198.51.100", "other").await, (10, 246));
    drop(edge);
    cleanup_prefix(&prefix).await;
}
