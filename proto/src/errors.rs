//! Stable error codes of the HTTP contract (`{"error": "<code>", "message":
//! …}`), with the status each one is answered with. Clients switch on the
//! code, never on the message.

/// Every code, with its HTTP status.
pub const CODES: &[(&str, u16)] = &[
    (UNAUTHORIZED, 401),
    (FORBIDDEN, 403),
    (TICKET_REQUIRED, 403),
    (TICKET_INVALID, 403),
    (TICKET_EXPIRED, 403),
    (TICKET_OTHER_USER, 403),
    (TICKET_OTHER_ITEM, 403),
    (TICKET_USED, 403),
    (CHALLENGE_REQUIRED, 403),
    (CHALLENGE_FAILED, 403),
    (CHALLENGE_USED, 403),
    (NO_CHALLENGE, 404),
    (NOT_FOUND, 404),
    (BAD_REQUEST, 400),
    (UNSUPPORTED_MEDIA_TYPE, 415),
    (PAYLOAD_TOO_LARGE, 413),
    (LIMIT_EXCEEDED, 422),
    (NOT_STARTED, 425),
    (SOLD_OUT, 410),
    (ENDED, 410),
    (CONFLICT, 409),
    (RATE_LIMITED, 429),
    (PAYMENT_DECLINED, 402),
    (PAYMENT_PENDING, 504),
    (UNAVAILABLE, 503),
    (INTERNAL, 500),
];

pub const UNAUTHORIZED: &str = "unauthorized";
pub const FORBIDDEN: &str = "forbidden";
/// A buy without a purchase ticket where tickets are required.
pub const TICKET_REQUIRED: &str = "ticket_required";
/// A ticket that is malformed or whose signature does not match.
pub const TICKET_INVALID: &str = "ticket_invalid";
/// A ticket past its expiry: ask for a new one.
pub const TICKET_EXPIRED: &str = "ticket_expired";
/// A ticket issued to another buyer.
pub const TICKET_OTHER_USER: &str = "ticket_other_user";
/// A ticket issued for another round or item.
pub const TICKET_OTHER_ITEM: &str = "ticket_other_item";
/// A ticket that already bought once.
pub const TICKET_USED: &str = "ticket_used";
/// A ticket request without the solved challenge its round asks for.
pub const CHALLENGE_REQUIRED: &str = "challenge_required";
/// A challenge solution that is malformed, forged, wrong, expired, or
/// another buyer's or item's.
pub const CHALLENGE_FAILED: &str = "challenge_failed";
/// A challenge solution that already got a ticket.
pub const CHALLENGE_USED: &str = "challenge_used";
/// No challenge to solve: the round asks for none, or tickets are off.
pub const NO_CHALLENGE: &str = "no_challenge";
pub const NOT_FOUND: &str = "not_found";
pub const BAD_REQUEST: &str = "bad_request";
pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
pub const LIMIT_EXCEEDED: &str = "limit_exceeded";
pub const NOT_STARTED: &str = "not_started";
pub const SOLD_OUT: &str = "sold_out";
pub const ENDED: &str = "ended";
pub const CONFLICT: &str = "conflict";
pub const RATE_LIMITED: &str = "rate_limited";
/// The payment provider declined; the order stays payable until `pay_by`.
pub const PAYMENT_DECLINED: &str = "payment_declined";
/// The payment provider did not answer; the order is held until its
/// outcome is known (poll the attempt).
pub const PAYMENT_PENDING: &str = "payment_pending";
pub const UNAVAILABLE: &str = "unavailable";
pub const INTERNAL: &str = "internal";

/// The status a code is answered with.
pub fn status_of(code: &str) -> Option<u16> {
    CODES.iter().find(|(c, _)| *c == code).map(|(_, s)| *s)
}
