//! The user `runner` in the image's user database, as GitHub's images have it: uid and gid
//! 1001, home `/home/runner`, login shell bash, member of `docker` and `sudo` (groups made when
//! the root has none), no password, and passwordless sudo in `/etc/sudoers.d/mayfly-runner`.
//! Invariant: an existing `runner` entry is replaced, every other line is kept as it was.

use std::path::{Path, PathBuf};

use super::build::BuildError;
use super::rootfs::{
    chown, exists_in_root, read_text, resolve_in_root, write_file, RUNNER_GID, RUNNER_UID,
};

/// The lines of a user-database file other than `runner`'s.
fn others(root: &Path, path: &str) -> Vec<String> {
    read_text(root, path)
        .lines()
        .filter(|l| !l.starts_with("runner:"))
        .map(str::to_owned)
        .collect()
}

fn write_lines(
    root: &Path,
    path: &str,
    lines: &[String],
    mode: u32,
) -> Result<PathBuf, BuildError> {
    write_file(root, path, (lines.join("\n") + "\n").as_bytes(), mode)
}

/// Adds `runner` to a `/etc/group`-style line's member list.
fn add_member(line: &str, user: &str) -> String {
    let members = line.rsplit_once(':').map_or("", |(_, m)| m);
    if members.split(',').any(|m| m == user) {
        line.to_owned()
    } else if members.is_empty() {
        format!("{line}{user}")
    } else {
        format!("{line},{user}")
    }
}

/// The lowest system gid (999 down to 100) not in use.
fn free_gid(group: &str) -> u32 {
    let used: Vec<u32> = group
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (100..1000).rev().find(|g| !used.contains(g)).unwrap_or(999)
}

/// The user `runner` in passwd, shadow, group (own group, `docker`, `sudo`) and sudoers.
pub(super) fn add_runner_user(root: &Path) -> Result<(), BuildError> {
    let mut passwd = others(root, "etc/passwd");
    passwd.push(format!(
        "runner:x:{RUNNER_UID}:{RUNNER_GID}:GitHub Actions runner:/home/runner:/bin/bash"
    ));
    write_lines(root, "etc/passwd", &passwd, 0o644)?;

    let mut shadow = others(root, "etc/shadow");
    // No password: sudo is NOPASSWD, and nobody logs in.
    shadow.push("runner:*:19000:0:99999:7:::".into());
    let file = write_lines(root, "etc/shadow", &shadow, 0o640)?;
    if let Some(gid) = read_text(root, "etc/group")
        .lines()
        .find_map(|l| l.strip_prefix("shadow:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
    {
        chown(&file, 0, gid)?;
    }

    let mut group = others(root, "etc/group");
    for wanted in ["docker", "sudo"] {
        if !group.iter().any(|l| l.starts_with(&format!("{wanted}:"))) {
            group.push(format!("{wanted}:x:{}:", free_gid(&group.join("\n"))));
        }
    }
    for line in &mut group {
        if line.starts_with("docker:") || line.starts_with("sudo:") {
            *line = add_member(line, "runner");
        }
    }
    group.push(format!("runner:x:{RUNNER_GID}:"));
    write_lines(root, "etc/group", &group, 0o644)?;
    if resolve_in_root(root, "etc/gshadow").is_some() {
        let mut gshadow = others(root, "etc/gshadow");
        gshadow.push("runner:!::".into());
        write_lines(root, "etc/gshadow", &gshadow, 0o640)?;
    }
    if exists_in_root(root, &["usr/bin/sudo", "bin/sudo"]) {
        write_file(
            root,
            "etc/sudoers.d/mayfly-runner",
            b"# Added by mayfly image build: the job user has passwordless sudo, as on GitHub's runners.\nrunner ALL=(ALL) NOPASSWD:ALL\nDefaults:runner !requiretty, env_keep += \"ImageOS ImageVersion RUNNER_TOOL_CACHE AGENT_TOOLSDIRECTORY\"\n",
            0o440,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_runner_joins_groups_once_and_gids_are_free() {
        assert_eq!(add_member("sudo:x:27:", "runner"), "sudo:x:27:runner");
        assert_eq!(
            add_member("docker:x:998:alice", "runner"),
            "docker:x:998:alice,runner"
        );
        assert_eq!(add_member("sudo:x:27:runner", "runner"), "sudo:x:27:runner");
        assert_eq!(free_gid("a:x:999:\nb:x:998:\n"), 997);
    }

    #[test]
    fn adding_the_runner_twice_keeps_one_entry_and_other_lines() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        std::fs::write(r.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        add_runner_user(r).unwrap();
        add_runner_user(r).unwrap();
        let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
        let entries = passwd.lines().filter(|l| l.starts_with("runner:")).count();
        assert_eq!(entries, 1, "{passwd}");
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
        let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
        assert!(group.contains("sudo:x:27:runner\n"), "{group}");
        assert_eq!(group.matches("runner:x:1001:").count(), 1, "{group}");
    }
}
