//! A real boot of the test image under QEMU (TCG): `mayfly-guest` as PID 1 mounts, loads its
//! modules, reports `ready` on the config port, takes its one config, runs the runner as uid
//! 1001 (here the image's `selftest.sh`), reports `started` and `exited`, and powers the VM off.
//! The serial log shows what the job saw: kernel, marker in RAM-backed home, root via sudo, a
//! read-only base disk, and a config port that gives nothing a second time.
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
        let overlay = dir.path().join("overlay.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image.image.rootfs)
            .arg(&overlay)
            .status()
            .expect("qemu-img runs (install qemu-utils)");
        assert!(status.success());
        let socket = dir.path().join("cfg.sock");
        let drive = format!("file={},if=virtio,readonly=on", overlay.display());
        let chardev = format!("socket,id=cfg,path={},server=on,wait=off", socket.display());
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "512",
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
            .args(["-drive", &drive, "-device", "virtio-serial-pci"])
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
    channel.send(&json!({ "type": "config", "jitconfig": jitconfig, "run": run }));
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

#[test]
fn the_guest_boots_runs_its_job_once_and_powers_off() {
    bounded(Duration::from_secs(170), || {
        let secret = format!("mayfly-dummy-jitconfig-{}", std::process::id());
        let (mut vm, events, boot_time) = boot_and_run("/opt/runner/selftest.sh", &secret);
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ready", "started", "exited"], "{events:?}");
        assert_eq!(events[2]["code"], 0, "serial log:\n{}", vm.serial_log());
        vm.wait_for_poweroff();
        eprintln!("ready after {boot_time:?}");

        let log = vm.serial_log();
        let kernel = TestImage::find().image.manifest.kernel_version;
        for expected in [
            format!("SELFTEST kernel={kernel}"),
            "SELFTEST uid=1001 gid=1001 home=/home/runner pwd=/home/runner".to_string(),
            format!("SELFTEST jitconfig-bytes={}", secret.len()),
            "SELFTEST marker-written=mayfly-selftest-marker-".to_string(),
            "SELFTEST sudo-uid=0".to_string(),
            "SELFTEST port=/dev/vport".to_string(),
            // Reading the config port again, as root, yields nothing.
            "SELFTEST second-read-bytes=0".to_string(),
            "SELFTEST opt-writable=no".to_string(),
            "SELFTEST home-fs=tmpfs".to_string(),
            "SELFTEST work-fs=tmpfs".to_string(),
            "SELFTEST done".to_string(),
            "reboot: Power down".to_string(),
        ] {
            assert!(
                log.contains(&expected),
                "{expected:?} not in serial log:\n{log}"
            );
        }
        assert!(
            !log.contains(&secret),
            "the JIT config reached the serial log:\n{log}"
        );
    });
}

#[test]
fn a_bad_config_is_reported_and_the_guest_powers_off() {
    bounded(Duration::from_secs(170), || {
        let (mut vm, events, _) = boot_and_run("/opt/runner/no-such-runner.sh", "dummy");
        let last = events.last().unwrap();
        assert_eq!(last["event"], "error", "{events:?}");
        let message = last["message"].as_str().unwrap();
        assert!(
            message.contains("/opt/runner/no-such-runner.sh"),
            "{message}"
        );
        vm.wait_for_poweroff();
        let log = vm.serial_log();
        assert!(
            log.contains("mayfly-guest: fatal: starting /opt/runner/no-such-runner.sh"),
            "{log}"
        );
    });
}
