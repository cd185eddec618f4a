//! HTTP routes: thin handlers that parse, call the domain and storage, and
//! map results to responses. Buyer paths live under `/api`, operator paths
//! under `/admin` (not exposed through the edge by default), with the
//! operator's web console at `/admin/console/`.

pub mod admin;
pub mod attempts;
pub mod buy;
pub mod console;
pub mod error;
pub mod events;
pub mod extract;
pub mod orders;
pub mod rounds;
pub mod tickets;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use sea_orm::DatabaseConnection;
use serde_json::json;

use crate::{
    auth::TokenKeys, clock::Clock, config::Config, pages::PageRenderer, queue::Publisher,
    store::SaleStore,
};
use error::ApiError;

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub tokens: Arc<TokenKeys>,
    pub sale: SaleStore,
    pub db: DatabaseConnection,
    pub publisher: Arc<Publisher>,
    pub clock: Arc<dyn Clock>,
    pub rounds_cache: moka::future::Cache<(), Arc<serde_json::Value>>,
    pub pages: Arc<PageRenderer>,
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// This process's buy journal and order spool.
    pub durable: crate::durable::Durable,
    /// Cancelled when the server starts its graceful shutdown: endless
    /// responses (the dashboard's event stream) end then.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The purchase-ticket keys; `None` when `tickets.enabled` is off.
    pub tickets: Option<Arc<seckill_proto::ticket::TicketKeys>>,
}

/// The API router with its middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/time", get(time))
        .route("/api/rounds", get(rounds::list))
        .route("/api/rounds/{round_id}/items/{item_id}/buy", post(buy::buy))
        .route(
            "/api/rounds/{round_id}/items/{item_id}/ticket",
            post(tickets::issue),
        )
        .route("/api/attempts/{attempt_id}", get(attempts::get))
        .route("/api/orders/{order_id}/pay", post(orders::pay))
        .route("/admin/dead-letters", get(admin::dead_letters))
        .route(
            "/admin/dead-letters/replay",
            post(admin::replay_dead_letters),
        )
        .route(
            "/admin/dead-letters/discard",
            post(admin::discard_dead_letters),
        )
        .route("/admin/reconcile", get(admin::reconcile))
        .route("/admin/reconcile/repair", post(admin::repair))
        .route("/admin/rounds", post(admin::create_round))
        .route("/admin/rounds/{round_id}", get(admin::get_round))
        .route("/admin/rounds/{round_id}/submit", post(admin::submit))
        .route("/admin/rounds/{round_id}/approve", post(admin::approve))
        .route("/admin/rounds/{round_id}/reject", post(admin::reject))
        .route("/admin/rounds/{round_id}/preheat", post(admin::preheat))
        .route(
            "/admin/rounds/{round_id}/items/{item_id}/stock",
            get(admin::stock),
        )
        .route("/admin/rounds/{round_id}/events", get(events::stream))
        .merge(console::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .with_state(state)
}

async fn time(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "now_ms": st.clock.now_ms() }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when Redis and the database answer.
async fn readyz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut c = st.sale.connection();
    let _: String = redis::cmd("PING")
        .query_async(&mut c)
        .await
        .map_err(crate::store::StoreError::from)?;
    st.db.ping().await.map_err(crate::store::StoreError::from)?;
    Ok(Json(json!({ "status": "ready" })))
}

async fn fallback() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> Response {
    let mut r = ApiError::BadRequest("method not allowed on this path".into()).into_response();
    *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Counts requests and their latency by route template and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("seckill_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("seckill_http_request_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Parses a path id, answering 404 for anything that is not a positive id.
pub(crate) fn path_id(s: &str) -> Result<i64, ApiError> {
    crate::domain::attempt::parse_id(s).ok_or_else(ApiError::not_found)
}
