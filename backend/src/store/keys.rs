//! The Redis key layout. Every key of one item shares the hash tag
//! `{r<round>:i<item>}` so one script can touch them all in Redis Cluster:
//!
//! - `<prefix>:{r1:i2}:stock` — hash: total, available, reserved, sold,
//!   starts_ms, ends_ms, per_user_limit, price_cents
//! - `<prefix>:{r1:i2}:info` — hash: the item's public data
//! - `<prefix>:{r1:i2}:buyers` — hash: user id → attempt id
//! - `<prefix>:{r1:i2}:attempt:<attempt id>` — hash: user, qty, status,
//!   created_ms, idem, price_cents, order_id, pay_by_ms, paid_ms, reason
//! - `<prefix>:{r1:i2}:inflight` — sorted set: attempt id → ms it started
//!   holding units, for attempts on their way (`queued`, `writing`) whose
//!   order is not written yet
//! - `<prefix>:{r1:i2}:lock:<name>` — a short exclusive lock (rebuilds)
//! - `<prefix>:{r1:i2}:journaled:<attempt id>` — hash: user, qty, status
//!   (`cancelled`), reason, created_ms — a journaled buy the replay refused
//!   (expires after a week)
//! - `<prefix>:{r1:i2}:ticket:<ticket id>` — string: the user whose buy
//!   spent that purchase ticket (expires with the ticket)
//! - `<prefix>:{r1:i2}:challenge:<nonce>` — string: the user whose ticket
//!   request spent that proof-of-work challenge's solution (expires with
//!   the challenge)
//! - `<prefix>:{r1:i2}:ticket_req:u:<user>`, `:ticket_req:a:<address>` —
//!   counters of ticket requests in the current limit window
//! - `<prefix>:{r1:i2}:leases`, `:lease_exp`, `:lease_gen` — hashes: the
//!   edge nodes' permit leases (`lua/redis/permits.lua`; the edge leases
//!   with the same keys)

/// Builds the keys of one item.
#[derive(Clone, Debug)]
pub struct ItemKeys {
    base: String,
}

impl ItemKeys {
    pub fn new(prefix: &str, round_id: i64, item_id: i64) -> Self {
        Self {
            base: seckill_proto::permit::item_base(prefix, round_id, item_id),
        }
    }

    pub fn stock(&self) -> String {
        format!("{}:stock", self.base)
    }

    pub fn info(&self) -> String {
        format!("{}:info", self.base)
    }

    pub fn buyers(&self) -> String {
        format!("{}:buyers", self.base)
    }

    pub fn leases(&self) -> String {
        format!("{}:leases", self.base)
    }

    pub fn lease_exp(&self) -> String {
        format!("{}:lease_exp", self.base)
    }

    pub fn lease_gen(&self) -> String {
        format!("{}:lease_gen", self.base)
    }

    pub fn inflight(&self) -> String {
        format!("{}:inflight", self.base)
    }

    /// The lock a rebuild holds on the item.
    pub fn rebuild_lock(&self) -> String {
        self.lock("rebuild")
    }

    /// The prefix an attempt id is appended to.
    pub fn attempt_prefix(&self) -> String {
        format!("{}:attempt:", self.base)
    }

    /// A short-lived lock (e.g. `rebuild`) on the item.
    pub fn lock(&self, name: &str) -> String {
        format!("{}:lock:{name}", self.base)
    }

    pub fn attempt(&self, attempt_id: &str) -> String {
        format!("{}:attempt:{attempt_id}", self.base)
    }

    /// Set once the purchase ticket `ticket_id` bought.
    pub fn ticket_used(&self, ticket_id: &str) -> String {
        format!("{}:ticket:{ticket_id}", self.base)
    }

    /// Set once the solution of the challenge `nonce` got a ticket.
    pub fn challenge_used(&self, nonce: &str) -> String {
        format!("{}:challenge:{nonce}", self.base)
    }

    /// Ticket requests of one buyer in the current window.
    pub fn ticket_requests_of_user(&self, user: &str) -> String {
        format!("{}:ticket_req:u:{user}", self.base)
    }

    /// Ticket requests from one client address in the current window.
    pub fn ticket_requests_of_client(&self, addr: &str) -> String {
        format!("{}:ticket_req:a:{addr}", self.base)
    }

    /// The final answer of a journaled buy the replay refused (it never
    /// became an attempt), for its buyer to poll.
    pub fn journaled(&self, attempt_id: &str) -> String {
        format!("{}:journaled:{attempt_id}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let k = ItemKeys::new("sk", 42, 7);
        assert_eq!(k.stock(), "sk:{r42:i7}:stock");
        assert_eq!(k.attempt("42-7-X"), "sk:{r42:i7}:attempt:42-7-X");
        for key in [
            k.stock(),
            k.info(),
            k.buyers(),
            k.inflight(),
            k.leases(),
            k.lease_exp(),
            k.lease_gen(),
            k.rebuild_lock(),
            k.attempt("a"),
            k.ticket_used("t"),
            k.challenge_used("n"),
            k.ticket_requests_of_user("u"),
            k.ticket_requests_of_client("127.0.0.1"),
        ] {
            assert!(key.contains("{r42:i7}"));
        }
    }
}
