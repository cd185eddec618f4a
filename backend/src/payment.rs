//! Payment providers: the one call the order lifecycle makes to move money,
//! behind a trait so a shop plugs in its own.
//!
//! A provider must be idempotent per order: charging the same order twice
//! is one charge (the order id is the idempotency key), and it must answer
//! whether an order was charged, so a payment whose answer was lost can be
//! settled later. This module owns no order state.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
};

use futures::future::BoxFuture;

use crate::config::{PaymentConfig, PaymentProviderKind, SimulatedOutcome};

/// One order's charge.
#[derive(Clone, Debug)]
pub struct ChargeRequest {
    pub order_id: String,
    pub user_id: String,
    pub amount_cents: i64,
}

/// What the provider did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Charged { charge_id: String },
    Declined { reason: String },
}

/// The provider could not be asked (unreachable, error): the outcome is
/// unknown.
#[derive(Debug, thiserror::Error)]
#[error("payment provider unavailable: {0}")]
pub struct ProviderError(pub String);

pub trait PaymentProvider: Send + Sync {
    /// Charges an order, at most once per order id.
    fn charge<'a>(
        &'a self,
        req: &'a ChargeRequest,
    ) -> BoxFuture<'a, Result<ChargeOutcome, ProviderError>>;

    /// The charge id if `order_id` was charged, `None` if it was not.
    fn lookup<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>>;
}

/// The provider named by the configuration.
pub fn from_config(cfg: &PaymentConfig) -> std::sync::Arc<dyn PaymentProvider> {
    match cfg.provider {
        PaymentProviderKind::Simulated => {
            std::sync::Arc::new(SimulatedProvider::new(cfg.simulated_outcome))
        }
    }
}

/// An in-memory provider that succeeds, declines, or never answers, for
/// demos, load tests and tests. Its charges live in this process only.
pub struct SimulatedProvider {
    outcome: AtomicU8,
    charges: Mutex<HashMap<String, String>>,
    calls: AtomicU64,
}

impl SimulatedProvider {
    pub fn new(outcome: SimulatedOutcome) -> Self {
        Self {
            outcome: AtomicU8::new(encode(outcome)),
            charges: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
        }
    }

    /// Changes what later charges do.
    pub fn set_outcome(&self, outcome: SimulatedOutcome) {
        self.outcome.store(encode(outcome), Ordering::SeqCst);
    }

    /// Distinct orders charged.
    pub fn charged_orders(&self) -> usize {
        self.charges.lock().expect("charges lock").len()
    }

    /// Charge calls received, including repeats, declines and hangs.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn encode(o: SimulatedOutcome) -> u8 {
    match o {
        SimulatedOutcome::Succeed => 0,
        SimulatedOutcome::Fail => 1,
        SimulatedOutcome::Hang => 2,
    }
}

impl PaymentProvider for SimulatedProvider {
    fn charge<'a>(
        &'a self,
        req: &'a ChargeRequest,
    ) -> BoxFuture<'a, Result<ChargeOutcome, ProviderError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.outcome.load(Ordering::SeqCst) {
                0 => {
                    let mut charges = self.charges.lock().expect("charges lock");
                    let id = charges
                        .entry(req.order_id.clone())
                        .or_insert_with(|| format!("sim_{}", ulid::Ulid::new()));
                    Ok(ChargeOutcome::Charged {
                        charge_id: id.clone(),
                    })
                }
                1 => Ok(ChargeOutcome::Declined {
                    reason: "declined by the simulated provider".into(),
                }),
                _ => futures::future::pending().await,
            }
        })
    }

    fn lookup<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>> {
        Box::pin(async move {
            Ok(self
                .charges
                .lock()
                .expect("charges lock")
                .get(order_id)
                .cloned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str) -> ChargeRequest {
        ChargeRequest {
            order_id: id.into(),
            user_id: "u".into(),
            amount_cents: 100,
        }
    }

    #[tokio::test]
    async fn charging_an_order_twice_is_one_charge() {
        let p = SimulatedProvider::new(SimulatedOutcome::Succeed);
        let a = p.charge(&req("o1")).await.unwrap();
        let b = p.charge(&req("o1")).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(p.charged_orders(), 1);
        assert!(p.lookup("o1").await.unwrap().is_some());
        assert!(p.lookup("o2").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_declined_charge_charges_nothing() {
        let p = SimulatedProvider::new(SimulatedOutcome::Fail);
        assert!(matches!(
            p.charge(&req("o1")).await.unwrap(),
            ChargeOutcome::Declined { .. }
        ));
        assert_eq!(p.charged_orders(), 0);
    }

    #[tokio::test]
    async fn a_hanging_provider_never_answers() {
        let p = SimulatedProvider::new(SimulatedOutcome::Hang);
        let r =
            tokio::time::timeout(std::time::Duration::from_millis(20), p.charge(&req("o"))).await;
        assert!(r.is_err());
        assert!(p.lookup("o").await.unwrap().is_none());
    }
}
