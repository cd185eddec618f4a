//! `POST /api/rounds/{round_id}/items/{item_id}/buy`: reserve in Redis, then
//! publish the order message and answer only after the broker's confirm.

use std::time::Instant;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{Map, json};

use super::{
    AppState,
    error::ApiError,
    extract::{Caller, JsonBody},
    path_id,
};
use crate::{
    domain::{AttemptId, AttemptStatus, BuyRequest, buy::BuyBody},
    lifecycle::rebuild::{self, Ensured},
    queue::OrderMessage,
    store::sale::ReserveOutcome,
};

/// How long a buy waits for another request's rebuild of an item's counters
/// (steps of 50 ms, 2 s in all) before answering 503.
const REBUILD_WAIT_STEPS: usize = 40;
const REBUILD_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 64;

#[tracing::instrument(name = "buy", skip_all, fields(round_id = %round, item_id = %item, user = %caller.0.sub, attempt_id))]
pub async fn buy(
    State(st): State<AppState>,
    caller: Caller,
    Path((round, item)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BuyBody>,
) -> Result<Response, ApiError> {
    let result = buy_inner(&st, &caller, &round, &item, &headers, body).await;
    let outcome = match &result {
        Ok(r) if r.status() == StatusCode::ACCEPTED => "reserved",
        Ok(_) => "duplicate",
        Err(e) => e.code(),
    };
    metrics::counter!("seckill_buy_total", "outcome" => outcome).increment(1);
    result
}

async fn buy_inner(
    st: &AppState,
    Caller(claims): &Caller,
    round: &str,
    item: &str,
    headers: &HeaderMap,
    body: Option<BuyBody>,
) -> Result<Response, ApiError> {
    let round_id = path_id(round)?;
    let item_id = path_id(item)?;
    let req = BuyRequest::parse(
        body.unwrap_or(BuyBody { qty: None }),
        st.config.sale.max_qty,
    )
    .map_err(ApiError::BadRequest)?;
    let idem = match headers.get("idempotency-key") {
        None => String::new(),
        Some(v) => {
            let s = v
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    ))
                })?;
            s.to_owned()
        }
    };

    let now = st.clock.now_ms();
    let id = AttemptId::new(round_id, item_id, now);
    let start = Instant::now();
    let mut outcome = st
        .sale
        .reserve(&id, &claims.sub, req.qty, now, &idem)
        .await?;
    metrics::histogram!("seckill_reserve_seconds").record(start.elapsed().as_secs_f64());
    if outcome == ReserveOutcome::Unknown {
        // No counters: not on sale, or Redis lost them. Never sell from
        // nothing: rebuild from the database first.
        match rebuild::ensure_item(&st.lifecycle, round_id, item_id).await? {
            Ensured::NotOnSale => {}
            Ensured::Busy => {
                // Another request is rebuilding it: wait a moment for it.
                let mut ready = false;
                for _ in 0..REBUILD_WAIT_STEPS {
                    tokio::time::sleep(REBUILD_WAIT_STEP).await;
                    if st.sale.counters(round_id, item_id).await?.is_some() {
                        ready = true;
                        break;
                    }
                }
                if !ready {
                    return Err(ApiError::Unavailable(
                        "the sale's state is being rebuilt; try again in a moment".into(),
                    ));
                }
                outcome = st
                    .sale
                    .reserve(&id, &claims.sub, req.qty, now, &idem)
                    .await?;
            }
            Ensured::Ready => {
                outcome = st
                    .sale
                    .reserve(&id, &claims.sub, req.qty, now, &idem)
                    .await?;
            }
        }
    }

    match outcome {
        ReserveOutcome::Reserved { price_cents } => {
            let attempt_id = id.to_string();
            tracing::Span::current().record("attempt_id", attempt_id.as_str());
            let msg = OrderMessage {
                attempt_id: attempt_id.clone(),
                round_id,
                item_id,
                user_id: claims.sub.clone(),
                qty: req.qty,
                unit_price_cents: price_cents,
                reserved_at_ms: now,
            };
            let start = Instant::now();
            let published = st.publisher.publish(&msg).await;
            metrics::histogram!("seckill_publish_confirm_seconds")
                .record(start.elapsed().as_secs_f64());
            match published {
                Ok(()) => Ok(accepted(&attempt_id)),
                Err(e) => {
                    tracing::warn!(error = %e, "order message not confirmed; releasing the reservation");
                    let released = st
                        .sale
                        .release(&id, "unavailable", st.clock.now_ms(), false)
                        .await?;
                    if released == "released" || released == "missing" {
                        Err(ApiError::Unavailable(
                            "the order queue is unavailable; nothing was reserved, try again"
                                .into(),
                        ))
                    } else {
                        // The writer already claimed it: the message did arrive.
                        Ok(accepted(&attempt_id))
                    }
                }
            }
        }
        ReserveOutcome::Duplicate { attempt_id, status } => {
            tracing::Span::current().record("attempt_id", attempt_id.as_str());
            let status = AttemptStatus::from_redis(&status).unwrap_or(AttemptStatus::Queued);
            Ok((
                StatusCode::OK,
                Json(json!({ "attempt_id": attempt_id, "status": status.as_str() })),
            )
                .into_response())
        }
        ReserveOutcome::Limit {
            held_attempt,
            held_qty,
            limit,
        } => {
            let mut extra = Map::new();
            extra.insert("per_user_limit".into(), json!(limit));
            extra.insert("held_qty".into(), json!(held_qty));
            let message = match &held_attempt {
                Some(a) => {
                    extra.insert("attempt_id".into(), json!(a));
                    format!(
                        "you already hold attempt {a} for {held_qty} unit(s); one attempt per buyer and item, at most {limit} unit(s)"
                    )
                }
                None => format!("at most {limit} unit(s) per buyer"),
            };
            Err(ApiError::LimitExceeded { message, extra })
        }
        ReserveOutcome::Unknown => Err(ApiError::NotFound("no such item on sale".into())),
        ReserveOutcome::NotStarted { starts_ms } => Err(ApiError::NotStarted {
            starts_at_ms: starts_ms,
        }),
        ReserveOutcome::Ended => Err(ApiError::Ended),
        ReserveOutcome::SoldOut => Err(ApiError::SoldOut("sold out".into(), Map::new())),
        ReserveOutcome::Insufficient { available } => {
            let mut extra = Map::new();
            extra.insert("available".into(), json!(available));
            Err(ApiError::SoldOut(
                format!("only {available} unit(s) left"),
                extra,
            ))
        }
    }
}

fn accepted(attempt_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "attempt_id": attempt_id, "status": "queued" })),
    )
        .into_response()
}
