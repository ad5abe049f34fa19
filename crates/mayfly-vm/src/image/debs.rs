//! Debian packages for the image: resolve a package to the exact version and SHA-256 apt would
//! fetch (`apt-cache`), keep the `.deb` in the package cache (reused while its hash matches,
//! else `apt-get download`), and unpack it once per hash into the cache (`dpkg-deb -x`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::build::{run_tool, BuildError};
use super::hash_file;

/// A Debian package pinned to one build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

impl PackageRef {
    /// The file name `apt-get download` gives the package (an epoch's `:` becomes `%3a`).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }
}

fn apt_cache(args: &[&str]) -> Result<String, BuildError> {
    let output = Command::new("apt-cache")
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "apt-cache".into(),
            source,
        })?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err(BuildError::UnknownPackage {
            query: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The versioned kernel package `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-56-amd64`.
pub fn kernel_package(meta: &str) -> Result<String, BuildError> {
    let text = apt_cache(&["depends", meta])?;
    parse_kernel_dependency(&text).ok_or_else(|| BuildError::UnknownPackage {
        query: format!("depends {meta}"),
        stderr: format!("{meta} depends on no linux-image-* package"),
    })
}

fn parse_kernel_dependency(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(|dep| dep.trim().trim_start_matches('<').trim_end_matches('>'))
        .find(|dep| dep.starts_with("linux-image-"))
        .map(str::to_string)
}

/// The version apt would install now, with its SHA-256.
pub fn resolve(package: &str) -> Result<PackageRef, BuildError> {
    let text = apt_cache(&["show", "--no-all-versions", package])?;
    parse_stanza(&text).ok_or_else(|| BuildError::UnknownPackage {
        query: format!("show {package}"),
        stderr: "apt knows no downloadable version (no SHA256 field)".into(),
    })
}

fn parse_stanza(text: &str) -> Option<PackageRef> {
    let stanza = text.split("\n\n").next()?;
    let field = |key: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
            .map(|v| v.trim().to_string())
    };
    Some(PackageRef {
        name: field("Package")?,
        version: field("Version")?,
        architecture: field("Architecture")?,
        sha256: field("SHA256")?,
    })
}

fn matches(path: &Path, package: &PackageRef) -> bool {
    hash_file(path).is_ok_and(|info| info.sha256 == package.sha256)
}

/// The package's `.deb` in `cache`, downloaded unless a file with the right hash is there.
/// Returns the path and whether it was downloaded.
pub fn fetch(package: &PackageRef, cache: &Path) -> Result<(PathBuf, bool), BuildError> {
    let path = cache.join(package.deb_file_name());
    if matches(&path, package) {
        return Ok((path, false));
    }
    let spec = format!("{}={}", package.name, package.version);
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(cache),
    )?;
    if !matches(&path, package) {
        return Err(BuildError::DebMismatch {
            file: path,
            expected: package.sha256.clone(),
        });
    }
    Ok((path, true))
}

/// The package unpacked under `cache/unpacked/`, once per hash: unpacked into a temp dir, then
/// renamed, so a half-unpacked tree is never reused.
pub fn unpack(package: &PackageRef, deb: &Path, cache: &Path) -> Result<PathBuf, BuildError> {
    let hash = package.sha256.get(..16).unwrap_or(&package.sha256);
    let unpacked = cache.join("unpacked");
    let dir = unpacked.join(format!("{}_{hash}", package.name));
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&unpacked).map_err(BuildError::io(&unpacked))?;
    let temp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&unpacked)
        .map_err(BuildError::io(&unpacked))?;
    run_tool(Command::new("dpkg-deb").arg("-x").arg(deb).arg(temp.path()))?;
    match std::fs::rename(temp.path(), &dir) {
        Ok(()) => {}
        // Another build unpacked it first.
        Err(_) if dir.is_dir() => {}
        Err(e) => return Err(BuildError::io(&dir)(e)),
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn finds_the_versioned_kernel_package() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_dependency(text).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_kernel_dependency("x\n  Depends: libc6\n"), None);
    }

    #[test]
    fn reads_the_first_stanza_and_names_the_file_as_apt_does() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\n\
                    Architecture: amd64\nSHA256: 3d3f\n\nPackage: other\n";
        let package = parse_stanza(text).unwrap();
        assert_eq!(package.name, "busybox-static");
        assert_eq!(package.sha256, "3d3f");
        assert_eq!(
            package.deb_file_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
        assert_eq!(parse_stanza("Package: x\nVersion: 1\n"), None);
    }
}
