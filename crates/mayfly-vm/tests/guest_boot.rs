//! A real boot of the test image under QEMU (TCG): `mayfly-guest` as PID 1 loads its modules,
//! makes the writable root (the read-only base disk under an overlay on the encrypted scratch
//! disk), switches to it, reports `ready` on the config port, takes its one config, sets the
//! clock, runs the runner as GitHub launches it (here the image's `selftest.sh`, as `runner`,
//! the config in `ACTIONS_RUNNER_INPUT_JITCONFIG`), reports `started` and `exited`, and powers
//! the VM off. The serial log shows what the runner saw: bash, glibc ≥ 2.28, its libraries,
//! a writable root, HOME, sudo, the clock; the scratch file holds none of what it wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod image_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_support::{bounded, TestImage};
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// A QEMU process killed when dropped, so a failing test leaves none behind.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn boot(image: &TestImage) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch.raw");
        std::fs::File::create(&scratch)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        let socket = dir.path().join("cfg.sock");
        let base = format!(
            "if=none,id=base,file={},format=raw,readonly=on",
            image.image.rootfs.display()
        );
        let scratch = format!(
            "if=none,id=scratch,file={},format=raw,cache=unsafe",
            scratch.display()
        );
        let chardev = format!("socket,id=cfg,path={},server=on,wait=off", socket.display());
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-m",
                "1024",
                "-nodefaults",
                "-nographic",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&image.image.kernel)
            .arg("-initrd")
            .arg(&image.image.initrd)
            .args([
                "-append",
                "console=ttyS0 panic=-1 quiet",
                "-monitor",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("serial.log").display()))
            .args([
                "-drive",
                &base,
                "-device",
                "virtio-blk-pci,drive=base,serial=mayfly-base",
            ])
            .args([
                "-drive",
                &scratch,
                "-device",
                "virtio-blk-pci,drive=scratch,serial=mayfly-scratch",
            ])
            .args(["-device", "virtio-serial-pci"])
            .args(["-chardev", &chardev])
            .args([
                "-device",
                "virtserialport,chardev=cfg,name=org.mayfly.config",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.err")).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 runs (install qemu-system-x86)");
        Self { child, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("cfg.sock")
    }

    fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch.raw")
    }

    fn serial_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default()
    }

    fn connect(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(self.socket()) {
                Ok(stream) => {
                    return Channel {
                        reader: BufReader::new(stream.try_clone().unwrap()),
                        writer: stream,
                    }
                }
                Err(e) if Instant::now() > deadline => panic!("QEMU's socket: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    fn wait_for_poweroff(&mut self) {
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "QEMU exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not power off; serial log:\n{}",
                self.serial_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Channel {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Channel {
    fn next_event(&mut self, timeout: Duration, log: &dyn Fn() -> String) -> Value {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => serde_json::from_str(&line).unwrap(),
            other => panic!(
                "no event from the guest ({other:?}); serial log:\n{}",
                log()
            ),
        }
    }

    fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).unwrap();
    }
}

fn boot_and_run(run: &str, jitconfig: &str) -> (Vm, Vec<Value>, Duration) {
    let image = TestImage::find();
    let started = Instant::now();
    let vm = Vm::boot(&image);
    let mut channel = vm.connect();
    let log = || vm.serial_log();
    let ready = channel.next_event(READY_TIMEOUT, &log);
    let boot_time = started.elapsed();
    assert_eq!(ready["event"], "ready", "{ready}");
    assert_eq!(
        ready["kernel"],
        image.image.manifest.kernel_version.as_str()
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    channel
        .send(&json!({ "type": "config", "jitconfig": jitconfig, "run": run, "time_ms": now_ms }));
    let mut events = vec![ready];
    loop {
        let event = channel.next_event(RUN_TIMEOUT, &log);
        let last = event["event"] == "exited" || event["event"] == "error";
        events.push(event);
        if last {
            break;
        }
    }
    (vm, events, boot_time)
}

/// Whether `needle` occurs in the file, and how many of its bytes are not zero. Only the
/// allocated (data) regions of the sparse file are read.
fn scan(path: &std::path::Path, needle: &[u8]) -> (bool, u64) {
    use nix::unistd::{lseek, Whence};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as i64;
    let finder = memchr::memmem::Finder::new(needle);
    let (mut found, mut nonzero) = (false, 0u64);
    let mut offset = 0i64;
    let mut buf = vec![0u8; 8 << 20];
    while offset < len {
        let Ok(start) = lseek(file.as_raw_fd(), offset, Whence::SeekData) else {
            break;
        };
        let end = lseek(file.as_raw_fd(), start, Whence::SeekHole).unwrap();
        file.seek(SeekFrom::Start(start as u64)).unwrap();
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            file.read_exact(&mut buf[..want]).unwrap();
            // Chunks overlap by the needle's length, so a marker across a boundary is found.
            found |= finder.find(&buf[..want]).is_some();
            nonzero += buf[..want].iter().filter(|b| **b != 0).count() as u64;
            pos += want as i64;
            if pos < end {
                let back = needle.len().min(want) as i64;
                pos -= back;
                file.seek(SeekFrom::Start(pos as u64)).unwrap();
            }
        }
        offset = end;
    }
    (found, nonzero)
}

#[test]
fn the_guest_boots_runs_its_job_once_and_powers_off() {
    bounded(Duration::from_secs(240), || {
        let secret = format!("mayfly-dummy-jitconfig-{}", std::process::id());
        let host_clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let (mut vm, events, boot_time) =
            boot_and_run("/home/runner/actions-runner/selftest.sh", &secret);
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ready", "started", "exited"], "{events:?}");
        assert_eq!(events[2]["code"], 0, "serial log:\n{}", vm.serial_log());
        // What the job wrote went through dm-crypt: the host's copy of the scratch disk (taken
        // while the VM still exists) holds data, but not the marker.
        let log = vm.serial_log();
        let marker = log
            .lines()
            .find_map(|l| l.split("SELFTEST marker-written=").nth(1))
            .unwrap_or_else(|| panic!("no marker in the serial log:\n{log}"))
            .trim()
            .to_owned();
        let copy = vm.dir.path().join("scratch-copy.raw");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(vm.scratch())
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        let (found, nonzero) = scan(&copy, marker.as_bytes());
        assert!(
            nonzero > 1 << 20,
            "the scratch disk was never written ({nonzero} bytes)"
        );
        assert!(
            !found,
            "the marker {marker} is readable in the scratch disk file"
        );
        vm.wait_for_poweroff();
        eprintln!("ready after {boot_time:?}");
        for line in vm
            .serial_log()
            .lines()
            .filter(|l| l.contains("mayfly-guest:"))
        {
            eprintln!("{line}");
        }

        let log = vm.serial_log();
        let kernel = TestImage::find().image.manifest.kernel_version;
        for expected in [
            format!("SELFTEST kernel={kernel}"),
            "SELFTEST uid=1001 gid=1001 home=/home/runner user=runner pwd=/home/runner/actions-runner"
                .to_string(),
            format!("SELFTEST jitconfig-bytes={}", secret.len()),
            "SELFTEST jitconfig-in-argv=no".to_string(),
            "SELFTEST runner-libraries=loadable".to_string(),
            "SELFTEST ImageOS=debian12 tool-cache=/opt/hostedtoolcache".to_string(),
            "SELFTEST runner-root-writable=yes".to_string(),
            "SELFTEST root-fs=overlay".to_string(),
            "SELFTEST marker-written=mayfly-selftest-marker-".to_string(),
            "SELFTEST sudo-uid=0".to_string(),
            "SELFTEST port=/dev/vport".to_string(),
            // Reading the config port again, as root, yields nothing.
            "SELFTEST second-read-bytes=0".to_string(),
            "SELFTEST done".to_string(),
            "reboot: Power down".to_string(),
        ] {
            assert!(
                log.contains(&expected),
                "{expected:?} not in serial log:\n{log}"
            );
        }
        assert!(!log.contains("SELFTEST missing-tool="), "{log}");
        let field = |name: &str| -> String {
            log.lines()
                .find_map(|l| l.split(&format!("SELFTEST {name}=")).nth(1))
                .unwrap_or_else(|| panic!("no {name} in the serial log:\n{log}"))
                .trim()
                .to_owned()
        };
        let groups = field("groups");
        assert!(
            groups.split(',').any(|g| g == "docker") && groups.split(',').any(|g| g == "sudo"),
            "{groups}"
        );
        let version = |v: &str| -> (u32, u32) {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap());
            (parts.next().unwrap(), parts.next().unwrap())
        };
        assert!(
            version(&field("glibc")) >= (2, 28),
            "glibc {}",
            field("glibc")
        );
        assert!(version(&field("bash")) >= (4, 0), "bash {}", field("bash"));
        assert!(version(&field("git")) >= (2, 18), "git {}", field("git"));
        // The guest's clock was set from the host's (the config carries it).
        let guest_clock: i64 = field("clock").parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            guest_clock >= host_clock - 5 && guest_clock <= now + 5,
            "guest clock {guest_clock}, host {host_clock}..{now}"
        );
        // GitHub promises 14 GB free; the test VM's scratch disk is 4 GiB.
        let free: u64 = field("free-gib").parse().unwrap();
        assert!(free >= 3, "{free} GiB free");
        assert!(
            !log.contains(&secret),
            "the JIT config reached the serial log:\n{log}"
        );
    });
}

#[test]
fn a_bad_config_is_reported_and_the_guest_powers_off() {
    bounded(Duration::from_secs(170), || {
        let (mut vm, events, _) =
            boot_and_run("/home/runner/actions-runner/no-such-runner.sh", "dummy");
        let last = events.last().unwrap();
        assert_eq!(last["event"], "error", "{events:?}");
        let message = last["message"].as_str().unwrap();
        assert!(message.contains("no-such-runner.sh"), "{message}");
        vm.wait_for_poweroff();
        let log = vm.serial_log();
        assert!(
            log.contains("fatal: starting /home/runner/actions-runner/no-such-runner.sh"),
            "{log}"
        );
    });
}

/// The guest-side watchdog: when the host end of the config channel closes after the hand-over
/// (the agent process died; its kernel closed the socket) while the job still runs, the guest
/// says so on its console and powers off, and QEMU exits by itself.
#[test]
fn the_guest_powers_off_when_its_host_goes_away_mid_job() {
    bounded(Duration::from_secs(170), || {
        let image = TestImage::find();
        let mut vm = Vm::boot(&image);
        let mut channel = vm.connect();
        let log = || vm.serial_log();
        let ready = channel.next_event(READY_TIMEOUT, &log);
        assert_eq!(ready["event"], "ready", "{ready}");
        channel.send(&json!({
            "type": "config",
            "jitconfig": "selftest-hold",
            "run": "/home/runner/actions-runner/selftest.sh",
        }));
        let started = channel.next_event(RUN_TIMEOUT, &log);
        assert_eq!(started["event"], "started", "{started}");
        let deadline = Instant::now() + RUN_TIMEOUT;
        while !vm.serial_log().contains("SELFTEST holding") {
            assert!(Instant::now() < deadline, "the job never ran:\n{}", log());
            std::thread::sleep(Duration::from_millis(100));
        }
        // The job holds; the host goes away without a word.
        drop(channel);
        vm.wait_for_poweroff();
        let log = vm.serial_log();
        assert!(
            log.contains("watchdog: the host closed the config channel"),
            "{log}"
        );
    });
}
