//! Proof-of-work challenges in front of purchase tickets: a buyer of a
//! round with `pow_difficulty > 0` must solve one before the backend hands
//! it a ticket. A person's page solves it during the countdown in about a
//! second; a script asking for many tickets pays that second for each.
//!
//! The format is ALTCHA's proof-of-work v2, through the `altcha` crate, so
//! an existing ALTCHA client solves it: `PBKDF2/SHA-256` ([`ALGORITHM`],
//! [`COST`] iterations, available in every browser's Web Crypto) over
//! `nonce ‖ counter (u32 BE)` with the challenge's salt, in *deterministic
//! mode*: the challenge carries the first half of the key derived from a
//! secret counter drawn between `difficulty / 2` and `difficulty`, so a
//! solver counting up from 0 derives that many keys, while the server
//! checks a solution with two HMACs and no key derivation (the derived key
//! is signed into the challenge as `keySignature`).
//!
//! A challenge is bound to one buyer, round and item and expires: all
//! three and the expiry (`expires_at_ms`, Unix ms) travel in its signed
//! `data`. The expiry is not ALTCHA's `expiresAt`, because the crate checks
//! that against the system clock, while the backend's time is injectable
//! (`clock.offset_ms`, tests): [`PowKeys::verify`] takes `now_ms` instead.
//! Challenges are signed, as tickets are, under keys derived per round
//! from the tickets secret: `HMAC-SHA256(secret, "pow:" + round_id)` signs
//! the challenge, `HMAC-SHA256(secret, "pow-key:" + round_id)` its derived
//! key (both hex-encoded, as ALTCHA takes its secrets as text).
//!
//! What a client sends back is ALTCHA's payload: the base64 of the JSON
//! `{"challenge": <the challenge as received>, "solution": {"counter",
//! "derivedKey"}}`.
//!
//! This module owns the format, signing, verification and solving; when a
//! challenge is handed out and how a solution's single use is recorded
//! belong to the backend.

use std::collections::BTreeMap;

pub use altcha::{Challenge, Payload, Solution};
use altcha::{CreateChallengeOptions, SolveChallengeOptions, VerifySolutionOptions};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::{auth::MAX_SUBJECT_LEN, errors};

/// The key derivation every challenge uses.
pub const ALGORITHM: &str = "PBKDF2/SHA-256";
/// PBKDF2 iterations per derived key.
pub const COST: u32 = 1_000;
/// The largest difficulty a round may ask for (keys a solver derives at
/// most): a few seconds of a browser's time.
pub const MAX_DIFFICULTY: u32 = 100_000;
/// The longest payload accepted (a challenge of the longest user id and
/// its solution, base64, with room to spare).
pub const MAX_PAYLOAD_LEN: usize = 4_096;

type HmacSha256 = Hmac<Sha256>;

/// Why a solution was refused (the message is safe to show the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    #[error("this sale asks for a solved challenge with the ticket request")]
    Missing,
    #[error("the challenge solution is malformed")]
    Malformed,
    #[error("the challenge's signature does not match")]
    BadSignature,
    #[error("the challenge is not solved")]
    WrongSolution,
    #[error("the challenge has expired; ask for a new one")]
    Expired,
    #[error("the challenge was issued to another buyer")]
    OtherUser,
    #[error("the challenge is for another item")]
    OtherItem,
}

impl PowError {
    /// The stable error code of the HTTP contract (all answered 403).
    pub fn code(self) -> &'static str {
        match self {
            PowError::Missing => errors::CHALLENGE_REQUIRED,
            _ => errors::CHALLENGE_FAILED,
        }
    }

    /// A short label of the refusal, for metrics.
    pub fn label(self) -> &'static str {
        match self {
            PowError::Missing => "missing",
            PowError::Malformed => "malformed",
            PowError::BadSignature => "bad_signature",
            PowError::WrongSolution => "wrong_solution",
            PowError::Expired => "expired",
            PowError::OtherUser => "other_user",
            PowError::OtherItem => "other_item",
        }
    }
}

/// What a verified solution says: enough to record its single use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Solved {
    /// The challenge's random nonce (32 hex digits): names its single use.
    pub nonce: String,
    /// Unix ms from which the challenge is refused.
    pub expires_ms: i64,
}

/// Issues and verifies challenges with one secret (the tickets secret).
/// `Debug` never shows it.
#[derive(Clone)]
pub struct PowKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for PowKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PowKeys(<hidden>)")
    }
}

impl PowKeys {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            secret: secret.to_vec(),
        }
    }

    /// The round's (challenge, derived-key) signing secrets.
    fn round_secrets(&self, round_id: i64) -> (String, String) {
        let derive = |label: &[u8]| {
            let mut mac =
                HmacSha256::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
            mac.update(label);
            mac.update(round_id.to_string().as_bytes());
            hex(&mac.finalize().into_bytes())
        };
        (derive(b"pow:"), derive(b"pow-key:"))
    }

    /// A challenge for `user` (1-[`MAX_SUBJECT_LEN`] bytes) to buy
    /// `round_id`/`item_id`, of `difficulty` (clamped to
    /// 1-[`MAX_DIFFICULTY`]), refused from `expires_ms` on.
    pub fn challenge(
        &self,
        user: &str,
        round_id: i64,
        item_id: i64,
        difficulty: u32,
        expires_ms: i64,
    ) -> Challenge {
        debug_assert!(!user.is_empty() && user.len() <= MAX_SUBJECT_LEN);
        let difficulty = difficulty.clamp(1, MAX_DIFFICULTY);
        let counter = rand::random_range(difficulty.div_ceil(2)..=difficulty);
        let (secret, key_secret) = self.round_secrets(round_id);
        let data = BTreeMap::from([
            ("user".to_owned(), Value::from(user)),
            ("round_id".to_owned(), Value::from(round_id)),
            ("item_id".to_owned(), Value::from(item_id)),
            ("expires_at_ms".to_owned(), Value::from(expires_ms)),
        ]);
        altcha::create_challenge(CreateChallengeOptions {
            algorithm: ALGORITHM.to_owned(),
            cost: COST,
            counter: Some(counter),
            data: Some(data),
            hmac_signature_secret: Some(secret),
            hmac_key_signature_secret: Some(key_secret),
            ..Default::default()
        })
        .expect("a PBKDF2 challenge with a fixed algorithm is always created")
    }

    /// Verifies a solution `payload` for a ticket of `round_id`/`item_id`
    /// asked by `user` at `now_ms`: format, signature and solution, then
    /// expiry, then buyer, then item.
    pub fn verify(
        &self,
        payload: Option<&str>,
        user: &str,
        round_id: i64,
        item_id: i64,
        now_ms: i64,
    ) -> Result<Solved, PowError> {
        let p = decode_payload(payload.ok_or(PowError::Missing)?)?;
        let data = p
            .challenge
            .parameters
            .data
            .as_ref()
            .ok_or(PowError::Malformed)?;
        let int = |k: &str| {
            data.get(k)
                .and_then(Value::as_i64)
                .ok_or(PowError::Malformed)
        };
        let (c_round, c_item, expires_ms) =
            (int("round_id")?, int("item_id")?, int("expires_at_ms")?);
        let c_user = data
            .get("user")
            .and_then(Value::as_str)
            .ok_or(PowError::Malformed)?;
        let params = &p.challenge.parameters;
        if params.key_signature.is_none() || params.expires_at.is_some() {
            // Not one of ours: ours carry the key signature and no
            // `expiresAt`; refused before any key derivation.
            return Err(PowError::BadSignature);
        }
        let (secret, key_secret) = self.round_secrets(c_round);
        let checked = altcha::verify_solution(VerifySolutionOptions {
            hmac_key_signature_secret: Some(key_secret),
            ..VerifySolutionOptions::new(&p.challenge, &p.solution, secret)
        })
        .map_err(|_| PowError::Malformed)?;
        if checked.invalid_signature != Some(false) {
            return Err(PowError::BadSignature);
        }
        if !checked.verified {
            return Err(PowError::WrongSolution);
        }
        if now_ms >= expires_ms {
            return Err(PowError::Expired);
        }
        if c_user != user {
            return Err(PowError::OtherUser);
        }
        if c_round != round_id || c_item != item_id {
            return Err(PowError::OtherItem);
        }
        Ok(Solved {
            nonce: params.nonce.clone(),
            expires_ms,
        })
    }
}

/// The payload a client sends for `challenge` solved by `solution`.
pub fn encode_payload(challenge: &Challenge, solution: &Solution) -> String {
    let p = Payload {
        challenge: challenge.clone(),
        solution: solution.clone(),
    };
    STANDARD.encode(serde_json::to_vec(&p).expect("a payload serialises"))
}

/// Reads a payload (base64, padded or not, of its JSON).
pub fn decode_payload(text: &str) -> Result<Payload, PowError> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_PAYLOAD_LEN {
        return Err(PowError::Malformed);
    }
    let raw = STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| PowError::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| PowError::Malformed)
}

/// Solves `challenge` as a client does (counting up from 0) and returns
/// the payload to send; `None` when `timeout_ms` (0: no limit) passed
/// first or the challenge cannot be solved (not one of ours).
pub fn solve(challenge: &Challenge, timeout_ms: u64) -> Option<String> {
    if challenge.parameters.algorithm != ALGORITHM || challenge.parameters.cost > COST {
        return None;
    }
    let solution = altcha::solve_challenge(SolveChallengeOptions {
        timeout_ms,
        ..SolveChallengeOptions::new(challenge)
    })
    .ok()??;
    Some(encode_payload(challenge, &solution))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn keys() -> PowKeys {
        PowKeys::new(b"ticket-secret-0123456789")
    }

    fn solved(k: &PowKeys, user: &str, difficulty: u32) -> (Challenge, String) {
        let c = k.challenge(user, 7, 3, difficulty, NOW + 10_000);
        let payload = solve(&c, 60_000).expect("solvable");
        (c, payload)
    }

    #[test]
    fn a_solved_challenge_verifies() {
        let k = keys();
        let (c, payload) = solved(&k, "alice", 20);
        let ok = k.verify(Some(&payload), "alice", 7, 3, NOW).unwrap();
        assert_eq!(ok.nonce, c.parameters.nonce);
        assert_eq!(ok.nonce.len(), 32);
        assert_eq!(ok.expires_ms, NOW + 10_000);
        // The challenge is ALTCHA's v2 JSON, data and key signature included.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["parameters"]["algorithm"], ALGORITHM);
        assert_eq!(json["parameters"]["cost"], COST);
        assert_eq!(json["parameters"]["data"]["user"], "alice");
        assert!(json["parameters"]["keySignature"].is_string());
        assert!(json["signature"].is_string());
    }

    #[test]
    fn the_counter_is_within_the_difficulty() {
        let k = keys();
        for d in [1, 2, 9] {
            for _ in 0..5 {
                let (_, payload) = solved(&k, "alice", d);
                let p = decode_payload(&payload).unwrap();
                assert!(
                    (d.div_ceil(2)..=d).contains(&p.solution.counter),
                    "{d}: {}",
                    p.solution.counter
                );
            }
        }
    }

    #[test]
    fn refusals() {
        let k = keys();
        let (c, payload) = solved(&k, "alice", 10);
        let v = |p: Option<&str>, user, round, item, now| k.verify(p, user, round, item, now);
        assert_eq!(v(None, "alice", 7, 3, NOW), Err(PowError::Missing));
        assert_eq!(
            v(Some(&payload), "alice", 7, 3, NOW + 10_000),
            Err(PowError::Expired)
        );
        assert_eq!(
            v(Some(&payload), "bob", 7, 3, NOW),
            Err(PowError::OtherUser)
        );
        assert_eq!(
            v(Some(&payload), "alice", 7, 4, NOW),
            Err(PowError::OtherItem)
        );
        assert_eq!(
            v(Some(&payload), "alice", 8, 3, NOW),
            Err(PowError::OtherItem)
        );
        for bad in ["", "!!!", "AAAA", "e30", &"A".repeat(MAX_PAYLOAD_LEN + 4)] {
            assert_eq!(
                v(Some(bad), "alice", 7, 3, NOW),
                Err(PowError::Malformed),
                "{bad}"
            );
        }
        // A wrong derived key (the key is the proof: the counter that led
        // to it is not checked).
        let mut p = decode_payload(&payload).unwrap();
        p.solution.derived_key = "00".repeat(32);
        let wrong = encode_payload(&p.challenge, &p.solution);
        assert_eq!(
            v(Some(&wrong), "alice", 7, 3, NOW),
            Err(PowError::WrongSolution)
        );
        // Signed with another secret.
        let other = PowKeys::new(b"another-secret-of-enough-length");
        assert_eq!(
            other.verify(Some(&payload), "alice", 7, 3, NOW),
            Err(PowError::BadSignature)
        );
        // Its data changed: the expiry moved, or the buyer renamed.
        let mut moved = c.clone();
        let data = moved.parameters.data.as_mut().unwrap();
        data.insert("expires_at_ms".into(), Value::from(NOW + 1_000_000));
        let sol = decode_payload(&payload).unwrap().solution;
        let moved = encode_payload(&moved, &sol);
        assert_eq!(
            v(Some(&moved), "alice", 7, 3, NOW + 20_000),
            Err(PowError::BadSignature)
        );
        let mut renamed = c.clone();
        let data = renamed.parameters.data.as_mut().unwrap();
        data.insert("user".into(), Value::from("bob"));
        assert_eq!(
            v(Some(&encode_payload(&renamed, &sol)), "bob", 7, 3, NOW),
            Err(PowError::BadSignature)
        );
        // Made easier: fewer iterations, or no key signature.
        let mut easy = c.clone();
        easy.parameters.cost = 1;
        assert_eq!(
            v(Some(&encode_payload(&easy, &sol)), "alice", 7, 3, NOW),
            Err(PowError::BadSignature)
        );
        let mut unsigned = c;
        unsigned.parameters.key_signature = None;
        assert_eq!(
            v(Some(&encode_payload(&unsigned, &sol)), "alice", 7, 3, NOW),
            Err(PowError::BadSignature)
        );
    }

    #[test]
    fn padded_and_unpadded_payloads_read_alike() {
        let k = keys();
        let (_, payload) = solved(&k, "alice", 3);
        let bare = payload.trim_end_matches('=');
        assert!(k.verify(Some(bare), "alice", 7, 3, NOW).is_ok());
    }

    #[test]
    fn rounds_have_their_own_keys() {
        let k = keys();
        assert_ne!(k.round_secrets(1), k.round_secrets(2));
        let (a, b) = k.round_secrets(1);
        assert_ne!(a, b);
        assert!(!format!("{k:?}").contains("ticket-secret"));
    }

    #[test]
    fn foreign_challenges_are_not_solved() {
        let k = keys();
        let mut c = k.challenge("alice", 7, 3, 5, NOW);
        c.parameters.cost = COST * 100;
        assert_eq!(solve(&c, 1_000), None);
    }

    #[test]
    fn every_refusal_has_a_listed_code() {
        use PowError::*;
        for e in [
            Missing,
            Malformed,
            BadSignature,
            WrongSolution,
            Expired,
            OtherUser,
            OtherItem,
        ] {
            assert_eq!(errors::status_of(e.code()), Some(403), "{e:?}");
        }
        assert_eq!(errors::status_of(errors::CHALLENGE_USED), Some(403));
        assert_eq!(errors::status_of(errors::NO_CHALLENGE), Some(404));
    }
}
