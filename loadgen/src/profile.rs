//! Who is in the crowd: people, and the bot profiles a flash sale has to
//! withstand, each carried as a label into the statistics and the fairness
//! report ([`crate::fairness`]).
//!
//! This module owns the profile names, the `--bot-mix` weights, the share
//! of the crowd each profile gets, and the reaction-time range of people.
//! It does no I/O; how each profile plays its part is [`crate::buyer`]'s,
//! which loopback address it connects from is [`crate::networks`]'.

use std::{fmt, str::FromStr};

use serde::Serialize;

/// Who a simulated buyer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// A person: clicks a reaction time after the countdown ends and backs
    /// off as the sale page does.
    People,
    /// Fires before the ticket window (or the start) and keeps firing.
    Early,
    /// Fires at the start instant, no reaction time, retries with no pause.
    Hammer,
    /// One of many accounts from one client network.
    Network,
    /// Buys with a ticket another account obtained (must be refused).
    Sharing,
    /// Pays the round's proof-of-work challenge in full for every ticket
    /// and fires at the start instant with no pause (the other bots skip
    /// the challenge, so they get no ticket of a round that asks for one).
    Solver,
}

impl Profile {
    /// Every bot profile that can be played, in report order.
    pub const BOTS: [Profile; 5] = [
        Profile::Early,
        Profile::Hammer,
        Profile::Network,
        Profile::Sharing,
        Profile::Solver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::People => "people",
            Profile::Early => "early",
            Profile::Hammer => "hammer",
            Profile::Network => "network",
            Profile::Sharing => "sharing",
            Profile::Solver => "solver",
        }
    }

    pub fn is_bot(self) -> bool {
        self != Profile::People
    }

    /// Whether this buyer solves the round's proof-of-work challenge
    /// before asking for a ticket (people's sale page does; of the bots,
    /// only `solver` pays for it).
    pub fn solves_challenge(self) -> bool {
        matches!(self, Profile::People | Profile::Solver)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Weights of the bot profiles (`early=1,hammer=1,network=1,sharing=1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotMix {
    /// Profiles with a weight above zero, in [`Profile::BOTS`] order.
    pub weights: Vec<(Profile, u32)>,
}

impl BotMix {
    /// The default mix: every playable profile once; `sharing` only with
    /// tickets (a ticket is what it shares), `solver` only with a challenge
    /// (what it solves).
    pub fn default_for(tickets: bool, challenge: bool) -> Self {
        Self {
            weights: Profile::BOTS
                .iter()
                .filter(|p| tickets || **p != Profile::Sharing)
                .filter(|p| challenge || **p != Profile::Solver)
                .map(|p| (*p, 1))
                .collect(),
        }
    }

    pub fn weight(&self, p: Profile) -> u32 {
        self.weights
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(0, |(_, w)| *w)
    }
}

impl FromStr for BotMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights: Vec<(Profile, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected profile=weight"))?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            let p = match name.trim() {
                "early" => Profile::Early,
                "hammer" => Profile::Hammer,
                "network" => Profile::Network,
                "sharing" => Profile::Sharing,
                "solver" => Profile::Solver,
                other => {
                    return Err(format!(
                        "unknown bot profile `{other}` (early, hammer, network, sharing, solver)"
                    ));
                }
            };
            if weights.iter().any(|(q, _)| *q == p) {
                return Err(format!("`{name}` is given twice"));
            }
            weights.push((p, w));
        }
        weights.retain(|(_, w)| *w > 0);
        if weights.is_empty() {
            return Err("the bot mix needs at least one profile with a weight above 0".into());
        }
        weights.sort_by_key(|(p, _)| *p);
        Ok(Self { weights })
    }
}

/// Counts per profile for a crowd of `n` with `bots_pct` percent bots
/// split by `mix` (largest remainders, so the counts add up to `n`).
pub fn counts(n: u32, bots_pct: f64, mix: &BotMix) -> Vec<(Profile, u32)> {
    let bots = ((n as f64) * bots_pct.clamp(0.0, 100.0) / 100.0).round() as u32;
    let bots = bots.min(n);
    let total_w: u64 = mix.weights.iter().map(|(_, w)| *w as u64).sum();
    let mut out = vec![(Profile::People, n - bots)];
    if bots == 0 || total_w == 0 {
        return out;
    }
    let mut shares: Vec<(Profile, u32, u64)> = mix
        .weights
        .iter()
        .map(|(p, w)| {
            let exact = bots as u64 * *w as u64;
            (*p, (exact / total_w) as u32, exact % total_w)
        })
        .collect();
    let mut left = bots - shares.iter().map(|s| s.1).sum::<u32>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    // Largest remainder first; ties go to the earlier profile.
    order.sort_by(|a, b| shares[*b].2.cmp(&shares[*a].2).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    out.extend(shares.into_iter().map(|(p, c, _)| (p, c)));
    out
}

/// The profile of each of `n` buyers, shuffled deterministically by `seed`.
pub fn assign(n: u32, bots_pct: f64, mix: &BotMix, seed: u64) -> Vec<Profile> {
    let mut v: Vec<Profile> = counts(n, bots_pct, mix)
        .into_iter()
        .flat_map(|(p, c)| std::iter::repeat_n(p, c as usize))
        .collect();
    fastrand::Rng::with_seed(seed ^ 0xb075).shuffle(&mut v);
    v
}

/// A range of reaction times in ms: `150-600`, or `N` for `0-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reaction {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Default for Reaction {
    fn default() -> Self {
        Self {
            min_ms: 150,
            max_ms: 600,
        }
    }
}

impl FromStr for Reaction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}`: expected MS or MIN-MAX in whole milliseconds"))
        };
        let (min_ms, max_ms) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (0, num(s)?),
        };
        if min_ms > max_ms {
            return Err(format!("`{s}`: the minimum is above the maximum"));
        }
        Ok(Self { min_ms, max_ms })
    }
}

impl fmt::Display for Reaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min_ms, self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_parses_and_refuses_what_it_cannot_play() {
        let m: BotMix = "hammer=2, early=1,network=0,sharing=1".parse().unwrap();
        assert_eq!(
            m.weights,
            [
                (Profile::Early, 1),
                (Profile::Hammer, 2),
                (Profile::Sharing, 1)
            ]
        );
        assert_eq!(
            "solver=1".parse::<BotMix>().unwrap().weights,
            [(Profile::Solver, 1)]
        );
        assert!("robot=1".parse::<BotMix>().is_err());
        assert!("early".parse::<BotMix>().is_err());
        assert!("early=1,early=2".parse::<BotMix>().is_err());
        assert!("early=0".parse::<BotMix>().is_err());
        assert_eq!(
            BotMix::default_for(false, false).weight(Profile::Sharing),
            0
        );
        assert_eq!(BotMix::default_for(true, false).weight(Profile::Sharing), 1);
        assert_eq!(BotMix::default_for(true, false).weight(Profile::Solver), 0);
        assert_eq!(BotMix::default_for(true, true).weight(Profile::Solver), 1);
    }

    #[test]
    fn counts_add_up_to_the_crowd() {
        let mix = BotMix::default_for(true, false);
        let c = counts(200, 20.0, &mix);
        assert_eq!(
            c,
            [
                (Profile::People, 160),
                (Profile::Early, 10),
                (Profile::Hammer, 10),
                (Profile::Network, 10),
                (Profile::Sharing, 10)
            ]
        );
        // 7 bots over 4 equal weights: remainders go to the first ones.
        let c = counts(70, 10.0, &mix);
        let bots: Vec<u32> = c[1..].iter().map(|x| x.1).collect();
        assert_eq!(bots, [2, 2, 2, 1]);
        assert_eq!(c.iter().map(|x| x.1).sum::<u32>(), 70);
        // Weights 3:1 of 10 bots.
        let m: BotMix = "early=3,hammer=1".parse().unwrap();
        assert_eq!(
            counts(100, 10.0, &m),
            [
                (Profile::People, 90),
                (Profile::Early, 8),
                (Profile::Hammer, 2)
            ]
        );
        assert_eq!(counts(10, 0.0, &mix), [(Profile::People, 10)]);
        assert_eq!(counts(10, 250.0, &mix)[0], (Profile::People, 0));
        for n in [0u32, 1, 3, 999] {
            for pct in [0.0, 1.0, 33.3, 100.0] {
                let sum: u32 = counts(n, pct, &mix).iter().map(|x| x.1).sum();
                assert_eq!(sum, n, "{n} buyers, {pct}% bots");
            }
        }
    }

    #[test]
    fn assignment_is_deterministic_and_keeps_the_counts() {
        let mix = BotMix::default_for(true, false);
        let a = assign(1000, 10.0, &mix, 7);
        assert_eq!(a, assign(1000, 10.0, &mix, 7));
        assert_ne!(a, assign(1000, 10.0, &mix, 8));
        assert_eq!(a.iter().filter(|p| p.is_bot()).count(), 100);
        assert_eq!(a.iter().filter(|p| **p == Profile::Sharing).count(), 25);
    }

    #[test]
    fn reaction_ranges_parse() {
        assert_eq!(
            "150-600".parse::<Reaction>().unwrap(),
            Reaction {
                min_ms: 150,
                max_ms: 600
            }
        );
        assert_eq!(
            "200".parse::<Reaction>().unwrap(),
            Reaction {
                min_ms: 0,
                max_ms: 200
            }
        );
        assert!("600-150".parse::<Reaction>().is_err());
        assert!("fast".parse::<Reaction>().is_err());
        assert_eq!(Reaction::default().to_string(), "150-600");
    }
}
