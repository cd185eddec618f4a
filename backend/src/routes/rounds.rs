//! `GET /api/rounds`: approved rounds that have not ended, with their items'
//! public fields, answered from an in-process cache so a crowd reloading it
//! does not reach the database.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use serde::Serialize;
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, ErrorBody},
};
use crate::store::{entities::item, rounds, rounds::RoundWithItems};

/// `GET /api/rounds`'s answer.
#[derive(Serialize, ToSchema)]
pub struct RoundList {
    pub rounds: Vec<PublicRound>,
}

/// A round as anyone sees it ([`public_round`]).
#[derive(Serialize, ToSchema)]
pub struct PublicRound {
    pub id: i64,
    pub name: String,
    /// RFC 3339.
    pub starts_at: Option<String>,
    /// RFC 3339.
    pub ends_at: Option<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub items: Vec<PublicItem>,
    /// How long after the start buys are admitted in random order rather
    /// than arrival order (0: off).
    pub admission_window_ms: i64,
    /// The ticket challenge's difficulty (0: none; see
    /// `GET /api/rounds/{round_id}/items/{item_id}/challenge`).
    pub pow_difficulty: i64,
}

/// An item as anyone sees it ([`public_item`]).
#[derive(Serialize, ToSchema)]
pub struct PublicItem {
    pub id: i64,
    pub title: String,
    pub description: String,
    pub image_url: String,
    pub original_price_cents: i64,
    pub sale_price_cents: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    /// The item's static sale page.
    pub page_url: String,
}

/// A round as an operator sees it ([`admin_round`]).
#[derive(Serialize, ToSchema)]
pub struct AdminRound {
    #[schema(inline)]
    #[serde(flatten)]
    pub round: PublicRound,
    /// `draft`, `submitted`, `approved` or `rejected`.
    pub status: String,
    pub created_by: String,
    pub submitted_by: Option<String>,
    pub reviewed_by: Option<String>,
    pub reject_reason: Option<String>,
}

/// Approved rounds that have not ended, with their items.
#[utoipa::path(
    get,
    path = "/api/rounds",
    tag = "buyer",
    responses(
        (status = 200, description = "Rounds on sale or coming", body = RoundList),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub async fn list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let db = st.db.clone();
    let now = st.clock.now_ms();
    let value = st
        .rounds_cache
        .try_get_with((), async move {
            let rs = rounds::visible(&db, now).await?;
            Ok::<_, crate::store::StoreError>(Arc::new(json!({
                "rounds": rs.iter().map(public_round).collect::<Vec<_>>()
            })))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot load rounds");
            ApiError::Unavailable("rounds are unavailable; try again".into())
        })?;
    Ok(Json((*value).clone()))
}

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| json!(t.to_rfc3339()))
        .unwrap_or(Value::Null)
}

/// The fields of an item anyone may see.
pub fn public_item(round_id: i64, i: &item::Model) -> Value {
    json!({
        "id": i.id,
        "title": i.title,
        "description": i.description,
        "image_url": i.image_url,
        "original_price_cents": i.original_price_cents,
        "sale_price_cents": i.sale_price_cents,
        "stock": i.stock,
        "per_user_limit": i.per_user_limit,
        "page_url": format!("/sale/{round_id}/{}/", i.id),
    })
}

/// The fields of a round anyone may see.
pub fn public_round(r: &RoundWithItems) -> Value {
    json!({
        "id": r.round.id,
        "name": r.round.name,
        "starts_at": rfc3339(r.round.starts_at_ms),
        "ends_at": rfc3339(r.round.ends_at_ms),
        "starts_at_ms": r.round.starts_at_ms,
        "ends_at_ms": r.round.ends_at_ms,
        "items": r.items.iter().map(|i| public_item(r.round.id, i)).collect::<Vec<_>>(),
        "admission_window_ms": r.round.admission_window_ms,
        "pow_difficulty": r.round.pow_difficulty,
    })
}

/// Everything an operator sees of a round.
pub fn admin_round(r: &RoundWithItems) -> Value {
    let mut v = public_round(r);
    let o = v.as_object_mut().expect("object");
    o.insert("status".into(), json!(r.round.status));
    o.insert("created_by".into(), json!(r.round.created_by));
    o.insert("submitted_by".into(), json!(r.round.submitted_by));
    o.insert("reviewed_by".into(), json!(r.round.reviewed_by));
    o.insert("reject_reason".into(), json!(r.round.reject_reason));
    v
}
