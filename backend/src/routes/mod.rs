//! HTTP routes: thin handlers that parse, call the domain and storage, and
//! map results to responses. Buyer paths live under `/api`, operator paths
//! under `/admin` (not exposed through the edge by default), with the
//! operator's web console at `/admin/console/`. Every route is listed once,
//! in [`table`], with its OpenAPI description ([`openapi`]).

pub mod admin;
pub mod attempts;
pub mod buy;
pub mod console;
pub mod error;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod orders;
pub mod rounds;
pub mod tickets;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::TokenKeys, clock::Clock, config::Config, pages::PageRenderer, queue::Publisher,
    store::SaleStore,
};
use error::{ApiError, ErrorBody};

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
    /// The ticket challenges' keys (from the tickets secret); `None` when
    /// `tickets.enabled` is off.
    pub pow: Option<Arc<seckill_proto::pow::PowKeys>>,
}

/// The one route table: every route the API serves, each with its OpenAPI
/// description (`#[utoipa::path]` on the handler). The router and the
/// document at `/api/openapi.json` are both built from it, so a route
/// cannot be served undescribed; add routes here and nowhere else.
pub(crate) fn table() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(time))
        .routes(routes!(rounds::list))
        .routes(routes!(buy::buy))
        .routes(routes!(tickets::issue))
        .routes(routes!(tickets::challenge))
        .routes(routes!(attempts::get))
        .routes(routes!(orders::pay))
        .routes(routes!(admin::dead_letters))
        .routes(routes!(admin::replay_dead_letters))
        .routes(routes!(admin::discard_dead_letters))
        .routes(routes!(admin::reconcile))
        .routes(routes!(admin::repair))
        .routes(routes!(admin::create_round))
        .routes(routes!(admin::get_round))
        .routes(routes!(admin::submit))
        .routes(routes!(admin::approve))
        .routes(routes!(admin::reject))
        .routes(routes!(admin::preheat))
        .routes(routes!(admin::stock))
        .routes(routes!(events::stream))
        .routes(routes!(console::redirect))
        .routes(routes!(console::index))
        .routes(routes!(console::file))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi::document))
}

/// Every route the router serves, as `(METHOD, path template)` pairs in the
/// route table's order.
pub fn served_routes() -> Vec<(String, String)> {
    openapi::operations(table().get_openapi())
}

/// The API router with its middleware.
pub fn router(state: AppState) -> Router {
    let (routes, _) = table().split_for_parts();
    routes
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// The server's clock.
#[derive(Serialize, ToSchema)]
pub struct ServerTime {
    /// Milliseconds since the Unix epoch.
    pub now_ms: i64,
}

/// The server's clock, for buyers' countdowns.
#[utoipa::path(
    get,
    path = "/api/time",
    tag = "buyer",
    responses((status = 200, description = "The server's time", body = ServerTime))
)]
async fn time(State(st): State<AppState>) -> Json<ServerTime> {
    Json(ServerTime {
        now_ms: st.clock.now_ms(),
    })
}

/// A health or readiness answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (the stores answer).
    pub status: String,
}

/// Alive: the process answers HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is alive", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready when Redis and the database answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Redis and the database answer", body = Health),
        (status = 503, description = "A store is unavailable", body = ErrorBody),
    )
)]
async fn readyz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    let mut c = st.sale.connection();
    let _: String = redis::cmd("PING")
        .query_async(&mut c)
        .await
        .map_err(crate::store::StoreError::from)?;
    st.db.ping().await.map_err(crate::store::StoreError::from)?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
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
