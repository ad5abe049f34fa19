//! Stage 1, `/init` of the initramfs: modules, network, then the root the job gets. The base
//! disk (EROFS, read-only) is the lower layer of an overlay whose upper layer lives on the
//! scratch disk, encrypted with dm-crypt under 64 random bytes made here and never written
//! anywhere: once the VM is gone the scratch file is unreadable (and the host deletes it too).
//! Then `switch_root` to the overlay and exec stage 2 from it.
//!
//! Invariant: the scratch key exists only in this process's memory and in the kernel's
//! dm-crypt table; it reaches cryptsetup on a pipe, never argv, a file or the console.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::log;
use crate::system::{self, busybox, mount, SystemError, BUSYBOX, PATH};

/// Serial numbers the host gives the two disks (`-device virtio-blk-pci,serial=…`).
pub const BASE_SERIAL: &str = "mayfly-base";
pub const SCRATCH_SERIAL: &str = "mayfly-scratch";
const LOWER: &str = "/lower";
const SCRATCH: &str = "/scratch";
const NEWROOT: &str = "/newroot";
const CRYPT_NAME: &str = "mayfly-scratch";
/// Stage 2 in the root filesystem (the image builder puts it there).
pub const STAGE2: &str = "/usr/lib/mayfly/mayfly-guest";
/// Where stage 2 finds busybox (the root may have none): a tmpfs, gone with the VM.
pub const STAGE2_BUSYBOX: &str = "/run/mayfly/busybox";

pub fn main() -> ! {
    if let Err(e) = run() {
        log(&format!("fatal: {e}"));
        system::power_off();
    }
    // `run` only returns on error: on success it became stage 2.
    system::power_off()
}

fn run() -> Result<(), SystemError> {
    system::mount_basics()?;
    log("stage 1 started");
    let loaded = system::load_modules()?;
    log(&format!("{loaded} kernel modules loaded"));
    let base = system::wait_for_disk(BASE_SERIAL, Duration::from_secs(10))?;
    let scratch = system::wait_for_disk(SCRATCH_SERIAL, Duration::from_secs(10))?;
    mount("erofs", &base, LOWER, "ro,nodev")?;
    // The base disk's tools (cryptsetup, mkfs.ext4) run in a chroot that needs these.
    for (fstype, target, options) in [
        ("devtmpfs", "dev", "nosuid,mode=0755"),
        ("proc", "proc", "nosuid,nodev,noexec"),
        ("sysfs", "sys", "nosuid,nodev,noexec"),
        ("tmpfs", "run", "nosuid,nodev,mode=0755"),
    ] {
        mount(fstype, fstype, &format!("{LOWER}/{target}"), options)?;
    }
    log("base disk mounted; encrypting the scratch disk");
    open_encrypted(&scratch)?;
    log("scratch disk open; making its filesystem");
    let mapped = format!("/dev/mapper/{CRYPT_NAME}");
    chroot_tool(&[
        "mkfs.ext4",
        "-q",
        "-F",
        "-m",
        "0",
        "-O",
        "^has_journal",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        "-L",
        "mayfly-scratch",
        &mapped,
    ])?;
    // noinit_itable: the inode tables stay uninitialised (flagged so), instead of a kernel
    // thread writing hundreds of MB through dm-crypt during the job.
    mount("ext4", &mapped, SCRATCH, "noinit_itable,nodev")?;
    log("scratch filesystem mounted");
    for dir in ["upper", "work", "docker"] {
        let path = format!("{SCRATCH}/{dir}");
        std::fs::create_dir_all(&path).map_err(|e| SystemError::Io(path.clone().into(), e))?;
    }
    mount(
        "overlay",
        "overlay",
        NEWROOT,
        &format!("lowerdir={LOWER},upperdir={SCRATCH}/upper,workdir={SCRATCH}/work"),
    )?;
    for dir in ["dev", "proc", "sys", "run"] {
        busybox(&[
            "mount",
            "--move",
            &format!("{LOWER}/{dir}"),
            &format!("{NEWROOT}/{dir}"),
        ])?;
    }
    // Docker's overlay2 storage cannot sit on an overlay: its data root is the scratch disk.
    let docker = format!("{NEWROOT}/var/lib/docker");
    std::fs::create_dir_all(&docker).map_err(|e| SystemError::Io(docker.clone().into(), e))?;
    busybox(&["mount", "--bind", &format!("{SCRATCH}/docker"), &docker])?;
    mount(
        "devpts",
        "devpts",
        &format!("{NEWROOT}/dev/pts"),
        "nosuid,noexec,gid=5,mode=620,ptmxmode=0666",
    )?;
    mount(
        "tmpfs",
        "tmpfs",
        &format!("{NEWROOT}/dev/shm"),
        "nosuid,nodev,mode=1777",
    )?;
    mount(
        "cgroup2",
        "cgroup2",
        &format!("{NEWROOT}/sys/fs/cgroup"),
        "nosuid,nodev,noexec",
    )?;
    match system::bring_up_network(&format!("{NEWROOT}/etc/resolv.conf"))? {
        true => log("network up"),
        false => log("no eth0: running without a network"),
    }
    system::write("/proc/sys/kernel/hostname", "mayfly")?;
    let stage2_busybox = format!("{NEWROOT}{STAGE2_BUSYBOX}");
    if let Some(parent) = Path::new(&stage2_busybox).parent() {
        std::fs::create_dir_all(parent).map_err(|e| SystemError::Io(parent.into(), e))?;
    }
    std::fs::copy(BUSYBOX, &stage2_busybox)
        .map_err(|e| SystemError::Io(stage2_busybox.clone().into(), e))?;
    if !Path::new(&format!("{NEWROOT}{STAGE2}")).is_file() {
        return Err(SystemError::NoStage2);
    }
    log("root ready: switching to it");
    // exec keeps PID 1; it returns only when it failed.
    let error = Command::new(BUSYBOX)
        .args(["switch_root", NEWROOT, STAGE2, crate::init::STAGE2_ARG])
        .env_clear()
        .env("PATH", PATH)
        .exec();
    Err(SystemError::Spawn("switch_root".into(), error))
}

/// `chroot /lower <args>`: a tool of the base disk, its output on the console.
fn chroot_tool(args: &[&str]) -> Result<(), SystemError> {
    let mut full = vec!["chroot", LOWER];
    full.extend_from_slice(args);
    busybox(&full)
}

/// Opens the scratch disk as plain dm-crypt (XTS-AES-256) under a key made here.
fn open_encrypted(device: &str) -> Result<(), SystemError> {
    let mut key = [0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| SystemError::Io("/dev/urandom".into(), e))?;
    let command = [
        "chroot",
        LOWER,
        "cryptsetup",
        "open",
        "--type",
        "plain",
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        "512",
        "--sector-size",
        "4096",
        "--key-file",
        "-",
        "--keyfile-size",
        "64",
        device,
        CRYPT_NAME,
    ];
    let spawned = Command::new(BUSYBOX)
        .args(command)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::piped())
        .spawn();
    let result = match spawned {
        Ok(mut child) => {
            let written = child
                .stdin
                .take()
                .map(|mut stdin| stdin.write_all(&key))
                .transpose();
            let status = child.wait();
            match (written, status) {
                (Ok(_), Ok(status)) if status.success() => Ok(()),
                (Err(e), _) | (_, Err(e)) => Err(SystemError::Spawn("cryptsetup".into(), e)),
                (_, Ok(status)) => Err(SystemError::Failed(
                    "chroot /lower cryptsetup open …".into(),
                    status.code().unwrap_or(-1),
                )),
            }
        }
        Err(e) => Err(SystemError::Spawn("cryptsetup".into(), e)),
    };
    key.fill(0);
    std::hint::black_box(&key);
    result
}
