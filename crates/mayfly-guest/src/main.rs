//! `mayfly-guest`: PID 1 of a mayfly VM (see [`init`]), and — when invoked as `sudo` — the
//! guest's passwordless sudo (see [`sudo`]). Built static, it links nothing of mayfly's and
//! needs nothing in the guest but `/bin/busybox`.
#![forbid(unsafe_code)]

mod init;
mod port;
mod protocol;
mod sudo;
mod system;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// A line on the console (ttyS0, captured by the host as the serial log).
pub(crate) fn log(message: &str) {
    eprintln!("mayfly-guest: {message}");
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "sudo" {
        return sudo::main(args.get(1..).unwrap_or_default());
    }
    if std::process::id() != 1 {
        eprintln!(
            "mayfly-guest is the init of a mayfly VM and runs only as PID 1 (as /init of the \
             image's initramfs); build an image with `mayfly image build --guest <this binary>`"
        );
        return ExitCode::from(2);
    }
    init::main()
}
