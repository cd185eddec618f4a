//! One simulated buyer, behaving like the real client: load the sale page,
//! sync the clock with `/api/time` (compensating for the round trip), wait
//! for the start, send the buy request(s), poll the attempt until it is
//! final, and pay with some probability.
//!
//! Misbehaving buyers follow the same script with one twist each: repeat
//! clickers fire several buy requests at once, token forgers sign their
//! token with a wrong secret, early birds fire before the start.
//!
//! Every answer goes to [`Stats`]; every `202` and the final status the
//! buyer later saw go to the [`Ledger`], which is what I5 is checked against.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    client::{Answer, Http},
    stats::{Kind, Stats},
};

/// How a simulated buyer behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Clicks once, retries only when told to (429, 503, network error).
    Normal,
    /// Fires several identical buy requests at once.
    RepeatClicker,
    /// Uses a token signed with a wrong secret.
    Forger,
    /// Fires once before the start, then behaves normally.
    EarlyBird,
}

/// Everything one buyer needs to play its part.
#[derive(Clone, Debug)]
pub struct BuyerPlan {
    pub user: String,
    pub behaviour: Behaviour,
    pub round_id: i64,
    pub item_id: i64,
    pub token: String,
    /// Reaction time after the start (a crowd does not click in one instant).
    pub reaction: Duration,
    /// How early an early bird fires.
    pub early_by: Duration,
    /// Whether this buyer pays once its order exists.
    pub pays: bool,
}

/// Settings shared by every buyer of one sale.
#[derive(Clone, Debug)]
pub struct Script {
    pub qty: i64,
    /// Buy requests a normal buyer may send (its first click plus retries).
    pub requests_per_buyer: u32,
    /// Requests a repeat clicker fires at once.
    pub clicks: u32,
    /// Sale start, server time in Unix milliseconds.
    pub starts_at_ms: i64,
}

/// What one buyer was told about its attempt.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Told {
    pub user: String,
    pub item_id: i64,
    /// The last status this buyer saw (`queued` until polling says more;
    /// `processing` for a journaled buy).
    pub status: String,
    /// The `reason` of a `cancelled` status, as the buyer saw it.
    pub reason: Option<String>,
    /// Wall-clock time (Unix ms) the buy request that got the `202` was
    /// sent, and the time its answer came back.
    pub sent_ms: i64,
    pub told_ms: i64,
    /// The buyer's payment was answered `200 paid`.
    pub paid: bool,
    /// The attempt was first answered `200` (a retry that found it; the
    /// 202 never reached the buyer), not `202`.
    pub retry: bool,
    /// The status of the buyer's payment request (0: none, or no answer)
    /// and when it was sent (Unix ms).
    pub pay_status: u16,
    pub pay_sent_ms: i64,
    /// The buy was first answered `processing` (journaled while the
    /// backend could not reach Redis): it may still end `sold_out`.
    pub processing: bool,
}

/// Attempts buyers were told about (a 202, or a 200 for a retry that found
/// the attempt), by attempt id, plus the first sold-out answer per item.
/// Shared by all buyers.
#[derive(Default)]
pub struct Ledger {
    pub told_202: Mutex<HashMap<String, Told>>,
    /// Item id → server time (ms) of the first `410 sold_out` answer.
    pub first_sold_out_ms: Mutex<HashMap<i64, i64>>,
    /// Item id → server time (ms) of the last `202`.
    pub last_reserved_ms: Mutex<HashMap<i64, i64>>,
    /// Payments tried, by outcome.
    pub payments: Mutex<HashMap<String, u64>>,
}

/// The shared context of a crowd.
#[derive(Clone)]
pub struct Crowd {
    pub http: Http,
    pub stats: Arc<Stats>,
    pub ledger: Arc<Ledger>,
    pub script: Arc<Script>,
    pub stop: CancellationToken,
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Crowd {
    async fn record(&self, kind: Kind, req: reqwest::RequestBuilder) -> Answer {
        let a = self.http.send(req).await;
        self.stats.record(kind, &a.outcome, a.latency);
        a
    }

    /// Plays one buyer's script until it is done or the crowd is stopped.
    pub async fn run(&self, plan: BuyerPlan) {
        tokio::select! {
            _ = self.play(&plan) => {}
            _ = self.stop.cancelled() => {}
        }
        self.stats
            .buyers_done
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn play(&self, plan: &BuyerPlan) {
        // 1. The sale page (served by the edge; absent on a bare backend).
        self.record(
            Kind::Page,
            self.http
                .get(&format!("/sale/{}/{}/", plan.round_id, plan.item_id)),
        )
        .await;

        // 2. Clock sync: offset = server time − midpoint of the round trip
        //    (timed from the send, not from the wait for a permit).
        let t = self.record(Kind::Time, self.http.get("/api/time")).await;
        let offset_ms = t
            .body
            .get("now_ms")
            .and_then(Value::as_i64)
            .map(|server| server - (t.sent_ms + t.latency.as_millis() as i64 / 2))
            .unwrap_or(0);
        let server_now = move || unix_ms() + offset_ms;

        // 3. Count down (early birds jump the gun once).
        let start_local = self.script.starts_at_ms - offset_ms;
        if plan.behaviour == Behaviour::EarlyBird {
            sleep_until_unix(start_local - plan.early_by.as_millis() as i64).await;
            self.buy_once(plan, true, &server_now).await;
        }
        sleep_until_unix(start_local + plan.reaction.as_millis() as i64).await;

        // 4. Buy.
        let attempt = match plan.behaviour {
            Behaviour::RepeatClicker => {
                let clicks =
                    (0..self.script.clicks.max(1)).map(|_| self.buy_once(plan, false, &server_now));
                let answers = futures::future::join_all(clicks).await;
                answers.into_iter().find_map(|a| attempt_of(&a))
            }
            _ => self.buy_with_retries(plan, &server_now).await,
        };

        // 5. Poll until final, then maybe pay.
        let Some(attempt_id) = attempt else { return };
        let Some(final_body) = self.poll(plan, &attempt_id).await else {
            return;
        };
        if final_body.get("status").and_then(Value::as_str) == Some("ordered") && plan.pays {
            self.pay(plan, &final_body).await;
        }
    }

    /// One buy request; notes 202s and sold-out answers in the ledger.
    async fn buy_once(
        &self,
        plan: &BuyerPlan,
        idempotent: bool,
        server_now: &impl Fn() -> i64,
    ) -> Answer {
        let mut req = self
            .http
            .post(&format!(
                "/api/rounds/{}/items/{}/buy",
                plan.round_id, plan.item_id
            ))
            .bearer_auth(&plan.token)
            .json(&json!({ "qty": self.script.qty }));
        if idempotent {
            req = req.header("Idempotency-Key", format!("{}-{}", plan.user, plan.item_id));
        }
        let a = self.record(Kind::Buy, req).await;
        // A 200 is a retry that found the attempt: the buyer holds it as
        // surely as after a 202 (whose answer may have been lost).
        if matches!(a.status, 200 | 202)
            && let Some(id) = a.body.get("attempt_id").and_then(Value::as_str)
        {
            let mut ledger = self.ledger.told_202.lock().expect("ledger");
            let told = ledger.entry(id.to_owned()).or_insert_with(|| Told {
                user: plan.user.clone(),
                item_id: plan.item_id,
                status: "queued".into(),
                reason: None,
                sent_ms: a.sent_ms,
                told_ms: unix_ms(),
                paid: false,
                retry: a.status == 200,
                pay_status: 0,
                pay_sent_ms: 0,
                processing: a.body.get("status").and_then(Value::as_str) == Some("processing"),
            });
            // Concurrent identical clicks: the 200 may come back before the
            // 202 that created the attempt.
            if a.status == 202 {
                told.retry = false;
                told.sent_ms = a.sent_ms;
                told.told_ms = unix_ms();
            }
            drop(ledger);
            let mut last = self.ledger.last_reserved_ms.lock().expect("ledger");
            let e = last.entry(plan.item_id).or_insert(i64::MIN);
            *e = (*e).max(server_now());
        }
        if a.status == 410 && a.error_code() == Some("sold_out") {
            self.ledger
                .first_sold_out_ms
                .lock()
                .expect("ledger")
                .entry(plan.item_id)
                .or_insert_with(server_now);
        }
        a
    }

    /// A well-behaved client: one click, retried only on answers that ask
    /// for it, within the per-buyer request budget.
    async fn buy_with_retries(
        &self,
        plan: &BuyerPlan,
        server_now: &impl Fn() -> i64,
    ) -> Option<String> {
        let budget = self.script.requests_per_buyer.max(1);
        let mut backoff = Duration::from_millis(50);
        for _ in 0..budget {
            let a = self.buy_once(plan, true, server_now).await;
            if let Some(id) = attempt_of(&a) {
                return Some(id);
            }
            let wait = match a.status {
                // Too early (clock skew): wait for the start the server gave.
                425 => {
                    let starts = a
                        .body
                        .get("starts_at_ms")
                        .and_then(Value::as_i64)
                        .unwrap_or(self.script.starts_at_ms);
                    Duration::from_millis((starts - server_now()).clamp(10, 5_000) as u64)
                }
                429 => Duration::from_millis(
                    a.body
                        .get("retry_after_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(100)
                        .clamp(10, 5_000),
                ),
                0 | 500..=599 => backoff,
                _ => return None,
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        None
    }

    /// Polls an attempt until it is final; returns the final body.
    async fn poll(&self, plan: &BuyerPlan, attempt_id: &str) -> Option<Value> {
        let mut pause = Duration::from_millis(50);
        loop {
            let a = self
                .record(
                    Kind::Poll,
                    self.http
                        .get(&format!("/api/attempts/{attempt_id}"))
                        .bearer_auth(&plan.token),
                )
                .await;
            let status = a.body.get("status").and_then(Value::as_str);
            if a.status == 200
                && let Some(s) = status
            {
                if let Some(t) = self
                    .ledger
                    .told_202
                    .lock()
                    .expect("ledger")
                    .get_mut(attempt_id)
                {
                    t.status = s.to_owned();
                    t.reason = a
                        .body
                        .get("reason")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
                // `processing`: journaled, its reserve still to run.
                if s != "queued" && s != "processing" {
                    return Some(a.body);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(500));
        }
    }

    async fn pay(&self, plan: &BuyerPlan, ordered: &Value) {
        let Some(order_id) = ordered.get("order_id").and_then(Value::as_str) else {
            return;
        };
        let a = self
            .record(
                Kind::Pay,
                self.http
                    .post(&format!("/api/orders/{order_id}/pay"))
                    .bearer_auth(&plan.token)
                    .json(&json!({})),
            )
            .await;
        if let Some(id) = ordered.get("attempt_id").and_then(Value::as_str)
            && let Some(t) = self.ledger.told_202.lock().expect("ledger").get_mut(id)
        {
            t.paid = a.status == 200;
            t.pay_status = a.status;
            t.pay_sent_ms = a.sent_ms;
        }
        let label = match a.status {
            200 => "paid".to_owned(),
            404 | 405 => "payment unavailable".to_owned(),
            _ => a.outcome.clone(),
        };
        *self
            .ledger
            .payments
            .lock()
            .expect("ledger")
            .entry(label)
            .or_default() += 1;
    }
}

/// The attempt a buy answer refers to (a 202, or a 200 for a retry).
fn attempt_of(a: &Answer) -> Option<String> {
    matches!(a.status, 200 | 202)
        .then(|| a.body.get("attempt_id").and_then(Value::as_str))
        .flatten()
        .map(str::to_owned)
}

async fn sleep_until_unix(target_ms: i64) {
    let wait = target_ms - unix_ms();
    if wait > 0 {
        tokio::time::sleep_until(Instant::now() + Duration::from_millis(wait as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            outcome: String::new(),
            body,
            latency: Duration::ZERO,
            sent_ms: 0,
        }
    }

    #[test]
    fn attempts_come_from_202_and_200_only() {
        assert_eq!(
            attempt_of(&answer(202, json!({"attempt_id": "1-2-A"}))).as_deref(),
            Some("1-2-A")
        );
        assert_eq!(
            attempt_of(&answer(200, json!({"attempt_id": "1-2-A"}))).as_deref(),
            Some("1-2-A")
        );
        assert_eq!(
            attempt_of(&answer(422, json!({"attempt_id": "1-2-A"}))),
            None
        );
    }
}
