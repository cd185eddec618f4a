//! `POST /api/rounds/{round_id}/items/{item_id}/buy`: validates the request
//! and maps the buy's outcome ([`crate::lifecycle::buy`]) to HTTP.
//!
//! A buy forwarded by an edge names its permits in
//! [`permit::REQUEST_HEADER`]; every answer to such a buy says in
//! [`permit::RESPONSE_HEADER`] what happened to them (`kept` when the buy
//! was refused before reaching Redis), except when that is unknown (the
//! reserve's reply was lost): the edge then renews its lease instead.
//!
//! When `tickets.enabled` is on, a buy must carry its purchase ticket in
//! [`ticket::HEADER`] (`x-seckill-ticket`): checked first (after the
//! bearer token), spent once the request is otherwise valid, given back
//! when the buy is refused with nothing reserved for a reason a retry may
//! get past ([`gives_ticket_back`]).
//!
//! A buy journaled while Redis is away answers `202 {"status":
//! "processing"}` with `void` (the reserve did not run and the edge's
//! lease is untouched, but the edge must not forward more buys on those
//! permits while Redis is away; the journal's replay runs it later
//! without a permit) — or no permit header when a
//! reserve had been sent and got no answer before the buy was journaled.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use seckill_proto::{
    permit::{self, EdgePermit, Effect},
    ticket,
};
use serde_json::{Map, json};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{Caller, JsonBody},
    path_id, tickets,
};
use crate::{
    domain::{AttemptStatus, BuyRequest, buy::BuyBody},
    lifecycle::buy::{self, Bought, Buy, BuyError},
};

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 64;

/// A buy's answer: the attempt to poll.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BuyAnswer {
    pub attempt_id: String,
    /// `queued` (reserved), `processing` (journaled while Redis is away), or
    /// on a retry of the same `Idempotency-Key` the attempt's status now.
    pub status: AttemptStatus,
}

/// Reserves units of an item for the caller and queues the order.
#[utoipa::path(
    post,
    path = "/api/rounds/{round_id}/items/{item_id}/buy",
    tag = "buyer",
    security(("bearer" = [])),
    params(
        ("round_id" = i64, Path, description = "The round"),
        ("item_id" = i64, Path, description = "The item"),
        ("Idempotency-Key" = Option<String>, Header, description = "1-64 visible ASCII characters; a retry with the same key answers the first buy's attempt"),
        ("x-seckill-permit" = Option<String>, Header, description = "Set by an edge: `<node>;<generation>;<units>`; the answer's header of the same name says what happened to the permits"),
        ("x-seckill-ticket" = Option<String>, Header, description = "The purchase ticket (`POST …/ticket`); required when `tickets.enabled`, buys once"),
    ),
    request_body(content = Option<BuyBody>, description = "Empty for one unit", content_type = "application/json"),
    responses(
        (status = 202, description = "Reserved (`queued`) or journaled (`processing`)", body = BuyAnswer),
        (status = 200, description = "A retry of an earlier buy: its attempt", body = BuyAnswer),
        (status = 400, description = "Malformed quantity, header or body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such item on sale", body = ErrorBody),
        (status = 410, description = "`sold_out` or `ended`", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Over the per-buyer limit", body = ErrorBody),
        (status = 425, description = "The sale has not started", body = ErrorBody),
        (status = 429, description = "The remaining units are being bought; retry", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds"))),
        (status = 503, description = "A store or the queue is unavailable; nothing reserved", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "buy", skip_all, fields(round_id = %round, item_id = %item, user = %caller.0.sub, attempt_id))]
pub async fn buy(
    State(st): State<AppState>,
    caller: Caller,
    Path((round, item)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BuyBody>,
) -> Response {
    let carried = headers.contains_key(permit::REQUEST_HEADER);
    // Refused before the reserve ran: the permits are untouched.
    let mut effect = Some(Effect::Kept);
    let result = buy_inner(&st, &caller, &round, &item, &headers, body, &mut effect).await;
    let outcome = match &result {
        Ok(r) if r.status() == StatusCode::ACCEPTED && is_journaled(r) => "journaled",
        Ok(r) if r.status() == StatusCode::ACCEPTED => "reserved",
        Ok(_) => "duplicate",
        Err(e) => e.code(),
    };
    metrics::counter!("seckill_buy_total", "outcome" => outcome).increment(1);
    st.lifecycle.outcomes.record(outcome);
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    if let (true, Some(e)) = (carried, effect) {
        resp.headers_mut().insert(
            permit::RESPONSE_HEADER,
            HeaderValue::from_static(e.as_str()),
        );
    }
    resp
}

async fn buy_inner(
    st: &AppState,
    Caller(claims): &Caller,
    round: &str,
    item: &str,
    headers: &HeaderMap,
    body: Option<BuyBody>,
    effect: &mut Option<Effect>,
) -> Result<Response, ApiError> {
    let round_id = path_id(round)?;
    let item_id = path_id(item)?;
    let ticket = tickets::check(
        st,
        headers.get(ticket::HEADER),
        &claims.sub,
        round_id,
        item_id,
    )?;
    let permit = match headers.get(permit::REQUEST_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(EdgePermit::parse).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{} must be <node>;<generation>;<units>",
                permit::REQUEST_HEADER
            ))
        })?),
    };
    let req = BuyRequest::parse(
        body.unwrap_or(BuyBody { qty: None }),
        st.config.sale.max_qty,
    )
    .map_err(ApiError::BadRequest)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => String::new(),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ))
            })?
            .to_owned(),
    };
    let req = Buy {
        round_id,
        item_id,
        user: claims.sub.clone(),
        qty: req.qty,
        idempotency_key,
        permit,
    };
    if let Some(t) = &ticket {
        tickets::spend(st, t).await?;
    }
    let done = buy::buy(
        st.lifecycle.clone(),
        st.publisher.clone(),
        st.durable.clone(),
        req,
    )
    .await;
    *effect = done.permit;
    if let (Some(t), Err(e)) = (&ticket, &done.outcome)
        && gives_ticket_back(e)
    {
        tickets::give_back(st, t).await;
    }
    match done.outcome {
        Ok(Bought::Accepted { attempt_id }) => {
            tracing::Span::current().record("attempt_id", attempt_id.as_str());
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "attempt_id": attempt_id, "status": AttemptStatus::Queued.as_str() })),
            )
                .into_response())
        }
        Ok(Bought::Journaled { attempt_id }) => {
            tracing::Span::current().record("attempt_id", attempt_id.as_str());
            let mut resp = (
                StatusCode::ACCEPTED,
                Json(
                    json!({ "attempt_id": attempt_id, "status": AttemptStatus::Processing.as_str() }),
                ),
            )
                .into_response();
            resp.extensions_mut().insert(Journaled);
            Ok(resp)
        }
        Ok(Bought::Retry { attempt_id, status }) => {
            tracing::Span::current().record("attempt_id", attempt_id.as_str());
            Ok((
                StatusCode::OK,
                Json(json!({ "attempt_id": attempt_id, "status": status.as_str() })),
            )
                .into_response())
        }
        Err(e) => Err(refusal(e)),
    }
}

/// Refusals that reserved nothing and that a retry of the same buy may get
/// past: its ticket is not spent by them.
fn gives_ticket_back(e: &BuyError) -> bool {
    matches!(
        e,
        BuyError::NotStarted { .. }
            | BuyError::Held { .. }
            | BuyError::Rebuilding
            | BuyError::QueueUnavailable
            | BuyError::JournalFull
            | BuyError::NotDurable(_)
    )
}

/// Marks the answer of a journaled buy (for the metrics' outcome label).
#[derive(Clone, Copy)]
struct Journaled;

fn is_journaled(r: &Response) -> bool {
    r.extensions().get::<Journaled>().is_some()
}

fn refusal(e: BuyError) -> ApiError {
    match e {
        BuyError::Limit {
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
            ApiError::LimitExceeded { message, extra }
        }
        BuyError::NotOnSale => ApiError::NotFound("no such item on sale".into()),
        BuyError::NotStarted { starts_ms } => ApiError::NotStarted {
            starts_at_ms: starts_ms,
        },
        BuyError::Ended => ApiError::Ended,
        BuyError::SoldOut => ApiError::SoldOut("sold out".into(), Map::new()),
        BuyError::Insufficient { available } => {
            let mut extra = Map::new();
            extra.insert("available".into(), json!(available));
            ApiError::SoldOut(format!("only {available} unit(s) left"), extra)
        }
        BuyError::Held { retry_after_ms } => ApiError::RateLimited {
            message: "all remaining units are being bought, try again".into(),
            retry_after_ms,
        },
        BuyError::Rebuilding => {
            ApiError::Unavailable("the sale's state is being rebuilt; try again in a moment".into())
        }
        BuyError::QueueUnavailable => ApiError::Unavailable(
            "the order queue is unavailable; nothing was reserved, try again".into(),
        ),
        BuyError::JournalFull => ApiError::Unavailable(
            "the sale's state store is unavailable and enough buys are already waiting for this item; nothing was reserved, try again".into(),
        ),
        BuyError::NotDurable(_) => ApiError::Unavailable(
            "the buy could not be recorded durably; nothing was reserved, try again".into(),
        ),
        BuyError::Unanswered(e) | BuyError::Store(e) => e.into(),
    }
}
