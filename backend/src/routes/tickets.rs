//! `POST /api/rounds/{round_id}/items/{item_id}/ticket`: hands a buyer the
//! purchase ticket its buy of the item must carry (`tickets.enabled`).
//!
//! A ticket is handed out from `tickets.lead_ms` before the round starts
//! until it ends, to at most `tickets.per_user_limit` requests per buyer
//! and `tickets.per_client_limit` per client address per item and
//! `tickets.limit_window_ms` (counted in Redis, so every backend node
//! shares them). It lives `tickets.ttl_ms`, never past the round's end.
//! Signing is `seckill_proto::ticket`'s. The buy checks its ticket
//! ([`check`]) before anything else and spends it ([`spend`]) once the
//! request is valid: one buy per ticket.

use axum::{
    Json,
    extract::{Path, State},
};
use seckill_proto::ticket::{Ticket, TicketError};
use serde_json::{Value, json};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{Caller, ClientAddr},
    path_id,
};
use crate::lifecycle::buy::item_facts;

/// A purchase ticket and where to buy with it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the JSON `issue` builds
pub struct TicketAnswer {
    /// Goes in the buy's `x-seckill-ticket` header; buys once.
    ticket: String,
    /// The path to `POST` the buy to.
    buy_path: String,
    /// Unix ms after which the ticket no longer buys.
    expires_at_ms: i64,
}

#[utoipa::path(
    post,
    path = "/api/rounds/{round_id}/items/{item_id}/ticket",
    tag = "buyer",
    security(("bearer" = [])),
    params(
        ("round_id" = i64, Path, description = "The round"),
        ("item_id" = i64, Path, description = "The item"),
    ),
    responses(
        (status = 200, description = "A ticket for this buyer and item", body = TicketAnswer),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such item on sale, or tickets not enabled", body = ErrorBody),
        (status = 410, description = "The sale ended", body = ErrorBody),
        (status = 425, description = "Before the ticket window (`tickets.lead_ms` before the start)", body = ErrorBody),
        (status = 429, description = "Too many ticket requests from this buyer or address", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ),
)]
#[tracing::instrument(name = "ticket", skip_all, fields(round_id = %round, item_id = %item, user = %caller.0.sub))]
pub async fn issue(
    State(st): State<AppState>,
    caller: Caller,
    ClientAddr(client): ClientAddr,
    Path((round, item)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let result = issue_inner(&st, &caller, &client, &round, &item).await;
    let outcome = match &result {
        Ok(_) => "issued",
        Err(e) => e.code(),
    };
    metrics::counter!("seckill_ticket_requests_total", "outcome" => outcome).increment(1);
    result
}

async fn issue_inner(
    st: &AppState,
    Caller(claims): &Caller,
    client: &str,
    round: &str,
    item: &str,
) -> Result<Json<Value>, ApiError> {
    let round_id = path_id(round)?;
    let item_id = path_id(item)?;
    let Some(keys) = &st.tickets else {
        return Err(ApiError::NotFound(
            "purchase tickets are not enabled for this sale".into(),
        ));
    };
    let cfg = &st.config.tickets;
    let counts = st
        .sale
        .count_ticket_request(round_id, item_id, &claims.sub, client, cfg.limit_window_ms)
        .await?;
    if counts.user > cfg.per_user_limit {
        return Err(ApiError::RateLimited {
            message: "too many ticket requests from you".into(),
            retry_after_ms: counts.user_reset_ms,
        });
    }
    if counts.client > cfg.per_client_limit {
        return Err(ApiError::RateLimited {
            message: "too many ticket requests from your address".into(),
            retry_after_ms: counts.client_reset_ms,
        });
    }
    let facts = item_facts(&st.lifecycle, round_id, item_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such item on sale".into()))?;
    let now = st.clock.now_ms();
    if now < facts.starts_ms.saturating_sub(cfg.lead_ms as i64) {
        return Err(ApiError::NotStarted {
            starts_at_ms: facts.starts_ms,
        });
    }
    if now >= facts.ends_ms {
        return Err(ApiError::Ended);
    }
    let t = Ticket {
        user: claims.sub.clone(),
        round_id,
        item_id,
        expires_ms: now.saturating_add(cfg.ttl_ms as i64).min(facts.ends_ms),
        nonce: ulid::Ulid::new().random() as u64,
    };
    Ok(Json(json!({
        "ticket": keys.issue(&t),
        "buy_path": format!("/api/rounds/{round_id}/items/{item_id}/buy"),
        "expires_at_ms": t.expires_ms,
    })))
}

/// Verifies the ticket a buy carries (`None`: tickets are off), without
/// spending it.
pub(crate) fn check(
    st: &AppState,
    header: Option<&axum::http::HeaderValue>,
    user: &str,
    round_id: i64,
    item_id: i64,
) -> Result<Option<Ticket>, ApiError> {
    let Some(keys) = &st.tickets else {
        return Ok(None);
    };
    let text = match header {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| TicketError::Malformed)?),
    };
    Ok(Some(keys.verify(
        text,
        user,
        round_id,
        item_id,
        st.clock.now_ms(),
    )?))
}

/// Spends a verified ticket: `ticket_used` when it already bought. When
/// Redis cannot be asked the buy goes on unrecorded (it is journaled, and
/// the per-buyer limit still holds) rather than failing a sale that sells
/// through an outage.
pub(crate) async fn spend(st: &AppState, t: &Ticket) -> Result<(), ApiError> {
    match st
        .sale
        .spend_ticket(
            t.round_id,
            t.item_id,
            &t.id(),
            &t.user,
            t.expires_ms,
            st.clock.now_ms(),
        )
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::TicketUsed),
        Err(e) if e.redis_unreachable() => {
            tracing::warn!(error = %e, "ticket use not recorded: redis unreachable");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives a ticket back after a buy refused with nothing reserved for a
/// reason a retry may get past (not started, units held, unavailable).
pub(crate) async fn give_back(st: &AppState, t: &Ticket) {
    if let Err(e) = st.sale.unspend_ticket(t.round_id, t.item_id, &t.id()).await {
        tracing::warn!(error = %e, "spent ticket not given back");
    }
}
