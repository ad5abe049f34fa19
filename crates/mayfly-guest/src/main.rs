//! `mayfly-guest`: PID 1 of a mayfly VM, in two stages. As `/init` of the initramfs
//! ([`stage1`]) it loads the modules, brings up the network, makes the writable root (the
//! read-only base disk under an overlay whose upper layer is an encrypted scratch disk) and
//! switches to it; there, as `/usr/lib/mayfly/mayfly-guest stage2` ([`init`]), it hands the
//! one-time config to the runner and powers off when the runner ends. Built static, it links
//! nothing of mayfly's.
#![forbid(unsafe_code)]

mod docker;
mod init;
mod port;
mod protocol;
mod stage1;
mod system;

use std::process::ExitCode;

/// A line on the console (ttyS0, captured by the host in memory), with the seconds since the
/// kernel started (where the boot's time goes).
pub(crate) fn log(message: &str) {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    eprintln!("mayfly-guest: [{uptime:>7}] {message}");
}

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!(
            "mayfly-guest is the init of a mayfly VM and runs only as PID 1 (as /init of the \
             image's initramfs); build an image with `mayfly image build --guest <this binary>`"
        );
        return ExitCode::from(2);
    }
    match std::env::args().nth(1).as_deref() {
        Some(init::STAGE2_ARG) => init::main(),
        _ => stage1::main(),
    }
}
