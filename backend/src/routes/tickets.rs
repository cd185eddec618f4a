//! `POST /api/rounds/{round_id}/items/{item_id}/ticket`: hands a buyer the
//! purchase ticket its buy of the item must carry (`tickets.enabled`), and
//! `GET /api/rounds/{round_id}/items/{item_id}/challenge`: the
//! proof-of-work challenge the ticket request must carry solved when the
//! round has a `pow_difficulty`.
//!
//! A ticket is handed out from `tickets.lead_ms` before the round starts
//! until it ends, to at most `tickets.per_user_limit` requests per buyer
//! and `tickets.per_client_limit` per client address per item and
//! `tickets.limit_window_ms` (counted in Redis, so every backend node
//! shares them). It lives `tickets.ttl_ms`, never past the round's end.
//! Signing is `seckill_proto::ticket`'s. The buy checks its ticket
//! ([`check`]) before anything else and spends it ([`spend`]) once the
//! request is valid: one buy per ticket.
//!
//! A ticket request is checked against the window first, from the item's
//! facts the backend holds in memory (`item_facts`, read from the
//! database and cached): one before the window or after the end costs
//! Redis nothing. Then its challenge solution is verified (two HMACs, no
//! I/O), and only then are the request limits counted and the solution
//! spent in Redis (`SET NX`, one ticket per solution).
//!
//! A challenge (`seckill_proto::pow`) is stateless and bound to the buyer,
//! round and item, so it is handed out from the round's approval on,
//! without Redis, and lives `tickets.challenge_ttl_ms`, never past the
//! round's end: a page solves it during the countdown.

use axum::{
    Json,
    extract::{Path, State},
};
use seckill_proto::{
    pow::{PowError, Solved},
    ticket::{Ticket, TicketError},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{Caller, ClientAddr, JsonBody},
    path_id,
};
use crate::lifecycle::buy::{ItemFacts, item_facts};

/// A ticket request's body: empty, or the solved challenge of a round
/// with a `pow_difficulty`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketBody {
    /// The solution as an ALTCHA client sends it: the base64 of
    /// `{"challenge": <the challenge as received>, "solution":
    /// {"counter", "derivedKey"}}`.
    #[serde(default)]
    pub pow: Option<String>,
}

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
    request_body(content = Option<TicketBody>, description = "Empty, or with the solved challenge when the round has a `pow_difficulty`", content_type = "application/json"),
    responses(
        (status = 200, description = "A ticket for this buyer and item", body = TicketAnswer),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The round's challenge solution is missing (`challenge_required`), refused (`challenge_failed`: malformed, forged, unsolved, expired, another buyer's or item's) or already used (`challenge_used`)", body = ErrorBody),
        (status = 404, description = "No such item on sale, or tickets not enabled", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
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
    JsonBody(body): JsonBody<TicketBody>,
) -> Result<Json<Value>, ApiError> {
    let body = body.unwrap_or_default();
    let result = issue_inner(&st, &caller, &client, &round, &item, body.pow.as_deref()).await;
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
    pow: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    let round_id = path_id(round)?;
    let item_id = path_id(item)?;
    let Some(keys) = &st.tickets else {
        return Err(ApiError::NotFound(
            "purchase tickets are not enabled for this sale".into(),
        ));
    };
    let cfg = &st.config.tickets;
    // The window, from memory: nothing before it reaches Redis.
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
    let solved = verify_solution(st, &facts, pow, &claims.sub, round_id, item_id, now)?;
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
    if let Some(s) = &solved {
        let fresh = st
            .sale
            .spend_challenge(round_id, item_id, &s.nonce, &claims.sub, s.expires_ms, now)
            .await?;
        count_challenge(if fresh { "solved" } else { "used" });
        if !fresh {
            return Err(ApiError::ChallengeUsed);
        }
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

/// The verified challenge solution of a ticket request (`None`: the round
/// asks for none, and a solution sent anyway is ignored).
fn verify_solution(
    st: &AppState,
    facts: &ItemFacts,
    pow: Option<&str>,
    user: &str,
    round_id: i64,
    item_id: i64,
    now: i64,
) -> Result<Option<Solved>, ApiError> {
    let Some(keys) = st.pow.as_ref().filter(|_| facts.pow_difficulty > 0) else {
        return Ok(None);
    };
    keys.verify(pow, user, round_id, item_id, now)
        .map(Some)
        .map_err(|e: PowError| {
            count_challenge(e.label());
            e.into()
        })
}

fn count_challenge(outcome: &'static str) {
    metrics::counter!("seckill_challenge_total", "outcome" => outcome).increment(1);
}

/// An ALTCHA proof-of-work v2 challenge (`seckill_proto::pow`), as an
/// ALTCHA client takes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // describes the JSON `challenge` builds
pub struct ChallengeAnswer {
    /// `algorithm` (`PBKDF2/SHA-256`), `cost`, `keyLength`, `keyPrefix`,
    /// `keySignature`, `nonce`, `salt` and `data` (`user`, `round_id`,
    /// `item_id`, `expires_at_ms`).
    #[schema(value_type = Object)]
    parameters: (),
    /// HMAC-SHA256 of the parameters (hex).
    signature: String,
}

#[utoipa::path(
    get,
    path = "/api/rounds/{round_id}/items/{item_id}/challenge",
    tag = "buyer",
    security(("bearer" = [])),
    params(
        ("round_id" = i64, Path, description = "The round"),
        ("item_id" = i64, Path, description = "The item"),
    ),
    responses(
        (status = 200, description = "A challenge for this buyer and item; its solution goes in the ticket request's `pow`", body = ChallengeAnswer),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 404, description = "No such item on sale (`not_found`), or no challenge to solve: tickets not enabled or the round's `pow_difficulty` is 0 (`no_challenge`)", body = ErrorBody),
        (status = 410, description = "The sale ended", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
)]
#[tracing::instrument(name = "challenge", skip_all, fields(round_id = %round, item_id = %item, user = %caller.0.sub))]
pub async fn challenge(
    State(st): State<AppState>,
    caller: Caller,
    Path((round, item)): Path<(String, String)>,
) -> Result<Json<seckill_proto::pow::Challenge>, ApiError> {
    let result = challenge_inner(&st, &caller, &round, &item).await;
    if result.is_ok() {
        count_challenge("issued");
    }
    result
}

async fn challenge_inner(
    st: &AppState,
    Caller(claims): &Caller,
    round: &str,
    item: &str,
) -> Result<Json<seckill_proto::pow::Challenge>, ApiError> {
    let round_id = path_id(round)?;
    let item_id = path_id(item)?;
    let Some(keys) = &st.pow else {
        return Err(ApiError::NoChallenge(
            "purchase tickets are not enabled for this sale".into(),
        ));
    };
    let facts = item_facts(&st.lifecycle, round_id, item_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such item on sale".into()))?;
    if facts.pow_difficulty <= 0 {
        return Err(ApiError::NoChallenge(
            "this round's tickets ask for no challenge".into(),
        ));
    }
    let now = st.clock.now_ms();
    if now >= facts.ends_ms {
        return Err(ApiError::Ended);
    }
    let expires_ms = now
        .saturating_add(st.config.tickets.challenge_ttl_ms as i64)
        .min(facts.ends_ms);
    let difficulty = u32::try_from(facts.pow_difficulty).unwrap_or(u32::MAX);
    Ok(Json(keys.challenge(
        &claims.sub,
        round_id,
        item_id,
        difficulty,
        expires_ms,
    )))
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
