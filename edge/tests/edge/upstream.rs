//! Upstream behaviour against scripted backends: identity headers are set
//! by the edge and never taken from the client (so are permit headers);
//! connect failures are tried on another backend; a buy request that
//! reached a backend is never replayed.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use seckill_proto::auth::{Role, TokenKeys};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::helpers::*;

/// A backend that records every request head; `silent` ones close the
/// connection without answering. It answers 202 without touching Redis,
/// so it says the permits were `kept`.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(silent: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request head (+ a small body) at a time.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..head_end + len);
                        let is_health = head.starts_with("GET /healthz");
                        if !is_health {
                            s.lock().unwrap().push(head);
                        }
                        if silent && !is_health {
                            return; // closes without an answer
                        }
                        let body = r#"{"attempt_id":"a-1","status":"queued"}"#;
                        let status = if is_health { "200 OK" } else { "202 Accepted" };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-seckill-permit: kept\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening: new connections are refused.
    fn refuse(&self) {
        self.task.abort();
    }
}

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

async fn stock(prefix: &str, units: i64) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{{r1:i1}}:stock"))
        .arg(&["total", &units.to_string(), "available", &units.to_string()])
        .arg(&["reserved", "0", "sold", "0"])
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_the_edges_and_connect_failures_move_on() {
    let a = Scripted::start(false).await;
    let b = Scripted::start(false).await;
    let secret = format!("upstream-secret-{}", unique());
    let prefix = format!("tu{}", unique());
    let mut opts = EdgeOptions::new(&secret, &prefix);
    opts.backends = vec![a.addr, b.addr];
    let edge = Edge::start(&opts).await;
    let token = TokenKeys::new(secret.as_bytes(), 0).mint("alice", Role::Buyer, 3600);

    let r = edge
        .client
        .get(edge.url("/api/rounds"))
        .bearer_auth(&token)
        .header("x-seckill-user", "mallory")
        .header("x-seckill-role", "approver")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = edge
        .client
        .get(edge.url("/api/rounds"))
        .header("x-seckill-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut heads = a.requests();
    heads.extend(b.requests());
    assert_eq!(heads.len(), 2, "{heads:?}");
    let signed = heads.iter().find(|h| h.contains("authorization")).unwrap();
    let anon = heads.iter().find(|h| !h.contains("authorization")).unwrap();
    assert_eq!(header(signed, "x-seckill-user"), ["alice"]);
    assert_eq!(header(signed, "x-seckill-role"), ["buyer"]);
    assert_eq!(header(signed, "x-real-ip"), ["127.0.0.1"]);
    assert_eq!(header(signed, "x-forwarded-for"), ["127.0.0.1"]);
    assert!(header(anon, "x-seckill-user").is_empty(), "{anon}");

    // A buy carries the edge's permit header, never the client's, and the
    // backend's permit answer is not passed to the client.
    stock(&prefix, 5).await;
    let r = edge
        .client
        .post(edge.url("/api/rounds/1/items/1/buy"))
        .bearer_auth(&token)
        .header("x-seckill-permit", "mallory;1;1")
        .json(&serde_json::json!({ "qty": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("x-seckill-permit").is_none());
    let mut heads = a.requests();
    heads.extend(b.requests());
    let buy = heads.iter().find(|h| h.starts_with("POST")).unwrap();
    let named = header(buy, "x-seckill-permit");
    assert_eq!(named.len(), 1, "{buy}");
    let parts: Vec<&str> = named[0].split(';').collect();
    assert_eq!(parts[0], opts.node_id, "{buy}");
    assert_eq!(parts.len(), 3, "{buy}");
    assert_eq!(parts[2], "2", "a permit per unit bought: {buy}");

    // One backend stops accepting (still believed healthy): every request
    // is still served, by the other one.
    a.refuse();
    for _ in 0..10 {
        let r = edge
            .client
            .get(edge.url("/api/rounds"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Stop the edge first: it may still renew leases under the prefix.
    drop(edge);
    cleanup_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buy_that_reached_a_backend_is_not_replayed() {
    let silent = Scripted::start(true).await;
    let good = Scripted::start(false).await;
    let secret = format!("upstream-secret-{}", unique());
    let prefix = format!("tu{}", unique());
    stock(&prefix, 100).await;
    let mut opts = EdgeOptions::new(&secret, &prefix);
    opts.backends = vec![silent.addr, good.addr];
    let edge = Edge::start(&opts).await;
    let keys = TokenKeys::new(secret.as_bytes(), 0);

    let mut answered = Vec::new();
    for u in 0..6 {
        let t = keys.mint(&format!("buyer-{u}"), Role::Buyer, 3600);
        let (s, _) = edge.buy(1, 1, Some(&t)).await;
        answered.push(s);
    }
    let to_silent = silent.requests().len();
    let to_good = good.requests().len();
    assert!(
        to_silent >= 1,
        "the silent backend got nothing: {answered:?}"
    );
    assert_eq!(to_silent + to_good, 6, "a buy was replayed: {answered:?}");
    assert_eq!(answered.iter().filter(|s| **s == 202).count(), to_good);
    assert!(answered.iter().all(|s| *s == 202 || *s == 503 || *s == 502));
    // The unanswered ones are lost to the edge (the lease is renewed
    // anew); the answered ones came back kept.
    eventually(Duration::from_secs(5), || async {
        let lost = edge.metric("edge_permits_total", &["event=\"lost\""]).await;
        let kept = edge.metric("edge_permits_total", &["event=\"kept\""]).await;
        (lost as usize == to_silent && kept as usize == to_good).then_some(())
    })
    .await;
    // Stop the edge first: it may still renew leases under the prefix.
    drop(edge);
    cleanup_prefix(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buys_fail_closed_when_redis_is_unreachable() {
    let good = Scripted::start(false).await;
    let secret = format!("upstream-secret-{}", unique());
    let prefix = format!("tu{}", unique());
    let mut opts = EdgeOptions::new(&secret, &prefix);
    opts.backends = vec![good.addr];
    opts.redis_url = format!("redis://127.0.0.1:{}/", free_port());
    let edge = Edge::start(&opts).await;
    let t = TokenKeys::new(secret.as_bytes(), 0).mint("buyer", Role::Buyer, 3600);
    for _ in 0..3 {
        let (s, body) = edge.buy(1, 1, Some(&t)).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );
    }
    assert!(
        good.requests().is_empty(),
        "a buy without a permit was forwarded"
    );
    // Other API paths do not need permits.
    let r = edge
        .client
        .get(edge.url("/api/rounds"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}
