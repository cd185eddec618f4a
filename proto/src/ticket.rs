//! Purchase tickets: the hidden, signed, per-user purchase path of a sale.
//!
//! Shortly before a round starts a buyer asks the backend for a ticket
//! (`POST /api/rounds/{r}/items/{i}/ticket`); a buy of that item must then
//! carry it in [`HEADER`]. The edge verifies it before anything else (no
//! backend request for a missing, forged, expired or other buyer's ticket),
//! the backend verifies it again and spends it (one buy per ticket).
//!
//! A ticket binds one user, round, item, expiry (Unix ms) and a random
//! nonce, signed with HMAC-SHA256 under a key derived per round from the
//! configured secret: `HMAC-SHA256(secret, "ticket:" + round_id)`. Its text
//! is the unpadded base64url of
//!
//! ```text
//! version (1 byte, 1) | round id (i64 BE) | item id (i64 BE)
//!   | expires_ms (u64 BE) | nonce (u64 BE) | user id (UTF-8, 1-128 bytes)
//!   | HMAC-SHA256 of everything before it (32 bytes)
//! ```
//!
//! This module owns the format, signing and verification only; where a
//! ticket is asked for, when one may be issued and how its single use is
//! recorded belong to the backend.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{auth::MAX_SUBJECT_LEN, errors};

/// Request header a buy carries its ticket in.
pub const HEADER: &str = "x-seckill-ticket";

const VERSION: u8 = 1;
/// Version, round, item, expiry, nonce.
const FIXED: usize = 1 + 8 + 8 + 8 + 8;
const MAC_LEN: usize = 32;
/// The longest ticket text (a user id of [`MAX_SUBJECT_LEN`] bytes).
pub const MAX_TEXT_LEN: usize = (FIXED + MAX_SUBJECT_LEN + MAC_LEN).div_ceil(3) * 4;
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// What a ticket says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub user: String,
    pub round_id: i64,
    pub item_id: i64,
    /// Unix ms from which the ticket is refused.
    pub expires_ms: i64,
    /// Random, so two tickets of one buyer and item differ; names the
    /// ticket's single use.
    pub nonce: u64,
}

impl Ticket {
    /// A short id of this ticket, unique per issuance (the nonce in hex).
    pub fn id(&self) -> String {
        format!("{:016x}", self.nonce)
    }
}

/// Why a ticket was refused (the message is safe to show the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("a purchase ticket is required (header {HEADER})")]
    Missing,
    #[error("the purchase ticket is malformed")]
    Malformed,
    #[error("the purchase ticket's signature does not match")]
    BadSignature,
    #[error("the purchase ticket has expired; ask for a new one")]
    Expired,
    #[error("the purchase ticket belongs to another buyer")]
    OtherUser,
    #[error("the purchase ticket is for another item")]
    OtherItem,
}

impl TicketError {
    /// The stable error code of the HTTP contract (all answered 403).
    pub fn code(self) -> &'static str {
        match self {
            TicketError::Missing => errors::TICKET_REQUIRED,
            TicketError::Malformed | TicketError::BadSignature => errors::TICKET_INVALID,
            TicketError::Expired => errors::TICKET_EXPIRED,
            TicketError::OtherUser => errors::TICKET_OTHER_USER,
            TicketError::OtherItem => errors::TICKET_OTHER_ITEM,
        }
    }
}

/// Checks a ticket secret; the message, said of the setting, names no value.
pub fn validate_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "must be at least {MIN_SECRET_LEN} bytes when tickets are enabled"
        ));
    }
    Ok(())
}

/// Issues and verifies tickets with one secret. `Debug` never shows it.
#[derive(Clone)]
pub struct TicketKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKeys(<hidden>)")
    }
}

impl TicketKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    /// The MAC of `round_id`'s tickets, keyed with the round's key.
    fn mac(&self, round_id: i64) -> HmacSha256 {
        let mut derive =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        derive.update(b"ticket:");
        derive.update(round_id.to_string().as_bytes());
        let key = derive.finalize().into_bytes();
        HmacSha256::new_from_slice(&key).expect("HMAC takes a key of any length")
    }

    /// The ticket's text. The user id must be 1-[`MAX_SUBJECT_LEN`] bytes
    /// (as a verified token's subject is).
    pub fn issue(&self, t: &Ticket) -> String {
        debug_assert!(!t.user.is_empty() && t.user.len() <= MAX_SUBJECT_LEN);
        let mut buf = Vec::with_capacity(FIXED + t.user.len() + MAC_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&t.round_id.to_be_bytes());
        buf.extend_from_slice(&t.item_id.to_be_bytes());
        buf.extend_from_slice(&(t.expires_ms.max(0) as u64).to_be_bytes());
        buf.extend_from_slice(&t.nonce.to_be_bytes());
        buf.extend_from_slice(t.user.as_bytes());
        let mut mac = self.mac(t.round_id);
        mac.update(&buf);
        buf.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Decodes and checks the signature only (no expiry, no binding).
    pub fn decode(&self, text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_TEXT_LEN {
            return Err(TicketError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| TicketError::Malformed)?;
        if raw.len() < FIXED + 1 + MAC_LEN || raw[0] != VERSION {
            return Err(TicketError::Malformed);
        }
        let (body, tag) = raw.split_at(raw.len() - MAC_LEN);
        let be = |at: usize| <[u8; 8]>::try_from(&body[at..at + 8]).expect("8 bytes");
        let round_id = i64::from_be_bytes(be(1));
        let item_id = i64::from_be_bytes(be(9));
        let expires = u64::from_be_bytes(be(17));
        let nonce = u64::from_be_bytes(be(25));
        let user = std::str::from_utf8(&body[FIXED..]).map_err(|_| TicketError::Malformed)?;
        if user.len() > MAX_SUBJECT_LEN || expires > i64::MAX as u64 {
            return Err(TicketError::Malformed);
        }
        let mut mac = self.mac(round_id);
        mac.update(body);
        mac.verify_slice(tag)
            .map_err(|_| TicketError::BadSignature)?;
        Ok(Ticket {
            user: user.to_owned(),
            round_id,
            item_id,
            expires_ms: expires as i64,
            nonce,
        })
    }

    /// Verifies a ticket for a buy of `round_id`/`item_id` by `user` at
    /// `now_ms`: signature, then expiry, then buyer, then item.
    pub fn verify(
        &self,
        text: Option<&str>,
        user: &str,
        round_id: i64,
        item_id: i64,
        now_ms: i64,
    ) -> Result<Ticket, TicketError> {
        let t = self.decode(text.ok_or(TicketError::Missing)?)?;
        if now_ms >= t.expires_ms {
            return Err(TicketError::Expired);
        }
        if t.user != user {
            return Err(TicketError::OtherUser);
        }
        if t.round_id != round_id || t.item_id != item_id {
            return Err(TicketError::OtherItem);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TicketKeys {
        TicketKeys::new(b"ticket-secret-0123456789")
    }

    fn ticket() -> Ticket {
        Ticket {
            user: "alice".into(),
            round_id: 7,
            item_id: 3,
            expires_ms: 10_000,
            nonce: 0xdead_beef,
        }
    }

    #[test]
    fn issued_tickets_verify() {
        let k = keys();
        let text = k.issue(&ticket());
        assert!(text.len() <= MAX_TEXT_LEN);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(k.verify(Some(&text), "alice", 7, 3, 9_999), Ok(ticket()));
        assert_eq!(ticket().id(), "00000000deadbeef");
    }

    #[test]
    fn the_longest_user_fits() {
        let k = keys();
        let t = Ticket {
            user: "u".repeat(MAX_SUBJECT_LEN),
            ..ticket()
        };
        let text = k.issue(&t);
        assert!(text.len() <= MAX_TEXT_LEN);
        assert_eq!(k.decode(&text), Ok(t));
    }

    #[test]
    fn refusals() {
        let k = keys();
        let text = k.issue(&ticket());
        assert_eq!(k.verify(None, "alice", 7, 3, 0), Err(TicketError::Missing));
        assert_eq!(
            k.verify(Some(&text), "alice", 7, 3, 10_000),
            Err(TicketError::Expired)
        );
        assert_eq!(
            k.verify(Some(&text), "bob", 7, 3, 0),
            Err(TicketError::OtherUser)
        );
        assert_eq!(
            k.verify(Some(&text), "alice", 7, 4, 0),
            Err(TicketError::OtherItem)
        );
        assert_eq!(
            k.verify(Some(&text), "alice", 8, 3, 0),
            Err(TicketError::OtherItem)
        );
        let other = TicketKeys::new(b"another-secret-of-enough-length");
        assert_eq!(
            other.verify(Some(&text), "alice", 7, 3, 0),
            Err(TicketError::BadSignature)
        );
        for bad in ["", "!!!", "AAAA", &"A".repeat(MAX_TEXT_LEN + 4)] {
            assert_eq!(
                k.verify(Some(bad), "alice", 7, 3, 0),
                Err(TicketError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_changed_byte_breaks_the_signature() {
        let k = keys();
        let mut raw = URL_SAFE_NO_PAD.decode(k.issue(&ticket())).unwrap();
        // Move the expiry forward.
        raw[20] ^= 0x40;
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(k.decode(&forged), Err(TicketError::BadSignature));
        // The same ticket signed for another round does not carry over.
        let mut raw = URL_SAFE_NO_PAD.decode(k.issue(&ticket())).unwrap();
        raw[8] = 8;
        let moved = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(k.decode(&moved), Err(TicketError::BadSignature));
    }

    #[test]
    fn rounds_have_their_own_keys() {
        let k = keys();
        let a = k.mac(1).finalize().into_bytes();
        let b = k.mac(2).finalize().into_bytes();
        assert_ne!(a, b);
    }

    #[test]
    fn every_refusal_has_a_listed_code() {
        use TicketError::*;
        for e in [
            Missing,
            Malformed,
            BadSignature,
            Expired,
            OtherUser,
            OtherItem,
        ] {
            assert_eq!(errors::status_of(e.code()), Some(403), "{e:?}");
        }
        assert_eq!(errors::status_of(errors::TICKET_USED), Some(403));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(validate_secret("short").is_err());
        assert!(validate_secret("sixteen-bytes-ok").is_ok());
        assert!(!format!("{:?}", keys()).contains("ticket-secret"));
    }
}
