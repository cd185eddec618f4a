//! The order message: everything the order writer needs to write an order
//! without reading Redis first.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderMessage {
    pub attempt_id: String,
    pub round_id: i64,
    pub item_id: i64,
    pub user_id: String,
    pub qty: i64,
    pub unit_price_cents: i64,
    pub reserved_at_ms: i64,
}
