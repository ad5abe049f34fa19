//! `mayfly image build`: a root filesystem (Debian by mmdebstrap, or the operator's tarball) +
//! `mayfly-guest` + a runner directory + Debian's kernel → a content-addressed image in the
//! store. Reproducible (same inputs → same bytes → same digest; `SOURCE_DATE_EPOCH` fixes every
//! time); written in a `.build-*` temp dir inside the store and renamed into place, so no
//! half-built image is ever visible; a root that cannot run GitHub's runner is refused before
//! any of that.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::elf::{self, ElfError};
use super::source::{self, RootfsSource};
use super::{
    digest_of, hash_file, initramfs, kernel, rootfs, Image, ImageError, ImageStore, Manifest,
    ARTIFACTS, FORMAT, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE,
};

/// Searched for tools in addition to `$PATH` (mkfs.ext4 lives in /usr/sbin).
pub const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Tools the builder runs, with the Debian package that provides each.
const TOOLS: [(&str, &str); 5] = [
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.erofs", "erofs-utils"),
    ("depmod", "kmod"),
    ("tar", "tar"),
    ("cp", "coreutils"),
];
/// The default `SOURCE_DATE_EPOCH` (2023-11-14): every timestamp in the image.
pub const DEFAULT_SOURCE_DATE_EPOCH: i64 = 1_700_000_000;

/// What an image is built from.
#[derive(Debug, Clone)]
pub struct BuildInputs {
    /// The static `mayfly-guest` binary: `/init` of the initramfs and the root's init.
    pub guest_binary: PathBuf,
    /// Copied to `/home/runner/actions-runner`; must hold `run.sh`.
    pub runner_dir: PathBuf,
    /// The root filesystem.
    pub source: RootfsSource,
    /// Where the builder keeps the kernel packages and the Debian root's tar between builds.
    pub work_dir: PathBuf,
    /// Every timestamp in the image (and mmdebstrap's `SOURCE_DATE_EPOCH`).
    pub source_date_epoch: i64,
}

/// Progress of a build, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildStep {
    Checking,
    RootFs { detail: String },
    Kernel,
    Requirements { missing: Vec<String> },
    Customizing,
    Modules { count: usize },
    Initramfs,
    Erofs,
    Digest,
    Done { digest: String, reused: bool },
}

impl BuildStep {
    /// Number of positions, for a progress bar.
    pub const COUNT: u64 = 10;

    /// 1-based position of this step; never decreases during a build.
    pub fn position(&self) -> u64 {
        match self {
            Self::Checking => 1,
            Self::RootFs { .. } => 2,
            Self::Kernel => 3,
            Self::Requirements { .. } => 4,
            Self::Customizing => 5,
            Self::Modules { .. } => 6,
            Self::Initramfs => 7,
            Self::Erofs => 8,
            Self::Digest => 9,
            Self::Done { .. } => 10,
        }
    }
}

impl fmt::Display for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Checking => write!(f, "checking tools and inputs"),
            Self::RootFs { detail } => write!(f, "root filesystem: {detail}"),
            Self::Kernel => write!(f, "unpacking Debian's kernel and busybox (mmdebstrap)"),
            Self::Requirements { missing } if missing.is_empty() => {
                write!(f, "the root has everything the runner and jobs need")
            }
            Self::Requirements { missing } => {
                write!(f, "warning: the root lacks {}", missing.join(", "))
            }
            Self::Customizing => write!(f, "adding mayfly's init, the runner user and directory"),
            Self::Modules { count } => write!(f, "{count} kernel modules for the initramfs"),
            Self::Initramfs => write!(f, "writing the initramfs"),
            Self::Erofs => write!(f, "making the read-only base disk (EROFS)"),
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
    #[error("--packages: {0}")]
    Packages(String),
    #[error("{}: {why}", path.display())]
    RootfsTar { path: PathBuf, why: String },
    #[error("the root filesystem cannot run GitHub's runner; it lacks: {}. Add them to the image (Debian/Ubuntu: apt-get install bash libc6 cryptsetup-bin e2fsprogs util-linux) and export it again", missing.join("; "))]
    Unsuitable { missing: Vec<String> },
    #[error("{needed} bytes are needed to unpack and build {} but {} has only {free} free", tar.display(), store.display())]
    NoSpace {
        tar: PathBuf,
        store: PathBuf,
        needed: u64,
        free: u64,
    },
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
    if !inputs.runner_dir.join("run.sh").is_file() {
        return Err(BuildError::RunnerDir(format!(
            "{} has no run.sh: the guest starts <runner root>/run.sh as GitHub launches it",
            inputs.runner_dir.display()
        )));
    }
    let runner_sha256 = rootfs::tree_digest(&inputs.runner_dir)?;
    let work = &inputs.work_dir;
    std::fs::create_dir_all(work).map_err(BuildError::io(work))?;
    std::fs::create_dir_all(store.root()).map_err(BuildError::io(store.root()))?;

    // The root filesystem as a tar: checked before anything is unpacked.
    let tar = match &inputs.source {
        RootfsSource::Tar { path } => path.clone(),
        RootfsSource::Debian { extra, .. } => {
            let out = source::debian_tar_path(work);
            progress(BuildStep::RootFs {
                detail: "mmdebstrap (a minute or two)".into(),
            });
            source::debian_tar(extra, inputs.source_date_epoch, &out, &mut |line| {
                progress(BuildStep::RootFs { detail: line })
            })?;
            out
        }
    };
    progress(BuildStep::RootFs {
        detail: format!("checking {}", tar.display()),
    });
    let info = source::inspect_tar(&tar)?;
    // Unpacked tree + EROFS image + slack.
    let needed = info.bytes * 2 + info.entries * 8192 + (256 << 20);
    let free = source::free_bytes(store.root())?;
    if needed > free {
        return Err(BuildError::NoSpace {
            tar,
            store: store.root().to_path_buf(),
            needed,
            free,
        });
    }
    remove_abandoned_builds(store.root());
    let temp = tempfile::Builder::new()
        .prefix(&format!(".build-{}-", std::process::id()))
        .tempdir_in(store.root())
        .map_err(BuildError::io(store.root()))?;
    let image_dir = temp.path().join("image");
    let root = temp.path().join("root");
    std::fs::create_dir(&image_dir).map_err(BuildError::io(&image_dir))?;
    progress(BuildStep::RootFs {
        detail: format!(
            "unpacking {} files ({} MiB)",
            info.entries,
            info.bytes >> 20
        ),
    });
    source::extract(&tar, &root)?;
    let req = rootfs::requirements(&root);
    if !req.refused.is_empty() {
        return Err(BuildError::Unsuitable {
            missing: req.refused,
        });
    }

    progress(BuildStep::Kernel);
    let boot = work.join("boot");
    kernel::fetch_boot_packages(source::DEBIAN_SUITE, &boot)?;
    let (kernel_version, vmlinuz) = kernel::find_kernel(&boot)?;
    progress(BuildStep::Requirements {
        missing: req.missing,
    });

    progress(BuildStep::Customizing);
    let image_version = format!("mayfly-{}", env!("CARGO_PKG_VERSION"));
    rootfs::customize(&root, &guest, &inputs.runner_dir, &image_version)?;
    kernel::install_modules(&boot, &kernel_version, &root)?;

    let module_dir = boot
        .join("lib/modules")
        .join(&kernel_version)
        .join("kernel");
    let index = kernel::index_modules(&module_dir)?;
    let modules = kernel::load_order(&kernel::ROOT_MODULES, &index)?;
    progress(BuildStep::Modules {
        count: modules.len(),
    });

    progress(BuildStep::Initramfs);
    let busybox = kernel::find_busybox(&boot)?;
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

    progress(BuildStep::Erofs);
    rootfs::make_erofs(
        &root,
        &image_dir.join(ROOTFS_FILE),
        inputs.source_date_epoch,
    )?;
    // The unpacked root is of no further use; free its space before hashing.
    std::fs::remove_dir_all(&root).map_err(BuildError::io(&root))?;

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
        source: inputs.source.clone(),
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

/// Removes what an interrupted build left in the store: `.build-<pid>-*` directories whose
/// process is gone (a build that is still running keeps its own).
fn remove_abandoned_builds(store: &Path) {
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".build-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn an_interrupted_build_is_cleaned_up_and_a_running_one_is_not() {
        let store = tempfile::tempdir().unwrap();
        // No process has this pid (above Linux's pid_max).
        let abandoned = store.path().join(".build-999999999-abc");
        let running = store
            .path()
            .join(format!(".build-{}-def", std::process::id()));
        let image = store.path().join("a".repeat(64));
        for dir in [&abandoned, &running, &image] {
            std::fs::create_dir_all(dir.join("root/etc")).unwrap();
        }
        remove_abandoned_builds(store.path());
        assert!(!abandoned.exists());
        assert!(running.exists() && image.exists());
    }

    #[test]
    fn steps_are_ordered_and_say_what_happens() {
        let steps = [
            BuildStep::Checking,
            BuildStep::RootFs {
                detail: "mmdebstrap".into(),
            },
            BuildStep::Kernel,
            BuildStep::Requirements {
                missing: vec!["libicu".into()],
            },
            BuildStep::Customizing,
            BuildStep::Modules { count: 30 },
            BuildStep::Initramfs,
            BuildStep::Erofs,
            BuildStep::Digest,
            BuildStep::Done {
                digest: "d".into(),
                reused: false,
            },
        ];
        let positions: Vec<u64> = steps.iter().map(BuildStep::position).collect();
        assert_eq!(positions, (1..=BuildStep::COUNT).collect::<Vec<_>>());
        assert_eq!(steps[3].to_string(), "warning: the root lacks libicu");
    }
}
