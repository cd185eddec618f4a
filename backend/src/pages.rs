//! Renders the static sale pages the edge serves: one HTML page per item
//! with its data baked in, plus the shared script and style sheet that load
//! the dynamic parts (clock sync, countdown, ticket and its proof-of-work
//! challenge, buy, polling). The data says whether purchase tickets are on
//! (and their lead time) and whether the round has a challenge, as they
//! were when the page was rendered (approval, preheat).
//!
//! Files are written to a temporary name and renamed, so the edge never
//! serves half a page. Layout under `pages.dir`:
//! `index.html`, `assets/sale.js`, `assets/sale.css`,
//! `sale/<round>/<item>/index.html`.

use std::path::{Path, PathBuf};

use minijinja::{Environment, context};

use crate::store::entities::{item, round};

const ITEM_TEMPLATE: &str = include_str!("../templates/item.html");
const INDEX_HTML: &str = include_str!("../templates/index.html");
const SALE_JS: &str = include_str!("../templates/sale.js");
const SALE_CSS: &str = include_str!("../templates/sale.css");

/// Writes sale pages into one directory.
pub struct PageRenderer {
    dir: PathBuf,
    env: Environment<'static>,
    /// `tickets.lead_ms` when purchase tickets are on.
    ticket_lead_ms: Option<u64>,
}

impl PageRenderer {
    pub fn new(dir: PathBuf) -> Self {
        let mut env = Environment::new();
        env.add_template("item.html", ITEM_TEMPLATE)
            .expect("item template parses");
        Self {
            dir,
            env,
            ticket_lead_ms: None,
        }
    }

    /// Pages of a sale with purchase tickets (`tickets.enabled`), handed
    /// out from `lead_ms` before the start; `None`: tickets are off.
    pub fn with_tickets(mut self, lead_ms: Option<u64>) -> Self {
        self.ticket_lead_ms = lead_ms;
        self
    }

    /// Writes the shared assets and the index page.
    pub async fn write_assets(&self) -> std::io::Result<()> {
        write_atomic(&self.dir.join("index.html"), INDEX_HTML.as_bytes()).await?;
        write_atomic(&self.dir.join("assets/sale.js"), SALE_JS.as_bytes()).await?;
        write_atomic(&self.dir.join("assets/sale.css"), SALE_CSS.as_bytes()).await
    }

    /// The HTML of one item's page.
    pub fn item_html(&self, r: &round::Model, i: &item::Model) -> Result<String, minijinja::Error> {
        let challenge = self.ticket_lead_ms.is_some() && r.pow_difficulty > 0;
        let data = serde_json::json!({
            "round_id": r.id,
            "item_id": i.id,
            "starts_at_ms": r.starts_at_ms,
            "ends_at_ms": r.ends_at_ms,
            "per_user_limit": i.per_user_limit,
            "tickets": self.ticket_lead_ms.is_some(),
            "ticket_lead_ms": self.ticket_lead_ms.unwrap_or(0),
            "challenge": challenge,
            "pow_difficulty": r.pow_difficulty,
        });
        // Safe inside <script type="application/json">: no "<" survives.
        let data = data.to_string().replace('<', "\\u003c");
        self.env.get_template("item.html")?.render(context! {
            round_name => r.name,
            title => i.title,
            description => i.description,
            image_url => i.image_url,
            sale_price => cents(i.sale_price_cents),
            original_price => cents(i.original_price_cents),
            stock => i.stock,
            per_user_limit => i.per_user_limit,
            tickets => self.ticket_lead_ms.is_some(),
            challenge => challenge,
            data_json => data,
        })
    }

    /// Renders and writes one item's page (and the shared assets).
    pub async fn render_item(&self, r: &round::Model, i: &item::Model) -> std::io::Result<PathBuf> {
        let html = self
            .item_html(r, i)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.write_assets().await?;
        let path = self
            .dir
            .join("sale")
            .join(r.id.to_string())
            .join(i.id.to_string())
            .join("index.html");
        write_atomic(&path, html.as_bytes()).await?;
        Ok(path)
    }
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_item_data() {
        let r = round::Model {
            id: 1,
            name: "R".into(),
            starts_at_ms: 0,
            ends_at_ms: 1,
            status: "approved".into(),
            created_by: "a".into(),
            submitted_by: None,
            reviewed_by: None,
            reject_reason: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            admission_window_ms: 0,
            pow_difficulty: 0,
        };
        let i = item::Model {
            id: 2,
            round_id: 1,
            title: "<script>alert(1)</script>".into(),
            description: "d".into(),
            image_url: String::new(),
            original_price_cents: 12345,
            sale_price_cents: 5,
            stock: 3,
            per_user_limit: 1,
        };
        let html = PageRenderer::new(PathBuf::from("/nonexistent"))
            .item_html(&r, &i)
            .unwrap();
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("123.45"));
        assert!(html.contains("0.05"));
        assert!(html.contains(r#""item_id":2"#));
        assert!(html.contains(r#""tickets":false"#));
        assert!(html.contains(r#""challenge":false"#));

        // With tickets, a round with a difficulty says it has a challenge.
        let r = round::Model {
            pow_difficulty: 500,
            ..r
        };
        let html = PageRenderer::new(PathBuf::from("/nonexistent"))
            .with_tickets(Some(2_000))
            .item_html(&r, &i)
            .unwrap();
        assert!(html.contains(r#""tickets":true"#));
        assert!(html.contains(r#""ticket_lead_ms":2000"#));
        assert!(html.contains(r#""challenge":true"#));
        assert!(html.contains(r#""pow_difficulty":500"#));
        assert!(html.contains("purchase ticket"));
    }
}
