//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every route,
//! generated from the route table ([`super::table`]) and the handlers'
//! `#[utoipa::path]` annotations, with the bearer security scheme and the
//! error body whose codes come from [`seckill_proto::errors::CODES`].
//!
//! The document is built once, on first request, and never changes while
//! the process runs. This module only describes; it serves no other route
//! and reads no store.

use std::sync::LazyLock;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::error::{ErrorBody, ErrorCode};

/// Name of the bearer scheme that protected operations list in `security`.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Seckill",
        description = "Flash-sale API. Buyer routes under /api, operator routes under /admin. \
            Every error answers `{\"error\": <code>, \"message\": …}` (ErrorBody); clients \
            switch on the code, never on the message.",
    ),
    tags(
        (name = "buyer", description = "Buyers: rounds, buys, attempts, payment"),
        (name = "admin", description = "Operators and approvers: rounds, counters, dead letters, reconciliation"),
        (name = "console", description = "The operator's web console (static files)"),
        (name = "health", description = "Liveness and readiness"),
        (name = "meta", description = "This description"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
    modifiers(&Bearer)
)]
struct Doc;

/// Adds the bearer token scheme (`Authorization: Bearer <token>`).
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A buyer, operator or approver token; admin routes refuse buyer tokens",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole document: the metadata above merged with the route table's
/// paths and schemas.
pub fn openapi() -> openapi::OpenApi {
    let mut doc = Doc::openapi();
    doc.merge(super::table().into_openapi());
    doc
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// Every `(METHOD, path)` a document describes, in its order.
pub fn operations(doc: &openapi::OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            ("GET", item.get.is_some()),
            ("PUT", item.put.is_some()),
            ("POST", item.post.is_some()),
            ("DELETE", item.delete.is_some()),
            ("OPTIONS", item.options.is_some()),
            ("HEAD", item.head.is_some()),
            ("PATCH", item.patch.is_some()),
            ("TRACE", item.trace.is_some()),
        ];
        for (m, present) in methods {
            if present {
                out.push((m.to_owned(), path.clone()));
            }
        }
    }
    out
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json", body = Object))
)]
pub async fn document() -> Response {
    let mut resp = DOCUMENT.as_str().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
