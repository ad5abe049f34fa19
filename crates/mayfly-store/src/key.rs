//! The key of the encrypted embedded store (SQLCipher): 32 random bytes, given as 64 hex digits
//! in a key file, or derived from a passphrase with Argon2id and a per-database salt. The key is
//! zeroized on drop and never printed.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use zeroize::Zeroizing;

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a database key is 64 hex digits (32 bytes); create one with `openssl rand -hex 32 > FILE && chmod 600 FILE`")]
    BadHex,
    #[error("deriving the database key from the passphrase failed")]
    Derive,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

/// A SQLCipher raw key.
pub struct DbKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbKey([redacted])")
    }
}

impl DbKey {
    /// 32 fresh random bytes.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// From a key file's content: 64 hex digits, surrounding whitespace ignored.
    pub fn from_hex(text: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(text)
            .map_err(|_| KeyError::BadHex)?
            .trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, bytes.as_mut()).map_err(|_| KeyError::BadHex)?;
        Ok(Self(bytes))
    }

    /// From a passphrase, with Argon2id (19 MiB, 2 passes) and the database's salt.
    pub fn derive(passphrase: &[u8], salt: &[u8]) -> Result<Self, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        let params = Params::new(19 * 1024, 2, 1, Some(32)).map_err(|_| KeyError::Derive)?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, bytes.as_mut())
            .map_err(|_| KeyError::Derive)?;
        Ok(Self(bytes))
    }

    /// The key as a key file holds it.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    /// The value of `PRAGMA key` for a raw key: `"x'…'"`.
    pub(crate) fn pragma_value(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("\"x'{}'\"", self.to_hex().as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_print() {
        let key = DbKey::random();
        let again = DbKey::from_hex(format!("{}\n", key.to_hex().as_str()).as_bytes()).unwrap();
        assert_eq!(key.to_hex(), again.to_hex());
        assert!(!format!("{key:?}").contains(key.to_hex().as_str()));
        assert!(DbKey::from_hex(b"abc").is_err());
        assert!(DbKey::from_hex(&[b'z'; 64]).is_err());
    }

    #[test]
    fn passphrases_derive_stable_keys_per_salt() {
        let a = DbKey::derive(b"correct horse", b"salt-salt-salt-1").unwrap();
        let b = DbKey::derive(b"correct horse", b"salt-salt-salt-1").unwrap();
        let c = DbKey::derive(b"correct horse", b"salt-salt-salt-2").unwrap();
        assert_eq!(a.to_hex(), b.to_hex());
        assert_ne!(a.to_hex(), c.to_hex());
        assert!(DbKey::derive(b"", b"salt-salt-salt-1").is_err());
    }
}
