//! Static pages: ETag → 304, traversal refused, gzip when accepted, changes
//! picked up without a restart; the clock endpoint.

use std::{io::Read, time::Duration};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn raw_get(edge: &Edge, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_pages_with_etags_gzip_and_no_escape() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages");
    std::fs::create_dir_all(pages.join("assets")).unwrap();
    std::fs::create_dir_all(pages.join("sale/1/2")).unwrap();
    let html = format!("<html><body>{}</body></html>", "sale ".repeat(200));
    std::fs::write(pages.join("index.html"), &html).unwrap();
    std::fs::write(pages.join("sale/1/2/index.html"), "<p>item 2</p>").unwrap();
    std::fs::write(pages.join("assets/sale.js"), "console.log('go');").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), pages.join("assets/link.txt"))
        .unwrap();

    let prefix = format!("ts{}", unique());
    let mut opts = EdgeOptions::new("static-test-secret-0123456789", &prefix);
    opts.pages = pages.clone();
    let edge = Edge::start(&opts).await;
    let c = &edge.client;

    let r = c.get(edge.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(r.headers().contains_key("cache-control"));
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), html);

    let r = c
        .get(edge.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let r = c
        .get(edge.url("/"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let gz = r.bytes().await.unwrap();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, html);

    let r = c.get(edge.url("/sale/1/2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "<p>item 2</p>");
    let r = c.get(edge.url("/assets/sale.js")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/javascript; charset=utf-8"
    );

    for path in [
        "/assets/../../secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/sale/%2e%2e%2f%2e%2e%2fsecret.txt",
    ] {
        let resp = raw_get(&edge, path).await;
        assert!(
            resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 404"),
            "{path}: {resp}"
        );
        assert!(!resp.contains("top secret"), "{path} escaped");
    }
    let resp = raw_get(&edge, "/assets/link.txt").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "symlink escaped: {resp}");

    // A re-rendered page is served without a restart.
    std::fs::write(pages.join("sale/1/2/index.html"), "<p>item 2, new</p>").unwrap();
    eventually(Duration::from_secs(5), || async {
        let body = c
            .get(edge.url("/sale/1/2/"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (body == "<p>item 2, new</p>").then_some(())
    })
    .await;

    // The clock.
    let v: serde_json::Value = c
        .get(edge.url("/api/time"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    assert!((v["now_ms"].as_i64().unwrap() - now).abs() < 5_000);

    // Admin paths are not exposed.
    let r = c.get(edge.url("/admin/rounds/1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // Stop the edge first: it may still renew leases under the prefix.
    drop(edge);
    cleanup_prefix(&prefix).await;
}
