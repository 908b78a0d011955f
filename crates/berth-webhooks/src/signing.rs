//! Signatures: Standard Webhooks for every endpoint, plus Vessel's own
//! formulas for v1 and v2 endpoints (VESSEL.md 2.3).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SECRET_PREFIX: &str = "whsec_";

/// A new endpoint secret: `whsec_` + base64 of 32 random bytes.
pub fn new_secret() -> Zeroizing<String> {
    let key: [u8; 32] = rand::random();
    Zeroizing::new(format!("{SECRET_PREFIX}{}", B64.encode(key)))
}

/// The HMAC key inside a `whsec_` secret.
pub fn secret_key(secret: &str) -> Option<Zeroizing<Vec<u8>>> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    B64.decode(b64).ok().map(Zeroizing::new)
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn standard_signature(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// Vessel v1: `sha256hex(accessToken + body + timestamp)`.
pub fn vessel_v1_signature(access_token: &str, body: &[u8], timestamp: &str) -> String {
    let mut h = Sha256::new();
    h.update(access_token.as_bytes());
    h.update(body);
    h.update(timestamp.as_bytes());
    hex::encode(h.finalize())
}

/// Vessel v2: `sha256hex("{apiToken}:{timestamp}:{body}")`.
pub fn vessel_v2_signature(api_token: &str, timestamp: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(api_token.as_bytes());
    h.update(b":");
    h.update(timestamp.as_bytes());
    h.update(b":");
    h.update(body);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_signature_matches_the_spec_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(secret_key(&s).unwrap().len(), 32);
        assert!(secret_key("whsec_***").is_none());
    }

    #[test]
    fn vessel_formulas() {
        assert_eq!(
            vessel_v1_signature("tok", b"{}", "1"),
            hex::encode(Sha256::digest(b"tok{}1"))
        );
        assert_eq!(
            vessel_v2_signature("api", "1", b"{}"),
            hex::encode(Sha256::digest(b"api:1:{}"))
        );
    }
}
