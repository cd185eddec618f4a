//! Operator API: create and submit rounds, approve or reject them (a
//! different person than the submitter), preheat, read live counters.
//!
//! Approval is the step that opens a sale: the status changes first (a
//! conditional update, so two reviewers cannot both win), then every item is
//! preheated in Redis and its static page rendered. If Redis or the pages
//! directory fails half-way, `POST …/preheat` finishes the job (preheat never
//! overwrites live counters).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    error::ApiError,
    extract::{Admin, Approver, JsonBody},
    path_id,
    rounds::admin_round,
};
use crate::{
    domain::{NewRound, RoundStatus, Transition, round::NewRoundBody, round::TransitionError},
    store::{rounds, rounds::RoundWithItems, sale::Preheat},
};

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

async fn load(st: &AppState, round: &str) -> Result<RoundWithItems, ApiError> {
    let id = path_id(round)?;
    rounds::get(&st.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such round".into()))
}

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

pub async fn submit(
    State(st): State<AppState>,
    Admin(caller): Admin,
    Path(round): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = change(&st, &round, Transition::Submit, &caller.sub, None).await?;
    Ok(Json(admin_round(&r)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    #[serde(default)]
    reason: Option<String>,
}

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

pub async fn approve(
    State(st): State<AppState>,
    Approver(caller): Approver,
    Path(round): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = change(&st, &round, Transition::Approve, &caller.sub, None).await?;
    open_sale(&st, &r).await?;
    Ok(Json(admin_round(&r)))
}

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
        let p = Preheat {
            round_id: r.round.id,
            item_id: it.id,
            stock: it.stock,
            starts_ms: r.round.starts_at_ms,
            ends_ms: r.round.ends_at_ms,
            per_user_limit: it.per_user_limit,
            price_cents: it.sale_price_cents,
            info: vec![
                ("title", it.title.clone()),
                ("image_url", it.image_url.clone()),
                ("sale_price_cents", it.sale_price_cents.to_string()),
                ("original_price_cents", it.original_price_cents.to_string()),
            ],
        };
        st.sale.preheat(&p).await?;
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

pub async fn stock(
    State(st): State<AppState>,
    Admin(_): Admin,
    Path((round, item)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let round_id = path_id(&round)?;
    let item_id = path_id(&item)?;
    let c = st
        .sale
        .counters(round_id, item_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("item not preheated".into()))?;
    Ok(Json(json!({
        "round_id": round_id,
        "item_id": item_id,
        "total": c.total,
        "available": c.available,
        "reserved": c.reserved,
        "sold": c.sold,
    })))
}
