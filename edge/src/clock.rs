//! `GET /api/time`: the edge's own clock in milliseconds, so clients can
//! sync their countdown without reaching a backend. Nothing else.

use bytes::Bytes;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The response body: `{"now_ms": <int>}`.
pub fn body() -> Bytes {
    Bytes::from(format!("{{\"now_ms\":{}}}", now_ms()))
}
