//! A headless Chromium for browser tests: Debian's `/usr/bin/chromium`
//! behind its own `chromedriver`, driven over WebDriver with fantoccini,
//! plus the waits those tests share. Included by the backend's console
//! test and the edge's sale-page test (`#[path]`), so both drive the
//! browser the same way.

// Each including test uses a subset of these.
#![allow(dead_code)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::{
    process::{Child, Command},
    time::Instant,
};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the page may take to show what an action did.
pub const UI_WAIT: Duration = Duration::from_secs(10);

/// A headless Chromium behind its own chromedriver.
pub struct Browser {
    pub client: Client,
    _driver: Child,
}

impl Browser {
    pub async fn launch() -> Self {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: browser tests need Debian's {what} \
                 (scripts/services installs it, or: apt-get install -y chromium chromium-driver)"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        until(Duration::from_secs(20), "chromedriver answers", || async {
            let r = probe.get(format!("{url}/status")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1300"],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("chromium starts under chromedriver");
        Self {
            client,
            _driver: driver,
        }
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.expect(css);
        e.clear().await.expect(css);
        e.send_keys(value).await.expect(css);
    }

    pub async fn click(&self, css: &str) {
        let e = self.client.find(Locator::Css(css)).await.expect(css);
        e.click().await.expect(css);
    }

    /// Runs `script` (a function body) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.expect(script)
    }

    /// Waits until the element's text contains `want`.
    pub async fn wait_text(&self, css: &str, want: &str) -> String {
        until(UI_WAIT, &format!("{css} shows {want:?}"), || async {
            let e = self.client.find(Locator::Css(css)).await.ok()?;
            let t = e.text().await.ok()?;
            t.contains(want).then_some(t)
        })
        .await
    }

    /// Waits until `el.dataset[key] == want` for the element at `css`.
    pub async fn wait_data(&self, css: &str, key: &str, want: &str) {
        until(UI_WAIT, &format!("{css} has data-{key}={want}"), || async {
            let v = self
                .client
                .execute(
                    "const e = document.querySelector(arguments[0]); return e ? (e.dataset[arguments[1]] ?? null) : null;",
                    vec![json!(css), json!(key)],
                )
                .await
                .ok()?;
            (v.as_str() == Some(want)).then_some(())
        })
        .await
    }
}

/// Retries `check` until it returns `Some`; fails naming `what` after `limit`.
pub async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where a test's screenshot goes: `<target dir>/<name>`.
pub fn screenshot_path(name: &str) -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(|t| t.to_path_buf())
        .unwrap_or(tmp)
        .join(name)
}
