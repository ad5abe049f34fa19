//! Sealed columns: envelope encryption for the few secrets that must be stored.
//!
//! A value is sealed with XChaCha20-Poly1305 under a random *data key*, with the row's identity
//! (`kind`, `name`) as associated data, so a sealed value copied into another row does not open.
//! Data keys are stored wrapped (the same AEAD) by the *master key*, which lives in a file
//! outside the database. Rotating the master key re-wraps the data keys only; sealed values are
//! not touched, and a running server keeps working because it reads the master key file each
//! time it unwraps.
//!
//! Rotation is crash-safe: the new key is written to `<file>.new` first, the data keys are
//! re-wrapped in one transaction, then `<file>.new` replaces `<file>`. A reader tries both
//! files, choosing by the key id recorded with each data key.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{SealedRow, Store, StoreError, WrappedKey};

const NONCE: usize = 24;

/// Why sealing or opening failed. Messages name files and key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not read the master key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the master key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the master key file {path} must hold 64 hex digits (32 bytes); create one with `mayfly keys init`")]
    BadKey { path: PathBuf },
    #[error("data key {data_key} is wrapped by master key {wanted}, but {path} holds master key {have}: is this the right master key file?")]
    WrongMasterKey {
        data_key: String,
        wanted: String,
        have: String,
        path: PathBuf,
    },
    #[error("the sealed {kind} `{name}` does not open: it was altered, or moved from another row")]
    Tampered { kind: String, name: String },
    #[error("the sealed {kind} `{name}` names data key {data_key}, which is not in the database")]
    MissingDataKey {
        kind: String,
        name: String,
        data_key: String,
    },
    #[error("could not write the master key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A 32-byte master key. Zeroized on drop, never printed.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    /// 32 fresh random bytes.
    pub fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(bytes.as_mut());
        Self { bytes }
    }

    /// A public name for the key: the first 16 hex digits of a hash of it.
    pub fn id(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"mayfly master key id\0")
            .chain_update(self.bytes.as_ref())
            .finalize();
        hex::encode(&digest[..8])
    }

    /// Reads a key file: 64 hex digits, mode 600 (group or others may not read it).
    pub fn read(path: &Path) -> Result<Self, SealError> {
        let read_err = |source| SealError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
        let bad = || SealError::BadKey {
            path: path.to_owned(),
        };
        let trimmed = std::str::from_utf8(&text).map_err(|_| bad())?.trim();
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(trimmed, bytes.as_mut()).map_err(|_| bad())?;
        Ok(Self { bytes })
    }

    /// Writes the key as 64 hex digits to a new file of mode 600 (replacing `path` atomically).
    pub fn write(&self, path: &Path) -> Result<(), SealError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let write_err = |source| SealError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        let text = Zeroizing::new(hex::encode(self.bytes.as_ref()));
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.write_all(b"\n").map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.bytes.as_ref().into())
    }
}

/// Encrypts `plaintext` under `cipher` with `aad`: nonce ‖ ciphertext.
fn encrypt(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    rand::thread_rng().fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // Encryption with a fresh nonce and an in-memory buffer does not fail.
    if let Ok(ct) = cipher.encrypt(
        XNonce::from_slice(&nonce),
        Payload {
            msg: plaintext,
            aad,
        },
    ) {
        out.extend_from_slice(&ct);
    }
    out
}

fn decrypt(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

fn data_key_aad(id: &str) -> Vec<u8> {
    format!("mayfly data key\0{id}").into_bytes()
}

fn value_aad(kind: &str, name: &str) -> Vec<u8> {
    format!("mayfly sealed value\0{kind}\0{name}").into_bytes()
}

/// Seals and opens values in a store with the master key in a file.
#[derive(Debug, Clone)]
pub struct Sealer {
    master_key_file: PathBuf,
}

impl Sealer {
    pub fn new(master_key_file: PathBuf) -> Self {
        Self { master_key_file }
    }

    pub fn master_key_file(&self) -> &Path {
        &self.master_key_file
    }

    /// `<file>.new`: where a rotation in progress keeps the next key.
    fn next_key_file(&self) -> PathBuf {
        let mut name = self.master_key_file.as_os_str().to_owned();
        name.push(".new");
        PathBuf::from(name)
    }

    /// The master key with id `wanted`: from the key file, or from `<file>.new` during a
    /// rotation.
    fn master(&self, wanted: &str, data_key: &str) -> Result<MasterKey, SealError> {
        let key = MasterKey::read(&self.master_key_file)?;
        if key.id() == wanted {
            return Ok(key);
        }
        if let Ok(next) = MasterKey::read(&self.next_key_file()) {
            if next.id() == wanted {
                return Ok(next);
            }
        }
        Err(SealError::WrongMasterKey {
            data_key: data_key.to_owned(),
            wanted: wanted.to_owned(),
            have: key.id(),
            path: self.master_key_file.clone(),
        })
    }

    fn unwrap_key(&self, key: &WrappedKey) -> Result<XChaCha20Poly1305, SealError> {
        let master = self.master(&key.master_key_id, &key.id)?;
        let raw =
            decrypt(&master.cipher(), &key.wrapped, &data_key_aad(&key.id)).ok_or_else(|| {
                SealError::Tampered {
                    kind: "data key".into(),
                    name: key.id.clone(),
                }
            })?;
        if raw.len() != 32 {
            return Err(SealError::Tampered {
                kind: "data key".into(),
                name: key.id.clone(),
            });
        }
        Ok(XChaCha20Poly1305::new(raw.as_slice().into()))
    }

    /// The newest data key, made (and wrapped by the master key) if there is none.
    async fn current_data_key(
        &self,
        store: &dyn Store,
    ) -> Result<(String, XChaCha20Poly1305), SealError> {
        if let Some(key) = store.data_keys().await?.pop() {
            let cipher = self.unwrap_key(&key)?;
            return Ok((key.id, cipher));
        }
        let master = MasterKey::read(&self.master_key_file)?;
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(raw.as_mut());
        let id = format!("dk-{}", hex::encode(rand::random::<[u8; 8]>()));
        let wrapped = encrypt(&master.cipher(), raw.as_ref(), &data_key_aad(&id));
        store
            .insert_data_key(&WrappedKey {
                id: id.clone(),
                master_key_id: master.id(),
                wrapped,
                created_at: Utc::now(),
            })
            .await?;
        Ok((id, XChaCha20Poly1305::new(raw.as_ref().into())))
    }

    /// Seals `plaintext` into the row (`kind`, `name`), replacing what was there.
    pub async fn seal(
        &self,
        store: &dyn Store,
        kind: &str,
        name: &str,
        plaintext: &[u8],
    ) -> Result<(), SealError> {
        let (data_key_id, cipher) = self.current_data_key(store).await?;
        let sealed = encrypt(&cipher, plaintext, &value_aad(kind, name));
        let row = SealedRow {
            kind: kind.to_owned(),
            name: name.to_owned(),
            data_key_id,
            sealed,
        };
        store.put_secret(&row, Utc::now()).await?;
        Ok(())
    }

    /// Opens the row (`kind`, `name`); `None` when there is no such row.
    pub async fn open(
        &self,
        store: &dyn Store,
        kind: &str,
        name: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, SealError> {
        let Some(row) = store.secret(kind, name).await? else {
            return Ok(None);
        };
        let keys = store.data_keys().await?;
        let key = keys
            .iter()
            .find(|k| k.id == row.data_key_id)
            .ok_or_else(|| SealError::MissingDataKey {
                kind: kind.to_owned(),
                name: name.to_owned(),
                data_key: row.data_key_id.clone(),
            })?;
        let cipher = self.unwrap_key(key)?;
        decrypt(&cipher, &row.sealed, &value_aad(kind, name))
            .map(Some)
            .ok_or_else(|| SealError::Tampered {
                kind: kind.to_owned(),
                name: name.to_owned(),
            })
    }

    /// Re-wraps every data key under a new random master key and makes it the key file's
    /// content. Servers keep running: they read the key file whenever they unwrap. Returns the
    /// old and new key ids.
    pub async fn rotate(&self, store: &dyn Store) -> Result<(String, String), SealError> {
        let old = MasterKey::read(&self.master_key_file)?;
        let next_file = self.next_key_file();
        // A rotation that stopped half-way left its key in `<file>.new`: finish with that one.
        let next = match MasterKey::read(&next_file) {
            Ok(next) => next,
            Err(_) => {
                let next = MasterKey::random();
                next.write(&next_file)?;
                next
            }
        };
        let mut rewrapped = Vec::new();
        for key in store.data_keys().await? {
            let master = self.master(&key.master_key_id, &key.id)?;
            let raw = decrypt(&master.cipher(), &key.wrapped, &data_key_aad(&key.id)).ok_or_else(
                || SealError::Tampered {
                    kind: "data key".into(),
                    name: key.id.clone(),
                },
            )?;
            rewrapped.push(WrappedKey {
                wrapped: encrypt(&next.cipher(), &raw, &data_key_aad(&key.id)),
                master_key_id: next.id(),
                ..key
            });
        }
        store.rewrap_data_keys(&rewrapped).await?;
        std::fs::rename(&next_file, &self.master_key_file).map_err(|source| SealError::Write {
            path: self.master_key_file.clone(),
            source,
        })?;
        Ok((old.id(), next.id()))
    }
}
