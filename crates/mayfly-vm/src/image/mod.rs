//! Guest images: a kernel, an initramfs (busybox, the modules that reach the root,
//! `mayfly-guest` as `/init`) and a read-only base disk holding the whole root filesystem
//! (EROFS), stored content-addressed as
//! `<store>/<digest>/{vmlinuz, initrd.img, rootfs.erofs, manifest.json}`.
//!
//! Invariants: the digest is SHA-256 over the three artifacts in a fixed framing
//! ([`digest_of`]), so equal inputs give equal digests (the builder is reproducible); an image
//! directory appears only complete (built in a temp dir in the store, then renamed); and
//! [`ImageStore::get`] re-hashes every artifact, so a corrupt or altered image is refused.

mod build;
mod cpio;
pub mod elf;
mod initramfs;
mod kernel;
pub mod rootfs;
mod source;
mod users;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use build::{build, BuildError, BuildInputs, BuildStep, DEFAULT_SOURCE_DATE_EPOCH};
pub use source::{RootfsSource, DEBIAN_PACKAGES, DEBIAN_SUITE};

pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
pub const ROOTFS_FILE: &str = "rootfs.erofs";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The artifacts the digest covers, in framing order.
pub const ARTIFACTS: [&str; 3] = [KERNEL_FILE, INITRD_FILE, ROOTFS_FILE];
/// Version of the image layout and digest framing.
pub const FORMAT: u32 = 2;

/// Size and SHA-256 of one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub size: u64,
    pub sha256: String,
}

/// What went into an image and what came out; `manifest.json` in the image directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub digest: String,
    /// `uname -r` of the guest kernel.
    pub kernel_version: String,
    /// Kernel modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// What the root filesystem was made from.
    pub source: RootfsSource,
    /// SHA-256 of the `mayfly-guest` binary.
    pub guest_sha256: String,
    /// SHA-256 over the runner directory's paths, modes and contents.
    pub runner_sha256: String,
    /// Each artifact by file name.
    pub artifacts: BTreeMap<String, ArtifactInfo>,
}

/// A verified image in a store.
#[derive(Debug, Clone)]
pub struct Image {
    pub digest: String,
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub manifest: Manifest,
}

/// An image directory as listed, not verified (use [`ImageStore::get`] for that).
#[derive(Debug, Clone)]
pub struct ImageListing {
    pub digest: String,
    pub dir: PathBuf,
    /// `None` when `manifest.json` is missing or unreadable.
    pub manifest: Option<Manifest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0:?} is not an image digest (64 lowercase hex digits)")]
    InvalidDigest(String),
    #[error("no image {digest} in {}: build one with `mayfly image build`", store.display())]
    NotFound { digest: String, store: PathBuf },
    #[error("{} is missing: the image is incomplete; delete its directory and rebuild it with `mayfly image build`", file.display())]
    Missing { file: PathBuf },
    #[error("{} is not a valid image manifest; delete the image directory and rebuild it", file.display())]
    Manifest {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is corrupt: its SHA-256 is {actual}, the manifest says {expected}; delete the image directory and rebuild it", file.display())]
    Corrupt {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("the files in {} add up to digest {actual}, not the directory's name: the image was altered; delete it and rebuild it", dir.display())]
    DigestMismatch { dir: PathBuf, actual: String },
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `s` has the shape of a digest (and so is safe as a directory name).
pub fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<ArtifactInfo> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(ArtifactInfo {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The image digest: SHA-256 of `mayfly-image-v1\n` followed by `<name> <size> <sha256>\n` for
/// each artifact in [`ARTIFACTS`] order. `None` when an artifact is absent from `artifacts`.
pub fn digest_of(artifacts: &BTreeMap<String, ArtifactInfo>) -> Option<String> {
    let mut framing = format!("mayfly-image-v{FORMAT}\n");
    for name in ARTIFACTS {
        let info = artifacts.get(name)?;
        framing.push_str(&format!("{name} {} {}\n", info.size, info.sha256));
    }
    Some(hex::encode(Sha256::digest(framing.as_bytes())))
}

/// A directory of images, one subdirectory per digest. Names starting with `.` are the
/// builder's work in progress and never images.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image with this digest, after re-hashing each artifact against the manifest and the
    /// manifest's artifacts against the digest.
    pub fn get(&self, digest: &str) -> Result<Image, ImageError> {
        if !is_digest(digest) {
            return Err(ImageError::InvalidDigest(digest.to_string()));
        }
        let dir = self.root.join(digest);
        if !dir.is_dir() {
            return Err(ImageError::NotFound {
                digest: digest.to_string(),
                store: self.root.clone(),
            });
        }
        let manifest = read_manifest(&dir)?;
        for name in ARTIFACTS {
            let file = dir.join(name);
            if !file.exists() {
                return Err(ImageError::Missing { file });
            }
            let actual = hash_file(&file).map_err(io_err(&file))?;
            let expected = manifest
                .artifacts
                .get(name)
                .ok_or_else(|| ImageError::Missing {
                    file: dir.join(MANIFEST_FILE),
                })?;
            if &actual != expected {
                return Err(ImageError::Corrupt {
                    file,
                    expected: format!("{} ({} bytes)", expected.sha256, expected.size),
                    actual: format!("{} ({} bytes)", actual.sha256, actual.size),
                });
            }
        }
        let actual = digest_of(&manifest.artifacts).unwrap_or_default();
        if actual != digest || manifest.digest != digest {
            return Err(ImageError::DigestMismatch { dir, actual });
        }
        Ok(Image {
            digest: digest.to_string(),
            kernel: dir.join(KERNEL_FILE),
            initrd: dir.join(INITRD_FILE),
            rootfs: dir.join(ROOTFS_FILE),
            dir,
            manifest,
        })
    }

    /// The image directories in the store, sorted by digest. Nothing is verified.
    pub fn list(&self) -> Result<Vec<ImageListing>, ImageError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_digest(&name) || !entry.path().is_dir() {
                continue;
            }
            images.push(ImageListing {
                manifest: read_manifest(&entry.path()).ok(),
                dir: entry.path(),
                digest: name,
            });
        }
        images.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(images)
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let file = dir.join(MANIFEST_FILE);
    let text = match std::fs::read(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::Missing { file })
        }
        Err(e) => return Err(io_err(&file)(e)),
    };
    serde_json::from_slice(&text).map_err(|source| ImageError::Manifest { file, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn digests_are_checked_for_shape() {
        assert!(is_digest(&"a".repeat(64)));
        for bad in [
            "",
            "../etc",
            &"A".repeat(64),
            &"a".repeat(63),
            &"g".repeat(64),
        ] {
            assert!(!is_digest(bad), "{bad}");
        }
        let store = ImageStore::new("/nonexistent");
        assert!(matches!(
            store.get("../../etc"),
            Err(ImageError::InvalidDigest(_))
        ));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn digest_depends_on_every_artifact() {
        let info = |s: &str| ArtifactInfo {
            size: 1,
            sha256: s.repeat(64),
        };
        let mut artifacts: BTreeMap<String, ArtifactInfo> = ARTIFACTS
            .iter()
            .map(|n| (n.to_string(), info("0")))
            .collect();
        let base = digest_of(&artifacts).unwrap();
        assert!(is_digest(&base));
        for name in ARTIFACTS {
            let mut changed = artifacts.clone();
            changed.insert(name.to_string(), info("1"));
            assert_ne!(digest_of(&changed).unwrap(), base, "{name}");
        }
        artifacts.remove(ROOTFS_FILE);
        assert_eq!(digest_of(&artifacts), None);
    }
}
