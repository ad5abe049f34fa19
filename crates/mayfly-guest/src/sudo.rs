//! `sudo`: the same binary, installed setuid-root at `/usr/bin/sudo`, runs its arguments as
//! root without a password, as on GitHub's hosted runners. Jobs have root by design; nothing on
//! the host relies on the guest being unprivileged.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: sudo [-E] [-H] [-n] [-u root] [--] command [args...]";

/// What to run, after sudo's own flags.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub set_home: bool,
    pub command: Vec<OsString>,
}

/// Accepts the flags workflows commonly pass (`-E`, `-H`, `-n`, `-S`, `-u root`); anything else
/// is refused with the usage line.
pub fn parse(args: &[OsString]) -> Result<Invocation, String> {
    let mut set_home = false;
    let mut i = 0;
    while i < args.len() {
        let Some(arg) = args[i].to_str() else { break };
        match arg {
            "--" => {
                i += 1;
                break;
            }
            "-E" | "-n" | "-S" | "--preserve-env" | "--non-interactive" => {}
            "-H" | "--set-home" => set_home = true,
            "-u" | "--user" => {
                i += 1;
                match args.get(i).and_then(|a| a.to_str()) {
                    Some("root" | "0" | "#0") => {}
                    other => return Err(format!("sudo: only -u root is supported, not {other:?}")),
                }
            }
            flag if flag.starts_with('-') => {
                return Err(format!("sudo: unsupported option {flag}\n{USAGE}"))
            }
            _ => break,
        }
        i += 1;
    }
    let command = args[i..].to_vec();
    if command.is_empty() {
        return Err(USAGE.to_string());
    }
    Ok(Invocation { set_home, command })
}

pub fn main(args: &[OsString]) -> ExitCode {
    let invocation = match parse(args) {
        Ok(inv) => inv,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(1);
        }
    };
    let (program, rest) = match invocation.command.split_first() {
        Some(split) => split,
        None => return ExitCode::from(1),
    };
    let mut command = Command::new(program);
    command
        .args(rest)
        .uid(0)
        .gid(0)
        .env("SUDO_UID", crate::system::RUNNER_UID.to_string());
    if invocation.set_home {
        command.env("HOME", "/root");
    }
    let err = command.exec();
    eprintln!("sudo: {}: {err}", program.to_string_lossy());
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn runs_the_command_after_common_flags() {
        let inv = parse(&args(&["-E", "-n", "apt-get", "install", "-y", "x"])).unwrap();
        assert_eq!(inv.command, args(&["apt-get", "install", "-y", "x"]));
        assert!(!inv.set_home);
        let inv = parse(&args(&["-H", "-u", "root", "--", "-weird"])).unwrap();
        assert_eq!(inv.command, args(&["-weird"]));
        assert!(inv.set_home);
        // Flags of the command are the command's.
        let inv = parse(&args(&["id", "-u"])).unwrap();
        assert_eq!(inv.command, args(&["id", "-u"]));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(parse(&args(&[])).is_err());
        assert!(parse(&args(&["-E"])).is_err());
        assert!(parse(&args(&["-u", "runner", "id"]))
            .unwrap_err()
            .contains("only -u root"));
        assert!(parse(&args(&["-i"]))
            .unwrap_err()
            .contains("unsupported option -i"));
    }
}
