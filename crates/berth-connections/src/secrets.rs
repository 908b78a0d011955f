//! Generated secrets and ids. Every bearer secret is 256 random bits, carries
//! a recognisable prefix (so secret scanners can find leaked ones) and is
//! stored only as its SHA-256: a fast hash is right here because the input
//! has full entropy; nothing is gained from a slow password hash.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of development API tokens.
pub const API_TOKEN_DEV_PREFIX: &str = "berth_dev_";
/// Prefix of production API tokens.
pub const API_TOKEN_PROD_PREFIX: &str = "berth_prod_";
/// Prefix of per-connection access tokens.
pub const ACCESS_TOKEN_PREFIX: &str = "berth_at_";
/// v2 session tokens keep Vessel's published shape.
pub const SESSION_TOKEN_PREFIX: &str = "v_session_";
/// v1 link tokens.
pub const LINK_TOKEN_PREFIX: &str = "berth_link_";
/// v1 public tokens.
pub const PUBLIC_TOKEN_PREFIX: &str = "berth_pub_";

/// How many leading characters of a token are safe to show and store.
pub const DISPLAY_PREFIX_LEN: usize = 16;

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A new bearer secret: `prefix` + 64 hex characters (256 bits).
pub fn new_token(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(32))
}

pub fn hash_token(token: &str) -> String {
    hex_lower(&token_digest(token))
}

/// The SHA-256 digest behind [`hash_token`], for in-memory lookups that
/// need no text.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex; `hex::encode` goes through a char iterator that cost
/// more than the SHA-256 on every authenticated call.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

pub fn display_prefix(token: &str) -> String {
    token.chars().take(DISPLAY_PREFIX_LEN).collect()
}

/// A short random id with a type prefix, e.g. `evt_…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(12))
}

/// A Vessel-style connection id: `v_connection_<env>_<integration>_<hex>`.
pub fn new_connection_id(environment: &str, integration_id: &str) -> String {
    format!(
        "v_connection_{environment}_{integration_id}_{}",
        random_hex(16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_prefixed_and_hash_stably() {
        let t = new_token(API_TOKEN_DEV_PREFIX);
        assert!(t.starts_with(API_TOKEN_DEV_PREFIX));
        assert_eq!(t.len(), API_TOKEN_DEV_PREFIX.len() + 64);
        assert_ne!(t, new_token(API_TOKEN_DEV_PREFIX));
        assert_eq!(hash_token(&t), hash_token(&t));
        assert_ne!(hash_token(&t), t);
        assert_eq!(display_prefix(&t).len(), DISPLAY_PREFIX_LEN);
    }
}
