//! The guest's system set-up, done by PID 1 through `busybox` (no unsafe code, no libc): mounts,
//! kernel modules, users, network. Invariant: every place a job can write is guest RAM (rootfs,
//! tmpfs); the base disk is mounted read-only, so nothing a job writes reaches the host's disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "/bin/busybox";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Written by the image builder: one module path per line, in load order.
pub const LOAD_ORDER_FILE: &str = "/lib/modules/load-order";
/// The base disk (first virtio disk), mounted read-only at [`BASE_MOUNT`].
pub const BASE_DISK: &str = "/dev/vda";
pub const BASE_MOUNT: &str = "/opt";
pub const RUNNER_UID: u32 = 1001;
pub const RUNNER_GID: u32 = 1001;
pub const RUNNER_HOME: &str = "/home/runner";
/// Directories under the (read-only) runner dir where a runner writes: each gets a tmpfs.
const RUNNER_WRITABLE: [&str; 2] = ["/opt/runner/_work", "/opt/runner/_diag"];
const UDHCPC_SCRIPT: &str = include_str!("udhcpc.sh");
const UDHCPC_SCRIPT_PATH: &str = "/run/mayfly/udhcpc.sh";

/// Runs `busybox <args>`; output goes to the console.
pub fn busybox(args: &[&str]) -> Result<(), SystemError> {
    // Stdio::null opens /dev/null, which exists only once the image or devtmpfs provides it.
    let stdin = if Path::new("/dev/null").exists() {
        Stdio::null()
    } else {
        Stdio::inherit()
    };
    let status = Command::new(BUSYBOX)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .stdin(stdin)
        .status()
        .map_err(|e| SystemError::Spawn(args.join(" "), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(SystemError::Failed(
            args.join(" "),
            status.code().unwrap_or(-1),
        ))
    }
}

fn mount(fstype: &str, source: &str, target: &str, options: &str) -> Result<(), SystemError> {
    std::fs::create_dir_all(target).map_err(|e| SystemError::Io(target.into(), e))?;
    busybox(&["mount", "-t", fstype, "-o", options, source, target])
}

/// proc, sysfs, devtmpfs and the RAM-backed scratch space.
pub fn mount_basics() -> Result<(), SystemError> {
    mount("proc", "proc", "/proc", "nosuid,nodev,noexec")?;
    mount("sysfs", "sysfs", "/sys", "nosuid,nodev,noexec")?;
    mount("devtmpfs", "devtmpfs", "/dev", "nosuid,mode=0755")?;
    mount(
        "devpts",
        "devpts",
        "/dev/pts",
        "nosuid,noexec,gid=5,mode=620,ptmxmode=0666",
    )?;
    mount("tmpfs", "tmpfs", "/dev/shm", "nosuid,nodev,mode=1777")?;
    mount("tmpfs", "tmpfs", "/tmp", "nosuid,nodev,mode=1777")?;
    mount("tmpfs", "tmpfs", "/run", "nosuid,nodev,mode=0755")?;
    mount("tmpfs", "tmpfs", "/home", "nosuid,nodev,mode=0755")
}

/// Parses the load-order file: one absolute `.ko` path per line; blank lines and `#` comments
/// are skipped.
pub fn parse_load_order(text: &str) -> Result<Vec<PathBuf>, SystemError> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            if line.starts_with('/') && line.ends_with(".ko") {
                Ok(PathBuf::from(line))
            } else {
                Err(SystemError::LoadOrder(format!(
                    "{line:?} is not an absolute path to a .ko file"
                )))
            }
        })
        .collect()
}

/// Loads the modules of [`LOAD_ORDER_FILE`] in order. A module that fails is reported on the
/// console and skipped: what needed it fails later with a clearer error.
pub fn load_modules() -> Result<usize, SystemError> {
    let text = std::fs::read_to_string(LOAD_ORDER_FILE)
        .map_err(|e| SystemError::Io(LOAD_ORDER_FILE.into(), e))?;
    let modules = parse_load_order(&text)?;
    let mut loaded = 0;
    for module in &modules {
        let path = module.to_string_lossy();
        match busybox(&["insmod", &path]) {
            Ok(()) => loaded += 1,
            Err(e) => crate::log(&format!("module {path} not loaded: {e}")),
        }
    }
    Ok(loaded)
}

/// Waits for a device node that a module's probe creates.
pub fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Mounts the base disk read-only at `/opt` (the runner is `/opt/runner`), then a tmpfs over
/// each directory a runner writes to.
pub fn mount_base_disk() -> Result<(), SystemError> {
    if !wait_for_path(Path::new(BASE_DISK), Duration::from_secs(10)) {
        return Err(SystemError::NoBaseDisk);
    }
    mount("ext4", BASE_DISK, BASE_MOUNT, "ro,nodev")?;
    let owner = format!("nosuid,nodev,mode=0755,uid={RUNNER_UID},gid={RUNNER_GID}");
    for dir in RUNNER_WRITABLE {
        if Path::new(dir).is_dir() {
            busybox(&["mount", "-t", "tmpfs", "-o", &owner, "tmpfs", dir])?;
        }
    }
    Ok(())
}

fn write(path: &str, content: &str) -> Result<(), SystemError> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| SystemError::Io(parent.into(), e))?;
    }
    std::fs::write(path, content).map_err(|e| SystemError::Io(path.into(), e))
}

/// root and `runner` (uid/gid 1001, home in tmpfs), hostname and hosts.
pub fn create_users() -> Result<(), SystemError> {
    write(
        "/etc/passwd",
        &format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             runner:x:{RUNNER_UID}:{RUNNER_GID}:runner:{RUNNER_HOME}:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        ),
    )?;
    write(
        "/etc/group",
        &format!("root:x:0:\ntty:x:5:\nrunner:x:{RUNNER_GID}:\nnogroup:x:65534:\n"),
    )?;
    write("/etc/hostname", "mayfly\n")?;
    write("/etc/hosts", "127.0.0.1 localhost mayfly\n::1 localhost\n")?;
    busybox(&["hostname", "mayfly"])?;
    std::fs::create_dir_all(RUNNER_HOME).map_err(|e| SystemError::Io(RUNNER_HOME.into(), e))?;
    std::os::unix::fs::chown(RUNNER_HOME, Some(RUNNER_UID), Some(RUNNER_GID))
        .map_err(|e| SystemError::Io(RUNNER_HOME.into(), e))
}

/// Brings up `lo`, and `eth0` with DHCP (passt answers it) when the VM has a network device.
/// Returns whether the VM has a network.
pub fn bring_up_network() -> Result<bool, SystemError> {
    busybox(&["ip", "link", "set", "lo", "up"])?;
    if !Path::new("/sys/class/net/eth0").exists() {
        return Ok(false);
    }
    write(UDHCPC_SCRIPT_PATH, UDHCPC_SCRIPT)?;
    std::fs::set_permissions(
        UDHCPC_SCRIPT_PATH,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| SystemError::Io(UDHCPC_SCRIPT_PATH.into(), e))?;
    busybox(&["ip", "link", "set", "eth0", "up"])?;
    // -q: exit once bound; -n: fail if no lease after -t tries spaced -T seconds apart.
    busybox(&[
        "udhcpc",
        "-i",
        "eth0",
        "-s",
        UDHCPC_SCRIPT_PATH,
        "-q",
        "-n",
        "-f",
        "-t",
        "10",
        "-T",
        "1",
    ])
    .map_err(|_| SystemError::Dhcp)?;
    Ok(true)
}

/// `uname -r`.
pub fn kernel_release() -> Result<String, SystemError> {
    let path = "/proc/sys/kernel/osrelease";
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| SystemError::Io(path.into(), e))
}

/// Powers the VM off at once. Does not return normally: when poweroff itself cannot run, PID 1
/// exits on purpose — the kernel panics, and with `panic=-1` and QEMU's `-no-reboot` the VM ends
/// (without them the host's timeout destroys it).
pub fn power_off() -> ! {
    for _ in 0..3 {
        if let Err(e) = busybox(&["poweroff", "-f"]) {
            crate::log(&format!("poweroff failed: {e}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    crate::log("cannot power off: ending PID 1 so the kernel panics and the VM stops");
    std::process::exit(1)
}

#[derive(Debug)]
pub enum SystemError {
    Spawn(String, std::io::Error),
    Failed(String, i32),
    Io(PathBuf, std::io::Error),
    LoadOrder(String),
    NoBaseDisk,
    Dhcp,
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(cmd, e) => write!(f, "cannot run `busybox {cmd}`: {e}"),
            Self::Failed(cmd, code) => write!(f, "`busybox {cmd}` exited with {code}"),
            Self::Io(path, e) => write!(f, "{}: {e}", path.display()),
            Self::LoadOrder(why) => write!(f, "{LOAD_ORDER_FILE}: {why}"),
            Self::NoBaseDisk => write!(
                f,
                "no base disk {BASE_DISK}: attach the image's rootfs.qcow2 as the first \
                 virtio disk (-drive if=virtio,readonly=on)"
            ),
            Self::Dhcp => write!(
                f,
                "no DHCP lease on eth0: is passt running and attached to the VM's netdev?"
            ),
        }
    }
}

impl std::error::Error for SystemError {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn load_order_keeps_order_and_skips_comments() {
        let text = "# written by mayfly image build\n\n/lib/modules/virtio_ring.ko\n  /lib/modules/virtio.ko  \n/lib/modules/virtio_pci.ko\n";
        let modules = parse_load_order(text).unwrap();
        assert_eq!(
            modules,
            vec![
                PathBuf::from("/lib/modules/virtio_ring.ko"),
                PathBuf::from("/lib/modules/virtio.ko"),
                PathBuf::from("/lib/modules/virtio_pci.ko"),
            ]
        );
    }

    #[test]
    fn load_order_refuses_what_is_not_a_module_path() {
        for bad in ["virtio.ko", "/lib/modules/virtio.ko.xz", "/bin/sh"] {
            let err = parse_load_order(bad).unwrap_err();
            assert!(err.to_string().contains("not an absolute path"), "{err}");
        }
    }

    #[test]
    fn udhcpc_script_sets_address_route_and_resolver() {
        assert!(UDHCPC_SCRIPT.starts_with("#!/bin/sh\n"));
        for needle in ["$ip", "$router", "resolv.conf", "$dns"] {
            assert!(UDHCPC_SCRIPT.contains(needle), "{needle}");
        }
    }
}
