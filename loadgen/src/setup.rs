//! Opens a sale through the backend's admin API, the way operators do:
//! create a round (operator token), submit it, approve it (an approver token
//! with a different subject), which preheats Redis and renders the pages.
//! Tokens are minted with the shared secret, so no other tool is needed.
//!
//! Also reads an existing round back (`GET /admin/rounds/{id}`) so a crowd
//! can be sent at a sale someone else opened.

use std::time::Duration;

use anyhow::{Context, bail};
use seckill_backend::auth::{Role, TokenKeys};
use serde::Serialize;
use serde_json::{Value, json};

/// Subjects of the tokens the load generator uses for the admin API.
pub const OPERATOR: &str = "loadgen-operator";
pub const APPROVER: &str = "loadgen-approver";

/// What to put on sale.
#[derive(Clone, Debug)]
pub struct RoundSpec {
    pub name: String,
    pub items: usize,
    /// Units of each item.
    pub stock: i64,
    pub per_user_limit: i64,
    /// Sale start, Unix milliseconds.
    pub starts_at_ms: i64,
    /// Sale end, Unix milliseconds.
    pub ends_at_ms: i64,
    /// Round fields sent only when set: a backend without them refuses
    /// unknown fields.
    pub admission_window_ms: Option<i64>,
    pub pow_difficulty: Option<i64>,
}

/// One item of an open round.
#[derive(Clone, Debug, Serialize)]
pub struct ItemInfo {
    pub id: i64,
    pub title: String,
    pub stock: i64,
    pub per_user_limit: i64,
}

/// An approved round as the admin API describes it.
#[derive(Clone, Debug, Serialize)]
pub struct RoundInfo {
    pub id: i64,
    pub status: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub items: Vec<ItemInfo>,
}

impl RoundInfo {
    fn parse(v: &Value) -> anyhow::Result<Self> {
        let num = |v: &Value, f: &str| {
            v.get(f)
                .and_then(Value::as_i64)
                .with_context(|| format!("round JSON lacks {f}: {v}"))
        };
        let items = v
            .get("items")
            .and_then(Value::as_array)
            .context("round JSON lacks items")?
            .iter()
            .map(|it| {
                Ok(ItemInfo {
                    id: num(it, "id")?,
                    title: it
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    stock: num(it, "stock")?,
                    per_user_limit: num(it, "per_user_limit")?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            id: num(v, "id")?,
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("approved")
                .to_owned(),
            starts_at_ms: num(v, "starts_at_ms")?,
            ends_at_ms: num(v, "ends_at_ms")?,
            items,
        })
    }

    /// Units on sale over all items.
    pub fn total_stock(&self) -> i64 {
        self.items.iter().map(|i| i.stock).sum()
    }
}

/// The body of `POST /admin/rounds`.
fn round_body(spec: &RoundSpec, items: Vec<Value>) -> Value {
    let mut body = json!({
        "name": spec.name,
        "starts_at": rfc3339(spec.starts_at_ms),
        "ends_at": rfc3339(spec.ends_at_ms),
        "items": items,
    });
    if let Some(w) = spec.admission_window_ms {
        body["admission_window_ms"] = json!(w);
    }
    if let Some(d) = spec.pow_difficulty {
        body["pow_difficulty"] = json!(d);
    }
    body
}

/// Client of the admin API.
pub struct Admin {
    client: reqwest::Client,
    base: String,
    operator: String,
    approver: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Admin {
    /// `base` is the backend's API address (admin paths are not served by
    /// the edge); tokens are minted with `secret`.
    pub fn new(base: &str, secret: &str) -> anyhow::Result<Self> {
        let keys = TokenKeys::new(secret.as_bytes(), 5);
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            operator: keys.mint(OPERATOR, Role::Operator, 3600),
            approver: keys.mint(APPROVER, Role::Approver, 3600),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.request(method.clone(), &url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status != expect {
            bail!("{method} {url}: expected {expect}, got {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))
    }

    /// Creates, submits and approves a round; returns it as approved.
    pub async fn open_round(&self, spec: &RoundSpec) -> anyhow::Result<RoundInfo> {
        let items: Vec<Value> = (1..=spec.items)
            .map(|n| {
                json!({
                    "title": format!("Flash item {n}"),
                    "description": "A simulated flash-sale item",
                    "image_url": format!("/assets/item-{n}.png"),
                    "original_price_cents": 99_900,
                    "sale_price_cents": 100 * n as i64,
                    "stock": spec.stock,
                    "per_user_limit": spec.per_user_limit,
                })
            })
            .collect();
        let body = round_body(spec, items);
        let created = self
            .call(
                reqwest::Method::POST,
                "/admin/rounds",
                &self.operator,
                Some(body),
                201,
            )
            .await
            .context("creating the round")?;
        let id = created
            .get("id")
            .and_then(Value::as_i64)
            .context("created round has no id")?;
        self.call(
            reqwest::Method::POST,
            &format!("/admin/rounds/{id}/submit"),
            &self.operator,
            None,
            200,
        )
        .await
        .context("submitting the round")?;
        let approved = self
            .call(
                reqwest::Method::POST,
                &format!("/admin/rounds/{id}/approve"),
                &self.approver,
                None,
                200,
            )
            .await
            .context("approving the round")?;
        RoundInfo::parse(&approved)
    }

    /// Reads a round back.
    pub async fn round(&self, id: i64) -> anyhow::Result<RoundInfo> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/admin/rounds/{id}"),
                &self.operator,
                None,
                200,
            )
            .await
            .with_context(|| format!("reading round {id}"))?;
        RoundInfo::parse(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_admin_round_json() {
        let v = json!({
            "id": 7, "status": "approved", "starts_at_ms": 1000, "ends_at_ms": 2000,
            "items": [{"id": 3, "title": "Phone", "stock": 50, "per_user_limit": 1}],
        });
        let r = RoundInfo::parse(&v).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.items[0].id, 3);
        assert_eq!(r.total_stock(), 50);
        assert!(RoundInfo::parse(&json!({"id": 1})).is_err());
    }

    #[test]
    fn optional_round_fields_are_sent_only_when_given() {
        let mut spec = RoundSpec {
            name: "r".into(),
            items: 1,
            stock: 1,
            per_user_limit: 1,
            starts_at_ms: 0,
            ends_at_ms: 1000,
            admission_window_ms: None,
            pow_difficulty: None,
        };
        let b = round_body(&spec, vec![]);
        assert!(b.get("admission_window_ms").is_none() && b.get("pow_difficulty").is_none());
        spec.admission_window_ms = Some(500);
        spec.pow_difficulty = Some(0);
        let b = round_body(&spec, vec![]);
        assert_eq!(b["admission_window_ms"], 500);
        assert_eq!(b["pow_difficulty"], 0);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
