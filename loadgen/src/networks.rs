//! Client networks on loopback: which local address each buyer's
//! connections come from, so that an edge counting requests per client
//! network (`limits.net`, keyed on the TCP peer) sees a crowd of many
//! networks instead of one 127.0.0.1.
//!
//! On Linux every address of 127.0.0.0/8 is loopback and can be bound
//! without configuration. People (and the bots that act alone) are spread
//! over groups of `per_address` buyers, each group on its own address in
//! its own /24 (`127.<a>.<b>.1`); the `network` bots all share
//! [`NETWORK_BOTS`]`.0/24`, rotating over up to [`NETWORK_BOT_ADDRESSES`]
//! of its addresses. One HTTP client serves each address, never one per
//! buyer. This module only plans addresses; binding is [`crate::client`]'s.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, ensure};

use crate::profile::Profile;

/// The /24 all `network` bots connect from.
pub const NETWORK_BOTS: [u8; 3] = [127, 254, 254];

/// Most addresses of [`NETWORK_BOTS`] the `network` bots rotate over.
pub const NETWORK_BOT_ADDRESSES: u32 = 16;

/// Address groups people can have: `127.<1..=253>.<1..=254>.1`.
pub const MAX_GROUPS: u32 = 253 * 254;

/// The address of the `group`-th group of people, in a /24 of its own.
pub fn group_address(group: u32) -> Option<Ipv4Addr> {
    (group < MAX_GROUPS)
        .then(|| Ipv4Addr::new(127, (1 + group / 254) as u8, (1 + group % 254) as u8, 1))
}

/// The `k`-th address of the `network` bots' /24.
pub fn network_bot_address(k: u32) -> Ipv4Addr {
    let [a, b, c] = NETWORK_BOTS;
    Ipv4Addr::new(a, b, c, (1 + k % NETWORK_BOT_ADDRESSES) as u8)
}

/// The source addresses of a crowd and, per buyer, the index of its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePlan {
    /// `None`: the system's default source address.
    pub sources: Vec<Option<IpAddr>>,
    pub of_buyer: Vec<usize>,
}

/// Plans the sources of `profiles` (one per buyer). `per_address == 0`:
/// everyone connects from the default address.
pub fn plan(profiles: &[Profile], per_address: u32) -> anyhow::Result<SourcePlan> {
    if per_address == 0 {
        return Ok(SourcePlan {
            sources: vec![None],
            of_buyer: vec![0; profiles.len()],
        });
    }
    let network_bots = profiles.iter().filter(|p| **p == Profile::Network).count() as u32;
    let alone = profiles.len() as u32 - network_bots;
    let groups = alone.div_ceil(per_address);
    ensure!(
        groups <= MAX_GROUPS,
        "{alone} buyers at {per_address} per address need {groups} loopback networks; at most {MAX_GROUPS} (raise --buyers-per-address)"
    );
    let bot_addresses = network_bots.min(NETWORK_BOT_ADDRESSES);
    let mut sources: Vec<Option<IpAddr>> = (0..groups)
        .map(|g| group_address(g).map(IpAddr::V4))
        .collect();
    sources.extend((0..bot_addresses).map(|k| Some(IpAddr::V4(network_bot_address(k)))));
    let (mut alone_seen, mut bots_seen) = (0u32, 0u32);
    let of_buyer = profiles
        .iter()
        .map(|p| {
            if *p == Profile::Network {
                let i = groups + bots_seen % bot_addresses;
                bots_seen += 1;
                i as usize
            } else {
                let i = alone_seen / per_address;
                alone_seen += 1;
                i as usize
            }
        })
        .collect();
    Ok(SourcePlan { sources, of_buyer })
}

/// Binding to 127.x.y.z only reaches a loopback target: refuses others.
pub fn check_target(target: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(target).map_err(|e| anyhow::anyhow!("--target {target}: {e}"))?;
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(h) => h.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback()),
        None => false,
    };
    if !loopback {
        bail!(
            "--buyers-per-address binds connections to loopback addresses (127.0.0.0/8): the target {target} must be a 127.x.y.z address (or pass --buyers-per-address 0)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn people_get_networks_of_their_own_and_network_bots_share_one() {
        use Profile::*;
        let profiles = [People, Network, People, Hammer, Network, People, Network];
        let p = plan(&profiles, 2).unwrap();
        // 4 buyers acting alone at 2 per address, 3 network bots.
        assert_eq!(p.sources.len(), 2 + 3);
        let addr = |i: usize| p.sources[p.of_buyer[i]].unwrap().to_string();
        assert_eq!(addr(0), "127.1.1.1");
        assert_eq!(addr(2), "127.1.1.1");
        assert_eq!(addr(3), "127.1.2.1");
        assert_eq!(addr(5), "127.1.2.1");
        assert_eq!(addr(1), "127.254.254.1");
        assert_eq!(addr(4), "127.254.254.2");
        assert_eq!(addr(6), "127.254.254.3");
        assert_eq!(group_address(254).unwrap().to_string(), "127.2.1.1");
        assert_eq!(
            group_address(MAX_GROUPS - 1).unwrap().to_string(),
            "127.253.254.1"
        );
        assert!(group_address(MAX_GROUPS).is_none());
        assert_eq!(network_bot_address(16).to_string(), "127.254.254.1");
    }

    #[test]
    fn no_binding_means_one_default_source() {
        let p = plan(&[Profile::People, Profile::Network], 0).unwrap();
        assert_eq!(p.sources, [None]);
        assert_eq!(p.of_buyer, [0, 0]);
    }

    #[test]
    fn only_loopback_targets_can_be_reached_from_loopback() {
        assert!(check_target("http://127.0.0.1:8080").is_ok());
        assert!(check_target("http://localhost:8080").is_ok());
        assert!(check_target("http://10.0.0.1:8080").is_err());
        assert!(check_target("not a url").is_err());
    }
}
