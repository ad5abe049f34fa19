//! `X-Hub-Signature-256` verification: HMAC-SHA256 over the raw body bytes, compared in
//! constant time, before anything looks at the body. Several secrets may be active at once so
//! that a webhook secret can be rotated without dropping deliveries.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header GitHub signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
const PREFIX: &str = "sha256=";

/// A webhook secret. Debug prints `[redacted]`; the bytes are zeroized on drop.
#[derive(Debug)]
pub struct WebhookSecret(SecretBox<[u8]>);

impl WebhookSecret {
    /// Wraps secret bytes. Trailing newlines (as left by `echo secret > file`) are the caller's
    /// business: the secret is used exactly as given.
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Self(SecretBox::new(bytes.into()))
    }

    fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl Clone for WebhookSecret {
    fn clone(&self) -> Self {
        Self::new(self.bytes().to_vec())
    }
}

/// Why a delivery's signature was refused. The messages never echo the header or the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the X-Hub-Signature-256 header is missing")]
    Missing,
    #[error("the X-Hub-Signature-256 header is not `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("the signature matches none of the configured webhook secrets")]
    Mismatch,
    #[error("no webhook secret is configured")]
    NoSecrets,
}

/// Computes the value of an `X-Hub-Signature-256` header for `body` (used by the simulator and
/// by tests that act as GitHub).
pub fn signature_header(secret: &WebhookSecret, body: &[u8]) -> String {
    let mut mac = mac_for(secret);
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

fn mac_for(secret: &WebhookSecret) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret.bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    }
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> ! {
    panic!("HMAC-SHA256 accepts keys of every length")
}

/// Checks deliveries against the currently active webhook secrets.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secrets: Vec<WebhookSecret>,
}

impl WebhookVerifier {
    pub fn new(secrets: Vec<WebhookSecret>) -> Self {
        Self { secrets }
    }

    /// Verifies `header` (the raw `X-Hub-Signature-256` value, if any) over the raw `body`.
    /// Every configured secret is tried with a constant-time comparison.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        if self.secrets.is_empty() {
            return Err(SignatureError::NoSecrets);
        }
        let header = header.ok_or(SignatureError::Missing)?;
        let digest = header
            .strip_prefix(PREFIX.as_bytes())
            .filter(|hex| hex.len() == 64)
            .and_then(|hex| hex::decode(hex).ok())
            .ok_or(SignatureError::Malformed)?;
        let mut matched = false;
        for secret in &self.secrets {
            let mut mac = mac_for(secret);
            mac.update(body);
            // `verify_slice` compares in constant time; every secret is tried so the time taken
            // does not tell which one matched.
            matched |= mac.verify_slice(&digest).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_SECRET: &[u8] = b"It's a Secret to Everybody";
    const VECTOR_BODY: &[u8] = b"Hello, World!";
    const VECTOR_HEADER: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_published_test_vector() {
        let secret = WebhookSecret::new(VECTOR_SECRET.to_vec());
        assert_eq!(signature_header(&secret, VECTOR_BODY), VECTOR_HEADER);
        let verifier = WebhookVerifier::new(vec![secret]);
        assert_eq!(
            verifier.verify(Some(VECTOR_HEADER.as_bytes()), VECTOR_BODY),
            Ok(())
        );
    }

    #[test]
    fn any_active_secret_verifies_during_rotation() {
        let old = WebhookSecret::new(b"old".to_vec());
        let new = WebhookSecret::new(b"new".to_vec());
        let header = signature_header(&new, b"{}");
        let verifier = WebhookVerifier::new(vec![old, new]);
        assert_eq!(verifier.verify(Some(header.as_bytes()), b"{}"), Ok(()));
    }

    #[test]
    fn refuses_missing_malformed_and_wrong_signatures() {
        let verifier = WebhookVerifier::new(vec![WebhookSecret::new(VECTOR_SECRET.to_vec())]);
        assert_eq!(
            verifier.verify(None, VECTOR_BODY),
            Err(SignatureError::Missing)
        );
        for bad in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                verifier.verify(Some(bad.as_bytes()), VECTOR_BODY),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            verifier.verify(Some(VECTOR_HEADER.as_bytes()), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        let other = WebhookVerifier::new(vec![WebhookSecret::new(b"other".to_vec())]);
        assert_eq!(
            other.verify(Some(VECTOR_HEADER.as_bytes()), VECTOR_BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn no_secrets_means_nothing_verifies() {
        let verifier = WebhookVerifier::new(Vec::new());
        assert_eq!(
            verifier.verify(Some(VECTOR_HEADER.as_bytes()), VECTOR_BODY),
            Err(SignatureError::NoSecrets)
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = WebhookSecret::new(VECTOR_SECRET.to_vec());
        let shown = format!("{secret:?}");
        assert!(!shown.contains("Secret to Everybody"), "{shown}");
    }
}
