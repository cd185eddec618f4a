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
//!
//! A charged buyer either holds a paid order with its unit sold, or is
//! refunded; never charged with the unit released. So the commit of a
//! charge is conditional too (`paying` or `pending_payment → paid`: in both
//! the unit is still reserved for this order), and when it finds the order
//! no longer there, it reads it: paid already (the same charge committed by
//! another path) is fine; cancelled means the unit went back to stock while
//! the charge landed, so the charge is refunded through the provider and the
//! buyer told so (`409`, `refunded`). The order does not win back its unit:
//! that unit may already be someone else's. A refund the provider refuses
//! is recorded on the cancelled order (its `charge_id`) and retried when the
//! buyer pays that order again.
//!
//! A payment of unknown outcome is settled only on a conclusive answer: a
//! charge found commits it; "no charge" un-pins it (`paying →
//! pending_payment`) only once `payment.lookup_settle_ms` have passed since
//! the payment started *and* the provider voided the pending charge, so a
//! charge still on its way can no longer land. Until then the order stays
//! `paying`, and expiry cannot take it.

use std::time::Duration;

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, Value},
};

use super::Lifecycle;
use crate::{
    domain::AttemptId,
    payment::{ChargeOutcome, ChargeRequest, VoidOutcome},
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
    /// The order was cancelled while its charge went through: the charge
    /// is refunded (`refunded`), or its refund is retried.
    #[error("the order is cancelled ({reason}) and the charge that went through meanwhile {}",
        if *.refunded { "was refunded" } else { "is being refunded" })]
    Refunded { reason: String, refunded: bool },
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
            status::CANCELLED => {
                return Err(match &o.charge_id {
                    Some(charge_id) => self.refund_late_charge(&o, charge_id).await?,
                    None => closed(&o),
                });
            }
            status::PAYING => return Err(PayError::InProgress),
            _ if o.pay_by_ms <= self.config.overdue_before(now) => {
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
            .filter(order::Column::PayByMs.gt(self.config.overdue_before(now)))
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
                let paid = self.commit_paid(order_id, &charge_id).await?;
                metrics::counter!("seckill_payments_total", "outcome" => "paid").increment(1);
                Ok(paid)
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

    /// `paying → paid` (or `pending_payment → paid`: the unit is still this
    /// order's), then the counters. An order cancelled meanwhile gets its
    /// charge refunded instead (see the module docs).
    async fn commit_paid(&self, order_id: &str, charge_id: &str) -> Result<order::Model, PayError> {
        let now = self.clock.now_ms();
        let done = order::Entity::update_many()
            .col_expr(order::Column::Status, Expr::value(status::PAID))
            .col_expr(order::Column::PaidAtMs, Expr::value(now))
            .col_expr(order::Column::ChargeId, Expr::value(charge_id))
            .col_expr(order::Column::CountersApplied, Expr::value(false))
            .filter(order::Column::Id.eq(order_id))
            .filter(order::Column::Status.is_in([status::PAYING, status::PENDING_PAYMENT]))
            .exec(&self.db)
            .await?;
        let o = find(self, order_id)
            .await?
            .ok_or_else(|| StoreError::Protocol(format!("order {order_id} vanished")))?;
        if done.rows_affected == 0 {
            match o.status.as_str() {
                // Committed by another path; the provider charges an order
                // once, so it is this charge.
                status::PAID if o.charge_id.as_deref() == Some(charge_id) => {}
                status::PAID => tracing::error!(order_id, charge_id, paid_with = ?o.charge_id,
                    "order paid with another charge; the provider is not idempotent per order"),
                status::CANCELLED => return Err(self.refund_late_charge(&o, charge_id).await?),
                other => {
                    return Err(StoreError::Protocol(format!(
                        "order {order_id} is {other} after its charge"
                    ))
                    .into());
                }
            }
        }
        if !o.counters_applied {
            self.apply(&o).await?;
        }
        Ok(o)
    }

    /// The charge of a cancelled order (its unit back in stock) went
    /// through: refunds it, or records it on the order for the next try.
    async fn refund_late_charge(
        &self,
        o: &order::Model,
        charge_id: &str,
    ) -> Result<PayError, StoreError> {
        let timeout = Duration::from_millis(self.config.payment.timeout_ms);
        let refunded = match tokio::time::timeout(timeout, self.provider.refund(&o.id)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(order_id = %o.id, charge_id, error = %e, "refund failed");
                false
            }
            Err(_) => {
                tracing::error!(order_id = %o.id, charge_id, "refund timed out");
                false
            }
        };
        let outcome = if refunded {
            "refunded"
        } else {
            "refund_failed"
        };
        metrics::counter!("seckill_payments_total", "outcome" => outcome).increment(1);
        // A cancelled order keeps a charge id only while its refund is owed.
        let owed = (!refunded).then(|| charge_id.to_owned());
        if o.charge_id != owed {
            order::Entity::update_many()
                .col_expr(order::Column::ChargeId, Expr::value(owed))
                .filter(order::Column::Id.eq(o.id.clone()))
                .filter(order::Column::Status.eq(status::CANCELLED))
                .exec(&self.db)
                .await?;
        }
        tracing::warn!(order_id = %o.id, charge_id, refunded,
            "order cancelled while its charge went through; charge refunded, not kept");
        Ok(PayError::Refunded {
            reason: o
                .cancel_reason
                .clone()
                .unwrap_or_else(|| "cancelled".into()),
            refunded,
        })
    }

    /// `paying → pending_payment` after a decline (or a conclusive "no
    /// charge").
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
            .filter(order::Column::PayByMs.lte(self.config.overdue_before(now)))
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
    /// provider; leaves it `paying` until the answer is conclusive (see the
    /// module docs).
    pub async fn resolve_paying(&self, o: &order::Model) -> Result<(), StoreError> {
        let timeout = Duration::from_millis(self.config.payment.timeout_ms);
        let found = match tokio::time::timeout(timeout, self.provider.lookup(&o.id)).await {
            Ok(Ok(Some(charge_id))) => Some(charge_id),
            Ok(Ok(None)) => {
                let started = o.payment_started_at_ms.unwrap_or(0);
                let age = self.clock.now_ms().saturating_sub(started);
                if age < self.config.payment.lookup_settle_ms() as i64 {
                    tracing::debug!(order_id = %o.id, age_ms = age,
                        "no charge at the provider yet; too early to conclude");
                    return Ok(());
                }
                match tokio::time::timeout(timeout, self.provider.void(&o.id)).await {
                    Ok(Ok(VoidOutcome::Voided)) => {
                        tracing::info!(order_id = %o.id,
                            "no charge at the provider and none can land; order payable again");
                        return self.release_payment(&o.id).await;
                    }
                    Ok(Ok(VoidOutcome::Charged { charge_id })) => Some(charge_id),
                    Ok(Err(e)) => {
                        tracing::warn!(order_id = %o.id, error = %e, "provider void failed");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(order_id = %o.id, "provider void timed out");
                        None
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(order_id = %o.id, error = %e, "provider lookup failed");
                None
            }
            Err(_) => {
                tracing::warn!(order_id = %o.id, "provider lookup timed out");
                None
            }
        };
        let Some(charge_id) = found else {
            return Ok(());
        };
        tracing::info!(order_id = %o.id, "payment found at the provider");
        match self.commit_paid(&o.id, &charge_id).await {
            Ok(_) => Ok(()),
            Err(PayError::Store(e)) => Err(e),
            Err(e) => {
                tracing::warn!(order_id = %o.id, error = %e, "payment found for a closed order");
                Ok(())
            }
        }
    }
}
