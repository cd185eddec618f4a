//! The purchase-ticket gate (`[tickets]`): with tickets enabled, a buy
//! (`POST /api/rounds/{r}/items/{i}/buy`) must carry a ticket
//! ([`seckill_proto::ticket`]) issued by the backend to the verified buyer
//! for that item and not yet expired. Checked in Rust right after the
//! bearer token and before the Lua access phase, so a refused buy costs
//! one HMAC, takes no token from the node's bucket, no buyer limit and no
//! permit, and never reaches a backend; an operator's policy cannot skip
//! it.
//!
//! This gate does not know whether a ticket already bought: that needs a
//! shared view, and the backend records each ticket's single use in Redis.

use std::time::{SystemTime, UNIX_EPOCH};

use seckill_proto::ticket::{TicketError, TicketKeys};

/// Verifies the tickets of buys.
#[derive(Clone, Debug)]
pub struct TicketGate {
    keys: TicketKeys,
}

impl TicketGate {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            keys: TicketKeys::new(secret),
        }
    }

    /// Checks the ticket of a buy of `path` by `user`; `Ok` for paths that
    /// name no item (the backend answers those).
    pub fn check(&self, path: &str, user: &str, ticket: Option<&str>) -> Result<(), TicketError> {
        let Some((round, item)) = buy_target(path) else {
            return Ok(());
        };
        self.keys
            .verify(ticket, user, round, item, now_ms())
            .map(|_| ())
    }
}

/// The round and item ids of `/api/rounds/{r}/items/{i}/buy`.
pub fn buy_target(path: &str) -> Option<(i64, i64)> {
    let rest = path.strip_prefix("/api/rounds/")?.strip_suffix("/buy")?;
    let (round, item) = rest.split_once("/items/")?;
    let id = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<i64>().ok())
            .flatten()
            .filter(|n| *n > 0)
    };
    Some((id(round)?, id(item)?))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_proto::ticket::Ticket;

    #[test]
    fn buy_paths_name_their_item() {
        assert_eq!(buy_target("/api/rounds/3/items/9/buy"), Some((3, 9)));
        for p in [
            "/api/rounds/x/items/9/buy",
            "/api/rounds/3/items/9/buy/",
            "/api/rounds/3/items//buy",
            "/api/rounds/0/items/9/buy",
            "/api/rounds/+3/items/9/buy",
            "/api/rounds/3/items/9/ticket",
        ] {
            assert_eq!(buy_target(p), None, "{p}");
        }
    }

    #[test]
    fn the_gate_checks_buyer_item_and_expiry() {
        let secret = b"edge-ticket-secret-0123";
        let gate = TicketGate::new(secret);
        let text = TicketKeys::new(secret).issue(&Ticket {
            user: "alice".into(),
            round_id: 3,
            item_id: 9,
            expires_ms: now_ms() + 60_000,
            nonce: 5,
        });
        let path = "/api/rounds/3/items/9/buy";
        assert_eq!(gate.check(path, "alice", Some(&text)), Ok(()));
        assert_eq!(
            gate.check(path, "bob", Some(&text)),
            Err(TicketError::OtherUser)
        );
        assert_eq!(
            gate.check("/api/rounds/3/items/8/buy", "alice", Some(&text)),
            Err(TicketError::OtherItem)
        );
        assert_eq!(gate.check(path, "alice", None), Err(TicketError::Missing));
    }
}
