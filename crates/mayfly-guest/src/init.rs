//! Stage 2, PID 1 in the job's root: report `ready`, read the one config line, set the clock
//! from it, start the runner as GitHub launches it (`run.sh` as user `runner`, the JIT config
//! in `ACTIONS_RUNNER_INPUT_JITCONFIG`, never in argv), start Docker when a job first uses its
//! socket, report the runner's exit, power off. Invariants: the config line is read exactly
//! once and kept only in memory (never a file, never the console); PID 1 never returns; a VM
//! never outlives its host end: no config within [`CONFIG_DEADLINE`], or the host's end of the
//! port closing after the config (the agent died), powers the VM off (see [`watch_host`]).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::log;
use crate::port::{self, CONFIG_PORT_NAME};
use crate::protocol::{self, ConfigMessage, GuestEvent};
use crate::system::{self, PATH};

/// The argument stage 1 starts stage 2 with.
pub const STAGE2_ARG: &str = "stage2";
const RUNNER_UID: u32 = 1001;
const RUNNER_GID: u32 = 1001;
const RUNNER_HOME: &str = "/home/runner";
/// How long the last event may take to reach the host before the VM powers off anyway.
const FINAL_EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after stage 2 starts the host may take to connect and hand the config over: a
/// warm pool VM waits for its job up to its profile's maximum age (at most 24 hours, the
/// server's config check); past this, nobody is coming. A host that goes away before sending
/// it closes the port, and the read of the config ends the VM at once.
const CONFIG_DEADLINE: Duration = Duration::from_secs(25 * 3600);

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
    let config_received = Arc::new(AtomicBool::new(false));
    power_off_without_config(CONFIG_DEADLINE, config_received.clone());
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
    match crate::docker::activate_on_first_use() {
        Ok(true) => log("docker: starts when a job first uses /run/docker.sock"),
        Ok(false) => log("docker: not installed in this image"),
        Err(e) => log(&format!("docker: socket activation failed: {e}")),
    }
    let kernel = match system::kernel_release() {
        Ok(k) => k,
        Err(e) => fatal(Some(&events), e.to_string()),
    };
    // Blocks until the host is connected to the port.
    events.send(GuestEvent::Ready { kernel }, None);

    let (config, port) = match read_config_once(reader) {
        Ok(pair) => pair,
        Err(e) => fatal(Some(&events), e.to_string()),
    };
    config_received.store(true, Ordering::SeqCst);
    watch_host(port);
    if let Some(ms) = config.time_ms {
        // The runner's login token lives 5 minutes: the clock must be right before it starts.
        if let Err(e) = system::set_clock(ms) {
            log(&format!("setting the clock failed: {e}"));
        }
    }
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

/// Reads the single config line and gives the port back for [`watch_host`], which only
/// waits for the host to go away and never parses anything again. The port itself stays open
/// (for events), which also keeps anyone else from opening it: a virtio port admits one opener
/// at a time.
fn read_config_once(port: File) -> Result<(ConfigMessage, File), protocol::ProtocolError> {
    let mut reader = BufReader::new(port);
    let line = protocol::read_line(&mut reader)?;
    let parsed = ConfigMessage::parse(&line);
    protocol::wipe_string(line);
    Ok((parsed?, reader.into_inner()))
}

/// Powers off when the config has not arrived within `deadline` (the host never connected, or
/// connected and never sent it: either way no agent will ever run this VM's job).
fn power_off_without_config(deadline: Duration, received: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        if !received.load(Ordering::SeqCst) {
            log(&format!(
                "watchdog: no config from the host within {} s: powering off",
                deadline.as_secs()
            ));
            system::power_off();
        }
    });
}

/// The guest side of "no VM outlives its agent". The host (the agent) keeps its end of the
/// port open for the VM's whole life; when the agent process dies its kernel closes that
/// socket, QEMU tells the guest the host side closed, and a read on a port with no data and no
/// host returns 0 (Linux `virtio_console`'s `port_fops_read`). So this thread reads until EOF
/// and then powers off. The host sends nothing after the config; anything it does send is
/// discarded unread.
fn watch_host(mut port: File) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            match port.read(&mut buf) {
                Ok(0) => {
                    log("watchdog: the host closed the config channel (its agent is gone): powering off");
                    system::power_off();
                }
                Ok(_) => buf.fill(0),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log(&format!(
                        "watchdog: reading the config channel failed ({e}): powering off"
                    ));
                    system::power_off();
                }
            }
        }
    });
}

/// `KEY=VALUE` lines of `/etc/environment` (quotes stripped; comments and junk skipped).
pub fn parse_environment(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (key, value) = l.split_once('=')?;
            let valid =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            valid.then(|| {
                let value = value.trim_matches('"').trim_matches('\'');
                (key.to_owned(), value.to_owned())
            })
        })
        .collect()
}

/// Runs `<run>` as `runner` (its groups, `docker` and `sudo` among them, through util-linux's
/// `setpriv --init-groups`) with the JIT config in `ACTIONS_RUNNER_INPUT_JITCONFIG`, output to
/// the console. Returns its exit code (-1 when a signal ended it).
fn run_runner(config: ConfigMessage, events: &Events) -> Result<i32, String> {
    if !Path::new(&config.run).is_file() {
        let run = config.run.clone();
        config.wipe();
        return Err(format!(
            "starting {run} failed: no such file in the image (is the profile's runner_entry right?)"
        ));
    }
    let environment = std::fs::read_to_string("/etc/environment").unwrap_or_default();
    let workdir = Path::new(&config.run)
        .parent()
        .map_or_else(|| RUNNER_HOME.into(), Path::to_path_buf);
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={RUNNER_UID}"))
        .arg(format!("--regid={RUNNER_GID}"))
        .arg("--init-groups")
        .arg("--")
        .arg(&config.run)
        .env_clear()
        .envs(parse_environment(&environment))
        .env("PATH", PATH)
        .env("HOME", RUNNER_HOME)
        .env("USER", "runner")
        .env("LOGNAME", "runner")
        .env("SHELL", "/bin/bash")
        .env("LANG", "C.UTF-8")
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &config.jitconfig)
        .current_dir(workdir)
        .stdin(Stdio::null());
    let run = config.run.clone();
    let spawned = command.spawn();
    drop(command);
    config.wipe();
    let mut child = spawned.map_err(|e| format!("starting {run} (through setpriv) failed: {e}"))?;
    events.send(GuestEvent::Started, Some(FINAL_EVENT_TIMEOUT));
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {run} failed: {e}"))?;
    Ok(status.code().unwrap_or(-1))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn environment_lines_are_parsed_and_junk_skipped() {
        let text = "# comment\nImageOS=debian12\nexport LANG=\"C.UTF-8\"\nnot a line\n=x\nBAD-KEY=1\nTOOLS='/opt/x'\n";
        assert_eq!(
            parse_environment(text),
            vec![
                ("ImageOS".to_owned(), "debian12".to_owned()),
                ("LANG".to_owned(), "C.UTF-8".to_owned()),
                ("TOOLS".to_owned(), "/opt/x".to_owned()),
            ]
        );
    }
}
