//! A durable order, one per reservation attempt (`orders` table). Its id is
//! the attempt id.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub attempt_id: String,
    pub round_id: i64,
    pub item_id: i64,
    pub user_id: String,
    pub qty: i64,
    pub unit_price_cents: i64,
    pub status: String,
    pub reserved_at_ms: i64,
    pub created_at_ms: i64,
    pub pay_by_ms: i64,
    pub paid_at_ms: Option<i64>,
    pub cancelled_at_ms: Option<i64>,
    pub cancel_reason: Option<String>,
    pub payment_started_at_ms: Option<i64>,
    pub charge_id: Option<String>,
    pub counters_applied: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// Order statuses as stored.
pub mod status {
    pub const PENDING_PAYMENT: &str = "pending_payment";
    /// A payment is in flight; expiry waits for its outcome.
    pub const PAYING: &str = "paying";
    pub const PAID: &str = "paid";
    pub const CANCELLED: &str = "cancelled";
}
