//! The crowd of one scenario: the load generator's buyers
//! ([`seckill_loadgen::buyer`]), each playing the real client's script,
//! split over the two edges (buyer `n` prefers edge `n % 2` and moves to
//! the other one when its edge refuses connections). Arrivals are spread
//! over a few seconds after the start, so a fault lands while the sale
//! still has stock; a second, smaller wave arrives once the fault is
//! lifted, so there is demand to show the sale recovered. Every `202`, the
//! final status its buyer saw and its payment land in the shared
//! [`Ledger`].

use std::{sync::Arc, time::Duration};

use seckill_backend::auth::{Role, TokenKeys};
use seckill_loadgen::{
    buyer::{Behaviour, BuyerPlan, Crowd, Ledger, Script},
    client::Http,
    profile::Profile,
    setup::RoundInfo,
    stats::Stats,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How a crowd behaves.
#[derive(Clone, Debug)]
pub struct CrowdSpec {
    pub edges: Vec<String>,
    pub buyers: u32,
    /// Reaction times are spread uniformly over this after the start.
    pub spread: Duration,
    pub pay_probability: f64,
    pub requests_per_buyer: u32,
    /// Requests in flight per edge.
    pub concurrency: usize,
    pub secret: String,
    pub seed: u64,
    /// Hard cap on the crowd's run.
    pub cap: Duration,
}

/// A crowd on its way.
pub struct CrowdRun {
    pub ledger: Arc<Ledger>,
    pub stats: Arc<Stats>,
    done: tokio::task::JoinHandle<bool>,
}

impl CrowdRun {
    /// Sends the crowd at `round`.
    pub fn spawn(spec: &CrowdSpec, round: &RoundInfo) -> anyhow::Result<Self> {
        Self::spawn_wave(
            spec,
            round,
            Arc::new(Ledger::default()),
            Arc::new(Stats::new()),
            0,
            Duration::ZERO,
        )
    }

    /// Sends a wave of buyers `first..first + spec.buyers`, arriving over
    /// `spec.spread` from `after` past the start, recording into `ledger`
    /// and `stats` (shared with an earlier crowd).
    pub fn spawn_wave(
        spec: &CrowdSpec,
        round: &RoundInfo,
        ledger: Arc<Ledger>,
        stats: Arc<Stats>,
        first: usize,
        after: Duration,
    ) -> anyhow::Result<Self> {
        let keys = TokenKeys::new(spec.secret.as_bytes(), 5);
        let ttl = (spec.cap.as_secs() + 3600) as i64;
        let stop = CancellationToken::new();
        let script = Arc::new(Script {
            qty: 1,
            requests_per_buyer: spec.requests_per_buyer,
            clicks: 1,
            starts_at_ms: round.starts_at_ms,
            tickets: false,
            ticket_lead_ms: 0,
            challenge: false,
            bot_requests: 0,
        });
        // One client per edge, preferring it and falling back to the others.
        let crowds = (0..spec.edges.len())
            .map(|k| {
                let mut bases = spec.edges.clone();
                bases.rotate_left(k);
                Ok(Crowd {
                    clients: Arc::new(vec![Http::with_bases(
                        &bases,
                        spec.concurrency,
                        Duration::from_secs(10),
                    )?]),
                    stats: stats.clone(),
                    ledger: ledger.clone(),
                    script: script.clone(),
                    stop: stop.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut rng = fastrand::Rng::with_seed(spec.seed ^ first as u64);
        let spread_ms = spec.spread.as_millis().max(1) as u64;
        let mut set = JoinSet::new();
        for n in first..first + spec.buyers as usize {
            let item = &round.items[n % round.items.len()];
            let user = format!("r{}-buyer-{n}", round.id);
            let plan = BuyerPlan {
                token: keys.mint(&user, Role::Buyer, ttl),
                user,
                profile: Profile::People,
                behaviour: Behaviour::Normal,
                round_id: round.id,
                item_id: item.id,
                client: 0,
                lender: None,
                reaction: after + Duration::from_millis(rng.u64(0..=spread_ms)),
                early_by: Duration::ZERO,
                ticket_after: Duration::ZERO,
                pays: rng.f64() < spec.pay_probability,
            };
            let c = crowds[n % crowds.len()].clone();
            set.spawn(async move { c.run(plan).await });
        }
        let cap = spec.cap;
        let done = tokio::spawn(async move {
            let all = async { while set.join_next().await.is_some() {} };
            let finished = tokio::time::timeout(cap, all).await.is_ok();
            if !finished {
                stop.cancel();
                while set.join_next().await.is_some() {}
            }
            finished
        });
        Ok(Self {
            ledger,
            stats,
            done,
        })
    }

    /// Waits for every buyer; `false` when the cap stopped some.
    pub async fn finish(self) -> anyhow::Result<(Arc<Ledger>, Arc<Stats>, bool)> {
        let finished = self.done.await?;
        Ok((self.ledger, self.stats, finished))
    }
}
