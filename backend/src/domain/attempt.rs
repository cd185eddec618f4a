//! Attempt ids and statuses.
//!
//! An attempt id names the item it belongs to, `<round>-<item>-<ulid>`, so
//! the attempt's Redis keys (which share the item's hash tag) can be found
//! from the id alone, and ids sort by creation time within an item. An
//! order's id is its attempt's id: there is exactly one order per attempt.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttemptId {
    pub round_id: i64,
    pub item_id: i64,
    pub ulid: ulid::Ulid,
}

impl AttemptId {
    pub fn new(round_id: i64, item_id: i64, now_ms: i64) -> Self {
        let ulid = ulid::Ulid::from_parts(now_ms.max(0) as u64, rand_bits());
        Self {
            round_id,
            item_id,
            ulid,
        }
    }
}

fn rand_bits() -> u128 {
    // The ulid generator's own randomness; only the low 80 bits are used.
    ulid::Ulid::new().random()
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.round_id, self.item_id, self.ulid)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an attempt id")]
pub struct BadAttemptId;

impl FromStr for AttemptId {
    type Err = BadAttemptId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 80 {
            return Err(BadAttemptId);
        }
        let mut it = s.splitn(3, '-');
        let r = it.next().ok_or(BadAttemptId)?;
        let i = it.next().ok_or(BadAttemptId)?;
        let u = it.next().ok_or(BadAttemptId)?;
        let round_id = parse_id(r).ok_or(BadAttemptId)?;
        let item_id = parse_id(i).ok_or(BadAttemptId)?;
        let ulid = ulid::Ulid::from_string(u).map_err(|_| BadAttemptId)?;
        Ok(Self {
            round_id,
            item_id,
            ulid,
        })
    }
}

/// Parses a positive decimal id as written in paths (no sign, no padding).
pub fn parse_id(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0')
    {
        return None;
    }
    s.parse().ok().filter(|v: &i64| *v > 0)
}

/// The statuses of an attempt as stored in Redis — what the scripts in
/// `lua/redis/` write and return; the one definition on the Rust side.
/// `writing` is the order writer's internal step, which a buyer sees as
/// `queued`.
pub mod stored {
    pub const QUEUED: &str = "queued";
    pub const WRITING: &str = "writing";
    pub const ORDERED: &str = "ordered";
    pub const PAID: &str = "paid";
    pub const CANCELLED: &str = "cancelled";

    /// Holds units and has no written order yet.
    pub fn in_flight(status: &str) -> bool {
        status == QUEUED || status == WRITING
    }
}

/// Why an attempt was cancelled (its `reason`).
pub mod reason {
    /// Its order was not paid in time.
    pub const EXPIRED: &str = "expired";
    /// Its order could not be written; kept for replay.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// Its message was older than the backlog threshold.
    pub const BACKLOG: &str = "backlog";
    /// The stock ran out first.
    pub const SOLD_OUT: &str = "sold_out";
    /// The buyer already holds another order for the item.
    pub const DUPLICATE_ORDER: &str = "duplicate_order";
    /// The order queue did not confirm it; nothing was reserved.
    pub const UNAVAILABLE: &str = "unavailable";
    /// (A journaled buy) the buyer already held another attempt.
    pub const ALREADY_HELD: &str = "already_held";
    /// (A journaled buy) it asked for more than the per-user limit.
    pub const LIMIT_EXCEEDED: &str = "limit_exceeded";
    /// (A journaled buy) the sale ended before it could be replayed.
    pub const ENDED: &str = "ended";
    /// (A journaled buy) the item is no longer on sale.
    pub const NOT_ON_SALE: &str = "not_on_sale";
}

/// Where an attempt is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatus {
    /// A journaled buy waiting for Redis: nothing reserved yet; it becomes
    /// `queued` or `cancelled` (`sold_out`, …) when the journal is replayed.
    Processing,
    /// Units reserved; the order message is queued (or being confirmed).
    Queued,
    /// The order is durable in the database.
    Ordered,
    /// The order is paid; its units are sold.
    Paid,
    /// Units returned to stock; see the reason.
    Cancelled,
}

impl AttemptStatus {
    /// Maps the Redis status (which also knows the writer's internal
    /// `writing` step) to what a buyer sees.
    pub fn from_redis(s: &str) -> Option<Self> {
        match s {
            stored::QUEUED | stored::WRITING => Some(Self::Queued),
            stored::ORDERED => Some(Self::Ordered),
            stored::PAID => Some(Self::Paid),
            stored::CANCELLED => Some(Self::Cancelled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "processing",
            Self::Queued => stored::QUEUED,
            Self::Ordered => stored::ORDERED,
            Self::Paid => stored::PAID,
            Self::Cancelled => stored::CANCELLED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips() {
        let id = AttemptId::new(42, 7, 1_700_000_000_000);
        let s = id.to_string();
        assert!(s.starts_with("42-7-"));
        assert_eq!(s.parse::<AttemptId>().unwrap(), id);
    }

    #[test]
    fn bad_ids() {
        for s in [
            "",
            "1-2",
            "x-2-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "0-2-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "1-2-notaulid",
            "-1-2-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "01-2-01ARZ3NDEKTSV4RRFFQ69G5FAV",
        ] {
            assert!(s.parse::<AttemptId>().is_err(), "{s}");
        }
    }

    #[test]
    fn ids_sort_by_time() {
        let a = AttemptId::new(1, 1, 1000).to_string();
        let b = AttemptId::new(1, 1, 2000).to_string();
        assert!(a < b);
    }

    #[test]
    fn parse_id_rules() {
        assert_eq!(parse_id("12"), Some(12));
        assert_eq!(parse_id("0"), None);
        assert_eq!(parse_id("+1"), None);
        assert_eq!(parse_id("99999999999999999999"), None);
    }
}
