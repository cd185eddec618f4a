//! The admission window: in the first moments of an item's sale, buys are
//! admitted in random order, not in arrival order, so a script firing at
//! the start instant has no edge over a person who clicks a few hundred
//! milliseconds later.
//!
//! This module owns the rule and the wait; it never takes permits and
//! never talks to Redis. [`Permits`](crate::permits::Permits) learns each
//! item's start and window from its lease replies (`lua/redis/lease.lua`
//! reads them from the item's stock hash, where preheat wrote the round's
//! `admission_window_ms`) and asks [`Window::hold`] before it takes a
//! permit; a buy that must wait waits in [`hold`] and only then takes one.
//!
//! **The rule.** For an item whose sale starts at `S` (the round's
//! `starts_at`, on this node's clock — the one `GET /api/time` gives the
//! sale page) with a window of `W` ms, a buy asking for a permit at `t`:
//!
//! - `t < S` (before the start) or `t ≥ S + W` (after the window), or
//!   `W = 0`: admitted at once, as without a window;
//! - `S ≤ t < S + W`: held, then admitted at a moment drawn uniformly from
//!   `[max(t, S + W/2), S + W)`.
//!
//! So every buy that arrives in the first half of the window (the
//! collection) is admitted at a uniformly random moment of the second half,
//! whatever its arrival: they are admitted in uniformly random order. A buy
//! that arrives during the second half draws its moment uniformly over
//! what is left of it, which is exactly how the moments of the buys still
//! waiting are distributed then: at every instant, every buy still held —
//! early or late — is as likely as any other to be the next admitted. No
//! buy waits longer than `W` (one arriving at `S` waits at most `W`, later
//! ones less), and after `S + W` arrival order applies again.
//!
//! Each buy draws its own moment (no queue, nothing shared between buys),
//! so several edge nodes need no coordination: each randomises its own
//! arrivals. A held buy holds no permit and reserves nothing; when its
//! client goes away during the hold (the proxy watches the connection
//! through a [`ClientLink`]), the hold ends and the buy takes nothing.
//! Permits and stock are unchanged by the window: it changes the order in
//! which buys ask for them, never how many there are.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// An item's admission window, as its stock hash has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The sale's start, ms since the Unix epoch.
    pub starts_ms: i64,
    /// The window's length in ms (0: off).
    pub window_ms: i64,
}

impl Window {
    /// Whether a buy at `now_ms` falls inside the window.
    pub fn covers(&self, now_ms: i64) -> bool {
        self.window_ms > 0 && now_ms >= self.starts_ms && now_ms < self.starts_ms + self.window_ms
    }

    /// How long a buy asking at `now_ms` is held, for a uniform draw `u` in
    /// `[0, 1)`; `None`: admitted at once (outside the window).
    pub fn hold(&self, now_ms: i64, u: f64) -> Option<Duration> {
        if !self.covers(now_ms) {
            return None;
        }
        let end = (self.starts_ms + self.window_ms) as f64;
        let from = (now_ms as f64).max(self.starts_ms as f64 + self.window_ms as f64 / 2.0);
        let at = from + u.clamp(0.0, 1.0) * (end - from);
        let wait = (at - now_ms as f64).clamp(0.0, self.window_ms as f64);
        Some(Duration::from_secs_f64(wait / 1000.0))
    }
}

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// The moment came: take permits now.
    Admitted,
    /// The client went away: take nothing.
    Gone,
}

tokio::task_local! {
    static CLIENT: ClientLink;
}

/// Links the holds of one request to its client's connection: the proxy
/// runs the access phase inside [`ClientLink::scope`] and, once a hold
/// starts ([`ClientLink::holding`]), watches the connection and calls
/// [`ClientLink::client_gone`] if it closes.
#[derive(Clone, Default)]
pub struct ClientLink {
    inner: Arc<LinkInner>,
}

#[derive(Default)]
struct LinkInner {
    holding: Notify,
    gone: CancellationToken,
}

impl ClientLink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `fut` (the request's access phase) with this link visible to
    /// [`hold`].
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        CLIENT.scope(self.clone(), fut).await
    }

    /// Resolves once a hold of this request has started.
    pub async fn holding(&self) {
        self.inner.holding.notified().await
    }

    /// The client closed its connection: a hold in progress ends.
    pub fn client_gone(&self) {
        self.inner.gone.cancel();
    }

    /// Whether the client went away during a hold.
    pub fn is_gone(&self) -> bool {
        self.inner.gone.is_cancelled()
    }
}

/// Holds the current request for `wait` (an async wait: no thread is
/// blocked), or until its client goes away; records the hold in
/// `edge_admission_held_total{outcome}` and `edge_admission_hold_seconds`.
pub async fn hold(wait: Duration, metrics: &Metrics) -> Held {
    let started = tokio::time::Instant::now();
    let link = CLIENT.try_with(|c| c.clone()).ok();
    let outcome = match &link {
        Some(link) => {
            link.inner.holding.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(wait) => Held::Admitted,
                _ = link.inner.gone.cancelled() => Held::Gone,
            }
        }
        None => {
            tokio::time::sleep(wait).await;
            Held::Admitted
        }
    };
    let label = match outcome {
        Held::Admitted => "admitted",
        Held::Gone => "gone",
    };
    metrics.admission_hold(label, started.elapsed());
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        starts_ms: 10_000,
        window_ms: 1_000,
    };

    fn ms(d: Option<Duration>) -> Option<f64> {
        d.map(|d| d.as_secs_f64() * 1000.0)
    }

    #[test]
    fn outside_the_window_nothing_waits() {
        assert_eq!(W.hold(9_999, 0.5), None, "before the start");
        assert_eq!(W.hold(11_000, 0.5), None, "after the window");
        assert_eq!(W.hold(50_000, 0.0), None);
        let off = Window {
            starts_ms: 10_000,
            window_ms: 0,
        };
        assert_eq!(off.hold(10_000, 0.5), None, "window off");
        assert!(W.covers(10_000) && W.covers(10_999) && !W.covers(11_000));
    }

    #[test]
    fn the_first_half_collects_and_the_second_admits() {
        // Arrivals in the first half all draw from [S + W/2, S + W).
        for t in [10_000, 10_250, 10_499] {
            let at = |u| t as f64 + ms(W.hold(t, u)).unwrap();
            assert!((at(0.0) - 10_500.0).abs() < 1e-6, "t={t}");
            assert!((at(0.5) - 10_750.0).abs() < 1e-6, "t={t}");
            assert!(at(0.999_999) < 11_000.0);
        }
        // Arrivals in the second half draw over what is left of it.
        let at = |u| 10_800.0 + ms(W.hold(10_800, u)).unwrap();
        assert!((at(0.0) - 10_800.0).abs() < 1e-6);
        assert!((at(0.5) - 10_900.0).abs() < 1e-6);
    }

    #[test]
    fn nobody_waits_longer_than_the_window() {
        for t in (10_000..11_000).step_by(7) {
            for u in [0.0, 0.3, 0.999_999, 1.0, 7.0, -1.0] {
                let wait = ms(W.hold(t, u)).unwrap();
                assert!((0.0..=1_000.0).contains(&wait), "t={t} u={u}: {wait}");
                assert!(t as f64 + wait <= 11_000.0);
            }
        }
    }

    /// A small deterministic generator, so the test never flakes.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn early_and_late_arrivals_of_the_collection_are_admitted_alike() {
        // 40 arrive at the start, 40 others 300 ms later; the first 20
        // admitted win. Over many sales each group wins half on average,
        // where arrival order would give the first group everything.
        let mut rng = Lcg(42);
        let sales = 2_000;
        let mut first_group_wins = 0u64;
        for _ in 0..sales {
            let mut moments: Vec<(f64, bool)> = (0..80)
                .map(|i| {
                    let early = i < 40;
                    let t = if early { 10_000 } else { 10_300 };
                    (t as f64 + ms(W.hold(t, rng.next())).unwrap(), early)
                })
                .collect();
            moments.sort_by(|a, b| a.0.total_cmp(&b.0));
            first_group_wins += moments[..20].iter().filter(|m| m.1).count() as u64;
        }
        let share = first_group_wins as f64 / (sales * 20) as f64;
        assert!((share - 0.5).abs() < 0.02, "first group's share {share}");
    }

    #[test]
    fn a_late_arrival_is_as_likely_next_as_those_already_waiting() {
        // Four buys arrive at the start; at 10_800 a newcomer arrives. With
        // k of the four still waiting, the newcomer should be admitted
        // before all of them with probability 1/(k+1), as any of them.
        let mut rng = Lcg(7);
        let (mut trials, mut newcomer_first, mut expected) = (0u64, 0u64, 0.0);
        for _ in 0..20_000 {
            let waiting: Vec<f64> = (0..4)
                .map(|_| 10_000.0 + ms(W.hold(10_000, rng.next())).unwrap())
                .filter(|at| *at >= 10_800.0)
                .collect();
            if waiting.is_empty() {
                continue;
            }
            trials += 1;
            expected += 1.0 / (waiting.len() + 1) as f64;
            let newcomer = 10_800.0 + ms(W.hold(10_800, rng.next())).unwrap();
            if waiting.iter().all(|at| newcomer < *at) {
                newcomer_first += 1;
            }
        }
        let (got, want) = (
            newcomer_first as f64 / trials as f64,
            expected / trials as f64,
        );
        assert!(
            (got - want).abs() < 0.02,
            "newcomer first {got}, expected {want}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_ends_when_the_client_goes() {
        let metrics = Metrics::new();
        let link = ClientLink::new();
        let l2 = link.clone();
        let m2 = metrics.clone();
        let held = tokio::spawn(async move { l2.scope(hold(Duration::from_secs(30), &m2)).await });
        link.holding().await;
        link.client_gone();
        assert_eq!(held.await.unwrap(), Held::Gone);
        assert!(link.is_gone());
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("edge_admission_held_total{outcome=\"gone\"} 1"));

        // Without a departure the hold lasts its time.
        let link = ClientLink::new();
        let started = tokio::time::Instant::now();
        let out = link.scope(hold(Duration::from_millis(700), &metrics)).await;
        assert_eq!(out, Held::Admitted);
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }
}
