//! Running `ip`, `nft` and friends as child processes (no netlink, no unsafe), with a time
//! limit and their stderr in the error; plus signalling processes by pid. Every command is
//! bounded, so a wedged tool turns into an error instead of a hung agent.

use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::NetworkError;

/// How long any one `ip`/`nft`/`sysctl` call may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `program args…`, returns its stdout; a non-zero exit is an error carrying stderr.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    run_with_stdin(program, args, None).await
}

/// Like [`run`], feeding `stdin` to the process (used for `nft -f -`).
pub(crate) async fn run_with_stdin(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NetworkError> {
    let command_line = render(program, args);
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| NetworkError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|source| NetworkError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        drop(pipe);
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| NetworkError::Timeout {
            command: command_line.clone(),
            after: COMMAND_TIMEOUT,
        })?
        .map_err(|source| NetworkError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command: command_line,
            status: output
                .status
                .code()
                .map_or_else(|| "a signal".to_owned(), |c| c.to_string()),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// `ip netns exec <netns> <program> <args…>`.
pub(crate) async fn run_in_netns(
    netns: &str,
    program: &str,
    args: &[&str],
) -> Result<String, NetworkError> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend_from_slice(args);
    run("ip", &full).await
}

/// A `tokio` command that runs `program` inside `netns` (`ip netns exec <netns> <program>`).
pub(crate) fn netns_command(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

fn render(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Whether a failed command said the thing it should remove or find is not there.
pub(crate) fn is_absent(error: &NetworkError) -> bool {
    match error {
        NetworkError::Command { stderr, .. } => {
            let s = stderr.to_ascii_lowercase();
            s.contains("no such file")
                || s.contains("cannot find device")
                || s.contains("does not exist")
                || s.contains("not found")
        }
        _ => false,
    }
}

/// Whether a process with this pid exists (zombies count as gone: they hold no resources).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// The process's command line with NULs turned into spaces, if it exists.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL and waits again. Ok when the process is gone.
pub(crate) async fn terminate(pid: u32, grace: Duration) -> Result<(), String> {
    let target = Pid::from_raw(i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?);
    for (signal, wait) in [
        (Signal::SIGTERM, grace),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        match kill(target, signal) {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(()),
            Err(e) => return Err(format!("kill({pid}, {signal}): {e}")),
        }
        if crate::process::poll_until(wait, || !alive(pid)).await {
            return Ok(());
        }
    }
    if alive(pid) {
        Err(format!("process {pid} still alive after SIGKILL"))
    } else {
        Ok(())
    }
}
