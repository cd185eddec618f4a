//! `GET /api/attempts/{attempt_id}`: an attempt's status, for its owner only
//! (anyone else gets the same 404 as for an unknown id).
//!
//! A buy waiting in this process's journal is `processing` (answered
//! without Redis); one the replay refused is `cancelled` with its reason
//! (recorded in Redis, so any backend answers it).

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::Caller,
};
use crate::domain::{AttemptId, AttemptStatus};

/// An attempt as its owner sees it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt_id: String,
    pub status: AttemptStatus,
    pub round_id: i64,
    pub item_id: i64,
    pub qty: i64,
    /// Absent while `processing`.
    pub unit_price_cents: Option<i64>,
    pub created_at_ms: i64,
    /// `ordered` and `paid`: the order to pay.
    pub order_id: Option<String>,
    /// `ordered` and `paid`: the payment deadline.
    pub pay_by_ms: Option<i64>,
    /// The same, RFC 3339.
    pub pay_by: Option<String>,
    /// `cancelled`: why (`expired`, `sold_out`, …).
    pub reason: Option<String>,
}

/// An attempt's status, for its owner only.
#[utoipa::path(
    get,
    path = "/api/attempts/{attempt_id}",
    tag = "buyer",
    security(("bearer" = [])),
    params(("attempt_id" = String, Path, description = "As the buy answered it")),
    responses(
        (status = 200, description = "The attempt", body = AttemptView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such attempt of the caller", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "attempt", skip_all, fields(attempt_id = %raw))]
pub async fn get(
    State(st): State<AppState>,
    Caller(claims): Caller,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: AttemptId = raw.parse().map_err(|_| ApiError::not_found())?;
    if let Some(e) = st.durable.journal.pending(&raw) {
        if e.user != claims.sub {
            return Err(ApiError::not_found());
        }
        return Ok(Json(json!({
            "attempt_id": raw,
            "status": AttemptStatus::Processing.as_str(),
            "round_id": id.round_id,
            "item_id": id.item_id,
            "qty": e.qty,
            "created_at_ms": e.arrived_ms,
        })));
    }
    let rec = match st.sale.attempt(&id).await? {
        Some(r) => r,
        None => st
            .sale
            .journal_refusal(&id)
            .await?
            .ok_or_else(ApiError::not_found)?,
    };
    if rec.user != claims.sub {
        return Err(ApiError::not_found());
    }
    let status = AttemptStatus::from_redis(&rec.status).unwrap_or(AttemptStatus::Queued);
    let mut body = json!({
        "attempt_id": raw,
        "status": status.as_str(),
        "round_id": id.round_id,
        "item_id": id.item_id,
        "qty": rec.qty,
        "unit_price_cents": rec.price_cents,
        "created_at_ms": rec.created_ms,
    });
    let obj = body.as_object_mut().expect("object");
    if matches!(status, AttemptStatus::Ordered | AttemptStatus::Paid) {
        obj.insert("order_id".into(), json!(rec.order_id));
        if let Some(ms) = rec.pay_by_ms {
            obj.insert("pay_by_ms".into(), json!(ms));
            if let Some(t) = chrono::DateTime::from_timestamp_millis(ms) {
                obj.insert("pay_by".into(), json!(t.to_rfc3339()));
            }
        }
    }
    if status == AttemptStatus::Cancelled {
        obj.insert("reason".into(), json!(rec.reason));
    }
    Ok(Json(body))
}
