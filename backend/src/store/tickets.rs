//! Purchase tickets in Redis: the request counters behind the ticket
//! limits, the single use of each ticket and of each solved ticket
//! challenge. Keys share the item's hash
//! tag ([`super::keys`]), so the spend can later move into `reserve.lua`.
//!
//! Signing and verifying tickets and challenges is `seckill_proto`'s
//! (`ticket`, `pow`); this module only counts and marks.

use super::{SaleStore, StoreError};

/// Ticket requests counted in the current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestCounts {
    pub user: u64,
    pub client: u64,
    /// Milliseconds until the buyer's window ends.
    pub user_reset_ms: u64,
    /// Milliseconds until the client address's window ends.
    pub client_reset_ms: u64,
}

impl SaleStore {
    /// Counts one ticket request of `user` from `client` for an item, in
    /// fixed windows of `window_ms` (each counter starts its window with
    /// its first request).
    pub async fn count_ticket_request(
        &self,
        round_id: i64,
        item_id: i64,
        user: &str,
        client: &str,
        window_ms: u64,
    ) -> Result<RequestCounts, StoreError> {
        let k = self.keys(round_id, item_id);
        let (u, a) = (
            k.ticket_requests_of_user(user),
            k.ticket_requests_of_client(client),
        );
        let mut c = self.connection();
        let (_, user_n, user_ttl, _, client_n, client_ttl): (
            redis::Value,
            u64,
            i64,
            redis::Value,
            u64,
            i64,
        ) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&u)
            .arg(0)
            .arg("PX")
            .arg(window_ms)
            .arg("NX")
            .cmd("INCR")
            .arg(&u)
            .cmd("PTTL")
            .arg(&u)
            .cmd("SET")
            .arg(&a)
            .arg(0)
            .arg("PX")
            .arg(window_ms)
            .arg("NX")
            .cmd("INCR")
            .arg(&a)
            .cmd("PTTL")
            .arg(&a)
            .query_async(&mut c)
            .await?;
        Ok(RequestCounts {
            user: user_n,
            client: client_n,
            user_reset_ms: user_ttl.max(1) as u64,
            client_reset_ms: client_ttl.max(1) as u64,
        })
    }

    /// Marks a ticket spent by `user` until `expires_ms`; `false` when it
    /// already was (the ticket bought before).
    pub async fn spend_ticket(
        &self,
        round_id: i64,
        item_id: i64,
        ticket_id: &str,
        user: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.keys(round_id, item_id).ticket_used(ticket_id);
        self.set_once(&key, user, expires_ms - now_ms).await
    }

    /// Gives a spent ticket back: its buy was refused with nothing
    /// reserved, for a reason a retry may get past.
    pub async fn unspend_ticket(
        &self,
        round_id: i64,
        item_id: i64,
        ticket_id: &str,
    ) -> Result<(), StoreError> {
        let key = self.keys(round_id, item_id).ticket_used(ticket_id);
        let mut c = self.connection();
        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut c).await?;
        Ok(())
    }

    /// Marks the solution of challenge `nonce` spent by `user` until
    /// `expires_ms`; `false` when it already was (it got a ticket before).
    pub async fn spend_challenge(
        &self,
        round_id: i64,
        item_id: i64,
        nonce: &str,
        user: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.keys(round_id, item_id).challenge_used(nonce);
        self.set_once(&key, user, expires_ms - now_ms).await
    }

    /// `SET key user PX ttl NX`: `true` when this call set it.
    async fn set_once(&self, key: &str, user: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let mut c = self.connection();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(user)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .arg("NX")
            .query_async(&mut c)
            .await?;
        Ok(set.is_some())
    }
}
