//! Who is asking: the client address (the TCP peer, unless that peer is a
//! trusted proxy, then the right-most untrusted `X-Forwarded-For` hop) and
//! the buyer verified from the bearer token with the backend's secret.
//!
//! Identity headers sent to the backend are set here and nowhere else; the
//! client's copies are always stripped.
//!
//! Verified tokens are remembered per thread by
//! [`TokenKeys::verify_header_cached`], so a buyer's repeated requests skip
//! the JWT decode and HMAC.

use std::net::IpAddr;

use seckill_proto::auth::{Claims, TokenError, TokenKeys};

use crate::config::Cidr;

/// Headers that carry identity to the backend; never taken from clients.
pub const IDENTITY_HEADERS: &[&str] = &["x-seckill-user", "x-seckill-role", "x-real-ip"];
/// The verified user id header set for the backend.
pub const USER_HEADER: &str = "x-seckill-user";
/// The verified role header set for the backend.
pub const ROLE_HEADER: &str = "x-seckill-role";

/// The network `addr` is in, as `address/prefix`, with IPv4 addresses
/// taken to `/v4_prefix` and IPv6 to `/v6_prefix` (the per-network limits'
/// key: many addresses of one network count as one client). `None` when
/// `addr` is not an address or a prefix is out of range.
pub fn network_of(addr: &str, v4_prefix: u8, v6_prefix: u8) -> Option<String> {
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) if v4_prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4_prefix)).unwrap_or(0);
            let net = std::net::Ipv4Addr::from(u32::from(a) & mask);
            Some(format!("{net}/{v4_prefix}"))
        }
        IpAddr::V6(a) if v6_prefix <= 128 => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            let net = std::net::Ipv6Addr::from(u128::from(a) & mask);
            Some(format!("{net}/{v6_prefix}"))
        }
        _ => None,
    }
}

/// Resolves client addresses and verifies tokens.
#[derive(Clone)]
pub struct Identity {
    trusted: Vec<Cidr>,
    keys: TokenKeys,
}

impl Identity {
    pub fn new(trusted: Vec<Cidr>, secret: &[u8], leeway_secs: u64) -> Self {
        Self {
            trusted,
            keys: TokenKeys::new(secret, leeway_secs),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The client address for `peer` given the `X-Forwarded-For` values.
    /// Hops are read right to left, skipping trusted proxies; an untrusted
    /// peer's header is ignored entirely.
    pub fn client_addr(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // A garbled hop: stop at the last address we could trust.
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    /// Verifies an `Authorization` header value (remembered per thread:
    /// [`TokenKeys::verify_header_cached`]).
    pub fn verify(&self, authorization: Option<&str>) -> Result<Claims, TokenError> {
        self.keys.verify_header_cached(authorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_the_configured_prefixes() {
        assert_eq!(
            network_of("10.1.2.3", 24, 64).as_deref(),
            Some("10.1.2.0/24")
        );
        assert_eq!(
            network_of("10.1.2.255", 24, 64).as_deref(),
            Some("10.1.2.0/24")
        );
        assert_eq!(
            network_of("10.1.2.3", 16, 64).as_deref(),
            Some("10.1.0.0/16")
        );
        assert_eq!(network_of("10.1.2.3", 0, 64).as_deref(), Some("0.0.0.0/0"));
        assert_eq!(
            network_of("2001:db8:1:2:3:4:5:6", 24, 64).as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(network_of("::1", 24, 128).as_deref(), Some("::1/128"));
        assert_eq!(network_of("10.1.2.3", 33, 64), None);
        assert_eq!(network_of("not an address", 24, 64), None);
    }

    fn id(trusted: &[&str]) -> Identity {
        Identity::new(
            trusted.iter().map(|t| Cidr::parse(t).unwrap()).collect(),
            b"0123456789abcdef0123",
            0,
        )
    }

    #[test]
    fn remembered_tokens_are_the_verified_ones() {
        let keys = TokenKeys::new(b"0123456789abcdef0123", 0);
        let i = id(&[]);
        let t = keys.mint("alice", seckill_proto::auth::Role::Buyer, 60);
        let header = format!("Bearer {t}");
        assert_eq!(i.verify(Some(&header)).unwrap().sub, "alice");
        // From the cache, the same answer.
        assert_eq!(i.verify(Some(&header)).unwrap().sub, "alice");
        // Another secret does not see this instance's entries.
        let other = Identity::new(Vec::new(), b"another-secret-0123456", 0);
        assert_eq!(other.verify(Some(&header)), Err(TokenError::Invalid));
        // A tampered token is checked in full.
        let bad = format!("{header}x");
        assert_eq!(i.verify(Some(&bad)), Err(TokenError::Invalid));
        // Expired tokens stay refused.
        let old = format!(
            "Bearer {}",
            keys.mint("bob", seckill_proto::auth::Role::Buyer, -120)
        );
        assert_eq!(i.verify(Some(&old)), Err(TokenError::Expired));
        assert_eq!(i.verify(None), Err(TokenError::Missing));
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(id(&[]).client_addr(peer, &["1.2.3.4"]), peer);
    }

    #[test]
    fn trusted_chain_is_walked_right_to_left() {
        let i = id(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            i.client_addr(peer, &["6.6.6.6, 198.51.100.7, 10.0.0.9"]),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(i.client_addr(peer, &[]), peer);
        assert_eq!(i.client_addr(peer, &["junk"]), peer);
    }
}
