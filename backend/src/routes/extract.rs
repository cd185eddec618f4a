//! Request extractors that answer with [`ApiError`] JSON: the caller's
//! verified identity (through [`super::verified`]'s cache), an admin caller, the client's address, and a
//! size-limited JSON body.

use std::net::{IpAddr, SocketAddr};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

use super::{AppState, error::ApiError};
use crate::auth::{Claims, Role};

/// The verified caller of a route that needs any valid token.
pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Caller(state.tokens.verify_header_cached(header)?))
    }
}

/// A caller holding an operator or approver token.
pub struct Admin(pub Claims);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(c) = Caller::from_request_parts(parts, state).await?;
        if !c.role.is_admin() {
            return Err(ApiError::Forbidden("an admin token is required".into()));
        }
        Ok(Admin(c))
    }
}

/// A caller holding an approver token.
pub struct Approver(pub Claims);

impl FromRequestParts<AppState> for Approver {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Admin(c) = Admin::from_request_parts(parts, state).await?;
        if c.role != Role::Approver {
            return Err(ApiError::Forbidden("an approver token is required".into()));
        }
        Ok(Approver(c))
    }
}

/// The client's address: `X-Real-IP` as the edge sets it (the edge
/// always replaces a client's own copy; the backend is reached through
/// edges only), else the TCP peer.
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let forwarded = parts
            .headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(
            forwarded
                .or(peer)
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
        ))
    }
}

/// A JSON body no larger than `http.max_body_bytes`. An empty body is
/// `None`; a non-empty one must be `application/json`.
pub struct JsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.http.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(JsonBody(None));
        }
        if is_json != Some(true) {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&bytes)
            .map(|v| JsonBody(Some(v)))
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
    }
}
