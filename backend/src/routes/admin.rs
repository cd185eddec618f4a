//! Operator API: create and submit rounds, approve or reject them (a
//! different person than the submitter), preheat, read live counters; list,
//! replay and discard dead letters; reconcile Redis with the database.
//!
//! Approval is the step that opens a sale: the status changes first (a
//! conditional update, so two reviewers cannot both win), then every item is
//! preheated in Redis and its static page rendered. If Redis or the pages
//! directory fails half-way, `POST …/preheat` finishes the job. Preheat
//! never overwrites live counters, and creates missing ones from the
//! database (orders already taken count), never from the raw stock.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{AdminRefusals, ApiError, BodyRefusals, ErrorBody},
    extract::{Admin, Approver, JsonBody},
    path_id,
    rounds::{AdminRound, admin_round},
};
use crate::{
    domain::{NewRound, RoundStatus, Transition, round::NewRoundBody, round::TransitionError},
    lifecycle::{dead_letters, rebuild},
    store::{
        rounds,
        rounds::RoundWithItems,
        sale::{Counters, RestoreMode},
    },
};

/// Creates a round in `draft`.
#[utoipa::path(
    post,
    path = "/admin/rounds",
    tag = "admin",
    security(("bearer" = [])),
    request_body(content = NewRoundBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The round created", body = AdminRound),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        BodyRefusals,
    )
)]
pub async fn create_round(
    State(st): State<AppState>,
    Admin(caller): Admin,
    JsonBody(body): JsonBody<NewRoundBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.ok_or_else(|| ApiError::BadRequest("a round body is required".into()))?;
    let new = NewRound::parse(body).map_err(ApiError::BadRequest)?;
    let r = rounds::create(&st.db, &new, &caller.sub, st.clock.now_ms()).await?;
    tracing::info!(round_id = r.round.id, by = %caller.sub, "round created");
    Ok((StatusCode::CREATED, Json(admin_round(&r))))
}

pub(super) async fn load(st: &AppState, round: &str) -> Result<RoundWithItems, ApiError> {
    let id = path_id(round)?;
    rounds::get(&st.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such round".into()))
}

/// A round with its items and review state.
#[utoipa::path(
    get,
    path = "/admin/rounds/{round_id}",
    tag = "admin",
    security(("bearer" = [])),
    params(("round_id" = i64, Path, description = "The round")),
    responses(
        (status = 200, description = "The round", body = AdminRound),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 404, description = "No such round", body = ErrorBody),
    )
)]
pub async fn get_round(
    State(st): State<AppState>,
    Admin(_): Admin,
    Path(round): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(admin_round(&load(&st, &round).await?)))
}

async fn change(
    st: &AppState,
    round: &str,
    t: Transition,
    actor: &str,
    reason: Option<&str>,
) -> Result<RoundWithItems, ApiError> {
    let r = load(st, round).await?;
    let from = RoundStatus::parse(&r.round.status)
        .ok_or_else(|| ApiError::Internal(format!("unknown round status {}", r.round.status)))?;
    let to = t
        .apply(from, r.round.submitted_by.as_deref(), actor)
        .map_err(|e| match e {
            TransitionError::SelfReview => ApiError::Forbidden(e.to_string()),
            TransitionError::WrongState { .. } => ApiError::Conflict(e.to_string()),
        })?;
    let now = st.clock.now_ms();
    if !rounds::transition(&st.db, r.round.id, from, to, actor, reason, now).await? {
        return Err(ApiError::Conflict(
            "the round changed meanwhile; reload it".into(),
        ));
    }
    tracing::info!(round_id = r.round.id, by = %actor, status = to.as_str(), "round status changed");
    load(st, round).await
}

/// Submits a draft (or rejected) round for review.
#[utoipa::path(
    post,
    path = "/admin/rounds/{round_id}/submit",
    tag = "admin",
    security(("bearer" = [])),
    params(("round_id" = i64, Path, description = "The round")),
    responses(
        (status = 200, description = "The round, submitted", body = AdminRound),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 404, description = "No such round", body = ErrorBody),
        (status = 409, description = "The round is not in a state this step starts from, or changed meanwhile", body = ErrorBody),
    )
)]
pub async fn submit(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Path(round): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = change(&st, &round, Transition::Submit, &caller.sub, None).await?;
    Ok(Json(admin_round(&r)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    /// At most 1000 characters.
    #[serde(default)]
    reason: Option<String>,
}

/// Rejects a submitted round, with an optional reason.
#[utoipa::path(
    post,
    path = "/admin/rounds/{round_id}/reject",
    tag = "admin",
    security(("bearer" = [])),
    params(("round_id" = i64, Path, description = "The round")),
    request_body(content = Option<RejectBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The round, rejected", body = AdminRound),
        AdminRefusals,
        (status = 403, description = "Not an approver token, or the approver submitted the round", body = ErrorBody),
        BodyRefusals,
        (status = 404, description = "No such round", body = ErrorBody),
        (status = 409, description = "The round is not in a state this step starts from, or changed meanwhile", body = ErrorBody),
    )
)]
pub async fn reject(
    State(st): State<AppState>,
    Approver(caller): Approver,
    Path(round): Path<String>,
    JsonBody(body): JsonBody<RejectBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = body.and_then(|b| b.reason);
    if reason.as_ref().is_some_and(|r| r.chars().count() > 1000) {
        return Err(ApiError::BadRequest(
            "reason must be at most 1000 characters".into(),
        ));
    }
    let r = change(
        &st,
        &round,
        Transition::Reject,
        &caller.sub,
        reason.as_deref(),
    )
    .await?;
    Ok(Json(admin_round(&r)))
}

/// Approves a submitted round: the sale opens (preheated, pages rendered).
#[utoipa::path(
    post,
    path = "/admin/rounds/{round_id}/approve",
    tag = "admin",
    security(("bearer" = [])),
    params(("round_id" = i64, Path, description = "The round")),
    responses(
        (status = 200, description = "The round, approved and preheated", body = AdminRound),
        AdminRefusals,
        (status = 403, description = "Not an approver token, or the approver submitted the round", body = ErrorBody),
        (status = 404, description = "No such round", body = ErrorBody),
        (status = 409, description = "The round is not in a state this step starts from, or changed meanwhile", body = ErrorBody),
    )
)]
pub async fn approve(
    State(st): State<AppState>,
    Approver(caller): Approver,
    Path(round): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = change(&st, &round, Transition::Approve, &caller.sub, None).await?;
    open_sale(&st, &r).await?;
    Ok(Json(admin_round(&r)))
}

/// Finishes an approved round's preheat and pages (never overwrites live counters).
#[utoipa::path(
    post,
    path = "/admin/rounds/{round_id}/preheat",
    tag = "admin",
    security(("bearer" = [])),
    params(("round_id" = i64, Path, description = "The round")),
    responses(
        (status = 200, description = "The round, preheated", body = AdminRound),
        AdminRefusals,
        (status = 403, description = "Not an approver token, or the approver submitted the round", body = ErrorBody),
        (status = 404, description = "No such round", body = ErrorBody),
        (status = 409, description = "The round is not in a state this step starts from, or changed meanwhile", body = ErrorBody),
    )
)]
pub async fn preheat(
    State(st): State<AppState>,
    Approver(_): Approver,
    Path(round): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = load(&st, &round).await?;
    if r.round.status != RoundStatus::Approved.as_str() {
        return Err(ApiError::Conflict(
            "only an approved round is preheated".into(),
        ));
    }
    open_sale(&st, &r).await?;
    Ok(Json(admin_round(&r)))
}

/// Preheats every item and renders its page, then drops the rounds cache.
async fn open_sale(st: &AppState, r: &RoundWithItems) -> Result<(), ApiError> {
    for it in &r.items {
        // The sweep may be verifying the item this moment: wait for it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while rebuild::rebuild_item(&st.lifecycle, &r.round, it, RestoreMode::Verify)
            .await?
            .is_none()
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable(
                    "an item of this round is being rebuilt; try again in a moment".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        st.sale.preheat(&rebuild::preheat_of(&r.round, it)).await?;
        st.pages.render_item(&r.round, it).await.map_err(|e| {
            tracing::error!(error = %e, "cannot render a sale page");
            ApiError::Unavailable("cannot write the sale pages; run preheat again".into())
        })?;
    }
    st.rounds_cache.invalidate_all();
    tracing::info!(
        round_id = r.round.id,
        items = r.items.len(),
        "sale preheated and rendered"
    );
    Ok(())
}

/// An item's live counters in Redis.
#[utoipa::path(
    get,
    path = "/admin/rounds/{round_id}/items/{item_id}/stock",
    tag = "admin",
    security(("bearer" = [])),
    params(
        ("round_id" = i64, Path, description = "The round"),
        ("item_id" = i64, Path, description = "The item"),
    ),
    responses(
        (status = 200, description = "The counters", body = ItemStock),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 404, description = "The item is not preheated", body = ErrorBody),
    )
)]
pub async fn stock(
    State(st): State<AppState>,
    Admin(_): Admin,
    Path((round, item)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let round_id = path_id(&round)?;
    let item_id = path_id(&item)?;
    item_stock(&st, round_id, item_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("item not preheated".into()))
}

/// An item's live counters, as [`item_stock`] answers them.
#[derive(Serialize, ToSchema)]
pub struct ItemStock {
    pub round_id: i64,
    pub item_id: i64,
    #[serde(flatten)]
    #[schema(inline)]
    pub counters: Counters,
}

/// `GET /admin/dead-letters`'s answer.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    pub count: usize,
    pub dead_letters: Vec<dead_letters::DeadLetter>,
}

/// A replay's or discard's answer.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterResults {
    pub results: Vec<dead_letters::Outcome>,
}

/// A reconciliation's answer.
#[derive(Serialize, ToSchema)]
pub struct ReconcileReport {
    /// Every item's counters match the database.
    pub consistent: bool,
    /// Items rebuilt (only by `…/repair`).
    pub repaired: usize,
    pub items: Vec<rebuild::ItemReport>,
}

/// An item's live counters from Redis as the admin API shows them
/// (`None`: the item is not preheated).
pub(super) async fn item_stock(
    st: &AppState,
    round_id: i64,
    item_id: i64,
) -> Result<Option<Value>, ApiError> {
    let Some(c) = st.sale.counters(round_id, item_id).await? else {
        return Ok(None);
    };
    Ok(Some(json!({
        "round_id": round_id,
        "item_id": item_id,
        "total": c.total,
        "available": c.available,
        "reserved": c.reserved,
        "sold": c.sold,
    })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Most dead letters listed (default 100).
    pub limit: Option<usize>,
}

/// Which dead letters to act on: `{"all": true}` or `{"attempt_ids": [...]}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSelection {
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub attempt_ids: Vec<String>,
}

impl DeadLetterSelection {
    fn parse(body: Option<Self>) -> Result<dead_letters::Selection, ApiError> {
        let b = body.ok_or_else(|| {
            ApiError::BadRequest("body must be {\"all\": true} or {\"attempt_ids\": [...]}".into())
        })?;
        match (b.all, b.attempt_ids.is_empty()) {
            (true, true) => Ok(dead_letters::Selection::All),
            (false, false) if b.attempt_ids.len() <= dead_letters::MAX_SCAN => Ok(
                dead_letters::Selection::Attempts(b.attempt_ids.into_iter().collect()),
            ),
            (false, false) => Err(ApiError::BadRequest("too many attempt_ids".into())),
            _ => Err(ApiError::BadRequest(
                "give either \"all\": true or a non-empty \"attempt_ids\"".into(),
            )),
        }
    }
}

fn broker_error(e: dead_letters::DeadLetterError) -> ApiError {
    match e {
        dead_letters::DeadLetterError::Store(e) => e.into(),
        other => {
            tracing::error!(error = %other, "dead-letter operation failed");
            ApiError::Unavailable("the message broker is unavailable; try again".into())
        }
    }
}

/// Lists dead letters, oldest first, without removing them.
#[utoipa::path(
    get,
    path = "/admin/dead-letters",
    tag = "admin",
    security(("bearer" = [])),
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "The dead letters", body = DeadLetterList),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 400, description = "`limit` out of range", body = ErrorBody),
    )
)]
pub async fn dead_letters(
    State(st): State<AppState>,
    Admin(_): Admin,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > dead_letters::MAX_SCAN {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1-{}",
            dead_letters::MAX_SCAN
        )));
    }
    let list = dead_letters::list(&st.lifecycle, st.publisher.topology(), limit)
        .await
        .map_err(broker_error)?;
    Ok(Json(json!({ "count": list.len(), "dead_letters": list })))
}

/// Republishes the selected dead letters that can still become orders.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/replay",
    tag = "admin",
    security(("bearer" = [])),
    request_body(content = DeadLetterSelection, content_type = "application/json"),
    responses(
        (status = 200, description = "What happened to each selected letter", body = DeadLetterResults),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        BodyRefusals,
    )
)]
#[tracing::instrument(name = "replay_dead_letters", skip_all, fields(by = %admin.sub))]
pub async fn replay_dead_letters(
    State(st): State<AppState>,
    Admin(admin): Admin,
    JsonBody(body): JsonBody<DeadLetterSelection>,
) -> Result<Json<Value>, ApiError> {
    let sel = DeadLetterSelection::parse(body)?;
    let out = dead_letters::replay(&st.lifecycle, &st.publisher, &sel)
        .await
        .map_err(broker_error)?;
    tracing::info!(count = out.len(), "dead letters replayed");
    Ok(Json(json!({ "results": out })))
}

/// Drops the selected dead letters, returning their units to stock.
#[utoipa::path(
    post,
    path = "/admin/dead-letters/discard",
    tag = "admin",
    security(("bearer" = [])),
    request_body(content = DeadLetterSelection, content_type = "application/json"),
    responses(
        (status = 200, description = "What happened to each selected letter", body = DeadLetterResults),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        BodyRefusals,
    )
)]
#[tracing::instrument(name = "discard_dead_letters", skip_all, fields(by = %admin.sub))]
pub async fn discard_dead_letters(
    State(st): State<AppState>,
    Admin(admin): Admin,
    JsonBody(body): JsonBody<DeadLetterSelection>,
) -> Result<Json<Value>, ApiError> {
    let sel = DeadLetterSelection::parse(body)?;
    let out = dead_letters::discard(&st.lifecycle, st.publisher.topology(), &sel)
        .await
        .map_err(broker_error)?;
    tracing::info!(count = out.len(), "dead letters discarded");
    Ok(Json(json!({ "results": out })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReconcileQuery {
    /// Only this round (default: every round).
    pub round_id: Option<String>,
}

async fn run_reconcile(
    st: &AppState,
    q: ReconcileQuery,
    repair: bool,
) -> Result<Json<Value>, ApiError> {
    let round = q.round_id.as_deref().map(path_id).transpose()?;
    let items = rebuild::reconcile(&st.lifecycle, round, repair).await?;
    let consistent = items.iter().all(|i| i.consistent());
    Ok(Json(json!({
        "consistent": consistent,
        "repaired": items.iter().filter(|i| i.repaired).count(),
        "items": items,
    })))
}

/// `GET /admin/reconcile[?round_id=N]`: the report, nothing changed.
#[utoipa::path(
    get,
    path = "/admin/reconcile",
    tag = "admin",
    security(("bearer" = [])),
    params(ReconcileQuery),
    responses(
        (status = 200, description = "The report", body = ReconcileReport),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 404, description = "Malformed round_id", body = ErrorBody),
    )
)]
pub async fn reconcile(
    State(st): State<AppState>,
    Admin(_): Admin,
    Query(q): Query<ReconcileQuery>,
) -> Result<Json<Value>, ApiError> {
    run_reconcile(&st, q, false).await
}

/// `POST /admin/reconcile/repair[?round_id=N]`: the report, and every item
/// that differs rebuilt from the database.
#[utoipa::path(
    post,
    path = "/admin/reconcile/repair",
    tag = "admin",
    security(("bearer" = [])),
    params(ReconcileQuery),
    responses(
        (status = 200, description = "The report, with what was repaired", body = ReconcileReport),
        AdminRefusals,
        (status = 403, description = "Not an operator or approver token", body = ErrorBody),
        (status = 404, description = "Malformed round_id", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "repair", skip_all, fields(by = %admin.sub))]
pub async fn repair(
    State(st): State<AppState>,
    Admin(admin): Admin,
    Query(q): Query<ReconcileQuery>,
) -> Result<Json<Value>, ApiError> {
    run_reconcile(&st, q, true).await
}
