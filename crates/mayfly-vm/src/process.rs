//! A process named beyond its pid (pid and start time), so that a record naming an owner, a
//! QEMU or a network's creator is never mistaken for a later process that reuses the pid.

use serde::{Deserialize, Serialize};

/// A process identified beyond its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            pid,
            start: start_time(pid)?,
        })
    }

    /// A process by pid, if it exists.
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether this very process (not a later one with the same pid) is alive. A zombie (exited,
    /// not yet reaped by its parent) is not.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !is_zombie(self.pid)
    }
}

/// Whether `/proc/<pid>/stat` says the process is a zombie (state `Z`, field 3).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rfind(')')
                .map(|i| stat[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// `/proc/<pid>/stat` field 22. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 is the first; field 22 is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Waits until `done()` holds, for at most `within`; `false` if it never did. Looked at at
/// once, then after 1 ms, backing off to every 20 ms: what a VM's teardown waits for (a process
/// gone, a link the kernel removes) usually takes a millisecond or a few, and the teardown
/// waits for it.
pub(crate) async fn poll_until(
    within: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.alive());
        let impostor = ProcessId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!impostor.alive());
        assert!(!ProcessId {
            pid: u32::MAX - 1,
            start: 0
        }
        .alive());
    }
}
