//! One simulated buyer, behaving like the real client: load the sale page,
//! sync the clock with `/api/time` (compensating for the round trip), wait
//! for the start, send the buy request(s), poll the attempt until it is
//! final, and pay with some probability.
//!
//! With purchase tickets on ([`Script::tickets`]), a buyer first asks for
//! a ticket ([`Crowd::request_ticket`], the one place a ticket is asked
//! for) once the ticket window opens (`ticket_lead_ms` before the start; a
//! `425` is retried at the window), then buys on the ticket's `buy_path`
//! with `x-seckill-ticket`; a retry after an answer that may have spent
//! the ticket ([`ticket_spent`]) first gets a new one.
//!
//! Each buyer has a [`Profile`]. People load the sale page (bots go
//! straight to the API), click a reaction time after the
//! countdown ends and back off as the sale page does (`retry_after_ms`);
//! some of them misbehave in the older ways ([`Behaviour`]: repeat
//! clickers fire several buy requests at once, token forgers sign their
//! token with a wrong secret, early birds fire once before the start).
//! Bots play scripts: `early` fires before the ticket window (or the start)
//! and keeps firing; `hammer` fires at the start instant and retries with
//! no pause; `network` fires at the start from one client network shared
//! by all of them and follows `retry_after_ms`; `sharing` buys with a
//! ticket another account of its own obtained. Bots spend at most
//! [`Script::bot_requests`] requests.
//!
//! Every answer goes to [`Stats`] (also under the buyer's profile); every
//! `202` and the final status the buyer later saw go to the [`Ledger`],
//! which is what I5 is checked against.

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
    profile::Profile,
    stats::{Kind, Stats},
};

/// How a person behaves (bots follow their [`Profile`] instead).
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

/// An account: its user id and bearer token.
#[derive(Clone, Debug)]
pub struct Account {
    pub user: String,
    pub token: String,
}

/// Everything one buyer needs to play its part.
#[derive(Clone, Debug)]
pub struct BuyerPlan {
    pub user: String,
    pub profile: Profile,
    pub behaviour: Behaviour,
    pub round_id: i64,
    pub item_id: i64,
    pub token: String,
    /// Index of the HTTP client (source address) this buyer connects with.
    pub client: usize,
    /// A `sharing` bot's other account, whose tickets it buys with.
    pub lender: Option<Account>,
    /// Reaction time after the start (a crowd does not click in one instant).
    pub reaction: Duration,
    /// How early an early bird (or an `early` bot) fires.
    pub early_by: Duration,
    /// When, after the ticket window opens, a person's page asks for its
    /// ticket.
    pub ticket_after: Duration,
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
    /// Buy with purchase tickets.
    pub tickets: bool,
    /// How long before the start the ticket window opens (the backend's
    /// `tickets.lead_ms`).
    pub ticket_lead_ms: i64,
    /// The round asks for a proof-of-work challenge before a ticket.
    pub challenge: bool,
    /// Most requests (tickets and buys) one bot sends.
    pub bot_requests: u32,
}

impl Script {
    /// When tickets are handed out from, server time in Unix ms.
    pub fn ticket_window_ms(&self) -> i64 {
        self.starts_at_ms - self.ticket_lead_ms
    }
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
    /// One client per source address; [`BuyerPlan::client`] picks one.
    pub clients: Arc<Vec<Http>>,
    pub stats: Arc<Stats>,
    pub ledger: Arc<Ledger>,
    pub script: Arc<Script>,
    pub stop: CancellationToken,
}

/// A purchase ticket as the backend handed it out.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// The `x-seckill-ticket` value.
    pub value: String,
    pub buy_path: String,
    pub expires_at_ms: i64,
}

/// How a bot paces its retries.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// At once, whatever the answer said.
    NoPause,
    /// A fixed pause between shots.
    Every(Duration),
    /// After `retry_after_ms` when the answer gives one.
    RetryAfter,
}

/// Pause between an `early` bot's shots.
const EARLY_PAUSE: Duration = Duration::from_millis(20);

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Crowd {
    fn http(&self, plan: &BuyerPlan) -> &Http {
        &self.clients[plan.client.min(self.clients.len() - 1)]
    }

    async fn record(&self, plan: &BuyerPlan, kind: Kind, req: reqwest::RequestBuilder) -> Answer {
        let a = self.http(plan).send(req).await;
        self.stats.record(kind, &a.outcome, a.latency);
        self.stats.record_profile(plan.profile, kind, &a.outcome);
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
        //    Bots go straight to the API.
        if !plan.profile.is_bot() {
            let page = self
                .http(plan)
                .get(&format!("/sale/{}/{}/", plan.round_id, plan.item_id));
            self.record(plan, Kind::Page, page).await;
        }

        // 2. Clock sync: offset = server time − midpoint of the round trip
        //    (timed from the send, not from the wait for a permit).
        let time = self.http(plan).get("/api/time");
        let t = self.record(plan, Kind::Time, time).await;
        let offset_ms = t
            .body
            .get("now_ms")
            .and_then(Value::as_i64)
            .map(|server| server - (t.sent_ms + t.latency.as_millis() as i64 / 2))
            .unwrap_or(0);
        let server_now = move || unix_ms() + offset_ms;
        let local = |server_ms: i64| server_ms - offset_ms;

        // 3. Count down, 4. buy, each profile in its own way.
        let attempt = match plan.profile {
            Profile::People => self.play_person(plan, &server_now, &local).await,
            Profile::Early => {
                let first = if self.script.tickets {
                    self.script.ticket_window_ms()
                } else {
                    self.script.starts_at_ms
                };
                sleep_until_unix(local(first) - plan.early_by.as_millis() as i64).await;
                self.bot_loop(plan, None, Pace::Every(EARLY_PAUSE), &server_now)
                    .await
            }
            Profile::Hammer | Profile::Network | Profile::Solver => {
                let ticket = self
                    .ticket_before_start(plan, &plan.token, &server_now, &local)
                    .await;
                sleep_until_unix(local(self.script.starts_at_ms)).await;
                let pace = if plan.profile != Profile::Network {
                    Pace::NoPause
                } else {
                    Pace::RetryAfter
                };
                self.bot_loop(plan, ticket, pace, &server_now).await
            }
            Profile::Sharing => self.play_sharing(plan, &server_now, &local).await,
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

    /// A person: the ticket once its window opens, the countdown, a
    /// reaction time, then the click (or the older misbehaviours).
    async fn play_person(
        &self,
        plan: &BuyerPlan,
        server_now: &impl Fn() -> i64,
        local: &impl Fn(i64) -> i64,
    ) -> Option<String> {
        let mut ticket = if self.script.tickets {
            sleep_until_unix(
                local(self.script.ticket_window_ms()) + plan.ticket_after.as_millis() as i64,
            )
            .await;
            Some(self.obtain_ticket(plan, &plan.token, server_now).await?)
        } else {
            None
        };
        let start_local = local(self.script.starts_at_ms);
        if plan.behaviour == Behaviour::EarlyBird {
            sleep_until_unix(start_local - plan.early_by.as_millis() as i64).await;
            let a = self.buy_once(plan, true, ticket.as_ref(), server_now).await;
            // A crowd running late fires its "early" click after the start:
            // an attempt it got is held like any other.
            if let Some(id) = attempt_of(&a) {
                return Some(id);
            }
            if ticket_spent(&a) {
                ticket = None;
            }
        }
        sleep_until_unix(start_local + plan.reaction.as_millis() as i64).await;
        match plan.behaviour {
            Behaviour::RepeatClicker => {
                let clicks = (0..self.script.clicks.max(1))
                    .map(|_| self.buy_once(plan, false, ticket.as_ref(), server_now));
                let answers = futures::future::join_all(clicks).await;
                answers.into_iter().find_map(|a| attempt_of(&a))
            }
            _ => self.buy_with_retries(plan, ticket, server_now).await,
        }
    }

    /// A `sharing` bot: a ticket obtained with its other account, used by
    /// this one at the start; tried again with a fresh ticket as often as a
    /// person retries.
    async fn play_sharing(
        &self,
        plan: &BuyerPlan,
        server_now: &impl Fn() -> i64,
        local: &impl Fn(i64) -> i64,
    ) -> Option<String> {
        let lender = plan.lender.as_ref()?;
        let mut ticket = self
            .ticket_before_start(plan, &lender.token, server_now, local)
            .await;
        sleep_until_unix(local(self.script.starts_at_ms)).await;
        for _ in 0..self.script.requests_per_buyer.max(1) {
            if ticket.is_none() {
                ticket = self.obtain_ticket(plan, &lender.token, server_now).await;
            }
            let a = self.buy_once(plan, true, ticket.as_ref(), server_now).await;
            if let Some(id) = attempt_of(&a) {
                return Some(id);
            }
            ticket = None;
        }
        None
    }

    /// A bot's ticket, asked for as soon as the window opens (none when
    /// tickets are off).
    async fn ticket_before_start(
        &self,
        plan: &BuyerPlan,
        holder_token: &str,
        server_now: &impl Fn() -> i64,
        local: &impl Fn(i64) -> i64,
    ) -> Option<Ticket> {
        if !self.script.tickets {
            return None;
        }
        sleep_until_unix(local(self.script.ticket_window_ms())).await;
        self.obtain_ticket(plan, holder_token, server_now).await
    }

    /// Asks for a purchase ticket for the account of `holder_token` (the
    /// buyer's own, or a `sharing` bot's other account) and counts the
    /// answer under the buyer's profile. This is the one place a ticket is
    /// requested. When the round asks for a proof-of-work challenge, a
    /// profile that pays for it ([`Profile::solves_challenge`]) first
    /// fetches a challenge for the holder and solves it (every ticket
    /// costs a solution: each is accepted once); the others ask without.
    pub async fn request_ticket(
        &self,
        plan: &BuyerPlan,
        holder_token: &str,
        server_now: &impl Fn() -> i64,
    ) -> (Answer, Option<Ticket>) {
        let mut req = self
            .http(plan)
            .post(&format!(
                "/api/rounds/{}/items/{}/ticket",
                plan.round_id, plan.item_id
            ))
            .bearer_auth(holder_token);
        if self.script.challenge
            && plan.profile.solves_challenge()
            && let Some(pow) = self.solve_challenge(plan, holder_token).await
        {
            req = req.json(&serde_json::json!({ "pow": pow }));
        }
        let a = self.record(plan, Kind::Ticket, req).await;
        if server_now() < self.script.ticket_window_ms() {
            self.stats.record_before_window(plan.profile, &a.outcome);
        }
        let ticket = (a.status == 200)
            .then(|| {
                Some(Ticket {
                    value: a.body.get("ticket")?.as_str()?.to_owned(),
                    buy_path: a.body.get("buy_path")?.as_str()?.to_owned(),
                    expires_at_ms: a.body.get("expires_at_ms")?.as_i64()?,
                })
            })
            .flatten();
        (a, ticket)
    }

    /// Fetches the round's challenge for the holder of `holder_token` and
    /// solves it off the async threads, at the full price the round sets;
    /// `None` when no challenge came or it could not be solved.
    async fn solve_challenge(&self, plan: &BuyerPlan, holder_token: &str) -> Option<String> {
        let req = self
            .http(plan)
            .get(&format!(
                "/api/rounds/{}/items/{}/challenge",
                plan.round_id, plan.item_id
            ))
            .bearer_auth(holder_token);
        let a = self.record(plan, Kind::Challenge, req).await;
        if a.status != 200 {
            return None;
        }
        let challenge: seckill_proto::pow::Challenge = serde_json::from_value(a.body).ok()?;
        tokio::task::spawn_blocking(move || seckill_proto::pow::solve(&challenge, 60_000))
            .await
            .ok()
            .flatten()
    }

    /// A ticket the way the sale page gets one: a `425` is retried at the
    /// window, a `429` after `retry_after_ms`, a `503` or no answer after a
    /// growing pause, within the per-buyer request budget.
    async fn obtain_ticket(
        &self,
        plan: &BuyerPlan,
        holder_token: &str,
        server_now: &impl Fn() -> i64,
    ) -> Option<Ticket> {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..self.script.requests_per_buyer.max(1) {
            let (a, ticket) = self.request_ticket(plan, holder_token, server_now).await;
            if ticket.is_some() {
                return ticket;
            }
            let wait = match a.status {
                425 => {
                    let starts = a
                        .body
                        .get("starts_at_ms")
                        .and_then(Value::as_i64)
                        .unwrap_or(self.script.starts_at_ms);
                    let window = starts - self.script.ticket_lead_ms;
                    Duration::from_millis((window - server_now()).clamp(5, 5_000) as u64)
                }
                429 => retry_after(&a).unwrap_or(Duration::from_millis(1_000)),
                0 | 500..=599 => backoff,
                _ => return None,
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        None
    }

    /// One buy request (with `ticket` when there is one); notes 202s and
    /// sold-out answers in the ledger.
    async fn buy_once(
        &self,
        plan: &BuyerPlan,
        idempotent: bool,
        ticket: Option<&Ticket>,
        server_now: &impl Fn() -> i64,
    ) -> Answer {
        let default_path = format!("/api/rounds/{}/items/{}/buy", plan.round_id, plan.item_id);
        let path = ticket.map_or(default_path.as_str(), |t| t.buy_path.as_str());
        let mut req = self
            .http(plan)
            .post(path)
            .bearer_auth(&plan.token)
            .json(&json!({ "qty": self.script.qty }));
        if idempotent {
            req = req.header("Idempotency-Key", format!("{}-{}", plan.user, plan.item_id));
        }
        if let Some(t) = ticket {
            req = req.header("x-seckill-ticket", &t.value);
        }
        let a = self.record(plan, Kind::Buy, req).await;
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
    /// for it, within the per-buyer request budget; a new ticket first when
    /// the last answer may have spent the one it had.
    async fn buy_with_retries(
        &self,
        plan: &BuyerPlan,
        mut ticket: Option<Ticket>,
        server_now: &impl Fn() -> i64,
    ) -> Option<String> {
        let budget = self.script.requests_per_buyer.max(1);
        let mut backoff = Duration::from_millis(50);
        for _ in 0..budget {
            if ticket
                .as_ref()
                .is_some_and(|t| server_now() >= t.expires_at_ms)
            {
                ticket = None;
            }
            if self.script.tickets && ticket.is_none() {
                ticket = Some(self.obtain_ticket(plan, &plan.token, server_now).await?);
            }
            let a = self.buy_once(plan, true, ticket.as_ref(), server_now).await;
            if let Some(id) = attempt_of(&a) {
                return Some(id);
            }
            if ticket_spent(&a) {
                ticket = None;
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
                429 => retry_after(&a)
                    .unwrap_or(Duration::from_millis(100))
                    .clamp(Duration::from_millis(10), Duration::from_secs(5)),
                0 | 500..=599 => backoff,
                // A used or expired ticket: a new one, then the retry.
                403 if self.script.tickets && ticket.is_none() => Duration::ZERO,
                _ => return None,
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        None
    }

    /// A bot's loop: tickets (when on) and buys until a buy gets through,
    /// an answer is final, or [`Script::bot_requests`] are spent. Without
    /// a ticket it still fires buys (they are refused) and asks for one
    /// before each of them.
    async fn bot_loop(
        &self,
        plan: &BuyerPlan,
        mut ticket: Option<Ticket>,
        pace: Pace,
        server_now: &impl Fn() -> i64,
    ) -> Option<String> {
        let budget = self.script.bot_requests.max(1);
        let mut sent = 0u32;
        while sent < budget {
            let mut told: Option<Duration> = None;
            if self.script.tickets && ticket.is_none() {
                let (a, t) = self.request_ticket(plan, &plan.token, server_now).await;
                sent += 1;
                ticket = t;
                told = retry_after(&a);
                if sent >= budget {
                    break;
                }
            }
            let a = self.buy_once(plan, true, ticket.as_ref(), server_now).await;
            sent += 1;
            if let Some(id) = attempt_of(&a) {
                return Some(id);
            }
            if final_refusal(&a) {
                return None;
            }
            if ticket_spent(&a) {
                ticket = None;
            }
            let wait = match pace {
                Pace::NoPause => Duration::ZERO,
                Pace::Every(d) => d,
                Pace::RetryAfter => retry_after(&a)
                    .or(told)
                    .unwrap_or(Duration::from_millis(100)),
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
            }
        }
        None
    }

    async fn poll(&self, plan: &BuyerPlan, attempt_id: &str) -> Option<Value> {
        let mut pause = Duration::from_millis(50);
        loop {
            let req = self
                .http(plan)
                .get(&format!("/api/attempts/{attempt_id}"))
                .bearer_auth(&plan.token);
            let a = self.record(plan, Kind::Poll, req).await;
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
        let req = self
            .http(plan)
            .post(&format!("/api/orders/{order_id}/pay"))
            .bearer_auth(&plan.token)
            .json(&json!({}));
        let a = self.record(plan, Kind::Pay, req).await;
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

/// Whether a refused buy may have spent its ticket, so that a retry needs
/// a new one: no answer (the backend may have spent it), `403 ticket_used`
/// or `ticket_expired`, or a server error other than `503`. The backend
/// gives the ticket back on `425`, `503` and units held elsewhere; the
/// edge's own refusals (`429`, `410`, `403`) never reached it.
pub fn ticket_spent(a: &Answer) -> bool {
    match a.status {
        0 => true,
        403 => matches!(a.error_code(), Some("ticket_used" | "ticket_expired")),
        500..=599 => a.status != 503,
        _ => false,
    }
}

/// Answers no retry can get past: sold out or ended, over the per-user
/// limit, a bad token or request, no such item.
fn final_refusal(a: &Answer) -> bool {
    matches!(a.status, 400 | 401 | 404 | 410 | 422)
}

/// The `retry_after_ms` an answer asks for.
fn retry_after(a: &Answer) -> Option<Duration> {
    a.body
        .get("retry_after_ms")
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
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
    fn answers_that_may_have_spent_the_ticket() {
        assert!(ticket_spent(&answer(0, Value::Null)));
        assert!(ticket_spent(&answer(403, json!({"error": "ticket_used"}))));
        assert!(ticket_spent(&answer(
            403,
            json!({"error": "ticket_expired"})
        )));
        assert!(ticket_spent(&answer(500, Value::Null)));
        assert!(!ticket_spent(&answer(503, json!({"error": "unavailable"}))));
        assert!(!ticket_spent(&answer(425, json!({"error": "not_started"}))));
        assert!(!ticket_spent(&answer(
            429,
            json!({"error": "rate_limited"})
        )));
        assert!(!ticket_spent(&answer(
            403,
            json!({"error": "ticket_other_user"})
        )));
        assert!(final_refusal(&answer(410, json!({"error": "sold_out"}))));
        assert!(!final_refusal(&answer(
            403,
            json!({"error": "ticket_required"})
        )));
        assert_eq!(
            retry_after(&answer(429, json!({"retry_after_ms": 250}))),
            Some(Duration::from_millis(250))
        );
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
