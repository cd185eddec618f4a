//! Payment and expiry of one order, and the repair of a half-applied
//! settlement.
//!
//! Payment first takes the order (`pending_payment → paying`, only while
//! `pay_by` is ahead), so expiry cannot cancel an order whose money is
//! moving, and a payment cannot start on an expired order: nothing is
//! charged for it. The provider is then called with the order id as its
//! idempotency key. Charged: `paying → paid`. Declined: back to
//! `pending_payment` (the buyer may try again until `pay_by`). No answer:
//! the order stays `paying` and the sweep asks the provider later.

use std::time::Duration;

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, Value},
};

use super::Lifecycle;
use crate::{
    domain::AttemptId,
    payment::{ChargeOutcome, ChargeRequest},
    store::{
        StoreError,
        entities::order::{self, status},
        sale::Settlement,
    },
};

/// Why a payment did not end `paid`.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// No such order, or not the caller's.
    #[error("no such order")]
    NotFound,
    /// Expired or cancelled: refused, nothing charged.
    #[error("the order is {status} ({reason}); nothing was charged")]
    Closed { status: String, reason: String },
    /// Another payment of this order is in flight.
    #[error("a payment of this order is in progress")]
    InProgress,
    /// The provider declined; the order can still be paid until `pay_by`.
    #[error("the payment was declined: {0}")]
    Declined(String),
    /// The provider did not answer in time; the outcome will be settled.
    #[error("the payment provider did not answer; the order is held until the outcome is known")]
    Pending,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for PayError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Store(e.into())
    }
}

async fn find(lc: &Lifecycle, order_id: &str) -> Result<Option<order::Model>, StoreError> {
    Ok(order::Entity::find_by_id(order_id.to_owned())
        .one(&lc.db)
        .await?)
}

fn closed(o: &order::Model) -> PayError {
    PayError::Closed {
        status: status::CANCELLED.into(),
        reason: o
            .cancel_reason
            .clone()
            .unwrap_or_else(|| "cancelled".into()),
    }
}

impl Lifecycle {
    /// Pays `order_id` for `user`. Paying a paid order again returns it
    /// without charging.
    #[tracing::instrument(name = "pay", skip(self), fields(order_id))]
    pub async fn pay(&self, order_id: &str, user: &str) -> Result<order::Model, PayError> {
        order_id
            .parse::<AttemptId>()
            .map_err(|_| PayError::NotFound)?;
        let now = self.clock.now_ms();
        let o = find(self, order_id).await?.ok_or(PayError::NotFound)?;
        if o.user_id != user {
            return Err(PayError::NotFound);
        }
        match o.status.as_str() {
            status::PAID => {
                if !o.counters_applied {
                    self.apply(&o).await?;
                }
                return Ok(o);
            }
            status::CANCELLED => return Err(closed(&o)),
            status::PAYING => return Err(PayError::InProgress),
            _ if o.pay_by_ms <= now => {
                self.expire(order_id).await?;
                return Err(PayError::Closed {
                    status: status::CANCELLED.into(),
                    reason: "expired".into(),
                });
            }
            _ => {}
        }
        let taken = order::Entity::update_many()
            .col_expr(order::Column::Status, Expr::value(status::PAYING))
            .col_expr(order::Column::PaymentStartedAtMs, Expr::value(now))
            .filter(order::Column::Id.eq(order_id))
            .filter(order::Column::Status.eq(status::PENDING_PAYMENT))
            .filter(order::Column::PayByMs.gt(now))
            .exec(&self.db)
            .await?;
        if taken.rows_affected == 0 {
            // Someone else moved it between our read and our update.
            let o = find(self, order_id).await?.ok_or(PayError::NotFound)?;
            return match o.status.as_str() {
                status::PAID => Ok(o),
                status::PAYING => Err(PayError::InProgress),
                status::CANCELLED => Err(closed(&o)),
                _ => Err(PayError::Closed {
                    status: status::CANCELLED.into(),
                    reason: "expired".into(),
                }),
            };
        }
        let req = ChargeRequest {
            order_id: o.id.clone(),
            user_id: o.user_id.clone(),
            amount_cents: o.qty.saturating_mul(o.unit_price_cents),
        };
        let timeout = Duration::from_millis(self.config.payment.timeout_ms);
        match tokio::time::timeout(timeout, self.provider.charge(&req)).await {
            Ok(Ok(ChargeOutcome::Charged { charge_id })) => {
                metrics::counter!("seckill_payments_total", "outcome" => "paid").increment(1);
                Ok(self.commit_paid(order_id, &charge_id).await?)
            }
            Ok(Ok(ChargeOutcome::Declined { reason })) => {
                metrics::counter!("seckill_payments_total", "outcome" => "declined").increment(1);
                self.release_payment(order_id).await?;
                Err(PayError::Declined(reason))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "payment outcome unknown; the sweep will settle it");
                metrics::counter!("seckill_payments_total", "outcome" => "unknown").increment(1);
                Err(PayError::Pending)
            }
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "payment provider timed out; the sweep will settle it"
                );
                metrics::counter!("seckill_payments_total", "outcome" => "unknown").increment(1);
                Err(PayError::Pending)
            }
        }
    }

    /// `paying → paid`, then the counters.
    async fn commit_paid(
        &self,
        order_id: &str,
        charge_id: &str,
    ) -> Result<order::Model, StoreError> {
        let now = self.clock.now_ms();
        order::Entity::update_many()
            .col_expr(order::Column::Status, Expr::value(status::PAID))
            .col_expr(order::Column::PaidAtMs, Expr::value(now))
            .col_expr(order::Column::ChargeId, Expr::value(charge_id))
            .col_expr(order::Column::CountersApplied, Expr::value(false))
            .filter(order::Column::Id.eq(order_id))
            .filter(order::Column::Status.eq(status::PAYING))
            .exec(&self.db)
            .await?;
        let o = find(self, order_id)
            .await?
            .ok_or_else(|| StoreError::Protocol(format!("order {order_id} vanished")))?;
        if !o.counters_applied {
            self.apply(&o).await?;
        }
        Ok(o)
    }

    /// `paying → pending_payment` after a decline (or a lookup that found
    /// no charge).
    async fn release_payment(&self, order_id: &str) -> Result<(), StoreError> {
        order::Entity::update_many()
            .col_expr(order::Column::Status, Expr::value(status::PENDING_PAYMENT))
            .col_expr(
                order::Column::PaymentStartedAtMs,
                Expr::value(Value::BigInt(None)),
            )
            .filter(order::Column::Id.eq(order_id))
            .filter(order::Column::Status.eq(status::PAYING))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Cancels an unpaid order whose `pay_by` has passed and returns its
    /// units. Returns whether this call cancelled it.
    #[tracing::instrument(name = "expire", skip(self))]
    pub async fn expire(&self, order_id: &str) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let done = order::Entity::update_many()
            .col_expr(order::Column::Status, Expr::value(status::CANCELLED))
            .col_expr(order::Column::CancelledAtMs, Expr::value(now))
            .col_expr(order::Column::CancelReason, Expr::value("expired"))
            .col_expr(order::Column::CountersApplied, Expr::value(false))
            .filter(order::Column::Id.eq(order_id))
            .filter(order::Column::Status.eq(status::PENDING_PAYMENT))
            .filter(order::Column::PayByMs.lte(now))
            .exec(&self.db)
            .await?;
        let won = done.rows_affected == 1;
        if let Some(o) = find(self, order_id).await?
            && o.status == status::CANCELLED
            && !o.counters_applied
        {
            self.apply(&o).await?;
        }
        if won {
            metrics::counter!("seckill_orders_expired_total").increment(1);
            tracing::info!("unpaid order expired; units returned");
        }
        Ok(won)
    }

    /// Applies a settled order's effect on the counters (idempotent) and
    /// records that it did.
    pub async fn apply(&self, o: &order::Model) -> Result<(), StoreError> {
        let outcome = match o.status.as_str() {
            status::PAID => Settlement::Paid,
            status::CANCELLED => Settlement::Expired,
            _ => return Ok(()),
        };
        let id: AttemptId =
            o.id.parse()
                .map_err(|_| StoreError::Protocol(format!("order id {}", o.id)))?;
        let r = self.sale.settle(&id, outcome, self.clock.now_ms()).await?;
        match r.as_str() {
            "applied" | "already" => {}
            // Redis lost the attempt: the counters are rebuilt from the
            // database, which already holds this settlement.
            "missing" => tracing::warn!(order_id = %o.id, "attempt unknown to redis at settlement"),
            other => {
                metrics::counter!("seckill_settlement_conflicts_total").increment(1);
                tracing::error!(order_id = %o.id, order_status = %o.status, attempt_status = other,
                    "order and attempt disagree; reconcile reports it");
            }
        }
        order::Entity::update_many()
            .col_expr(order::Column::CountersApplied, Expr::value(true))
            .filter(order::Column::Id.eq(o.id.clone()))
            .filter(order::Column::Status.eq(o.status.clone()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Settles a payment whose outcome was never learnt, by asking the
    /// provider.
    pub async fn resolve_paying(&self, o: &order::Model) -> Result<(), StoreError> {
        let timeout = Duration::from_millis(self.config.payment.timeout_ms);
        match tokio::time::timeout(timeout, self.provider.lookup(&o.id)).await {
            Ok(Ok(Some(charge_id))) => {
                tracing::info!(order_id = %o.id, "payment found at the provider; order paid");
                self.commit_paid(&o.id, &charge_id).await?;
            }
            Ok(Ok(None)) => {
                tracing::info!(order_id = %o.id, "no charge at the provider; order payable again");
                self.release_payment(&o.id).await?;
            }
            Ok(Err(e)) => tracing::warn!(order_id = %o.id, error = %e, "provider lookup failed"),
            Err(_) => tracing::warn!(order_id = %o.id, "provider lookup timed out"),
        }
        Ok(())
    }
}
