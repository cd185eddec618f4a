//! The HTTP error of every route: a stable `error` code, a human `message`,
//! optional extra fields, and a fitting status. Internals are logged, never
//! sent. [`ErrorBody`] and [`ErrorCode`] describe that body in the OpenAPI
//! document; the codes are [`seckill_proto::errors::CODES`], listed nowhere
//! else.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Map, Value, json};

use seckill_proto::{pow::PowError, ticket::TicketError};

use crate::{auth::TokenError, store::StoreError};

/// The refusals every admin route may answer, for its OpenAPI description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes answers, never built
pub enum AdminRefusals {
    /// No valid token
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// A store is unavailable
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
}

/// The refusals of a route that takes a JSON body, for its OpenAPI
/// description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // describes answers, never built
pub enum BodyRefusals {
    /// Malformed body
    #[response(status = 400)]
    Malformed(#[to_schema] ErrorBody),
    /// Body too large
    #[response(status = 413)]
    TooLarge(#[to_schema] ErrorBody),
    /// Body is not JSON
    #[response(status = 415)]
    NotJson(#[to_schema] ErrorBody),
}

/// The body of every error answer, as the OpenAPI document describes it
/// (answers are built by [`ApiError`]'s `IntoResponse`, not from this type).
/// Only the fields of the code answered are present besides `error` and
/// `message`.
#[derive(utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// For people; clients switch on `error`, never on this.
    pub message: String,
    /// `not_started`: when the sale opens.
    pub starts_at_ms: Option<i64>,
    /// `not_started`: the same, RFC 3339.
    pub starts_at: Option<String>,
    /// `rate_limited`: when to try again (also in `Retry-After`, seconds).
    pub retry_after_ms: Option<u64>,
    /// `sold_out` after asking for more than is left: the units left.
    pub available: Option<i64>,
    /// `limit_exceeded`: the item's units per buyer.
    pub per_user_limit: Option<i64>,
    /// `limit_exceeded`: units the buyer already holds.
    pub held_qty: Option<i64>,
    /// `limit_exceeded`: the attempt holding them.
    pub attempt_id: Option<String>,
    /// `conflict` on payment: the order's status (`expired`, `cancelled`,
    /// `paying`, …).
    pub order_status: Option<String>,
    /// `conflict` on payment: why the order closed.
    pub reason: Option<String>,
    /// `conflict` on payment: whether a charge that went through was
    /// refunded.
    pub refunded: Option<bool>,
}

/// A stable error code: one of [`seckill_proto::errors::CODES`].
pub struct ErrorCode;

impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let statuses = seckill_proto::errors::CODES
            .iter()
            .map(|(c, s)| format!("`{c}` ({s})"))
            .collect::<Vec<_>>()
            .join(", ");
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(seckill_proto::errors::CODES.iter().map(|(c, _)| *c)))
            .description(Some(format!(
                "Stable error code, with the status it is answered with: {statuses}"
            )))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// A buy's purchase ticket refused (403, the refusal's own code).
    #[error("{0}")]
    Ticket(TicketError),
    #[error("the purchase ticket was already used; ask for a new one")]
    TicketUsed,
    /// A ticket request's challenge solution refused (403, the
    /// refusal's own code).
    #[error("{0}")]
    Challenge(PowError),
    #[error("the challenge solution already got a ticket; solve a new challenge")]
    ChallengeUsed,
    /// No challenge to hand out (404).
    #[error("{0}")]
    NoChallenge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{message}")]
    LimitExceeded {
        message: String,
        extra: Map<String, Value>,
    },
    #[error("the sale has not started")]
    NotStarted { starts_at_ms: i64 },
    #[error("{0}")]
    SoldOut(String, Map<String, Value>),
    #[error("the sale has ended")]
    Ended,
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    ConflictWith {
        message: String,
        extra: Map<String, Value>,
    },
    #[error("{0}")]
    PaymentDeclined(String),
    #[error("{0}")]
    PaymentPending(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_ms: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable code of the HTTP contract (`seckill_proto::errors`).
    pub fn code(&self) -> &'static str {
        use seckill_proto::errors as e;
        match self {
            Self::Unauthorized(_) => e::UNAUTHORIZED,
            Self::Forbidden(_) => e::FORBIDDEN,
            Self::Ticket(t) => t.code(),
            Self::TicketUsed => e::TICKET_USED,
            Self::Challenge(c) => c.code(),
            Self::ChallengeUsed => e::CHALLENGE_USED,
            Self::NoChallenge(_) => e::NO_CHALLENGE,
            Self::NotFound(_) => e::NOT_FOUND,
            Self::BadRequest(_) => e::BAD_REQUEST,
            Self::UnsupportedMediaType => e::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => e::PAYLOAD_TOO_LARGE,
            Self::LimitExceeded { .. } => e::LIMIT_EXCEEDED,
            Self::NotStarted { .. } => e::NOT_STARTED,
            Self::SoldOut(..) => e::SOLD_OUT,
            Self::Ended => e::ENDED,
            Self::Conflict(_) | Self::ConflictWith { .. } => e::CONFLICT,
            Self::PaymentDeclined(_) => e::PAYMENT_DECLINED,
            Self::PaymentPending(_) => e::PAYMENT_PENDING,
            Self::RateLimited { .. } => e::RATE_LIMITED,
            Self::Unavailable(_) => e::UNAVAILABLE,
            Self::Internal(_) => e::INTERNAL,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_)
            | Self::Ticket(_)
            | Self::TicketUsed
            | Self::Challenge(_)
            | Self::ChallengeUsed => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::NoChallenge(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::LimitExceeded { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotStarted { .. } => StatusCode::TOO_EARLY,
            Self::SoldOut(..) | Self::Ended => StatusCode::GONE,
            Self::Conflict(_) | Self::ConflictWith { .. } => StatusCode::CONFLICT,
            Self::PaymentDeclined(_) => StatusCode::PAYMENT_REQUIRED,
            Self::PaymentPending(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn not_found() -> Self {
        Self::NotFound("no such resource".into())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        Self::Unauthorized(e.to_string())
    }
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        Self::Ticket(e)
    }
}

impl From<PowError> for ApiError {
    fn from(e: PowError) -> Self {
        Self::Challenge(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        Self::Unavailable("a storage service is unavailable; try again".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code()));
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        body.insert("message".into(), json!(message));
        match &self {
            Self::NotStarted { starts_at_ms } => {
                body.insert("starts_at_ms".into(), json!(starts_at_ms));
                if let Some(t) = chrono::DateTime::from_timestamp_millis(*starts_at_ms) {
                    body.insert("starts_at".into(), json!(t.to_rfc3339()));
                }
            }
            Self::LimitExceeded { extra, .. }
            | Self::SoldOut(_, extra)
            | Self::ConflictWith { extra, .. } => {
                body.extend(extra.clone());
            }
            Self::RateLimited { retry_after_ms, .. } => {
                body.insert("retry_after_ms".into(), json!(retry_after_ms));
                let secs = retry_after_ms.div_ceil(1000).max(1).to_string();
                return (
                    self.status(),
                    [(axum::http::header::RETRY_AFTER, secs)],
                    Json(Value::Object(body)),
                )
                    .into_response();
            }
            _ => {}
        }
        (self.status(), Json(Value::Object(body))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_shared_contract() {
        let all = [
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::Ticket(TicketError::Missing),
            ApiError::Ticket(TicketError::Malformed),
            ApiError::Ticket(TicketError::BadSignature),
            ApiError::Ticket(TicketError::Expired),
            ApiError::Ticket(TicketError::OtherUser),
            ApiError::Ticket(TicketError::OtherItem),
            ApiError::TicketUsed,
            ApiError::Challenge(PowError::Missing),
            ApiError::Challenge(PowError::WrongSolution),
            ApiError::ChallengeUsed,
            ApiError::NoChallenge(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::BadRequest(String::new()),
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge(1),
            ApiError::LimitExceeded {
                message: String::new(),
                extra: Map::new(),
            },
            ApiError::NotStarted { starts_at_ms: 0 },
            ApiError::SoldOut(String::new(), Map::new()),
            ApiError::Ended,
            ApiError::Conflict(String::new()),
            ApiError::ConflictWith {
                message: String::new(),
                extra: Map::new(),
            },
            ApiError::PaymentDeclined(String::new()),
            ApiError::PaymentPending(String::new()),
            ApiError::RateLimited {
                message: String::new(),
                retry_after_ms: 1,
            },
            ApiError::Unavailable(String::new()),
            ApiError::Internal(String::new()),
        ];
        for e in all {
            assert_eq!(
                seckill_proto::errors::status_of(e.code()),
                Some(e.status().as_u16()),
                "{}",
                e.code()
            );
        }
    }
}
