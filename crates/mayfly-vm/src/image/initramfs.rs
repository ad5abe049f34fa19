//! The initramfs: `mayfly-guest` as `/init` (its first stage: modules, network, the base and
//! scratch disks, the overlay root, then `switch_root`), static busybox with its applet links,
//! the kernel modules with their load order, `/dev/console` (the kernel opens it for init before
//! anything is mounted) and `/dev/null`, and the empty mount points.

use std::path::Path;
use std::process::Command;

use super::build::BuildError;
use super::cpio::Archive;
use super::kernel::Module;

/// Where the guest reads the module load order (`mayfly-guest`'s `system::LOAD_ORDER_FILE`).
pub const LOAD_ORDER_FILE: &str = "lib/modules/load-order";
const MODULE_DIR: &str = "lib/modules";

/// The applets busybox provides, as paths (`bin/sh`, `usr/bin/wget`), sorted.
fn applets(busybox: &Path) -> Result<Vec<String>, BuildError> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: busybox.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(BuildError::ToolFailed {
            command: format!("{} --list-full", busybox.display()),
            code: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let mut list: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .collect();
    list.sort();
    Ok(list)
}

/// Assembles the archive. Returns it and the module names in load order.
pub fn assemble(
    guest: Vec<u8>,
    busybox: &Path,
    modules: &[Module],
) -> Result<(Archive, Vec<String>), BuildError> {
    let mut archive = Archive::new();
    for dir in [
        "dev",
        "etc",
        "lower",
        "newroot",
        "proc",
        "scratch",
        "run",
        "sys",
        "usr/sbin",
        "usr/local/bin",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.dir("root", 0o700);
    archive.dir("tmp", 0o1777);
    archive.char_device("dev/console", 0o600, 5, 1);
    // Until devtmpfs is mounted this is the only /dev/null (std's Stdio::null opens it).
    archive.char_device("dev/null", 0o666, 1, 3);
    archive.file("init", 0o755, guest);

    let busybox_bytes = std::fs::read(busybox).map_err(BuildError::io(busybox))?;
    archive.file("bin/busybox", 0o755, busybox_bytes);
    for applet in applets(busybox)? {
        // Never shadow our own entry (init).
        if !archive.contains(&applet) {
            archive.symlink(&applet, "/bin/busybox");
        }
    }

    let mut order =
        String::from("# Kernel modules in load order, written by mayfly image build.\n");
    let mut names = Vec::new();
    for module in modules {
        let data = std::fs::read(&module.path).map_err(BuildError::io(&module.path))?;
        let path = format!("{MODULE_DIR}/{}.ko", module.name);
        archive.file(&path, 0o644, data);
        order.push_str(&format!("/{path}\n"));
        names.push(module.name.clone());
    }
    archive.file(LOAD_ORDER_FILE, 0o644, order.into_bytes());
    Ok((archive, names))
}
