//! The fairness report: for people and for each bot profile, its share of
//! the crowd against its share of the units won, and the requests it sent.
//!
//! Units won are orders confirmed in the database (not cancelled), read by
//! the sale from the stores; the population and the requests are the
//! crowd's own counts. This module only does the arithmetic and the text
//! (`fairness: people 90.0% of buyers won 91.0% of units; bots …`); it
//! judges nothing — the verdict on the invariants is [`crate::verdict`]'s.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

use crate::profile::Profile;

/// People, or all bots together.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Group {
    pub buyers: u64,
    pub share_of_buyers_pct: f64,
    pub units_won: i64,
    pub share_of_units_pct: f64,
}

/// One profile's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileRow {
    pub profile: Profile,
    pub buyers: u64,
    pub share_of_buyers_pct: f64,
    pub units_won: i64,
    pub share_of_units_pct: f64,
    /// Requests sent, by kind (`ticket`, `buy`, `poll` …).
    pub requests: BTreeMap<String, u64>,
    pub requests_total: u64,
    /// Answers by kind, then outcome.
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Ticket answers that came back before the ticket window opened, by
    /// outcome (a `200` here would be a ticket handed out too early).
    pub tickets_before_window: BTreeMap<String, u64>,
}

/// Who won the units.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fairness {
    pub buyers: u64,
    pub units_won: i64,
    pub people: Group,
    pub bots: Group,
    /// People first, then each bot profile present in the crowd.
    pub profiles: Vec<ProfileRow>,
    /// The one-line summary, as printed.
    pub line: String,
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

impl Fairness {
    /// `population`: buyers per profile; `won`: units of confirmed orders
    /// per profile; `answers`: the crowd's answers per profile, kind and
    /// outcome; `before_window`: ticket answers before the window.
    pub fn build(
        population: &BTreeMap<Profile, u64>,
        won: &BTreeMap<Profile, i64>,
        mut answers: BTreeMap<Profile, BTreeMap<String, BTreeMap<String, u64>>>,
        mut before_window: BTreeMap<Profile, BTreeMap<String, u64>>,
    ) -> Self {
        let buyers: u64 = population.values().sum();
        let units_won: i64 = won.values().sum();
        let present = std::iter::once(Profile::People).chain(
            population
                .iter()
                .filter(|(p, n)| p.is_bot() && **n > 0)
                .map(|(p, _)| *p),
        );
        let profiles: Vec<ProfileRow> = present
            .map(|p| {
                let n = population.get(&p).copied().unwrap_or(0);
                let w = won.get(&p).copied().unwrap_or(0);
                let answers = answers.remove(&p).unwrap_or_default();
                let requests: BTreeMap<String, u64> = answers
                    .iter()
                    .map(|(k, o)| (k.clone(), o.values().sum()))
                    .collect();
                ProfileRow {
                    profile: p,
                    buyers: n,
                    share_of_buyers_pct: pct(n as f64, buyers as f64),
                    units_won: w,
                    share_of_units_pct: pct(w as f64, units_won as f64),
                    requests_total: requests.values().sum(),
                    requests,
                    answers,
                    tickets_before_window: before_window.remove(&p).unwrap_or_default(),
                }
            })
            .collect();
        let group = |bots: bool| {
            let (b, w) = profiles
                .iter()
                .filter(|r| r.profile.is_bot() == bots)
                .fold((0u64, 0i64), |(b, w), r| (b + r.buyers, w + r.units_won));
            Group {
                buyers: b,
                share_of_buyers_pct: pct(b as f64, buyers as f64),
                units_won: w,
                share_of_units_pct: pct(w as f64, units_won as f64),
            }
        };
        let (people, bots) = (group(false), group(true));
        let mut line = format!(
            "fairness: people {:.1}% of buyers won {:.1}% of units",
            people.share_of_buyers_pct, people.share_of_units_pct
        );
        if bots.buyers == 0 {
            line.push_str("; no bots");
        } else {
            let each: Vec<String> = profiles
                .iter()
                .filter(|r| r.profile.is_bot())
                .map(|r| format!("{} {}/{}", r.profile, r.units_won, r.buyers))
                .collect();
            line.push_str(&format!(
                "; bots {:.1}% won {:.1}% ({})",
                bots.share_of_buyers_pct,
                bots.share_of_units_pct,
                each.join(", ")
            ));
        }
        line.push_str(&format!(" [{units_won} unit(s) won]"));
        Self {
            buyers,
            units_won,
            people,
            bots,
            profiles,
            line,
        }
    }
}

impl fmt::Display for Fairness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.line)?;
        let each: Vec<String> = self
            .profiles
            .iter()
            .map(|r| {
                let per = if r.buyers > 0 {
                    r.requests_total as f64 / r.buyers as f64
                } else {
                    0.0
                };
                format!("{} {} ({per:.1} per buyer)", r.profile, r.requests_total)
            })
            .collect();
        writeln!(f, "  requests sent: {}", each.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(
        rows: &[(Profile, &str, &str, u64)],
    ) -> BTreeMap<Profile, BTreeMap<String, BTreeMap<String, u64>>> {
        let mut m: BTreeMap<Profile, BTreeMap<String, BTreeMap<String, u64>>> = BTreeMap::new();
        for (p, k, o, n) in rows {
            m.entry(*p)
                .or_default()
                .entry((*k).into())
                .or_default()
                .insert((*o).into(), *n);
        }
        m
    }

    #[test]
    fn shares_add_up_and_the_line_reads_as_documented() {
        use Profile::*;
        let population = BTreeMap::from([
            (People, 900),
            (Early, 25),
            (Hammer, 25),
            (Network, 25),
            (Sharing, 25),
        ]);
        let won = BTreeMap::from([(People, 91), (Hammer, 6), (Network, 3)]);
        let a = answers(&[
            (People, "buy", "202 queued", 91),
            (People, "buy", "410 sold_out", 809),
            (People, "ticket", "200", 900),
            (Early, "ticket", "425 not_started", 40),
            (Early, "buy", "403 ticket_required", 60),
        ]);
        let f = Fairness::build(&population, &won, a, BTreeMap::new());
        assert_eq!(f.buyers, 1000);
        assert_eq!(f.units_won, 100);
        assert_eq!(f.people.share_of_buyers_pct, 90.0);
        assert_eq!(f.people.share_of_units_pct, 91.0);
        assert_eq!(f.bots.share_of_buyers_pct, 10.0);
        assert_eq!(f.bots.share_of_units_pct, 9.0);
        let sum = |g: fn(&ProfileRow) -> f64| f.profiles.iter().map(g).sum::<f64>();
        assert!((sum(|r| r.share_of_buyers_pct) - 100.0).abs() < 1e-9);
        assert!((sum(|r| r.share_of_units_pct) - 100.0).abs() < 1e-9);
        assert_eq!(
            f.line,
            "fairness: people 90.0% of buyers won 91.0% of units; bots 10.0% won 9.0% \
             (early 0/25, hammer 6/25, network 3/25, sharing 0/25) [100 unit(s) won]"
        );
        let people = &f.profiles[0];
        assert_eq!(people.requests["buy"], 900);
        assert_eq!(people.requests_total, 1800);
        assert_eq!(f.profiles[1].profile, Early);
        assert_eq!(f.profiles[1].requests_total, 100);
        assert_eq!(f.profiles[4].requests_total, 0);
        assert!(f.to_string().contains("early 100 (4.0 per buyer)"));
    }

    #[test]
    fn no_units_and_no_bots_give_zero_shares_not_nan() {
        let population = BTreeMap::from([(Profile::People, 10), (Profile::Hammer, 0)]);
        let f = Fairness::build(
            &population,
            &BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        assert_eq!(f.profiles.len(), 1, "absent profiles are left out");
        assert_eq!(f.people.share_of_units_pct, 0.0);
        assert_eq!(
            f.line,
            "fairness: people 100.0% of buyers won 0.0% of units; no bots [0 unit(s) won]"
        );
        let empty = Fairness::build(
            &BTreeMap::new(),
            &BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        assert_eq!(empty.people.share_of_buyers_pct, 0.0);
    }
}
