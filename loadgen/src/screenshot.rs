//! A picture of the operator's console during a sale: Debian's headless
//! Chromium behind its own chromedriver (WebDriver, through fantoccini)
//! opens the console's live dashboard for the round, and once its bars show
//! every item sold out the page is written to a PNG file.
//!
//! The console link carries an operator token and the round in its
//! fragment (`/admin/console/#token=…&watch=<round>`), so the page signs in
//! and follows the round's event stream by itself.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The console, open in a headless browser on one round's dashboard.
pub struct ConsoleView {
    client: Client,
    _driver: Child,
}

impl ConsoleView {
    /// Whether the browser this needs is installed.
    pub fn available() -> bool {
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
    }

    /// Starts the browser and opens the dashboard of `round_id` on the
    /// backend's admin address, signed in with `operator_token`.
    pub async fn open(admin_url: &str, operator_token: &str, round_id: i64) -> Result<Self> {
        if !Self::available() {
            bail!(
                "{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let driver_url = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let up = probe
                .get(format!("{driver_url}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("chromedriver did not answer on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--no-first-run",
                         "--window-size=1400,1300"],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&driver_url)
            .await
            .context("starting chromium under chromedriver")?;
        let url = format!(
            "{}/admin/console/#token={operator_token}&watch={round_id}",
            admin_url.trim_end_matches('/')
        );
        client.goto(&url).await.context("opening the console")?;
        Ok(Self {
            client,
            _driver: driver,
        })
    }

    /// Waits until every item's bar shows no unit left on sale (or `limit`
    /// passes), then writes the page to `out` (PNG) and closes the browser.
    /// Answers whether every item sold out in the picture.
    pub async fn capture_when_sold_out(self, out: PathBuf, limit: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        let sold_out = loop {
            let all_sold = self
                .client
                .execute(
                    "const rows = [...document.querySelectorAll('#bars .item-row')];
                     return rows.length > 0 && rows.every(r => r.dataset.total !== undefined
                       && r.dataset.available === '0');",
                    vec![],
                )
                .await
                .context("reading the dashboard")?
                .as_bool()
                .unwrap_or(false);
            if all_sold || tokio::time::Instant::now() > deadline {
                break all_sold;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let png = self
            .client
            .screenshot()
            .await
            .context("taking the screenshot")?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&out, png).with_context(|| format!("writing {}", out.display()))?;
        let _ = self.client.close().await;
        Ok(sold_out)
    }
}
