//! Who is asking: the client address (the TCP peer, unless that peer is a
//! trusted proxy, then the right-most untrusted `X-Forwarded-For` hop) and
//! the buyer verified from the bearer token with the backend's secret.
//!
//! Identity headers sent to the backend are set here and nowhere else; the
//! client's copies are always stripped.

use std::net::IpAddr;

use seckill_proto::auth::{Claims, TokenError, TokenKeys};

use crate::config::Cidr;

/// Headers that carry identity to the backend; never taken from clients.
pub const IDENTITY_HEADERS: &[&str] = &["x-seckill-user", "x-seckill-role", "x-real-ip"];
/// The verified user id header set for the backend.
pub const USER_HEADER: &str = "x-seckill-user";
/// The verified role header set for the backend.
pub const ROLE_HEADER: &str = "x-seckill-role";

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

    /// Verifies an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Claims, TokenError> {
        self.keys.verify_header(authorization)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(trusted: &[&str]) -> Identity {
        Identity::new(
            trusted.iter().map(|t| Cidr::parse(t).unwrap()).collect(),
            b"0123456789abcdef0123",
            0,
        )
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
