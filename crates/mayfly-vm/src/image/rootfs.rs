//! The base disk: a root filesystem (Debian from mmdebstrap, or the operator's tarball) with
//! what mayfly adds — its init at [`GUEST_PATH`], the user `runner` (uid 1001, groups `docker`
//! and `sudo`, passwordless sudo), the runner directory at [`RUNNER_ROOT`] owned by `runner`,
//! `/etc/environment` with `ImageOS` and the tool cache — as a read-only EROFS image.
//!
//! Invariants: mayfly adds nothing else and refuses a root that cannot run GitHub's runner
//! ([`requirements`]: bash, glibc ≥ 2.28, and what the init uses) before building; paths inside
//! the root are resolved inside it (an absolute symlink in a tarball never points at the
//! host); the EROFS image is reproducible (sorted entries, one fixed time, fixed UUID).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::build::{run_tool, BuildError, TOOL_PATH};

/// Where mayfly's init lives in the root (the initramfs switches to it).
pub const GUEST_PATH: &str = "usr/lib/mayfly/mayfly-guest";
/// The runner's root directory (GitHub's images: `/home/runner/actions-runner`).
pub const RUNNER_ROOT: &str = "home/runner/actions-runner";
pub const RUNNER_UID: u32 = 1001;
pub const RUNNER_GID: u32 = 1001;
/// The tool cache actions/setup-* install into.
const TOOL_CACHE: &str = "opt/hostedtoolcache";
const FIXED_UUID: &str = "6d617966-6c79-4000-8000-000000000001";
/// glibc the real runner needs (its bundled Node 20).
const MIN_GLIBC: (u32, u32) = (2, 28);

/// Walks `dir` in sorted order: (relative path, metadata) for everything below it.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, std::fs::Metadata)>, BuildError> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let abs = dir.join(&rel);
        let mut children: Vec<_> = std::fs::read_dir(&abs)
            .map_err(BuildError::io(&abs))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(BuildError::io(&abs))?;
        children.sort();
        for name in children.into_iter().rev() {
            let child = rel.join(name);
            let meta = std::fs::symlink_metadata(dir.join(&child))
                .map_err(BuildError::io(&dir.join(&child)))?;
            if meta.is_dir() {
                pending.push(child.clone());
            }
            out.push((child, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// SHA-256 over the runner directory: each entry's path, type, mode and content (or link
/// target), in sorted order. Recorded in the manifest.
pub fn tree_digest(dir: &Path) -> Result<String, BuildError> {
    let mut hasher = Sha256::new();
    for (rel, meta) in walk(dir)? {
        let abs = dir.join(&rel);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update(format!("\0{:o}\0", meta.mode()).as_bytes());
        if meta.is_file() {
            hasher.update(std::fs::read(&abs).map_err(BuildError::io(&abs))?);
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&abs).map_err(BuildError::io(&abs))?;
            hasher.update(target.to_string_lossy().as_bytes());
        }
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `path` (absolute inside the root, or relative to it) resolved inside `root`: symlinks are
/// followed with `root` as `/`, and `..` never leaves it. `None` when it does not exist.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let meta = std::fs::symlink_metadata(root.join(&candidate)).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(root.join(&candidate)).ok()?;
            if target.is_absolute() {
                resolved = PathBuf::new();
            }
            for component in target.components().rev() {
                match component {
                    Component::Normal(s) => pending.push(s.to_string_lossy().into_owned()),
                    Component::ParentDir => pending.push("..".into()),
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                }
            }
        } else {
            resolved = candidate;
        }
    }
    Some(root.join(resolved))
}

pub(super) fn exists_in_root(root: &Path, paths: &[&str]) -> bool {
    paths.iter().any(|p| resolve_in_root(root, p).is_some())
}

/// Files matching `prefix*` in any of the library directories.
fn library_present(root: &Path, prefix: &str) -> bool {
    [
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "lib64",
        "usr/lib64",
        "lib",
        "usr/lib",
    ]
    .iter()
    .filter_map(|dir| resolve_in_root(root, dir))
    .filter_map(|dir| std::fs::read_dir(dir).ok())
    .flatten()
    .filter_map(Result::ok)
    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
}

/// glibc's version from its `libc.so.6` ("… release version 2.36").
pub fn glibc_version(root: &Path) -> Option<(u32, u32)> {
    let libc = [
        "lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libc.so.6",
        "lib64/libc.so.6",
        "usr/lib64/libc.so.6",
    ]
    .iter()
    .find_map(|p| resolve_in_root(root, p))?;
    let data = std::fs::read(libc).ok()?;
    parse_glibc_banner(&data)
}

fn parse_glibc_banner(data: &[u8]) -> Option<(u32, u32)> {
    let needle = b"release version ";
    let start = data.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let text: String = data
        .get(start..)?
        .iter()
        .take(12)
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| char::from(*b))
        .collect();
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What a root filesystem lacks for GitHub's runner and for jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Without these the runner (or mayfly's init) cannot start: the build is refused.
    pub refused: Vec<String>,
    /// Jobs or the runner will miss these: the build warns.
    pub missing: Vec<String>,
}

/// Checks `root` for what the real actions/runner and mayfly's init need.
pub fn requirements(root: &Path) -> Requirements {
    let mut req = Requirements::default();
    let mut need = |ok: bool, what: &str, refuse: bool| {
        if !ok {
            if refuse {
                req.refused.push(what.to_owned());
            } else {
                req.missing.push(what.to_owned());
            }
        }
    };
    need(
        exists_in_root(root, &["bin/bash", "usr/bin/bash"]),
        "bash (/bin/bash: every script of actions/runner is #!/bin/bash)",
        true,
    );
    match glibc_version(root) {
        Some(v) if v >= MIN_GLIBC => {}
        Some((major, minor)) => need(
            false,
            &format!(
                "glibc ≥ {}.{} (the root has {major}.{minor}; the runner's Node 20 needs 2.28)",
                MIN_GLIBC.0, MIN_GLIBC.1
            ),
            true,
        ),
        None => need(
            false,
            "glibc (libc.so.6: the runner has no musl build)",
            true,
        ),
    }
    need(
        exists_in_root(root, &["sbin/cryptsetup", "usr/sbin/cryptsetup"]),
        "cryptsetup (package cryptsetup-bin: mayfly's init encrypts the scratch disk)",
        true,
    );
    need(
        exists_in_root(root, &["sbin/mkfs.ext4", "usr/sbin/mkfs.ext4"]),
        "mkfs.ext4 (package e2fsprogs: mayfly's init formats the scratch disk)",
        true,
    );
    need(
        exists_in_root(root, &["usr/bin/setpriv", "bin/setpriv"]),
        "setpriv (package util-linux: mayfly's init starts the runner as user runner with it)",
        true,
    );
    for (prefix, what) in [
        (
            "libicuuc.so",
            "libicu (the runner aborts without it unless DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1)",
        ),
        ("libssl.so", "libssl"),
        ("libkrb5.so", "libkrb5"),
        ("libz.so", "zlib"),
        ("liblttng-ust.so", "liblttng-ust"),
        ("libstdc++.so", "libstdc++"),
    ] {
        need(library_present(root, prefix), what, false);
    }
    for (paths, what) in [
        (&["usr/bin/sudo", "bin/sudo"][..], "sudo"),
        (&["usr/bin/git", "bin/git"][..], "git"),
        (&["usr/bin/curl", "bin/curl"][..], "curl"),
        (&["usr/bin/tar", "bin/tar"][..], "tar"),
        (&["usr/bin/zstd", "bin/zstd"][..], "zstd"),
        (&["usr/bin/python3", "bin/python3"][..], "python3"),
        (
            &["usr/bin/dockerd", "usr/sbin/dockerd"][..],
            "dockerd (Docker)",
        ),
        (
            &["usr/sbin/modprobe", "sbin/modprobe"][..],
            "modprobe (kmod: Docker's kernel modules)",
        ),
        (
            &["etc/ssl/certs/ca-certificates.crt"][..],
            "ca-certificates",
        ),
    ] {
        need(exists_in_root(root, paths), what, false);
    }
    req
}

/// `ImageOS` as GitHub's images spell it (`ubuntu22`, here `debian12`), from os-release.
pub fn image_os(root: &Path) -> String {
    let text = resolve_in_root(root, "etc/os-release")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let id: String = field("ID")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let major: String = field("VERSION_ID")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if id.is_empty() {
        "linux".into()
    } else {
        format!("{id}{major}")
    }
}

/// A path inside the root for writing: its parent resolved inside the root.
fn in_root(root: &Path, path: &str) -> Result<PathBuf, BuildError> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    // Each parent resolved inside the root (a symlink the root brought never leads out of it)
    // and made when missing.
    let mut dir = root.to_path_buf();
    for part in parent.split('/').filter(|s| !s.is_empty()) {
        let next = resolve_in_root(root, &format!("{}/{part}", rel(root, &dir)))
            .unwrap_or_else(|| dir.join(part));
        if !next.exists() {
            std::fs::create_dir(&next).map_err(BuildError::io(&next))?;
            set_mode(&next, 0o755)?;
        }
        dir = next;
    }
    Ok(dir.join(name))
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BuildError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(BuildError::io(path))
}

pub(super) fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(BuildError::io(path))
}

pub(super) fn write_file(
    root: &Path,
    path: &str,
    content: &[u8],
    mode: u32,
) -> Result<PathBuf, BuildError> {
    let file = in_root(root, path)?;
    // Never write through a symlink the root brought (it could point anywhere once resolved).
    if std::fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&file).map_err(BuildError::io(&file))?;
    }
    std::fs::write(&file, content).map_err(BuildError::io(&file))?;
    set_mode(&file, mode)?;
    Ok(file)
}

pub(super) fn read_text(root: &Path, path: &str) -> String {
    resolve_in_root(root, path)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// `/etc/environment` lines mayfly sets (others are kept).
fn environment(existing: &str, image_os: &str, version: &str) -> String {
    let ours = [
        ("ImageOS", image_os.to_owned()),
        ("ImageVersion", version.to_owned()),
        ("RUNNER_TOOL_CACHE", format!("/{TOOL_CACHE}")),
        ("AGENT_TOOLSDIRECTORY", format!("/{TOOL_CACHE}")),
    ];
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| !ours.iter().any(|(k, _)| l.starts_with(&format!("{k}="))))
        .map(str::to_owned)
        .collect();
    lines.extend(ours.iter().map(|(k, v)| format!("{k}={v}")));
    lines.join("\n") + "\n"
}

/// Copies the runner directory to [`RUNNER_ROOT`] (modes kept, owned by `runner`). Returns the
/// bytes copied.
fn copy_runner(runner_dir: &Path, root: &Path) -> Result<u64, BuildError> {
    let home = in_root(root, "home/runner")?;
    std::fs::create_dir_all(&home).map_err(BuildError::io(&home))?;
    set_mode(&home, 0o750)?;
    chown(&home, RUNNER_UID, RUNNER_GID)?;
    let target = home.join("actions-runner");
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(BuildError::io(&target))?;
    }
    std::fs::create_dir(&target).map_err(BuildError::io(&target))?;
    chown(&target, RUNNER_UID, RUNNER_GID)?;
    let mut bytes = 0;
    for (rel, meta) in walk(runner_dir)? {
        let from = runner_dir.join(&rel);
        let to = target.join(&rel);
        let file_type = meta.file_type();
        if file_type.is_dir() {
            std::fs::create_dir(&to).map_err(BuildError::io(&to))?;
        } else if file_type.is_file() {
            bytes += std::fs::copy(&from, &to).map_err(BuildError::io(&to))?;
        } else if file_type.is_symlink() {
            let link = std::fs::read_link(&from).map_err(BuildError::io(&from))?;
            std::os::unix::fs::symlink(&link, &to).map_err(BuildError::io(&to))?;
        } else {
            return Err(BuildError::RunnerDir(format!(
                "{} is neither a file, a directory nor a symlink",
                from.display()
            )));
        }
        if !file_type.is_symlink() {
            set_mode(&to, meta.mode() & 0o7777)?;
        }
        chown(&to, RUNNER_UID, RUNNER_GID)?;
    }
    Ok(bytes)
}

/// Adds what mayfly needs to the root: its init, the runner user and directory, the tool
/// cache, `/etc/environment`, hostname, and the mount points the init uses.
pub fn customize(
    root: &Path,
    guest: &[u8],
    runner_dir: &Path,
    image_version: &str,
) -> Result<(), BuildError> {
    for dir in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/lib/docker",
        "usr/lib/mayfly",
    ] {
        let path = in_root(root, dir)?;
        if !path.exists() {
            std::fs::create_dir_all(&path).map_err(BuildError::io(&path))?;
            set_mode(&path, if dir == "tmp" { 0o1777 } else { 0o755 })?;
        }
    }
    write_file(root, GUEST_PATH, guest, 0o755)?;
    super::users::add_runner_user(root)?;
    copy_runner(runner_dir, root)?;
    let cache = in_root(root, TOOL_CACHE)?;
    std::fs::create_dir_all(&cache).map_err(BuildError::io(&cache))?;
    chown(&cache, RUNNER_UID, RUNNER_GID)?;
    let env = environment(
        &read_text(root, "etc/environment"),
        &image_os(root),
        image_version,
    );
    write_file(root, "etc/environment", env.as_bytes(), 0o644)?;
    write_file(root, "etc/hostname", b"mayfly\n", 0o644)?;
    write_file(
        root,
        "etc/hosts",
        b"127.0.0.1 localhost mayfly\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    // The init writes the resolver it gets by DHCP; a symlink into systemd-resolved's runtime
    // directory (Ubuntu) would lead nowhere in a VM without systemd.
    write_file(root, "etc/resolv.conf", b"", 0o644)?;
    // docker export leaves this marker; inside a VM it would mislead tools into thinking they
    // run in a container.
    if let Some(marker) = resolve_in_root(root, ".dockerenv") {
        std::fs::remove_file(&marker).map_err(BuildError::io(&marker))?;
    }
    Ok(())
}

/// `mkfs.erofs` of `root` into `out`: uncompressed (the guest reads it at memory speed under
/// TCG), every timestamp `time`, a fixed UUID, entries sorted by name.
pub fn make_erofs(root: &Path, out: &Path, time: i64) -> Result<(), BuildError> {
    run_tool(
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(format!("-T{time}"))
            .arg(format!("-U{FIXED_UUID}"))
            .arg(out)
            .arg(root)
            .env("PATH", TOOL_PATH),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root_whatever_the_links_say() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        // An absolute link means the root's /, never the host's.
        std::os::unix::fs::symlink("/usr/bin/bash", r.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../..", r.join("up")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/bin/bash").unwrap(),
            r.join("usr/bin/bash")
        );
        assert_eq!(
            resolve_in_root(r, "bin/sh").unwrap(),
            r.join("usr/bin/bash")
        );
        assert_eq!(resolve_in_root(r, "passwd"), None);
        assert_eq!(
            resolve_in_root(r, "up/usr/bin/bash").unwrap(),
            r.join("usr/bin/bash")
        );
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "loop"), None);
    }

    #[test]
    fn glibc_banner_is_read() {
        let data =
            b"\0\0GNU C Library (Debian GLIBC 2.36-9+deb12u4) stable release version 2.36.\n\0";
        assert_eq!(parse_glibc_banner(data), Some((2, 36)));
        assert_eq!(parse_glibc_banner(b"musl libc"), None);
    }

    #[test]
    fn an_empty_root_is_refused_naming_bash_and_glibc() {
        let root = tempfile::tempdir().unwrap();
        let req = requirements(root.path());
        let refused = req.refused.join("; ");
        assert!(refused.contains("bash"), "{refused}");
        assert!(refused.contains("glibc"), "{refused}");
        assert!(refused.contains("cryptsetup"), "{refused}");
        assert!(req.missing.iter().any(|m| m.contains("libicu")), "{req:?}");
    }

    #[test]
    fn environment_keeps_other_lines() {
        let env = environment("PATH=/usr/bin\nImageOS=old\n", "debian12", "mayfly-1");
        assert_eq!(
            env,
            "PATH=/usr/bin\nImageOS=debian12\nImageVersion=mayfly-1\n\
             RUNNER_TOOL_CACHE=/opt/hostedtoolcache\nAGENT_TOOLSDIRECTORY=/opt/hostedtoolcache\n"
        );
    }

    #[test]
    fn customizing_adds_the_runner_user_directory_and_init() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        std::fs::write(r.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
        // A resolv.conf that points out of the root must not be written through.
        std::os::unix::fs::symlink("/etc/hostname", r.join("etc/resolv.conf")).unwrap();
        let runner = tempfile::tempdir().unwrap();
        std::fs::write(runner.path().join("run.sh"), "#!/bin/bash\n").unwrap();
        std::fs::set_permissions(
            runner.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        customize(r, b"guest", runner.path(), "mayfly-test").unwrap();

        let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
        assert!(passwd.contains("runner:x:1001:1001:"), "{passwd}");
        let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
        assert!(group.contains("sudo:x:27:runner"), "{group}");
        assert!(
            group
                .lines()
                .any(|l| l.starts_with("docker:") && l.ends_with(":runner")),
            "{group}"
        );
        let run = r.join(RUNNER_ROOT).join("run.sh");
        let meta = std::fs::metadata(&run).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (RUNNER_UID, 0o755));
        assert_eq!(std::fs::read(r.join(GUEST_PATH)).unwrap(), b"guest");
        let env = std::fs::read_to_string(r.join("etc/environment")).unwrap();
        assert!(env.contains("ImageOS=debian12"), "{env}");
        assert!(!std::fs::symlink_metadata(r.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
