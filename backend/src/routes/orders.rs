//! `POST /api/orders/{order_id}/pay`: the order's owner pays it (anyone
//! else gets the same 404 as for an unknown order). Paying twice is one
//! payment; paying an expired or cancelled order is refused with 409 and
//! charges nothing, and a charge that went through while its order was
//! cancelled is refunded and answered 409 with `refunded`.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Map, Value, json};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::Caller,
};
use crate::lifecycle::settle::PayError;

/// A paid order.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub order_id: String,
    /// Always `paid`.
    pub status: String,
    pub amount_cents: i64,
    pub paid_at_ms: Option<i64>,
    pub charge_id: Option<String>,
}

/// Pays the caller's order (paying twice is one payment).
#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/pay",
    tag = "buyer",
    security(("bearer" = [])),
    params(("order_id" = String, Path, description = "The attempt's `order_id`")),
    responses(
        (status = 200, description = "Paid", body = Payment),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 402, description = "The provider declined; still payable until `pay_by`", body = ErrorBody),
        (status = 404, description = "No such order of the caller", body = ErrorBody),
        (status = 409, description = "Expired, cancelled, being paid, or refunded", body = ErrorBody),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
        (status = 504, description = "The provider did not answer; poll the attempt", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "pay_order", skip_all, fields(order_id = %order_id, user = %claims.sub))]
pub async fn pay(
    State(st): State<AppState>,
    Caller(claims): Caller,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let result = st.lifecycle.pay(&order_id, &claims.sub).await;
    let outcome = match &result {
        Ok(_) => "paid",
        Err(PayError::NotFound) => "not_found",
        Err(PayError::Closed { .. }) => "closed",
        Err(PayError::InProgress) => "in_progress",
        Err(PayError::Declined(_)) => "declined",
        Err(PayError::Pending) => "pending",
        Err(PayError::Refunded { .. }) => "refunded",
        Err(PayError::Store(_)) => "unavailable",
    };
    metrics::counter!("seckill_pay_requests_total", "outcome" => outcome).increment(1);
    match result {
        Ok(o) => Ok(Json(json!({
            "order_id": o.id,
            "status": "paid",
            "amount_cents": o.qty.saturating_mul(o.unit_price_cents),
            "paid_at_ms": o.paid_at_ms,
            "charge_id": o.charge_id,
        }))),
        Err(PayError::NotFound) => Err(ApiError::NotFound("no such order".into())),
        Err(e @ PayError::Closed { .. }) => {
            let PayError::Closed { status, reason } = &e else {
                unreachable!()
            };
            let mut extra = Map::new();
            extra.insert("order_status".into(), json!(status));
            extra.insert("reason".into(), json!(reason));
            Err(ApiError::ConflictWith {
                message: e.to_string(),
                extra,
            })
        }
        Err(e @ PayError::InProgress) => {
            let mut extra = Map::new();
            extra.insert("order_status".into(), json!("paying"));
            Err(ApiError::ConflictWith {
                message: e.to_string(),
                extra,
            })
        }
        Err(e @ PayError::Refunded { .. }) => {
            let PayError::Refunded { reason, refunded } = &e else {
                unreachable!()
            };
            let mut extra = Map::new();
            extra.insert("order_status".into(), json!("cancelled"));
            extra.insert("reason".into(), json!(reason));
            extra.insert("refunded".into(), json!(refunded));
            Err(ApiError::ConflictWith {
                message: e.to_string(),
                extra,
            })
        }
        Err(e @ PayError::Declined(_)) => Err(ApiError::PaymentDeclined(e.to_string())),
        Err(e @ PayError::Pending) => Err(ApiError::PaymentPending(e.to_string())),
        Err(PayError::Store(e)) => Err(e.into()),
    }
}
