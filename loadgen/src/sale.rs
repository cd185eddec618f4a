//! A whole simulated sale: open a round (or take an existing one), send the
//! crowd, wait for it (bounded by the duration cap), let the order writer
//! settle, and judge the stores; then count who won the units (people or
//! which bot profile) for the fairness report.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use seckill_backend::{
    auth::{Role, TokenKeys},
    store::entities::order,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    buyer::{Account, Behaviour, BuyerPlan, Crowd, Ledger, Script},
    client::Http,
    fairness::Fairness,
    networks,
    profile::{self, BotMix, Profile, Reaction},
    progress::Progress,
    report::{Report, SaleFigures, Timeline},
    screenshot::ConsoleView,
    setup::{Admin, RoundInfo, RoundSpec},
    stats::Stats,
    verdict::{self, ClientView, StoreReader, Stores},
};

/// Everything a sale run needs.
#[derive(Clone, Debug)]
pub struct SaleOptions {
    /// Buyer-facing base URL (the edge, or the backend directly).
    pub target: String,
    /// The backend's API base URL for the admin calls.
    pub admin: String,
    /// Shared token secret (mints buyer, operator and approver tokens).
    pub secret: String,
    /// Where the verdict reads the sale's state.
    pub stores: Stores,
    /// An existing approved round to buy from; `None` opens a new one.
    pub round: Option<i64>,
    pub buyers: u32,
    /// Items of a new round.
    pub items: usize,
    /// Units per item of a new round.
    pub stock: i64,
    pub per_user_limit: i64,
    /// Units each buy request asks for.
    pub qty: i64,
    /// Buy requests a normal buyer may send (first click and retries).
    pub requests_per_buyer: u32,
    /// Requests a repeat clicker fires at once.
    pub clicks: u32,
    /// Shares of misbehaving buyers (0.0–1.0 each).
    pub repeat_clickers: f64,
    pub forgers: f64,
    pub early_birds: f64,
    /// Probability a buyer pays once its order exists.
    pub pay_probability: f64,
    /// Time from opening a new round to its start (buyers load the page and
    /// sync their clocks meanwhile).
    pub start_in: Duration,
    /// Length of a new round's window.
    pub sale_length: Duration,
    /// People's reaction times after the start (uniform in the range).
    pub reaction: Reaction,
    /// Buy with purchase tickets (the backend's and edge's `[tickets]`).
    pub tickets: bool,
    /// The backend's `tickets.lead_ms`: the ticket window opens this long
    /// before the start.
    pub ticket_lead: Duration,
    /// Percent of the crowd that are bots (0–100).
    pub bots_pct: f64,
    /// Weights of the bot profiles; `None`: [`BotMix::default_for`].
    pub bot_mix: Option<BotMix>,
    /// Most requests one bot sends.
    pub bot_requests: u32,
    /// Buyers sharing one loopback source address (0: all connect from
    /// the default address; `None`: 16 with bots, else 0). See
    /// [`crate::networks`].
    pub buyers_per_address: Option<u32>,
    /// Round fields sent only when set (`admission_window_ms`,
    /// `pow_difficulty`).
    pub admission_window_ms: Option<i64>,
    pub pow_difficulty: Option<i64>,
    /// Hard cap on the crowd's run, from its first request.
    pub duration: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// How long the verdict waits for the order writer to finish.
    pub settle: Duration,
    pub progress: bool,
    pub seed: u64,
    /// Write the console's dashboard of the round to this PNG once every
    /// item sold out ([`crate::screenshot`]).
    pub console_screenshot: Option<PathBuf>,
}

impl Default for SaleOptions {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:8081".into(),
            admin: "http://127.0.0.1:8081".into(),
            secret: "dev-only-secret-change-me-before-a-sale".into(),
            stores: Stores {
                redis_url: "redis://127.0.0.1:6379/".into(),
                redis_prefix: "sk".into(),
                database_url: "sqlite://seckill.db?mode=rwc".into(),
            },
            round: None,
            buyers: 2_000,
            items: 3,
            stock: 100,
            per_user_limit: 1,
            qty: 1,
            requests_per_buyer: 3,
            clicks: 5,
            repeat_clickers: 0.05,
            forgers: 0.02,
            early_birds: 0.05,
            pay_probability: 0.5,
            start_in: Duration::from_secs(3),
            sale_length: Duration::from_secs(600),
            reaction: Reaction::default(),
            tickets: false,
            ticket_lead: Duration::from_millis(2_000),
            bots_pct: 0.0,
            bot_mix: None,
            bot_requests: 100,
            buyers_per_address: None,
            admission_window_ms: None,
            pow_difficulty: None,
            duration: Duration::from_secs(120),
            concurrency: 128,
            request_timeout: Duration::from_secs(10),
            settle: Duration::from_secs(15),
            progress: true,
            console_screenshot: None,
            seed: 42,
        }
    }
}

/// Assigns behaviours: the given shares of the crowd, at random positions.
pub fn behaviours(n: u32, opts: &SaleOptions) -> Vec<Behaviour> {
    let count = |share: f64| ((n as f64) * share.clamp(0.0, 1.0)).round() as usize;
    let mut v = Vec::with_capacity(n as usize);
    v.extend(std::iter::repeat_n(
        Behaviour::RepeatClicker,
        count(opts.repeat_clickers),
    ));
    v.extend(std::iter::repeat_n(Behaviour::Forger, count(opts.forgers)));
    v.extend(std::iter::repeat_n(
        Behaviour::EarlyBird,
        count(opts.early_birds),
    ));
    v.truncate(n as usize);
    v.resize(n as usize, Behaviour::Normal);
    fastrand::Rng::with_seed(opts.seed).shuffle(&mut v);
    v
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SaleOptions {
    /// The bot mix in effect.
    pub fn mix(&self) -> BotMix {
        self.bot_mix
            .clone()
            .unwrap_or_else(|| BotMix::default_for(self.tickets, self.challenge()))
    }

    /// Whether the round asks for a proof-of-work challenge.
    pub fn challenge(&self) -> bool {
        self.tickets && self.pow_difficulty.unwrap_or(0) > 0
    }

    /// Buyers per source address in effect.
    pub fn per_address(&self) -> u32 {
        self.buyers_per_address
            .unwrap_or(if self.bots_pct > 0.0 { 16 } else { 0 })
    }

    /// Refuses options that cannot make a sale, before anything is sent.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (0.0..=100.0).contains(&self.bots_pct),
            "--bots is a percentage of the crowd (0-100), not {}",
            self.bots_pct
        );
        if self.bots_pct > 0.0 && !self.tickets && self.mix().weight(Profile::Sharing) > 0 {
            bail!(
                "sharing bots share purchase tickets: add --tickets, or leave sharing out of --bot-mix"
            );
        }
        if self.bots_pct > 0.0 && !self.challenge() && self.mix().weight(Profile::Solver) > 0 {
            bail!(
                "solver bots solve the ticket challenge: add --tickets and --pow-difficulty above 0, or leave solver out of --bot-mix"
            );
        }
        if self.per_address() > 0 {
            networks::check_target(&self.target)?;
        }
        if let Some(d) = self.pow_difficulty {
            ensure!(d >= 0, "--pow-difficulty must be 0 or more");
        }
        if let Some(w) = self.admission_window_ms {
            ensure!(w >= 0, "--admission-window-ms must be 0 or more");
        }
        Ok(())
    }
}

/// Units of confirmed (not cancelled) orders per profile of their buyer.
pub fn units_won(
    orders: &[order::Model],
    profile_of: &HashMap<String, Profile>,
) -> BTreeMap<Profile, i64> {
    let mut won = BTreeMap::new();
    for o in orders
        .iter()
        .filter(|o| o.status != order::status::CANCELLED)
    {
        if let Some(p) = profile_of.get(&o.user_id) {
            *won.entry(*p).or_default() += o.qty;
        }
    }
    won
}

/// Runs one sale and judges it. Returns the report whether or not the
/// verdict passed; errors only when the sale could not be run or judged.
pub async fn run(opts: SaleOptions) -> anyhow::Result<Report> {
    opts.validate()?;
    let admin = Admin::new(&opts.admin, &opts.secret)?;
    let round: RoundInfo = match opts.round {
        Some(id) => admin.round(id).await?,
        None => {
            let starts = unix_ms() + opts.start_in.as_millis() as i64;
            admin
                .open_round(&RoundSpec {
                    name: format!("Simulated sale of {} buyers", opts.buyers),
                    items: opts.items.max(1),
                    stock: opts.stock,
                    per_user_limit: opts.per_user_limit,
                    starts_at_ms: starts,
                    ends_at_ms: starts + opts.sale_length.as_millis() as i64,
                    admission_window_ms: opts.admission_window_ms,
                    pow_difficulty: opts.pow_difficulty,
                })
                .await?
        }
    };
    anyhow::ensure!(!round.items.is_empty(), "round {} has no items", round.id);

    let keys = TokenKeys::new(opts.secret.as_bytes(), 5);
    let forged_keys = TokenKeys::new(b"not-the-shared-secret-at-all", 5);
    let ttl = (opts.duration.as_secs() + 3600) as i64;
    let mut rng = fastrand::Rng::with_seed(opts.seed ^ 0x5eed);
    let profiles = profile::assign(opts.buyers, opts.bots_pct, &opts.mix(), opts.seed);
    let people = profiles.iter().filter(|p| !p.is_bot()).count() as u32;
    let mut kinds = behaviours(people, &opts).into_iter();
    let sources = networks::plan(&profiles, opts.per_address())?;
    let mut forgers = HashSet::new();
    let mut mix: BTreeMap<String, u64> = BTreeMap::new();
    let mut population: BTreeMap<Profile, u64> = BTreeMap::new();
    let mut profile_of: HashMap<String, Profile> = HashMap::new();
    let lead_ms = opts.ticket_lead.as_millis() as u64;
    let plans: Vec<BuyerPlan> = profiles
        .iter()
        .enumerate()
        .map(|(n, &profile)| {
            let behaviour = if profile.is_bot() {
                Behaviour::Normal
            } else {
                kinds.next().unwrap_or(Behaviour::Normal)
            };
            let item = &round.items[n % round.items.len()];
            let user = format!("r{}-buyer-{n}", round.id);
            let token = if behaviour == Behaviour::Forger {
                forgers.insert(user.clone());
                forged_keys.mint(&user, Role::Buyer, ttl)
            } else {
                keys.mint(&user, Role::Buyer, ttl)
            };
            let lender = (profile == Profile::Sharing).then(|| {
                let user = format!("r{}-buyer-{n}-lender", round.id);
                Account {
                    token: keys.mint(&user, Role::Buyer, ttl),
                    user,
                }
            });
            if let Some(l) = &lender {
                profile_of.insert(l.user.clone(), profile);
            }
            profile_of.insert(user.clone(), profile);
            *population.entry(profile).or_default() += 1;
            let label = if profile.is_bot() {
                format!("bot_{profile}")
            } else {
                serde_json::to_value(behaviour)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            };
            *mix.entry(label).or_default() += 1;
            BuyerPlan {
                user,
                profile,
                behaviour,
                round_id: round.id,
                item_id: item.id,
                token,
                client: sources.of_buyer[n],
                lender,
                reaction: Duration::from_millis(
                    rng.u64(opts.reaction.min_ms..=opts.reaction.max_ms),
                ),
                early_by: Duration::from_millis(rng.u64(200..=1_000)),
                ticket_after: Duration::from_millis(rng.u64(0..=lead_ms / 2)),
                pays: rng.f64() < opts.pay_probability,
            }
        })
        .collect();

    let stats = Arc::new(Stats::new());
    let ledger = Arc::new(Ledger::default());
    let crowd = Crowd {
        clients: Arc::new(Http::per_source(
            std::slice::from_ref(&opts.target),
            opts.concurrency,
            opts.request_timeout,
            &sources.sources,
        )?),
        stats: stats.clone(),
        ledger: ledger.clone(),
        script: Arc::new(Script {
            qty: opts.qty,
            requests_per_buyer: opts.requests_per_buyer,
            clicks: opts.clicks,
            starts_at_ms: round.starts_at_ms,
            tickets: opts.tickets,
            ticket_lead_ms: lead_ms as i64,
            challenge: opts.challenge(),
            bot_requests: opts.bot_requests,
        }),
        stop: CancellationToken::new(),
    };

    // The console follows the round from before the start, so its chart
    // holds the whole sale.
    let screenshot = match &opts.console_screenshot {
        Some(out) => {
            let operator = keys.mint("loadgen-console", Role::Operator, ttl);
            let view = ConsoleView::open(&opts.admin, &operator, round.id).await?;
            let (out, limit) = (out.clone(), opts.duration);
            Some(tokio::spawn(view.capture_when_sold_out(out, limit)))
        }
        None => None,
    };

    let progress = Progress::start(opts.buyers as u64, stats.clone(), opts.progress);
    let begun = tokio::time::Instant::now();
    let started_at = chrono::Utc::now();
    let mut set = JoinSet::new();
    for plan in plans {
        let c = crowd.clone();
        set.spawn(async move { c.run(plan).await });
    }
    let all_done = async {
        while let Some(r) = set.join_next().await {
            r.context("a buyer task panicked")?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let capped = tokio::time::timeout(opts.duration, all_done).await;
    let stopped_by_cap = capped.is_err();
    if let Ok(r) = capped {
        r?;
    } else {
        crowd.stop.cancel();
        while set.join_next().await.is_some() {}
    }
    let elapsed = begun.elapsed();
    progress.finish().await;
    if let (Some(task), Some(out)) = (screenshot, &opts.console_screenshot) {
        match task.await.context("the screenshot task panicked")? {
            Ok(true) => eprintln!("console screenshot: {}", out.display()),
            Ok(false) => eprintln!(
                "console screenshot: {} (taken before every item sold out)",
                out.display()
            ),
            Err(e) => eprintln!("console screenshot failed: {e:#}"),
        }
    }

    let reader = StoreReader::connect(&opts.stores).await?;
    let snap = reader.settled(round.id, opts.settle).await?;
    let client = ClientView {
        told_202: ledger.told_202.lock().expect("ledger").clone(),
        forgers,
    };
    let verdict = verdict::judge(&snap, Some(&client));
    let timeline = Timeline::build(
        round.starts_at_ms,
        &stats.buy_timeline(),
        snap.items
            .iter()
            .flat_map(|i| i.attempts.values())
            .filter(|a| verdict::is_live(&a.status))
            .map(|a| (a.created_ms, a.qty)),
        stats.timeline_dropped.load(Ordering::Relaxed),
    );

    let fairness = Fairness::build(
        &population,
        &units_won(&snap.orders, &profile_of),
        stats.profile_outcomes(),
        stats.before_window(),
    );

    let first_sold_out = ledger.first_sold_out_ms.lock().expect("ledger").clone();
    let answered_202 = client.told_202.values().filter(|t| !t.retry).count();
    let sale = SaleFigures::from_verdict(&round, &verdict, &first_sold_out, answered_202);
    let payments = ledger
        .payments
        .lock()
        .expect("ledger")
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Ok(Report {
        target: opts.target.clone(),
        round,
        buyers: opts.buyers,
        behaviours: mix,
        concurrency: opts.concurrency,
        started_at: started_at.to_rfc3339(),
        elapsed_ms: elapsed.as_millis() as u64,
        stopped_by_cap,
        requests: stats.outcomes(),
        latency: stats.latencies(),
        latency_bars: stats.latency_bars(),
        timeline,
        sale,
        payments,
        fairness,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_counts() {
        let opts = SaleOptions {
            repeat_clickers: 0.1,
            forgers: 0.05,
            early_birds: 0.2,
            ..Default::default()
        };
        let v = behaviours(1000, &opts);
        let n = |b| v.iter().filter(|x| **x == b).count();
        assert_eq!(v.len(), 1000);
        assert_eq!(n(Behaviour::RepeatClicker), 100);
        assert_eq!(n(Behaviour::Forger), 50);
        assert_eq!(n(Behaviour::EarlyBird), 200);
        assert_eq!(n(Behaviour::Normal), 650);
        assert_eq!(v, behaviours(1000, &opts), "deterministic for a seed");
    }

    #[test]
    fn shares_never_exceed_the_crowd() {
        let opts = SaleOptions {
            repeat_clickers: 0.9,
            forgers: 0.9,
            ..Default::default()
        };
        assert_eq!(behaviours(10, &opts).len(), 10);
    }
}
