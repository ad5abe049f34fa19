//! RSA key material: App key pairs for tests and quickstart, parsing the App public key for JWT
//! verification, and per-runner key pairs. Private halves only ever live in `secrecy` types.

use jsonwebtoken::DecodingKey;
use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("RSA key generation failed")]
    Generate(#[source] rsa::Error),
    #[error("PEM encoding failed")]
    Encode,
    #[error("the App public key is neither a PKCS#1 nor an SPKI RSA public key PEM")]
    PublicKeyPem,
}

/// A freshly generated GitHub App key pair, shaped like what GitHub hands out.
#[derive(Debug)]
pub struct AppKeyPair {
    /// PKCS#1 PEM (an "RSA PRIVATE KEY" block), as downloaded from GitHub's App settings.
    pub private_pem: SecretString,
    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_pem: String,
}

impl AppKeyPair {
    /// Generates an RSA-2048 key pair.
    pub fn generate() -> Result<Self, KeysError> {
        let private = generate_rsa_2048()?;
        let private_pem = private
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|_| KeysError::Encode)?;
        let public_pem = RsaPublicKey::from(&private)
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| KeysError::Encode)?;
        Ok(Self {
            private_pem: SecretString::from(private_pem.as_str()),
            public_pem,
        })
    }
}

pub(crate) fn generate_rsa_2048() -> Result<RsaPrivateKey, KeysError> {
    RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(KeysError::Generate)
}

/// Parses an RSA public key given as PKCS#1 (`RSA PUBLIC KEY`) or SPKI (`PUBLIC KEY`) PEM.
pub(crate) fn parse_public_pem(pem: &str) -> Result<RsaPublicKey, KeysError> {
    RsaPublicKey::from_pkcs1_pem(pem.trim())
        .or_else(|_| RsaPublicKey::from_public_key_pem(pem.trim()))
        .map_err(|_| KeysError::PublicKeyPem)
}

/// A jsonwebtoken verification key for an RSA public key.
pub(crate) fn decoding_key(public: &RsaPublicKey) -> Result<DecodingKey, KeysError> {
    let der = public.to_pkcs1_der().map_err(|_| KeysError::Encode)?;
    Ok(DecodingKey::from_rsa_der(der.as_bytes()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn generated_pair_is_pkcs1_private_and_both_public_forms_parse() {
        let pair = AppKeyPair::generate().unwrap();
        assert!(pair
            .private_pem
            .expose_secret()
            .starts_with(concat!("-----BEGIN RSA ", "PRIVATE KEY-----")));
        let spki = parse_public_pem(&pair.public_pem).unwrap();
        let pkcs1 = spki.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert_eq!(parse_public_pem(&pkcs1).unwrap(), spki);
        assert!(parse_public_pem("not a key").is_err());
    }
}
