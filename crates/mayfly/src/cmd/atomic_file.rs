//! Files written whole or not at all. The bytes go to a temporary file beside the target,
//! created with the target's final mode (a key is never readable by others, not even for a
//! moment), synced, then moved into place in one step: an interrupted write leaves the old file
//! or none, never a torn or empty one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use rand::RngCore;

/// What to do when the target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse, leaving it as it is (the error says "File exists").
    Refuse,
    /// Replace it atomically.
    Replace,
}

/// Writes a file only its owner can read (mode 600), refusing to replace one that exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write(path, bytes, 0o600, Existing::Refuse)
}

/// Writes `bytes` to `path` with `mode`, atomically.
pub fn write(path: &Path, bytes: &[u8], mode: u32, existing: Existing) -> anyhow::Result<()> {
    let temp = temp_path(path)?;
    let result = write_temp(&temp, bytes, mode).and_then(|()| match existing {
        Existing::Replace => std::fs::rename(&temp, path)
            .with_context(|| format!("could not write {}", path.display())),
        // A hard link fails if the name is taken, so no existing file is ever replaced.
        Existing::Refuse => std::fs::hard_link(&temp, path)
            .with_context(|| format!("could not create {}", path.display())),
    });
    // After a rename the temporary name is gone already; after a link it is a second name.
    let _ = std::fs::remove_file(&temp);
    result?;
    sync_dir(path);
    Ok(())
}

/// `.<name>.tmp-<random>` in the target's directory (the same file system, so a rename works).
fn temp_path(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} is not a file name", path.display()))?;
    let mut suffix = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut suffix);
    Ok(path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        hex::encode(suffix)
    )))
}

fn write_temp(temp: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)
        .with_context(|| format!("could not create {}", temp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("could not write {}", temp.display()))
}

/// Makes the rename durable; a directory that cannot be synced loses only durability, not
/// atomicity, so a failure here is not an error.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(handle) = std::fs::File::open(dir) {
            let _ = handle.sync_all();
        }
    }
}

/// Makes `dir` and any missing parents with mode 700 (whatever the umask); an existing
/// directory is left as it is.
pub fn create_private_dir_all(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create the directory {}", dir.display()))
}

/// Removes the temporary files an interrupted `write` left in `dir` (they carry their target's
/// mode, so they expose nothing, but they are clutter).
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_private_file_is_mode_600_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        write_private(&key, b"first").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_private(&key, b"second").unwrap_err();
        assert!(format!("{err:#}").contains("File exists"), "{err:#}");
        assert_eq!(std::fs::read(&key).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["key"], "a temporary file was left");
    }

    #[test]
    fn replace_swaps_the_whole_file_and_keeps_the_mode_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.key");
        std::fs::write(&file, b"old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&file, b"new", 0o600, Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"new");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(names(dir.path()), ["agent.key"]);
    }

    #[test]
    fn a_private_directory_and_its_new_parents_are_mode_700() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("data").join("server");
        create_private_dir_all(&inner).unwrap();
        create_private_dir_all(&inner).unwrap();
        for made in [dir.path().join("data"), inner] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", made.display());
        }
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".agent.key.tmp-0a1b2c"), b"half").unwrap();
        std::fs::write(dir.path().join("agent.key"), b"whole").unwrap();
        remove_leftovers(dir.path());
        assert_eq!(names(dir.path()), ["agent.key"]);
    }
}
