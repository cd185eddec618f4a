//! The Lua phases end to end: reloads that run the policy before accepting
//! it (and watch the lib dirs), the log phase (`resty.limit.conn` with
//! `leaving()`), nginx's `$uri`, and request bodies read from Lua and
//! forwarded unchanged.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::join_all;
use seckill_proto::auth::{Role, TokenKeys};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::helpers::*;

/// One request as the backend got it.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A backend that records every request (head and decoded body) and holds
/// its answer while the gate is closed; a path containing `drop` gets the
/// connection closed without an answer.
struct Held {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    waiting: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Option<()> {
    let mut chunk = [0u8; 4096];
    while buf.len() < want {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(())
}

async fn line(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(l);
        }
        let want = buf.len() + 1;
        fill(conn, buf, want).await?;
    }
}

/// Reads one request: head, then a Content-Length or chunked body.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let want = buf.len() + 1;
        fill(conn, buf, want).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let size = line(conn, buf).await?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !line(conn, buf).await?.is_empty() {}
                break;
            }
            fill(conn, buf, size + 2).await?;
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        fill(conn, buf, len).await?;
        body = buf.drain(..len).collect();
    }
    Some(Seen { head, body })
}

impl Held {
    async fn start(open: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let (gate, _) = watch::channel(open);
        let (s, w, g) = (seen.clone(), waiting.clone(), gate.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (s, w, mut gate) = (s.clone(), w.clone(), g.subscribe());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(req) = read_request(&mut conn, &mut buf).await {
                        let health = req.head.starts_with("GET /healthz");
                        let first = req.head.lines().next().unwrap_or("").to_owned();
                        if !health {
                            s.lock().unwrap().push(req.clone());
                            if first.contains("drop") {
                                return;
                            }
                            w.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            w.fetch_sub(1, Ordering::SeqCst);
                        }
                        let body = format!("{{\"status\":\"queued\",\"len\":{}}}", req.body.len());
                        let status = if health { "200 OK" } else { "202 Accepted" };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            waiting,
            gate,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn buys(&self) -> usize {
        self.seen()
            .iter()
            .filter(|r| r.head.starts_with("POST /api/rounds/"))
            .count()
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn open(&self, open: bool) {
        self.gate.send_replace(open);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Setup {
    opts: EdgeOptions,
    keys: TokenKeys,
}

fn setup(backend: Option<&Held>) -> Setup {
    let secret = format!("edge-lua-secret-{}", unique());
    let mut opts = EdgeOptions::new(&secret, &format!("tp{}", unique()));
    if let Some(b) = backend {
        opts.backends = vec![b.addr];
    }
    Setup {
        keys: TokenKeys::new(secret.as_bytes(), 0),
        opts,
    }
}

/// Permits off: these tests are about the Lua phases, not Redis.
fn lua(access: &str) -> LuaSetup {
    LuaSetup {
        access: Some(access.to_owned()),
        env: vec![("SECKILL_EDGE__PERMITS__ENABLED".into(), "false".into())],
        ..LuaSetup::default()
    }
}

/// One request over a fresh connection, bytes as given (no client-side
/// path clean-up); `(status, body)`.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").into_bytes()
}

async fn text(edge: &Edge, path: &str) -> (u16, String) {
    let r = edge.client.get(edge.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

const V1: &str = r#"
if ngx.var.uri == "/api/policy" then ngx.say("v1") return ngx.exit(200) end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_fails_at_run_time_is_refused_and_the_old_one_serves() {
    let s = setup(None);
    let edge = Edge::start_with(&s.opts, &lua(V1)).await;
    assert_eq!(text(&edge, "/api/policy").await, (200, "v1\n".into()));

    // Compiles, fails only when a request runs it.
    let access = edge.lua_dir.join("access.lua");
    std::fs::write(&access, "local x = nil\nif ngx.var.uri then x.y = 1 end\n").unwrap();
    let refused = ["result=\"refused\"", "reason=\"trial\""];
    eventually(Duration::from_secs(10), || async {
        (edge.metric("edge_lua_reloads_total", &refused).await >= 1.0).then_some(())
    })
    .await;
    let log = edge.log();
    assert!(
        log.contains("lua files refused") && log.contains(&access.display().to_string()),
        "{log}"
    );
    assert!(log.contains("attempt to index"), "{log}");
    for _ in 0..20 {
        assert_eq!(text(&edge, "/api/policy").await, (200, "v1\n".into()));
    }
    assert_eq!(edge.metric("edge_lua_errors_total", &[]).await, 0.0);

    // An unreadable file (not UTF-8) beside it is refused, logged and
    // counted once; once it is gone, the same files load again.
    std::fs::write(&access, V1.replace("v1", "v2")).unwrap();
    let bad = edge.lua_dir.join("bad.lua");
    std::fs::write(&bad, [0xff, 0xfe, b'\n']).unwrap();
    let unreadable = ["result=\"refused\"", "reason=\"unreadable\""];
    eventually(Duration::from_secs(10), || async {
        (edge.metric("edge_lua_reloads_total", &unreadable).await >= 1.0).then_some(())
    })
    .await;
    assert!(edge.log().contains(&bad.display().to_string()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        edge.metric("edge_lua_reloads_total", &unreadable).await,
        1.0,
        "a lasting failure is reported once"
    );
    assert_eq!(text(&edge, "/api/policy").await, (200, "v1\n".into()));
    std::fs::remove_file(&bad).unwrap();
    eventually(Duration::from_secs(10), || async {
        (text(&edge, "/api/policy").await.1 == "v2\n").then_some(())
    })
    .await;
    assert!(
        edge.metric("edge_lua_reloads_total", &["result=\"ok\""])
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_module_under_lib_dirs_reloads() {
    let s = setup(None);
    let mut setup = lua(r#"
local answer = require "policy.answer"
if ngx.var.uri == "/api/answer" then ngx.say(answer.value) return ngx.exit(200) end
"#);
    setup.lib_files = vec![(
        "policy/answer.lua".into(),
        "return { value = 'one' }".into(),
    )];
    let edge = Edge::start_with(&s.opts, &setup).await;
    assert_eq!(text(&edge, "/api/answer").await, (200, "one\n".into()));

    let module = edge.lib_dir.join("policy/answer.lua");
    std::fs::write(&module, "return { value = 'two' }").unwrap();
    eventually(Duration::from_secs(10), || async {
        (text(&edge, "/api/answer").await.1 == "two\n").then_some(())
    })
    .await;

    // A module that fails when required is refused like the access file.
    std::fs::write(&module, "local t = nil\nreturn { value = t.x }").unwrap();
    eventually(Duration::from_secs(10), || async {
        (edge
            .metric("edge_lua_reloads_total", &["reason=\"trial\""])
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert!(edge.log().contains("answer.lua:2:"), "{}", edge.log());
    assert_eq!(text(&edge, "/api/answer").await, (200, "two\n".into()));
}

const CONN_ACCESS: &str = r#"
if ngx.var.uri == "/api/conn" then
  ngx.say(ngx.shared.limit_req:get("buy:" .. ngx.var.arg_user) or "none")
  return ngx.exit(200)
end
if ngx.var.request_method ~= "POST" then return end
local conn = require "resty.limit.conn"
local lim = assert(conn.new("limit_req", 2, 0, 0.5))
local key = "buy:" .. ngx.var.user_id
local delay, err = lim:incoming(key, true)
if not delay then
  if err == "rejected" then
    ngx.var.seckill_reason = "user_conn"
    ngx.status = 503
    ngx.header["Content-Type"] = "application/json"
    ngx.print('{"error":"unavailable","message":"too many of your buys in flight"}')
    return ngx.exit(503)
  end
  error(err)
end
if lim:is_committed() then
  ngx.ctx.limit_conn = lim
  ngx.ctx.limit_conn_key = key
end
"#;

const CONN_LOG: &str = r#"
local ctx = ngx.ctx
if ctx.limit_conn then
  assert(ctx.limit_conn:leaving(ctx.limit_conn_key, tonumber(ngx.var.request_time)))
end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_with_leaving_in_the_log_phase_limits_concurrent_buys() {
    let held = Held::start(false).await;
    let s = setup(Some(&held));
    let mut setup = lua(CONN_ACCESS);
    setup.log = Some(CONN_LOG.into());
    let edge = Arc::new(Edge::start_with(&s.opts, &setup).await);
    let alice = s.keys.mint("alice", Role::Buyer, 3600);
    let bob = s.keys.mint("bob", Role::Buyer, 3600);
    let buys = |token: String, n: usize| {
        let edge = edge.clone();
        tokio::spawn(async move {
            join_all((0..n).map(|_| edge.buy(1, 1, Some(&token))))
                .await
                .into_iter()
                .map(|(s, _)| s)
                .collect::<Vec<u16>>()
        })
    };

    // Four at once from one buyer: two held at the backend, two refused.
    let first = buys(alice.clone(), 4);
    eventually(Duration::from_secs(10), || async {
        (held.waiting() == 2).then_some(())
    })
    .await;
    // Another buyer is not affected.
    let other = buys(bob.clone(), 1);
    eventually(Duration::from_secs(10), || async {
        (held.waiting() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(held.buys(), 3, "only admitted buys reach the backend");
    held.open(true);
    let mut statuses = first.await.unwrap();
    statuses.sort();
    assert_eq!(statuses, vec![202, 202, 503, 503]);
    assert_eq!(other.await.unwrap(), vec![202]);
    assert_eq!(
        edge.metric("edge_rejections_total", &["reason=\"user_conn\""])
            .await,
        2.0
    );

    // leaving() ran in the log phase: both slots are free again.
    for user in ["alice", "bob"] {
        eventually(Duration::from_secs(10), || async {
            (text(&edge, &format!("/api/conn?user={user}")).await.1 == "0\n").then_some(())
        })
        .await;
    }
    held.open(false);
    let second = buys(alice.clone(), 2);
    eventually(Duration::from_secs(10), || async {
        (held.waiting() == 2).then_some(())
    })
    .await;
    let (s, _) = edge.buy(1, 1, Some(&alice)).await;
    assert_eq!(s, 503, "two in flight again");
    held.open(true);
    assert_eq!(second.await.unwrap(), vec![202, 202]);
    assert_eq!(edge.metric("edge_lua_errors_total", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_is_normalised_as_nginx_does() {
    let s = setup(None);
    let edge = Edge::start_with(
        &s.opts,
        &lua(r#"
if ngx.var.uri:find("^/api/echo") then
  ngx.say(ngx.var.uri, "|", ngx.var.request_uri)
  return ngx.exit(200)
end
"#),
    )
    .await;
    let (status, body) = raw(edge.addr, &get("/api/echo/./a/../b%20c//d?x=%2e")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "/api/echo/b c/d|/api/echo/./a/../b%20c//d?x=%2e\n");
    let (_, body) = raw(edge.addr, &get("/api/echo/%2e%2e/echo")).await;
    assert_eq!(body, "/api/echo|/api/echo/%2e%2e/echo\n");

    for bad in ["/api/../../etc/passwd", "/api/echo/a%00b", "/api/echo/%zz"] {
        let (status, body) = raw(edge.addr, &get(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(v["error"], "bad_request", "{bad}: {body}");
    }
    assert!(
        edge.metric("edge_rejections_total", &["reason=\"bad_uri\""])
            .await
            >= 3.0
    );
}

const BODY_ACCESS: &str = r#"
if ngx.var.request_method ~= "POST" then return end
ngx.req.read_body()
local data = ngx.req.get_body_data()
local body = data and require("cjson.safe").decode(data)
if type(body) ~= "table" or type(body.qty) ~= "number" then
  ngx.status = 400
  ngx.header["Content-Type"] = "application/json"
  ngx.print('{"error":"bad_request","message":"qty missing"}')
  return ngx.exit(400)
end
if body.qty > 3 then
  ngx.var.seckill_reason = "qty"
  ngx.status = 422
  ngx.header["Content-Type"] = "application/json"
  ngx.print('{"error":"limit_exceeded","message":"qty ' .. body.qty .. '"}')
  return ngx.exit(422)
end
ngx.req.set_header("X-Lua-Qty", tostring(body.qty))
"#;

fn chunked(path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_read_from_lua_and_forwarded_unchanged() {
    let held = Held::start(true).await;
    let s = setup(Some(&held));
    let mut setup = lua(BODY_ACCESS);
    setup.max_body_bytes = Some(1024);
    let edge = Edge::start_with(&s.opts, &setup).await;
    let buy = edge.url("/api/rounds/1/items/1/buy");
    let post = |body: Vec<u8>| {
        edge.client
            .post(&buy)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let last = || {
        held.seen()
            .last()
            .cloned()
            .expect("a request reached the backend")
    };

    // Forwarded byte for byte; the script's header decision went along.
    let body = "{ \"qty\" : 2, \"note\": \"京 \\u00e9\" }"
        .as_bytes()
        .to_vec();
    let r = post(body.clone()).await.unwrap();
    assert_eq!(r.status(), 202);
    let seen = last();
    assert_eq!(seen.body, body);
    assert!(
        seen.head.to_ascii_lowercase().contains("x-lua-qty: 2"),
        "{}",
        seen.head
    );

    // Decided on the body at the edge: nothing forwarded.
    let before = held.seen().len();
    let r = post(b"{\"qty\":5}".to_vec()).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = edge.client.post(&buy).send().await.unwrap();
    assert_eq!(r.status(), 400, "no body: nil from get_body_data");
    assert_eq!(held.seen().len(), before);

    // Exactly at the limit.
    let mut at_limit = b"{\"qty\":1,\"pad\":\"".to_vec();
    at_limit.resize(1024 - 2, b'x');
    at_limit.extend_from_slice(b"\"}");
    assert_eq!(at_limit.len(), 1024);
    assert_eq!(post(at_limit.clone()).await.unwrap().status(), 202);
    assert_eq!(last().body, at_limit);

    // A chunked body, read whole and forwarded with the same content.
    let parts: [&[u8]; 3] = [b"{\"qty\"", b":3,", b"\"x\":\"y\"}"];
    let (status, answer) = raw(edge.addr, &chunked("/api/rounds/1/items/1/buy", &parts)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(last().body, parts.concat());

    // Over the limit, declared or chunked: 413 and nothing forwarded.
    let before = held.seen().len();
    let r = post(vec![b' '; 1025]).await.unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "payload_too_large");
    let big = vec![b'x'; 600];
    let (status, answer) = raw(
        edge.addr,
        &chunked("/api/rounds/1/items/1/buy", &[&big, &big]),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(held.seen().len(), before);
    assert_eq!(
        edge.metric("edge_rejections_total", &["reason=\"body_too_large\""])
            .await,
        2.0
    );
}

const LOG_ACCESS: &str = r#"
if ngx.var.uri == "/api/last" then
  ngx.say(ngx.shared.limit_req:get("last:" .. ngx.var.arg_of) or "none")
  return ngx.exit(200)
end
ngx.ctx.tag = ngx.var.arg_tag
ngx.var.from_access = "yes"
if ngx.var.arg_answer then return ngx.exit(tonumber(ngx.var.arg_answer)) end
"#;

const LOG_LOG: &str = r#"
local tag = ngx.var.arg_tag
if not tag then return end
ngx.shared.limit_req:set("last:" .. tag, table.concat({
  ngx.status, ngx.var.status, ngx.var.request_time, ngx.ctx.tag, ngx.var.uri,
  ngx.var.from_access, ngx.get_phase() }, "|"))
if ngx.var.arg_fail then error("log phase failure") end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_phase_sees_status_and_request_time() {
    let held = Held::start(false).await;
    let s = setup(Some(&held));
    let mut setup = lua(LOG_ACCESS);
    setup.log = Some(LOG_LOG.into());
    let edge = Arc::new(Edge::start_with(&s.opts, &setup).await);
    let logged = |tag: &'static str| {
        let edge = edge.clone();
        eventually(Duration::from_secs(10), move || {
            let edge = edge.clone();
            async move {
                let (_, v) = text(&edge, &format!("/api/last?of={tag}")).await;
                let v = v.trim().to_owned();
                (v != "none").then(|| v.split('|').map(str::to_owned).collect::<Vec<_>>())
            }
        })
    };

    // Forwarded, the backend holds it ~300 ms.
    let slow = {
        let edge = edge.clone();
        tokio::spawn(async move { text(&edge, "/api/slow?tag=a").await })
    };
    eventually(Duration::from_secs(10), || async {
        (held.waiting() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.open(true);
    assert_eq!(slow.await.unwrap().0, 202);
    let a = logged("a").await;
    assert_eq!(a[..2], ["202", "202"]);
    let t: f64 = a[2].parse().unwrap();
    assert!((0.3..5.0).contains(&t), "request_time {t}");
    assert_eq!(a[3..], ["a", "/api/slow", "yes", "log"]);

    // Answered by the access phase itself.
    assert_eq!(text(&edge, "/api/x?tag=b&answer=429").await.0, 429);
    let b = logged("b").await;
    assert_eq!(b[..2], ["429", "429"]);
    assert!(b[2].parse::<f64>().unwrap() < 1.0);
    assert_eq!(b[3..], ["b", "/api/x", "yes", "log"]);

    // The backend failed.
    let (status, _) = text(&edge, "/api/drop?tag=c").await;
    assert!(status >= 500, "{status}");
    let c = logged("c").await;
    assert_eq!(c[0], status.to_string());
    assert_eq!(c[3], "c");

    // An error in the log phase is counted and changes nothing.
    assert_eq!(text(&edge, "/api/ok?tag=d&fail=1").await.0, 202);
    eventually(Duration::from_secs(10), || async {
        (edge
            .metric("edge_lua_errors_total", &["phase=\"log\""])
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(logged("d").await[0], "202");
    assert!(edge.log().contains("log phase failed"));
}

#[test]
fn check_config_runs_the_trial() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("access.lua"),
        "if ngx.var.uri ~= '' then local x = nil; x.y = 1 end",
    )
    .unwrap();
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nallow_dev_secret = true\n[lua]\naccess = \"{}/access.lua\"\nlib_dirs = [\"{}\"]\n",
            dir.path().display(),
            repo_root().join("lua").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seckill-edge"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a policy failing at run time passed");
    assert!(err.contains("trial request"), "{err}");
}
