//! Which accelerator QEMU can use here. `/dev/kvm` can exist and still hang (nested KVM), so
//! KVM is proven by booting a kernel under it with a short timeout; anything else means TCG.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU's arguments for this accelerator.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Self::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Self::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// The outcome of probing, with the reason (for `mayfly doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelProbe {
    pub accel: Accel,
    pub reason: String,
}

/// How long a KVM boot may take before KVM is judged unusable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Probes KVM by booting `kernel` without a root filesystem: a working KVM reaches the kernel's
/// "unable to mount root" panic (and, with `-no-reboot`, QEMU exits) within seconds.
pub async fn probe(qemu: &Path, kernel: &Path) -> AccelProbe {
    let tcg = |reason: String| AccelProbe {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!(
            "/dev/kvm is not usable ({e}); using TCG (software emulation)"
        ));
    }
    let mut command = Command::new(qemu);
    command
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return tcg(format!("could not run {}: {e}", qemu.display())),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let console = String::from_utf8_lossy(&output.stdout);
            if console.contains("Linux version") {
                AccelProbe { accel: Accel::Kvm, reason: "a kernel booted under KVM".to_owned() }
            } else {
                let stderr = String::from_utf8_lossy(&output.stderr);
                tcg(format!("QEMU could not boot under KVM ({}); using TCG", stderr.trim()))
            }
        }
        Ok(Err(e)) => tcg(format!("the KVM probe failed ({e}); using TCG")),
        Err(_) => tcg(format!(
            "a boot under KVM did not finish within {PROBE_TIMEOUT:?} (nested KVM hangs here); using TCG"
        )),
    }
}
