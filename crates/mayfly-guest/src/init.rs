//! PID 1: set the system up, report `ready`, read the one config line, run the runner as the
//! `runner` user, report its exit, power off. Invariants: the config line is read exactly once
//! and kept only in memory (never a file, never the console); PID 1 never returns.

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::log;
use crate::port::{self, CONFIG_PORT_NAME};
use crate::protocol::{self, ConfigMessage, GuestEvent};
use crate::system::{self, PATH, RUNNER_GID, RUNNER_HOME, RUNNER_UID};

/// How long the last event may take to reach the host before the VM powers off anyway.
const FINAL_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends events to the host from a thread of its own: a write to a virtio port blocks while no
/// host is connected, and PID 1 must still power off when the host has gone away.
struct Events {
    tx: mpsc::Sender<(GuestEvent, mpsc::Sender<()>)>,
}

impl Events {
    fn start(mut port: File) -> Self {
        let (tx, rx) = mpsc::channel::<(GuestEvent, mpsc::Sender<()>)>();
        std::thread::spawn(move || {
            for (event, done) in rx {
                if let Err(e) = event.write_to(&mut port) {
                    log(&format!("sending {event:?} to the host failed: {e}"));
                }
                let _ = done.send(());
            }
        });
        Self { tx }
    }

    /// Queues an event; waits until it was written, at most `timeout` (None: as long as it
    /// takes).
    fn send(&self, event: GuestEvent, timeout: Option<Duration>) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.send((event, done_tx)).is_err() {
            return false;
        }
        match timeout {
            Some(t) => done_rx.recv_timeout(t).is_ok(),
            None => done_rx.recv().is_ok(),
        }
    }
}

/// Reports a fatal error (to the host when the channel is up, always to the console), then
/// powers off.
fn fatal(events: Option<&Events>, message: String) -> ! {
    log(&format!("fatal: {message}"));
    if let Some(events) = events {
        events.send(GuestEvent::Error { message }, Some(FINAL_EVENT_TIMEOUT));
    }
    system::power_off()
}

pub fn main() -> ! {
    if let Err(e) = system::mount_basics() {
        fatal(None, format!("mounting the basic filesystems failed: {e}"));
    }
    match system::load_modules() {
        Ok(n) => log(&format!("{n} kernel modules loaded")),
        Err(e) => fatal(None, format!("loading kernel modules failed: {e}")),
    }
    let port_path = match port::wait_for_port(
        Path::new("/sys/class/virtio-ports"),
        Path::new("/dev"),
        CONFIG_PORT_NAME,
        PORT_TIMEOUT,
    ) {
        Ok(path) => path,
        Err(e) => fatal(None, e.to_string()),
    };
    let (reader, events) = match open_port(&port_path) {
        Ok(pair) => pair,
        Err(e) => fatal(None, format!("opening {}: {e}", port_path.display())),
    };
    if let Err(e) = system::mount_base_disk().and_then(|()| system::create_users()) {
        fatal(Some(&events), e.to_string());
    }
    match system::bring_up_network() {
        Ok(true) => log("network up"),
        Ok(false) => log("no eth0: running without a network"),
        Err(e) => fatal(Some(&events), e.to_string()),
    }
    let kernel = match system::kernel_release() {
        Ok(k) => k,
        Err(e) => fatal(Some(&events), e.to_string()),
    };
    // Blocks until the host is connected to the port.
    events.send(GuestEvent::Ready { kernel }, None);

    let config = match read_config_once(reader) {
        Ok(config) => config,
        Err(e) => fatal(Some(&events), e.to_string()),
    };
    let code = match run_runner(config, &events) {
        Ok(code) => code,
        Err(message) => fatal(Some(&events), message),
    };
    log(&format!("runner exited with {code}"));
    events.send(GuestEvent::Exited { code }, Some(FINAL_EVENT_TIMEOUT));
    system::power_off()
}

fn open_port(path: &Path) -> std::io::Result<(File, Events)> {
    let port = OpenOptions::new().read(true).write(true).open(path)?;
    let writer = port.try_clone()?;
    Ok((port, Events::start(writer)))
}

/// Reads the single config line; the reader is dropped afterwards, so nothing reads the port
/// again. The port itself stays open (for events), which also keeps anyone else from opening
/// it: a virtio port admits one opener at a time.
fn read_config_once(port: File) -> Result<ConfigMessage, protocol::ProtocolError> {
    let mut reader = BufReader::new(port);
    let line = protocol::read_line(&mut reader)?;
    let parsed = ConfigMessage::parse(&line);
    protocol::wipe_string(line);
    parsed
}

/// Runs `<run> --jitconfig <config>` as `runner`, output to the console. Returns its exit code
/// (-1 when a signal ended it).
fn run_runner(config: ConfigMessage, events: &Events) -> Result<i32, String> {
    let mut command = Command::new(&config.run);
    command
        .arg("--jitconfig")
        .arg(&config.jitconfig)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", RUNNER_HOME)
        .env("USER", "runner")
        .env("LOGNAME", "runner")
        .env("SHELL", "/bin/sh")
        .env("LANG", "C.UTF-8")
        .current_dir(RUNNER_HOME)
        .uid(RUNNER_UID)
        .gid(RUNNER_GID)
        .stdin(Stdio::null());
    let run = config.run.clone();
    let spawned = command.spawn();
    drop(command);
    config.wipe();
    let mut child = spawned.map_err(|e| format!("starting {run} failed: {e}"))?;
    events.send(GuestEvent::Started, Some(FINAL_EVENT_TIMEOUT));
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {run} failed: {e}"))?;
    Ok(status.code().unwrap_or(-1))
}
