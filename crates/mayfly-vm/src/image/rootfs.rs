//! The base disk: a copy of the runner directory at `/runner` in an ext4 filesystem (the guest
//! mounts it read-only at `/opt`), made reproducible — every mtime fixed, a fixed UUID and hash
//! seed, `E2FSPROGS_FAKE_TIME`, and our own `mke2fs.conf` so the host's defaults do not leak in —
//! then converted to qcow2 (checked byte-stable with QEMU 7.2's `qemu-img convert`).
//!
//! `mkfs.ext4 -d` copies each source file's atime and ctime, which no build can hold still (the
//! copy sets ctime, mkfs's own reads move atime under relatime), and the builder's uid/gid; so
//! afterwards `debugfs` sets both times to the fixed time and the owner to root on every inode
//! it populated. The digest then depends only on the runner directory's names, modes, contents.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::stat::lutimes;
use nix::sys::time::TimeVal;
use sha2::{Digest as _, Sha256};

use super::build::{run_tool, BuildError};

/// Timestamp of every file on the disk (and of the filesystem itself).
const FIXED_TIME: i64 = 1_700_000_000;
const FIXED_UUID: &str = "6d617966-6c79-4000-8000-000000000001";
/// Directories a runner writes to; the guest mounts a tmpfs on each.
pub const RUNNER_WRITABLE_DIRS: [&str; 2] = ["_work", "_diag"];
const MKE2FS_CONF: &str = "[defaults]\n\
    \tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr\n\
    \tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n\
    [fs_types]\n\text4 = {\n\t\tfeatures = extent,flex_bg,64bit,dir_nlink,extra_isize,huge_file\n\t}\n\
    \tsmall = {\n\t\tinode_ratio = 16384\n\t}\n\tfloppy = {\n\t\tinode_ratio = 16384\n\t}\n";

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

/// Copies `runner_dir` to `<stage>/runner` (files, directories, symlinks; modes kept), adds the
/// runner's writable directories, and fixes every timestamp. Returns the bytes staged.
pub fn stage(runner_dir: &Path, stage: &Path) -> Result<u64, BuildError> {
    let target = stage.join("runner");
    std::fs::create_dir_all(&target).map_err(BuildError::io(&target))?;
    let mut bytes = 0;
    for (rel, meta) in walk(runner_dir)? {
        let from = runner_dir.join(&rel);
        let to = target.join(&rel);
        let file_type = meta.file_type();
        if file_type.is_dir() {
            std::fs::create_dir_all(&to).map_err(BuildError::io(&to))?;
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
            let mode = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
            std::fs::set_permissions(&to, mode).map_err(BuildError::io(&to))?;
        }
    }
    for dir in RUNNER_WRITABLE_DIRS {
        let path = target.join(dir);
        std::fs::create_dir_all(&path).map_err(BuildError::io(&path))?;
    }
    // Children before parents: creating an entry changes its directory's mtime.
    let mut all: Vec<PathBuf> = walk(stage)?.into_iter().map(|(rel, _)| rel).collect();
    all.reverse();
    all.push(PathBuf::new());
    let time = TimeVal::new(FIXED_TIME, 0);
    for rel in all {
        let path = stage.join(rel);
        lutimes(&path, &time, &time).map_err(|e| BuildError::io(&path)(e.into()))?;
    }
    Ok(bytes)
}

/// Size of the filesystem for `bytes` of content in `entries` files: room for every file's
/// blocks and inodes, plus slack, rounded up to a MiB.
fn fs_size(bytes: u64, entries: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let blocks = bytes + entries * 4096;
    let size = blocks + blocks / 4 + 16 * MIB;
    size.div_ceil(MIB) * MIB
}

/// `mkfs.ext4` of `stage` into `raw`, reproducibly.
pub fn make_ext4(stage: &Path, bytes: u64, raw: &Path, work: &Path) -> Result<(), BuildError> {
    let entries = walk(stage)?.len() as u64 + 1;
    let size = fs_size(bytes, entries);
    let file = std::fs::File::create(raw).map_err(BuildError::io(raw))?;
    file.set_len(size).map_err(BuildError::io(raw))?;
    drop(file);
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(BuildError::io(&conf))?;
    let extended = format!("hash_seed={FIXED_UUID},root_owner=0:0,lazy_itable_init=0,nodiscard");
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", "mayfly-base"])
            .args(["-U", FIXED_UUID, "-E", &extended, "-d"])
            .arg(stage)
            .arg(raw)
            .env("MKE2FS_CONFIG", &conf)
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string())
            .env("PATH", super::build::TOOL_PATH),
    )?;
    fix_inode_times(stage, raw, work)
}

/// A path as a double-quoted debugfs argument; names debugfs cannot quote are refused.
fn debugfs_quote(path: &str) -> Result<String, BuildError> {
    if path.contains(['"', '\\', '\n', '\r']) {
        return Err(BuildError::RunnerDir(format!(
            "{path:?}: file names with quotes, backslashes or line breaks are not supported"
        )));
    }
    Ok(format!("\"{path}\""))
}

/// Sets atime and ctime of `/`, `/lost+found` and everything staged to the fixed time, and the
/// owner to root.
fn fix_inode_times(stage: &Path, raw: &Path, work: &Path) -> Result<(), BuildError> {
    let mut paths = vec!["/".to_string(), "/lost+found".to_string()];
    for (rel, _) in walk(stage)? {
        paths.push(format!("/{}", rel.to_string_lossy()));
    }
    let mut commands = String::new();
    for path in paths {
        let quoted = debugfs_quote(&path)?;
        for field in ["atime", "ctime"] {
            commands.push_str(&format!("set_inode_field {quoted} {field} @{FIXED_TIME}\n"));
        }
        // Owned by root whoever builds: mkfs copies the staged files' owner (the builder).
        for field in ["uid", "gid"] {
            commands.push_str(&format!("set_inode_field {quoted} {field} 0\n"));
        }
    }
    let file = work.join("debugfs.cmds");
    std::fs::write(&file, commands).map_err(BuildError::io(&file))?;
    run_tool(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&file)
            .arg(raw)
            .env("E2FSPROGS_FAKE_TIME", FIXED_TIME.to_string())
            .env("PATH", super::build::TOOL_PATH),
    )
}

/// `qemu-img convert` of the raw filesystem to qcow2.
pub fn to_qcow2(raw: &Path, qcow2: &Path) -> Result<(), BuildError> {
    run_tool(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(qcow2),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn staging_copies_modes_links_and_fixes_times() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("bin")).unwrap();
        std::fs::write(src.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("../run.sh", src.path().join("bin/run")).unwrap();
        let digest = tree_digest(src.path()).unwrap();

        let out = tempfile::tempdir().unwrap();
        let bytes = stage(src.path(), out.path()).unwrap();
        assert_eq!(bytes, 10);
        let runner = out.path().join("runner");
        let meta = std::fs::metadata(runner.join("run.sh")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o755);
        assert_eq!(meta.mtime(), FIXED_TIME);
        assert_eq!(
            std::fs::read_link(runner.join("bin/run")).unwrap(),
            PathBuf::from("../run.sh")
        );
        assert_eq!(
            std::fs::symlink_metadata(runner.join("bin/run"))
                .unwrap()
                .mtime(),
            FIXED_TIME
        );
        assert!(runner.join("_work").is_dir() && runner.join("_diag").is_dir());
        assert_eq!(std::fs::metadata(&runner).unwrap().mtime(), FIXED_TIME);
        assert_eq!(std::fs::metadata(out.path()).unwrap().mtime(), FIXED_TIME);

        // The digest sees content changes.
        std::fs::write(src.path().join("run.sh"), "#!/bin/sh\nexit 1\n").unwrap();
        assert_ne!(tree_digest(src.path()).unwrap(), digest);
    }

    #[test]
    fn debugfs_arguments_are_quoted_or_refused() {
        assert_eq!(debugfs_quote("/runner/a b").unwrap(), "\"/runner/a b\"");
        for bad in ["/a\"b", "/a\\b", "/a\nb"] {
            assert!(debugfs_quote(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fs_size_leaves_room_and_is_whole_mebibytes() {
        let size = fs_size(100 << 20, 1000);
        assert!(size > (100 << 20) + 1000 * 4096);
        assert_eq!(size % (1 << 20), 0);
        assert_eq!(fs_size(0, 1), 17 << 20);
    }
}
