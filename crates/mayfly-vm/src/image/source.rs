//! Where an image's root filesystem comes from: a Debian root made by `mmdebstrap` (the
//! default), or a root filesystem tarball a provider brings (`--rootfs-tar`, e.g. `docker
//! export` of an Ubuntu image). Either way the root arrives as a tar: mmdebstrap's own output is
//! a tar that is bit-for-bit reproducible under `SOURCE_DATE_EPOCH`, so both paths share one
//! import. A tarball is checked (is it a tar, does it fit) before anything is unpacked.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::build::{run_tool, BuildError, TOOL_PATH};

/// The Debian release the default image is made of.
pub const DEBIAN_SUITE: &str = "bookworm";

/// What GitHub's actions/runner needs (its `installdependencies.sh` on Debian 12, plus the C++
/// runtime, certificates and time zones) and what ordinary workflow steps expect.
pub const DEBIAN_PACKAGES: [&str; 33] = [
    // the runner
    "bash",
    "ca-certificates",
    "tzdata",
    "libicu72",
    "libkrb5-3",
    "zlib1g",
    "liblttng-ust1",
    "libssl3",
    "libstdc++6",
    "libgcc-s1",
    // jobs
    "coreutils",
    "git",
    "curl",
    "wget",
    "tar",
    "gzip",
    "zstd",
    "unzip",
    "xz-utils",
    "jq",
    "sudo",
    "openssh-client",
    "python3",
    "procps",
    "docker.io",
    "iptables",
    // mayfly's init: the scratch disk, the network, modules
    "cryptsetup-bin",
    "e2fsprogs",
    "iproute2",
    "kmod",
    "mount",
    "util-linux",
    "passwd",
];

/// What the image's root filesystem was made from (recorded in the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RootfsSource {
    /// `mmdebstrap` of [`DEBIAN_SUITE`] with [`DEBIAN_PACKAGES`] and these extra packages.
    Debian { suite: String, extra: Vec<String> },
    /// A tarball the operator brought.
    Tar { path: PathBuf },
}

/// What `tar -tv` says of a tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarInfo {
    pub entries: u64,
    /// Sum of the members' sizes.
    pub bytes: u64,
}

/// Runs mmdebstrap: a Debian root with the runner's needs and `extra`, as a tar at `out`.
/// `progress` gets mmdebstrap's progress lines.
pub fn debian_tar(
    extra: &[String],
    source_date_epoch: i64,
    out: &Path,
    progress: &mut dyn FnMut(String),
) -> Result<(), BuildError> {
    for package in extra {
        if !package.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !package
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.:=~".contains(&b))
        {
            return Err(BuildError::Packages(format!(
                "{package:?} is not a Debian package name"
            )));
        }
    }
    let mut include: Vec<&str> = DEBIAN_PACKAGES.to_vec();
    include.extend(extra.iter().map(String::as_str));
    let mut command = Command::new("mmdebstrap");
    command
        .args(["--mode=root", "--variant=minbase", "--format=tar"])
        .arg(format!("--include={}", include.join(",")))
        // Documentation is not needed in a VM that lives for one job.
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--aptopt=Acquire::Retries \"3\"",
        ])
        .arg(DEBIAN_SUITE)
        .arg(out)
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .env("PATH", TOOL_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| BuildError::Spawn {
        tool: "mmdebstrap".into(),
        source,
    })?;
    let mut tail: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(step) = line.strip_prefix("I: ") {
                progress(format!("mmdebstrap: {step}"));
            }
            tail.push(line);
            if tail.len() > 8 {
                tail.remove(0);
            }
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn {
        tool: "mmdebstrap".into(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::ToolFailed {
            command: format!("mmdebstrap … {DEBIAN_SUITE} {}", out.display()),
            code: status.code().unwrap_or(-1),
            stderr: tail.join(" / "),
        })
    }
}

/// Lists a tarball: refuses what is not a tar (or is empty), counts its members and bytes.
pub fn inspect_tar(tar: &Path) -> Result<TarInfo, BuildError> {
    let not_tar = |why: String| BuildError::RootfsTar {
        path: tar.to_path_buf(),
        why,
    };
    if !tar.is_file() {
        return Err(not_tar("no such file".into()));
    }
    let output = Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--file"])
        .arg(tar)
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "tar".into(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(not_tar(format!(
            "it is not a tar archive (tar says: {})",
            stderr.trim().lines().next().unwrap_or("nothing")
        )));
    }
    let info = parse_listing(&String::from_utf8_lossy(&output.stdout));
    if info.entries == 0 {
        return Err(not_tar("the archive is empty".into()));
    }
    Ok(info)
}

/// Members and total size from `tar -tv` lines (`mode owner size date time name`).
fn parse_listing(text: &str) -> TarInfo {
    let mut info = TarInfo {
        entries: 0,
        bytes: 0,
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_mode), Some(_owner), Some(size)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        info.entries += 1;
        // Device nodes list "major,minor" instead of a size.
        info.bytes += size.parse::<u64>().unwrap_or(0);
    }
    info
}

/// Unpacks `tar` into `dir` as root: owners, modes and special files kept, as they are.
pub fn extract(tar: &Path, dir: &Path) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io(dir))?;
    run_tool(
        Command::new("tar")
            .args([
                "--extract",
                "--numeric-owner",
                "--same-owner",
                "--preserve-permissions",
                "--no-overwrite-dir",
                "--file",
            ])
            .arg(tar)
            .arg("--directory")
            .arg(dir)
            .env("PATH", TOOL_PATH)
            .stdin(Stdio::null()),
    )
}

/// Free bytes on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, BuildError> {
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| BuildError::io(dir)(std::io::Error::from(e)))?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

/// Where mmdebstrap's tar of a Debian build is kept (so a build can be repeated from it).
pub fn debian_tar_path(work: &Path) -> PathBuf {
    work.join(format!("debian-{DEBIAN_SUITE}.tar"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn listing_counts_members_and_bytes() {
        let text = "drwxr-xr-x 0/0               0 2023-11-14 22:13 ./\n\
                    -rwxr-xr-x 0/0         1234567 2023-11-14 22:13 ./usr/bin/bash\n\
                    crw-rw-rw- 0/0             1,3 2023-11-14 22:13 ./dev/null\n\
                    lrwxrwxrwx 0/0               0 2023-11-14 22:13 ./bin -> usr/bin\n";
        assert_eq!(
            parse_listing(text),
            TarInfo {
                entries: 4,
                bytes: 1_234_567
            }
        );
    }

    #[test]
    fn a_file_that_is_not_a_tar_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rootfs.tar");
        std::fs::write(
            &file,
            b"this is not a tar archive, it is a sentence\n".repeat(40),
        )
        .unwrap();
        let err = inspect_tar(&file).unwrap_err().to_string();
        assert!(err.contains("not a tar archive"), "{err}");
        assert!(err.contains("rootfs.tar"), "{err}");
        let err = inspect_tar(&dir.path().join("missing.tar"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn extra_packages_must_be_package_names() {
        let err = debian_tar(
            &["--evil".into()],
            0,
            Path::new("/nonexistent"),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a Debian package name"), "{err}");
    }
}
