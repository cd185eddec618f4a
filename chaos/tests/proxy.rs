//! The fault proxy against a local echo server: bytes pass, wait while
//! blackholed and arrive once it passes again, and a reset closes
//! connections and refuses new ones. Also: the binary lists its options.

use std::time::Duration;

use seckill_chaos::proxy::{FaultProxy, Mode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).await.ok()?;
    let mut buf = vec![0u8; msg.len()];
    match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

#[tokio::test]
async fn passes_holds_and_resets() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        roundtrip(&mut c, b"ping", Duration::from_secs(2))
            .await
            .as_deref(),
        Some(&b"ping"[..])
    );

    proxy.set(Mode::Blackhole);
    assert_eq!(
        roundtrip(&mut c, b"held", Duration::from_millis(300)).await,
        None,
        "nothing passes while blackholed"
    );
    proxy.set(Mode::Pass);
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf))
        .await
        .expect("held bytes arrive once the proxy passes again")
        .unwrap();
    assert_eq!(&buf, b"held");

    proxy.set(Mode::Reset);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a reset closes open connections");
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(
        roundtrip(&mut fresh, b"x", Duration::from_millis(500)).await,
        None,
        "and refuses new ones"
    );
}

#[test]
fn the_binary_describes_its_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seckill-chaos"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in ["--scenarios", "--ci", "--quick", "--json", "--bin-dir"] {
        assert!(text.contains(opt), "{opt} in --help");
    }
}
