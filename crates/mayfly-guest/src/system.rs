//! The guest's system set-up through `busybox` (no unsafe code, no libc): mounts, kernel
//! modules, disks by serial, network, power. Stage 1 runs busybox from the initramfs; stage 2
//! from the copy stage 1 leaves in `/run/mayfly`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BUSYBOX: &str = "/bin/busybox";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Written by the image builder: one module path per line, in load order.
pub const LOAD_ORDER_FILE: &str = "/lib/modules/load-order";
const UDHCPC_SCRIPT: &str = include_str!("udhcpc.sh");
const UDHCPC_SCRIPT_PATH: &str = "/run/udhcpc.sh";

/// Runs `busybox <args>`; output goes to the console.
pub fn busybox(args: &[&str]) -> Result<(), SystemError> {
    busybox_at(BUSYBOX, args, &[])
}

/// Sets the clock to `unix_ms` (milliseconds since the epoch) with one system call: no
/// process to start, which under TCG costs tens of milliseconds on the way to the runner.
pub fn set_clock(unix_ms: u64) -> Result<(), nix::Error> {
    let secs = i64::try_from(unix_ms / 1000).map_err(|_| nix::Error::EINVAL)?;
    let nanos = i64::try_from((unix_ms % 1000) * 1_000_000).map_err(|_| nix::Error::EINVAL)?;
    nix::time::clock_settime(
        nix::time::ClockId::CLOCK_REALTIME,
        nix::sys::time::TimeSpec::new(secs, nanos),
    )
}

/// Runs the busybox at `binary` with `args` and extra environment `env`.
pub fn busybox_at(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), SystemError> {
    // Stdio::null opens /dev/null, which exists only once the image or devtmpfs provides it.
    let stdin = if Path::new("/dev/null").exists() {
        Stdio::null()
    } else {
        Stdio::inherit()
    };
    let status = Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().copied())
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

pub fn mount(fstype: &str, source: &str, target: &str, options: &str) -> Result<(), SystemError> {
    std::fs::create_dir_all(target).map_err(|e| SystemError::Io(target.into(), e))?;
    busybox(&["mount", "-t", fstype, "-o", options, source, target])
}

/// proc, sysfs and devtmpfs in the initramfs.
pub fn mount_basics() -> Result<(), SystemError> {
    mount("proc", "proc", "/proc", "nosuid,nodev,noexec")?;
    mount("sysfs", "sysfs", "/sys", "nosuid,nodev,noexec")?;
    mount("devtmpfs", "devtmpfs", "/dev", "nosuid,mode=0755")?;
    mount("tmpfs", "tmpfs", "/run", "nosuid,nodev,mode=0755")
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
        // In this process (finit_module), not a busybox insmod each: under TCG every process
        // start costs tens of milliseconds.
        let started = Instant::now();
        let result = std::fs::File::open(module)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            .and_then(|file| {
                nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty())
            });
        match result {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {
                loaded += 1;
                let took = started.elapsed();
                if took > Duration::from_millis(100) {
                    crate::log(&format!("module {} took {took:?}", module.display()));
                }
            }
            Err(e) => crate::log(&format!("module {} not loaded: {e}", module.display())),
        }
    }
    Ok(loaded)
}

/// The block device whose virtio serial is `serial` (`/sys/block/vd*/serial`), waiting for it.
pub fn wait_for_disk(serial: &str, timeout: Duration) -> Result<String, SystemError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut names: Vec<String> = std::fs::read_dir("/sys/block")
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for name in names {
            let found = std::fs::read_to_string(format!("/sys/block/{name}/serial"))
                .is_ok_and(|s| s.trim() == serial);
            let device = format!("/dev/{name}");
            if found && Path::new(&device).exists() {
                return Ok(device);
            }
        }
        if Instant::now() >= deadline {
            return Err(SystemError::NoDisk(serial.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn write(path: &str, content: &str) -> Result<(), SystemError> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| SystemError::Io(parent.into(), e))?;
    }
    std::fs::write(path, content).map_err(|e| SystemError::Io(path.into(), e))
}

/// Brings up `lo`, and `eth0` with DHCP (passt answers it) when the VM has a network device;
/// the resolver goes to `resolv_conf`. Returns whether the VM has a network.
pub fn bring_up_network(resolv_conf: &str) -> Result<bool, SystemError> {
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
    busybox_at(
        BUSYBOX,
        &[
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
        ],
        &[("RESOLV_CONF", resolv_conf)],
    )
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

/// Powers the VM off at once (sysrq `o`: no userspace tool needed, in either stage). Does not
/// return normally: when that fails, PID 1 exits on purpose — the kernel panics, and with
/// `panic=-1` and QEMU's `-no-reboot` the VM ends (without them the host's timeout destroys it).
pub fn power_off() -> ! {
    for _ in 0..3 {
        if let Err(e) = std::fs::write("/proc/sysrq-trigger", "o") {
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
    NoDisk(String),
    NoStage2,
    Dhcp,
}

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(cmd, e) => write!(f, "cannot run `busybox {cmd}`: {e}"),
            Self::Failed(cmd, code) => write!(f, "`busybox {cmd}` exited with {code}"),
            Self::Io(path, e) => write!(f, "{}: {e}", path.display()),
            Self::LoadOrder(why) => write!(f, "{LOAD_ORDER_FILE}: {why}"),
            Self::NoDisk(serial) => write!(
                f,
                "no disk with serial {serial}: attach the image's rootfs.erofs and the VM's \
                 scratch disk as virtio-blk devices with serial=mayfly-base and serial=mayfly-scratch"
            ),
            Self::NoStage2 => write!(
                f,
                "the root filesystem has no {}: build the image with `mayfly image build`",
                crate::stage1::STAGE2
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
