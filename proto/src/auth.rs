//! Bearer tokens: HS256 JSON Web Tokens carrying subject, role and expiry.
//!
//! The edge verifies the same tokens with the same shared secret. Format
//! (documented in the README so a shop can mint them with any JWT library):
//! header `{"alg":"HS256","typ":"JWT"}`, claims `{"sub": "<user id>",
//! "role": "buyer"|"operator"|"approver", "exp": <unix seconds>}`.
//!
//! This module owns signing and verification (and the per-thread cache of
//! verified tokens both services use); which role may call what
//! is decided by each service (the backend's route extractors, the edge's
//! access phase).

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Buys and polls its own attempts.
    Buyer,
    /// Creates and submits rounds, reads counters.
    Operator,
    /// Everything an operator does, plus approving or rejecting rounds that
    /// someone else submitted.
    Approver,
}

impl Role {
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Operator | Role::Approver)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Operator => "operator",
            Role::Approver => "approver",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buyer" => Ok(Role::Buyer),
            "operator" => Ok(Role::Operator),
            "approver" => Ok(Role::Approver),
            other => Err(format!(
                "unknown role {other:?} (buyer, operator, approver)"
            )),
        }
    }
}

/// The verified claims of a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
}

/// Why a token was refused (the message is safe to show the caller).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("token is malformed or its signature does not match")]
    Invalid,
}

/// The secret of the built-in defaults and of the shipped development
/// files: public, so refused unless [`AuthConfig::allow_dev_secret`] is set.
pub const DEV_SECRET: &str = "dev-only-secret-change-me-before-a-sale";

/// The token settings both services read from their configuration file:
/// the shared secret and the clock skew tolerated on expiry. `Debug` never
/// shows the secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The HMAC-SHA256 secret shared by edge and backend (at least
    /// [`AuthConfig::MIN_SECRET_LEN`] bytes).
    pub secret: String,
    /// Clock skew tolerated when checking a token's expiry, in seconds.
    pub leeway_secs: u64,
    /// Accept [`DEV_SECRET`]: for a development machine only (anyone can
    /// mint tokens with it).
    pub allow_dev_secret: bool,
}

impl AuthConfig {
    pub const MIN_SECRET_LEN: usize = 16;

    /// Checks the secret is long enough and not the development secret
    /// (unless allowed); the message, said of `auth.secret`, names no
    /// value.
    pub fn validate(&self) -> Result<(), String> {
        if self.secret.len() < Self::MIN_SECRET_LEN {
            return Err(format!("must be at least {} bytes", Self::MIN_SECRET_LEN));
        }
        if self.secret == DEV_SECRET && !self.allow_dev_secret {
            return Err(
                "is the development secret shipped with Seckill: set a secret of \
                 your own, or auth.allow_dev_secret = true on a development machine"
                    .into(),
            );
        }
        Ok(())
    }

    /// The signing and verifying keys of this secret.
    pub fn keys(&self) -> TokenKeys {
        TokenKeys::new(self.secret.as_bytes(), self.leeway_secs)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret: DEV_SECRET.into(),
            leeway_secs: 5,
            allow_dev_secret: false,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &"<hidden>")
            .field("leeway_secs", &self.leeway_secs)
            .field("allow_dev_secret", &self.allow_dev_secret)
            .finish()
    }
}

/// Signs and verifies tokens with one shared secret.
///
/// [`TokenKeys::verify_header_cached`] remembers verified tokens per
/// thread (at most [`TOKEN_CACHE_ENTRIES`], keyed by the token's exact
/// text and the keys that verified it, each until its `exp` plus the
/// leeway, as the full check would decide; a full cache starts over), so a
/// buyer's repeated requests skip the JWT decode and HMAC. Refused tokens
/// are not remembered.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    leeway_secs: u64,
    /// Tells keys made by different [`TokenKeys::new`] calls apart in the
    /// cache (clones share the secret, so they share entries too).
    instance: u64,
}

/// Verified tokens one thread remembers; when full it starts over.
pub const TOKEN_CACHE_ENTRIES: usize = 4096;

static INSTANCES: AtomicU64 = AtomicU64::new(1);

/// A token the full check accepted, and until when that holds.
struct Verified {
    instance: u64,
    claims: Claims,
    /// Unix seconds after which the token is expired (`exp` + leeway).
    valid_until: u64,
}

thread_local! {
    static VERIFIED: RefCell<HashMap<Box<str>, Verified>> = RefCell::new(HashMap::new());
}

/// Longest subject accepted (user ids end up in Redis keys and orders).
pub const MAX_SUBJECT_LEN: usize = 128;

impl TokenKeys {
    pub fn new(secret: &[u8], leeway_secs: u64) -> Self {
        install_crypto();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            leeway_secs,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Mints a token; `ttl_secs` may be negative to mint an expired one.
    pub fn mint(&self, sub: &str, role: Role, ttl_secs: i64) -> String {
        let exp = (chrono::Utc::now().timestamp() + ttl_secs).max(0) as u64;
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
        };
        // HS256 with an in-memory key cannot fail to sign.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing")
    }

    /// Verifies signature, algorithm and expiry; refuses empty or overlong
    /// subjects.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let c = data.claims;
        if c.sub.is_empty()
            || c.sub.len() > MAX_SUBJECT_LEN
            || c.sub.chars().any(|ch| ch.is_control())
        {
            return Err(TokenError::Invalid);
        }
        Ok(c)
    }

    /// Extracts and verifies the token of an `Authorization` header value.
    pub fn verify_header(&self, header: Option<&str>) -> Result<Claims, TokenError> {
        let value = header.ok_or(TokenError::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(TokenError::Invalid)?;
        self.verify(token.trim())
    }

    /// [`Self::verify_header`], from this thread's cache when these keys
    /// verified the same token before.
    pub fn verify_header_cached(&self, header: Option<&str>) -> Result<Claims, TokenError> {
        let token = header.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(str::trim)
        });
        let Some(token) = token else {
            return self.verify_header(header);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let hit = VERIFIED.with(|c| {
            c.borrow()
                .get(token)
                .filter(|v| v.instance == self.instance && now <= v.valid_until)
                .map(|v| v.claims.clone())
        });
        if let Some(claims) = hit {
            return Ok(claims);
        }
        let claims = self.verify(token)?;
        VERIFIED.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= TOKEN_CACHE_ENTRIES {
                c.clear();
            }
            c.insert(
                token.into(),
                Verified {
                    instance: self.instance,
                    valid_until: claims.exp.saturating_add(self.leeway_secs),
                    claims: claims.clone(),
                },
            );
        });
        Ok(claims)
    }
}

fn install_crypto() {
    // Exactly one provider is compiled in; installing it twice is harmless.
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"0123456789abcdef0123", 0)
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let t = k.mint("alice", Role::Buyer, 60);
        let c = k.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.role, Role::Buyer);
    }

    #[test]
    fn expired_is_refused() {
        let k = keys();
        let t = k.mint("alice", Role::Buyer, -120);
        assert_eq!(k.verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn other_secret_is_refused() {
        let t = TokenKeys::new(b"another-secret-of-enough-length", 0).mint("a", Role::Approver, 60);
        assert_eq!(keys().verify(&t), Err(TokenError::Invalid));
    }

    #[test]
    fn tampered_role_is_refused() {
        let k = keys();
        let t = k.mint("alice", Role::Buyer, 60);
        let mut parts: Vec<&str> = t.split('.').collect();
        use base64::Engine;
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"alice","role":"approver","exp":99999999999}"#);
        parts[1] = &forged;
        assert_eq!(k.verify(&parts.join(".")), Err(TokenError::Invalid));
    }

    #[test]
    fn auth_config_hides_and_checks_its_secret() {
        let c = AuthConfig::default();
        assert!(!format!("{c:?}").contains("dev-only"));
        let short = AuthConfig {
            secret: "short".into(),
            ..AuthConfig::default()
        };
        assert!(short.validate().is_err());
        let own = AuthConfig {
            secret: "a-secret-of-our-own-0123".into(),
            ..AuthConfig::default()
        };
        assert!(own.validate().is_ok());
    }

    #[test]
    fn the_development_secret_is_refused_unless_allowed() {
        let c = AuthConfig::default();
        let err = c.validate().unwrap_err();
        assert!(err.contains("auth.allow_dev_secret"), "{err}");
        assert!(!err.contains(DEV_SECRET));
        let dev = AuthConfig {
            allow_dev_secret: true,
            ..AuthConfig::default()
        };
        assert!(dev.validate().is_ok());
    }

    #[test]
    fn header_forms() {
        let k = keys();
        let t = k.mint("bob", Role::Operator, 60);
        assert!(k.verify_header(Some(&format!("Bearer {t}"))).is_ok());
        assert_eq!(k.verify_header(None), Err(TokenError::Missing));
        assert_eq!(k.verify_header(Some(&t)), Err(TokenError::Invalid));
    }

    #[test]
    fn a_remembered_token_verifies_as_the_full_check_does() {
        let k = TokenKeys::new(b"0123456789abcdef0123", 0);
        let t = format!("Bearer {}", k.mint("alice", Role::Buyer, 60));
        let first = k.verify_header_cached(Some(&t)).unwrap();
        assert_eq!(first.sub, "alice");
        assert_eq!(k.verify_header_cached(Some(&t)).unwrap(), first);
        assert_eq!(k.verify_header(Some(&t)).unwrap(), first);
    }

    #[test]
    fn other_keys_do_not_take_a_token_remembered_for_these() {
        let a = TokenKeys::new(b"0123456789abcdef0123", 0);
        let b = TokenKeys::new(b"another-secret-of-20b", 0);
        let t = format!("Bearer {}", a.mint("alice", Role::Buyer, 60));
        assert!(a.verify_header_cached(Some(&t)).is_ok());
        assert_eq!(
            b.verify_header_cached(Some(&t)),
            Err(TokenError::Invalid),
            "the cache must not vouch for a token these keys did not sign"
        );
    }

    #[test]
    fn a_remembered_entry_expires_with_its_token() {
        let k = TokenKeys::new(b"0123456789abcdef0123", 0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        // Remembered with a validity already past: the full check runs.
        let t = k.mint("bob", Role::Buyer, -10);
        VERIFIED.with(|c| {
            c.borrow_mut().insert(
                t.as_str().into(),
                Verified {
                    instance: k.instance,
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
            k.verify_header_cached(Some(&format!("Bearer {t}"))),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn missing_and_malformed_headers_are_refused_by_the_cached_check() {
        let k = TokenKeys::new(b"0123456789abcdef0123", 0);
        assert_eq!(k.verify_header_cached(None), Err(TokenError::Missing));
        assert_eq!(
            k.verify_header_cached(Some("Basic abc")),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            k.verify_header_cached(Some("Bearer not-a-token")),
            Err(TokenError::Invalid)
        );
    }
}
