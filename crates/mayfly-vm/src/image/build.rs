//! `mayfly image build`: Debian packages + `mayfly-guest` + a runner directory → a
//! content-addressed image in the store. Reproducible (same inputs → same bytes → same digest);
//! written in a `.build-*` temp dir inside the store and renamed into place, so no half-built
//! image is ever visible.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::debs;
use super::elf::{self, ElfError};
use super::{
    digest_of, hash_file, initramfs, kernel, rootfs, Image, ImageError, ImageStore, Manifest,
    ARTIFACTS, FORMAT, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE,
};

/// The meta-package whose dependency names the kernel to use.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Searched for tools in addition to `$PATH` (mkfs.ext4 lives in /usr/sbin).
pub const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Tools the builder runs, with the Debian package that provides each.
const TOOLS: [(&str, &str); 6] = [
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("qemu-img", "qemu-utils"),
];

/// What an image is built from.
#[derive(Debug, Clone)]
pub struct BuildInputs {
    /// The static `mayfly-guest` binary: `/init` and `/usr/bin/sudo` of the initramfs.
    pub guest_binary: PathBuf,
    /// Copied to `/runner` on the base disk, which the guest mounts read-only at `/opt`.
    pub runner_dir: PathBuf,
    /// Where `.deb`s are downloaded and unpacked; reused while their hashes match.
    pub package_cache_dir: PathBuf,
}

/// Progress of a build, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStep {
    Checking,
    Resolving,
    Fetching { package: String, cached: bool },
    Unpacking { package: String },
    Modules { count: usize },
    Initramfs,
    RootFs,
    Qcow2,
    Digest,
    Done { digest: String, reused: bool },
}

impl BuildStep {
    /// Number of positions, for a progress bar.
    pub const COUNT: u64 = 9;

    /// 1-based position of this step; never decreases during a build (fetching and unpacking
    /// each package share one).
    pub fn position(&self) -> u64 {
        match self {
            Self::Checking => 1,
            Self::Resolving => 2,
            Self::Fetching { .. } | Self::Unpacking { .. } => 3,
            Self::Modules { .. } => 4,
            Self::Initramfs => 5,
            Self::RootFs => 6,
            Self::Qcow2 => 7,
            Self::Digest => 8,
            Self::Done { .. } => 9,
        }
    }
}

impl fmt::Display for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Checking => write!(f, "checking tools and inputs"),
            Self::Resolving => write!(f, "resolving Debian packages"),
            Self::Fetching {
                package,
                cached: true,
            } => write!(f, "{package}: cached"),
            Self::Fetching { package, .. } => write!(f, "fetching {package}"),
            Self::Unpacking { package } => write!(f, "unpacking {package}"),
            Self::Modules { count } => write!(f, "{count} kernel modules resolved"),
            Self::Initramfs => write!(f, "writing the initramfs"),
            Self::RootFs => write!(f, "making the base disk (ext4)"),
            Self::Qcow2 => write!(f, "converting the base disk to qcow2"),
            Self::Digest => write!(f, "hashing"),
            Self::Done {
                digest,
                reused: true,
            } => write!(f, "image {digest} (already in the store)"),
            Self::Done { digest, .. } => write!(f, "image {digest}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{tool} is not installed: install the Debian package {package} (apt-get install {package})"
    )]
    MissingTool { tool: String, package: String },
    #[error("cannot run {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {code}: {stderr}")]
    ToolFailed {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("apt-cache {query} found nothing usable ({stderr}): run `apt-get update` as root so apt knows Debian's packages")]
    UnknownPackage { query: String, stderr: String },
    #[error("{} does not have the SHA-256 apt expects ({expected}); delete it and build again", file.display())]
    DebMismatch { file: PathBuf, expected: String },
    #[error("kernel package: {0}")]
    Kernel(String),
    #[error("{} is not a usable ELF file", file.display())]
    Elf {
        file: PathBuf,
        #[source]
        source: ElfError,
    },
    #[error("{} is dynamically linked (it asks for {interpreter}): build it static with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p mayfly-guest --target x86_64-unknown-linux-gnu", file.display())]
    GuestNotStatic { file: PathBuf, interpreter: String },
    #[error("runner directory: {0}")]
    RunnerDir(String),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image store")]
    Store(#[from] ImageError),
}

impl BuildError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
        move |source| BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Runs a tool to completion; a failure carries its stderr.
pub(crate) fn run_tool(command: &mut Command) -> Result<(), BuildError> {
    let tool = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|source| BuildError::Spawn {
        tool: tool.clone(),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.trim().lines().rev().take(5).collect();
    Err(BuildError::ToolFailed {
        command: format!("{tool} {}", args.join(" ")),
        code: output.status.code().unwrap_or(-1),
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
    })
}

fn search_path() -> Vec<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(TOOL_PATH))
        .collect()
}

fn check_tools() -> Result<(), BuildError> {
    let dirs = search_path();
    for (tool, package) in TOOLS {
        if !dirs.iter().any(|d| d.join(tool).is_file()) {
            return Err(BuildError::MissingTool {
                tool: tool.into(),
                package: package.into(),
            });
        }
    }
    Ok(())
}

/// Reads the guest binary and checks it is a static x86-64 executable.
fn read_guest(path: &Path) -> Result<Vec<u8>, BuildError> {
    let data = std::fs::read(path).map_err(BuildError::io(path))?;
    match elf::interpreter(&data) {
        Ok(None) => Ok(data),
        Ok(Some(interpreter)) => Err(BuildError::GuestNotStatic {
            file: path.to_path_buf(),
            interpreter,
        }),
        Err(source) => Err(BuildError::Elf {
            file: path.to_path_buf(),
            source,
        }),
    }
}

/// Builds an image from `inputs` into `store`, reporting each step to `progress`.
pub fn build(
    inputs: &BuildInputs,
    store: &ImageStore,
    progress: &mut dyn FnMut(BuildStep),
) -> Result<Image, BuildError> {
    progress(BuildStep::Checking);
    check_tools()?;
    let guest = read_guest(&inputs.guest_binary)?;
    if !inputs.runner_dir.is_dir() {
        return Err(BuildError::RunnerDir(format!(
            "{} is not a directory",
            inputs.runner_dir.display()
        )));
    }
    let runner_sha256 = rootfs::tree_digest(&inputs.runner_dir)?;
    let cache = &inputs.package_cache_dir;
    std::fs::create_dir_all(cache).map_err(BuildError::io(cache))?;
    std::fs::create_dir_all(store.root()).map_err(BuildError::io(store.root()))?;

    progress(BuildStep::Resolving);
    let kernel_name = debs::kernel_package(KERNEL_META_PACKAGE)?;
    let packages = [
        debs::resolve(&kernel_name)?,
        debs::resolve(BUSYBOX_PACKAGE)?,
    ];
    let mut unpacked = Vec::new();
    for package in &packages {
        let (deb, downloaded) = debs::fetch(package, cache)?;
        progress(BuildStep::Fetching {
            package: format!("{} {}", package.name, package.version),
            cached: !downloaded,
        });
        progress(BuildStep::Unpacking {
            package: package.name.clone(),
        });
        unpacked.push(debs::unpack(package, &deb, cache)?);
    }
    let (kernel_root, busybox_root) = match unpacked.as_slice() {
        [k, b] => (k.clone(), b.clone()),
        _ => return Err(BuildError::Kernel("packages went missing".into())),
    };
    let (kernel_version, vmlinuz) = kernel::find_kernel(&kernel_root)?;
    let module_dir = kernel_root
        .join("lib/modules")
        .join(&kernel_version)
        .join("kernel");
    let index = kernel::index_modules(&module_dir)?;
    let modules = kernel::load_order(&kernel::ROOT_MODULES, &index)?;
    progress(BuildStep::Modules {
        count: modules.len(),
    });

    let temp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(store.root())
        .map_err(BuildError::io(store.root()))?;
    let image_dir = temp.path().join("image");
    let work = temp.path().join("work");
    for dir in [&image_dir, &work] {
        std::fs::create_dir(dir).map_err(BuildError::io(dir))?;
    }

    progress(BuildStep::Initramfs);
    let busybox = busybox_root.join("bin/busybox");
    let (archive, module_names) = initramfs::assemble(guest.clone(), &busybox, &modules)?;
    let initrd = image_dir.join(INITRD_FILE);
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&initrd).map_err(BuildError::io(&initrd))?);
    archive
        .write_to(&mut out)
        .and_then(|()| out.flush())
        .map_err(BuildError::io(&initrd))?;
    drop(out);
    let kernel_file = image_dir.join(KERNEL_FILE);
    std::fs::copy(&vmlinuz, &kernel_file).map_err(BuildError::io(&kernel_file))?;

    progress(BuildStep::RootFs);
    let stage = work.join("disk");
    let bytes = rootfs::stage(&inputs.runner_dir, &stage)?;
    let raw = work.join("rootfs.ext4");
    rootfs::make_ext4(&stage, bytes, &raw, &work)?;
    progress(BuildStep::Qcow2);
    rootfs::to_qcow2(&raw, &image_dir.join(ROOTFS_FILE))?;

    progress(BuildStep::Digest);
    let mut artifacts = BTreeMap::new();
    for name in ARTIFACTS {
        let path = image_dir.join(name);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(BuildError::io(&path))?;
        artifacts.insert(
            name.to_string(),
            hash_file(&path).map_err(BuildError::io(&path))?,
        );
    }
    let digest =
        digest_of(&artifacts).ok_or(BuildError::Kernel("an artifact is missing".into()))?;
    let manifest = Manifest {
        format: FORMAT,
        digest: digest.clone(),
        kernel_version,
        modules: module_names,
        packages: packages.to_vec(),
        guest_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&guest)),
        runner_sha256,
        artifacts,
    };
    write_manifest(&image_dir, &manifest)?;

    let reused = publish(&image_dir, store, &digest)?;
    progress(BuildStep::Done {
        digest: digest.clone(),
        reused,
    });
    drop(temp);
    Ok(store.get(&digest)?)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BuildError> {
    let path = dir.join(MANIFEST_FILE);
    let mut text = serde_json::to_string_pretty(manifest)
        .map_err(|e| BuildError::io(&path)(std::io::Error::other(e)))?;
    text.push('\n');
    std::fs::write(&path, text).map_err(BuildError::io(&path))
}

/// Renames the built image into place. When the digest is already there and intact, the new
/// copy is dropped (returns true); a damaged one is replaced.
fn publish(image_dir: &Path, store: &ImageStore, digest: &str) -> Result<bool, BuildError> {
    let target = store.root().join(digest);
    if target.exists() {
        if store.get(digest).is_ok() {
            return Ok(true);
        }
        let trash = image_dir.with_file_name("replaced");
        std::fs::rename(&target, &trash).map_err(BuildError::io(&target))?;
    }
    match std::fs::rename(image_dir, &target) {
        Ok(()) => Ok(false),
        // A concurrent build of the same inputs won the race.
        Err(_) if store.get(digest).is_ok() => Ok(true),
        Err(e) => Err(BuildError::io(&target)(e)),
    }
}
