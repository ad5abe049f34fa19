//! A deterministic newc (`070701`) cpio writer for the initramfs: entries sorted by path, mtime
//! 0, owner root, inode numbers assigned in order, parents created before children. Same entries
//! in, same bytes out.

use std::collections::BTreeMap;
use std::io::Write;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Permission bits (and setuid/setgid/sticky), without the file type.
    mode: u32,
}

/// An initramfs being assembled. Paths are relative (`bin/busybox`), `/`-separated.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, path: &str, kind: Kind, mode: u32) {
        let path = path.trim_start_matches('/').to_string();
        // Parents first: every ancestor becomes a directory unless already present.
        let mut ancestor = path.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            self.entries.entry(parent.to_string()).or_insert(Entry {
                kind: Kind::Dir,
                mode: 0o755,
            });
            ancestor = parent;
        }
        self.entries.insert(path, Entry { kind, mode });
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Kind::Dir, mode);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.insert(path, Kind::File(data), mode);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Kind::Symlink(target.to_string()), 0o777);
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Kind::CharDevice { major, minor }, mode);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Writes the archive: entries in path order (a parent sorts before its children), then the
    /// trailer.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut ino = 0u32;
        for (path, entry) in &self.entries {
            ino += 1;
            let (file_type, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
                Kind::Dir => (S_IFDIR, 2, &[], (0, 0)),
                Kind::File(data) => (S_IFREG, 1, data, (0, 0)),
                Kind::Symlink(target) => (S_IFLNK, 1, target.as_bytes(), (0, 0)),
                Kind::CharDevice { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
            };
            write_entry(out, ino, file_type | entry.mode, nlink, rdev, path, data)?;
        }
        write_entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])
    }
}

fn pad(out: &mut dyn Write, len: usize) -> std::io::Result<()> {
    let padding = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..padding])
}

fn write_entry(
    out: &mut dyn Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let too_big = || std::io::Error::other(format!("{name} is too large for a newc cpio (4 GiB)"));
    let filesize = u32::try_from(data.len()).map_err(|_| too_big())?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{filesize:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name.len() + 1)?;
    out.write_all(data)?;
    pad(out, data.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn bytes(archive: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        archive.write_to(&mut out).unwrap();
        out
    }

    #[test]
    fn same_entries_in_any_order_give_the_same_bytes() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!".to_vec());
        a.symlink("bin/sh", "/bin/busybox");
        a.char_device("dev/console", 0o600, 5, 1);
        let mut b = Archive::new();
        b.char_device("/dev/console", 0o600, 5, 1);
        b.symlink("bin/sh", "/bin/busybox");
        b.file("/init", 0o755, b"#!".to_vec());
        assert_eq!(bytes(&a), bytes(&b));
        assert!(a.contains("bin") && a.contains("/dev"));
    }

    #[test]
    fn layout_is_newc_with_parents_first_and_a_trailer() {
        let mut a = Archive::new();
        a.file("usr/bin/sudo", 0o4755, b"abcde".to_vec());
        let out = bytes(&a);
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let usr = text.find("usr\0").unwrap();
        let usr_bin = text.find("usr/bin\0").unwrap();
        let sudo = text.find("usr/bin/sudo\0").unwrap();
        assert!(usr < usr_bin && usr_bin < sudo);
        assert!(text.contains("TRAILER!!!\0"));
        // The sudo entry: setuid regular file of 5 bytes, owned by root, mtime 0.
        let header = &text[sudo - 110..sudo];
        assert_eq!(&header[..6], "070701");
        // 0o104755: regular file, setuid, rwxr-xr-x.
        assert_eq!(&header[14..22], "000089ed");
        assert_eq!(&header[22..38], "0000000000000000");
        assert_eq!(&header[46..54], "00000000");
        assert_eq!(&header[54..62], "00000005");
        assert_eq!(&header[94..102], "0000000d");
    }
}
