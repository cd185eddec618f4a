//! Payment providers: the one call the order lifecycle makes to move money,
//! behind a trait so a shop plugs in its own.
//!
//! A provider must be idempotent per order: charging the same order twice
//! is one charge (the order id is the idempotency key), and it must answer
//! whether an order was charged, so a payment whose answer was lost can be
//! settled later. A lookup that finds no charge is not conclusive (a charge
//! the provider received may still complete), so a provider can also void
//! an order's pending charge: once `void` answers [`VoidOutcome::Voided`],
//! no charge requested before it can land. And it refunds the charge of an
//! order that was cancelled while its payment went through. This module
//! owns no order state.

use std::{
    collections::{HashMap, HashSet},
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

/// What voiding an order's pending charge found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoidOutcome {
    /// Nothing was charged, and no charge requested so far can land now.
    Voided,
    /// Too late: the order was charged.
    Charged { charge_id: String },
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

    /// The charge id if `order_id` was charged, `None` if it was not (yet).
    fn lookup<'a>(
        &'a self,
        order_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, ProviderError>>;

    /// Cancels whatever charge of `order_id` is still pending, so that none
    /// requested before this call can land; answers the charge instead if
    /// it already did. A later `charge` is a new payment.
    fn void<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<VoidOutcome, ProviderError>>;

    /// Refunds the charge of `order_id`, if any; refunding twice is one
    /// refund.
    fn refund<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>>;
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
///
/// Tests can also hold charges ([`SimulatedProvider::hold_charges`]): a held
/// charge is received but completes only when the test lands it, whether or
/// not its caller still waits — the way a real provider finishes a charge
/// whose answer the caller stopped waiting for. A void cancels held charges.
pub struct SimulatedProvider {
    outcome: AtomicU8,
    ledger: Mutex<Ledger>,
    calls: AtomicU64,
    /// Bumped each time held charges land.
    landings: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Ledger {
    /// Order id → charge id.
    charges: HashMap<String, String>,
    /// Orders with a charge received but not completed.
    held: HashSet<String>,
    holding: bool,
    refunded: HashSet<String>,
}

impl SimulatedProvider {
    pub fn new(outcome: SimulatedOutcome) -> Self {
        Self {
            outcome: AtomicU8::new(encode(outcome)),
            ledger: Mutex::new(Ledger::default()),
            calls: AtomicU64::new(0),
            landings: tokio::sync::watch::channel(0).0,
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    /// Changes what later charges do.
    pub fn set_outcome(&self, outcome: SimulatedOutcome) {
        self.outcome.store(encode(outcome), Ordering::SeqCst);
    }

    /// Later successful charges are received but held until
    /// [`SimulatedProvider::land_held_charges`].
    pub fn hold_charges(&self) {
        self.ledger().holding = true;
    }

    /// Completes every held charge not voided meanwhile (and stops holding).
    pub fn land_held_charges(&self) {
        let mut l = self.ledger();
        l.holding = false;
        for order_id in std::mem::take(&mut l.held) {
            l.charges
                .insert(order_id, format!("sim_{}", ulid::Ulid::new()));
        }
        drop(l);
        self.landings.send_modify(|n| *n += 1);
    }

    /// Charges received and not completed yet.
    pub fn held_charges(&self) -> usize {
        self.ledger().held.len()
    }

    /// Distinct orders charged and not refunded.
    pub fn charged_orders(&self) -> usize {
        self.ledger().charges.len()
    }

    /// Distinct orders refunded.
    pub fn refunded_orders(&self) -> usize {
        self.ledger().refunded.len()
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
                    let mut landings = self.landings.subscribe();
                    {
                        let mut l = self.ledger();
                        if let Some(id) = l.charges.get(&req.order_id) {
                            return Ok(ChargeOutcome::Charged {
                                charge_id: id.clone(),
                            });
                        }
                        if !l.holding {
                            let id = format!("sim_{}", ulid::Ulid::new());
                            l.charges.insert(req.order_id.clone(), id.clone());
                            return Ok(ChargeOutcome::Charged { charge_id: id });
                        }
                        l.held.insert(req.order_id.clone());
                    }
                    // Held: the charge completes (or not, if voided) when
                    // the test lands it.
                    let _ = landings.changed().await;
                    Ok(match self.ledger().charges.get(&req.order_id) {
                        Some(id) => ChargeOutcome::Charged {
                            charge_id: id.clone(),
                        },
                        None => ChargeOutcome::Declined {
                            reason: "voided before it completed".into(),
                        },
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
        Box::pin(async move { Ok(self.ledger().charges.get(order_id).cloned()) })
    }

    fn void<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<VoidOutcome, ProviderError>> {
        Box::pin(async move {
            let mut l = self.ledger();
            if let Some(id) = l.charges.get(order_id) {
                return Ok(VoidOutcome::Charged {
                    charge_id: id.clone(),
                });
            }
            l.held.remove(order_id);
            Ok(VoidOutcome::Voided)
        })
    }

    fn refund<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let mut l = self.ledger();
            if l.charges.remove(order_id).is_some() {
                l.refunded.insert(order_id.to_owned());
            }
            Ok(())
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
    async fn a_held_charge_lands_unless_voided_and_a_refund_is_idempotent() {
        let p = std::sync::Arc::new(SimulatedProvider::new(SimulatedOutcome::Succeed));
        p.hold_charges();
        let (a, b) = (p.clone(), p.clone());
        let first = tokio::spawn(async move { a.charge(&req("o1")).await });
        let second = tokio::spawn(async move { b.charge(&req("o2")).await });
        while p.held_charges() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(p.lookup("o1").await.unwrap().is_none());
        assert_eq!(p.void("o2").await.unwrap(), VoidOutcome::Voided);
        p.land_held_charges();
        let charged = first.await.unwrap().unwrap();
        assert!(matches!(charged, ChargeOutcome::Charged { .. }));
        assert!(matches!(
            second.await.unwrap().unwrap(),
            ChargeOutcome::Declined { .. }
        ));
        assert_eq!(p.charged_orders(), 1);
        assert!(matches!(
            p.void("o1").await.unwrap(),
            VoidOutcome::Charged { .. }
        ));
        p.refund("o1").await.unwrap();
        p.refund("o1").await.unwrap();
        assert_eq!((p.charged_orders(), p.refunded_orders()), (0, 1));
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
