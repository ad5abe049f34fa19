//! The host end of the virtio-serial channel `org.mayfly.config`: JSON lines over the unix
//! socket QEMU serves. The guest says `ready`, gets its config exactly once, then reports
//! `started` and `exited`. Everything the guest sends is untrusted: lines are length-capped and
//! anything unreadable is an error value, never a panic.

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// The virtio-serial port name the guest looks for.
pub const PORT_NAME: &str = "org.mayfly.config";
/// The longest line the host accepts from a guest.
const MAX_LINE: u64 = 16 * 1024;

/// What the guest needs to run its one job. The JIT config is secret: it reaches the guest
/// through the channel only, and the serialised bytes are zeroized after sending.
#[derive(Debug)]
pub struct GuestConfig {
    pub jitconfig: SecretString,
    /// The runner's entry point in the guest, e.g. `/home/runner/actions-runner/run.sh`.
    pub run: String,
}

/// A message from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GuestEvent {
    /// The guest booted, has its network and opened the port.
    Ready { kernel: String },
    /// The runner process was started.
    Started,
    /// The runner exited with this code (-1: killed by a signal).
    Exited { code: i32 },
    /// The guest hit a problem it could not get past.
    Error { message: String },
}

/// Why the channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the guest channel socket {0} did not accept a connection in time")]
    ConnectTimeout(String),
    #[error("the guest channel failed")]
    Io(#[from] std::io::Error),
    #[error("the guest closed the channel")]
    Closed,
    #[error("the guest sent a line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the guest sent something that is not a known event")]
    Garbled,
    #[error("the config was already handed over; it is sent once only")]
    AlreadySent,
}

/// A connected channel.
#[derive(Debug)]
pub struct GuestChannel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    config_sent: bool,
}

impl GuestChannel {
    /// Connects to QEMU's socket, retrying until it exists (QEMU creates it as it starts).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path).await {
                Ok(stream) => {
                    let (read, writer) = stream.into_split();
                    return Ok(Self {
                        reader: BufReader::new(read),
                        writer,
                        config_sent: false,
                    });
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(_) => return Err(ChannelError::ConnectTimeout(path.display().to_string())),
            }
        }
    }

    /// The next event from the guest.
    pub async fn next_event(&mut self) -> Result<GuestEvent, ChannelError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Err(ChannelError::Closed);
        }
        if !line.ends_with(b"\n") {
            return Err(if read as u64 >= MAX_LINE {
                ChannelError::LineTooLong
            } else {
                ChannelError::Closed
            });
        }
        serde_json::from_slice(&line).map_err(|_| ChannelError::Garbled)
    }

    /// Hands the config over. Allowed once per channel.
    pub async fn send_config(&mut self, config: &GuestConfig) -> Result<(), ChannelError> {
        if self.config_sent {
            return Err(ChannelError::AlreadySent);
        }
        let message = serde_json::json!({
            "type": "config",
            "jitconfig": config.jitconfig.expose_secret(),
            "run": config.run,
            // The guest sets its clock from this before the runner starts (GitHub's runner
            // tokens live 5 minutes).
            "time_ms": chrono::Utc::now().timestamp_millis(),
        });
        let mut bytes = Zeroizing::new(message.to_string().into_bytes());
        bytes.push(b'\n');
        self.config_sent = true;
        self.writer.write_all(&bytes).await?;
        self.writer.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    async fn pair() -> (GuestChannel, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (host, guest) = tokio::join!(
            GuestChannel::connect(&path, Duration::from_secs(5)),
            listener.accept()
        );
        (host.unwrap(), guest.unwrap().0, dir)
    }

    #[tokio::test]
    async fn events_parse_and_config_goes_once() {
        let (mut host, mut guest, _dir) = pair().await;
        guest
            .write_all(
                b"{\"event\":\"ready\",\"kernel\":\"6.1.0\"}\n{\"event\":\"exited\",\"code\":3}\n",
            )
            .await
            .unwrap();
        assert_eq!(
            host.next_event().await.unwrap(),
            GuestEvent::Ready {
                kernel: "6.1.0".into()
            }
        );
        assert_eq!(
            host.next_event().await.unwrap(),
            GuestEvent::Exited { code: 3 }
        );
        let config = GuestConfig {
            jitconfig: SecretString::from("secret-jit".to_owned()),
            run: "/home/runner/actions-runner/run.sh".into(),
        };
        host.send_config(&config).await.unwrap();
        assert!(matches!(
            host.send_config(&config).await,
            Err(ChannelError::AlreadySent)
        ));
        let mut received = vec![0u8; 256];
        let n = guest.read(&mut received).await.unwrap();
        let line: serde_json::Value = serde_json::from_slice(&received[..n]).unwrap();
        assert_eq!(line["jitconfig"], "secret-jit");
        assert!(!format!("{config:?}").contains("secret-jit"));
    }

    #[tokio::test]
    async fn hostile_guest_input_is_an_error_not_a_panic() {
        let (mut host, mut guest, _dir) = pair().await;
        guest
            .write_all(b"{\"event\":\"reboot-the-host\"}\nnot json\n")
            .await
            .unwrap();
        assert!(matches!(
            host.next_event().await,
            Err(ChannelError::Garbled)
        ));
        assert!(matches!(
            host.next_event().await,
            Err(ChannelError::Garbled)
        ));
        let long = vec![b'x'; 20_000];
        guest.write_all(&long).await.unwrap();
        assert!(matches!(
            host.next_event().await,
            Err(ChannelError::LineTooLong)
        ));
        drop(guest);
    }

    #[tokio::test]
    async fn a_missing_socket_times_out_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestChannel::connect(&dir.path().join("none.sock"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("none.sock"));
    }
}
