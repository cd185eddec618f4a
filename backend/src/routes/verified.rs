//! Verified bearer tokens remembered per worker thread, so a buyer's
//! repeated requests (the buy, its polls, the payment) skip the JWT decode
//! and HMAC.
//!
//! At most [`ENTRIES`] tokens per thread, keyed by the token's exact text
//! and the keys that verified it; each holds until its `exp` plus the
//! leeway, as the full check would decide; a full cache starts over.
//! Refused tokens are not remembered.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::auth::{Claims, TokenError, TokenKeys};

/// Verified tokens one worker thread remembers.
pub const ENTRIES: usize = 4096;

struct Verified {
    /// The keys that verified it: held, so no other keys can take their
    /// place in memory while the entry lives.
    keys: Arc<TokenKeys>,
    claims: Claims,
    /// Unix seconds after which the token is expired (`exp` + leeway).
    valid_until: u64,
}

thread_local! {
    static VERIFIED: RefCell<HashMap<Box<str>, Verified>> = RefCell::new(HashMap::new());
}

/// Verifies an `Authorization` header value with `keys`, from the cache
/// when this thread verified the same token with the same keys before.
pub fn verify_header(
    keys: &Arc<TokenKeys>,
    leeway_secs: u64,
    header: Option<&str>,
) -> Result<Claims, TokenError> {
    let token = header.and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
    });
    let Some(token) = token else {
        return keys.verify_header(header);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hit = VERIFIED.with(|c| {
        c.borrow()
            .get(token)
            .filter(|v| Arc::ptr_eq(&v.keys, keys) && now <= v.valid_until)
            .map(|v| v.claims.clone())
    });
    if let Some(claims) = hit {
        return Ok(claims);
    }
    let claims = keys.verify(token)?;
    VERIFIED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= ENTRIES {
            c.clear();
        }
        c.insert(
            token.into(),
            Verified {
                keys: keys.clone(),
                claims: claims.clone(),
                valid_until: claims.exp.saturating_add(leeway_secs),
            },
        );
    });
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn keys(secret: &[u8]) -> Arc<TokenKeys> {
        Arc::new(TokenKeys::new(secret, 0))
    }

    #[test]
    fn a_remembered_token_verifies_as_the_full_check_does() {
        let k = keys(b"0123456789abcdef0123");
        let t = format!("Bearer {}", k.mint("alice", Role::Buyer, 60));
        let first = verify_header(&k, 0, Some(&t)).unwrap();
        assert_eq!(first.sub, "alice");
        assert_eq!(verify_header(&k, 0, Some(&t)).unwrap(), first);
    }

    #[test]
    fn other_keys_do_not_take_a_token_remembered_for_these() {
        let a = keys(b"0123456789abcdef0123");
        let b = keys(b"another-secret-of-20b");
        let t = format!("Bearer {}", a.mint("alice", Role::Buyer, 60));
        assert!(verify_header(&a, 0, Some(&t)).is_ok());
        assert_eq!(
            verify_header(&b, 0, Some(&t)),
            Err(TokenError::Invalid),
            "the cache must not vouch for a token these keys did not sign"
        );
    }

    #[test]
    fn an_entry_expires_with_its_token() {
        let k = keys(b"0123456789abcdef0123");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        // Remembered with a validity already past: the full check runs.
        let t = k.mint("bob", Role::Buyer, -10);
        VERIFIED.with(|c| {
            c.borrow_mut().insert(
                t.as_str().into(),
                Verified {
                    keys: k.clone(),
                    claims: Claims {
                        sub: "bob".into(),
                        role: Role::Buyer,
                        exp: now.as_secs() - 10,
                    },
                    valid_until: now.as_secs() - 10,
                },
            );
        });
        assert_eq!(
            verify_header(&k, 0, Some(&format!("Bearer {t}"))),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_refused() {
        let k = keys(b"0123456789abcdef0123");
        assert_eq!(verify_header(&k, 0, None), Err(TokenError::Missing));
        assert_eq!(
            verify_header(&k, 0, Some("Basic abc")),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verify_header(&k, 0, Some("Bearer not-a-token")),
            Err(TokenError::Invalid)
        );
    }
}
