//! `X-Hub-Signature-256`: HMAC-SHA256 of the raw body, hex, `sha256=` prefix.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Whether `header` is a valid signature of `body` under any of `secrets`
/// (several during a rotation). The comparison is constant-time
/// (`verify_slice`); a malformed header is simply not valid.
pub fn verify(secrets: &[Secret], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    secrets.iter().any(|secret| {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose().as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

/// The header value GitHub would send for `body` under `secret` (tests,
/// demo and the load generator sign with this).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented test vector.
    const SECRET: &str = "It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_test_vector_verifies() {
        assert_eq!(sign(SECRET, BODY), SIG);
        assert!(verify(&[Secret::new(SECRET)], BODY, SIG));
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let secrets = [Secret::new("old"), Secret::new(SECRET)];
        assert!(verify(&secrets, BODY, SIG));
    }

    #[test]
    fn wrong_or_malformed_signatures_fail() {
        let secrets = [Secret::new(SECRET)];
        assert!(!verify(&secrets, b"Hello, World?", SIG));
        assert!(!verify(&[Secret::new("other")], BODY, SIG));
        assert!(!verify(&secrets, BODY, &SIG.replace("sha256=", "sha1=")));
        assert!(!verify(&secrets, BODY, "sha256=zz"));
        assert!(!verify(&secrets, BODY, ""));
        assert!(!verify(&secrets, BODY, &SIG[..SIG.len() - 2]));
    }
}
