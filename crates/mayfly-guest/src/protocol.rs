//! The JSON-lines protocol on the config port (`org.mayfly.config`): one JSON object per
//! `\n`-terminated line. The guest sends events; the host sends exactly one config message.
//! Invariant: the JIT config is never printed (Debug redacts it) and lives only in memory.

use std::fmt;
use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

/// The longest config line accepted. GitHub's encoded JIT configs are a few KiB.
pub const MAX_LINE_BYTES: u64 = 1024 * 1024;

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GuestEvent {
    /// Network up, port open: the guest waits for its config.
    Ready { kernel: String },
    /// The runner process was spawned.
    Started,
    /// The runner ended; `code` is -1 when a signal killed it.
    Exited { code: i32 },
    /// Something failed; the guest powers off after sending this.
    Error { message: String },
}

impl GuestEvent {
    /// The event as one protocol line, `\n` included.
    pub fn to_line(&self) -> Result<String, ProtocolError> {
        let mut line = serde_json::to_string(self).map_err(ProtocolError::Encode)?;
        line.push('\n');
        Ok(line)
    }

    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), ProtocolError> {
        out.write_all(self.to_line()?.as_bytes())
            .and_then(|()| out.flush())
            .map_err(ProtocolError::Io)
    }
}

/// Host → guest, exactly once: what to run and the JIT config to hand it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMessage {
    #[serde(rename = "type")]
    kind: String,
    pub jitconfig: String,
    pub run: String,
    /// The host's clock (ms since the epoch) when it sent the config.
    #[serde(default)]
    pub time_ms: Option<u64>,
}

impl fmt::Debug for ConfigMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigMessage")
            .field("jitconfig", &"[redacted]")
            .field("run", &self.run)
            .finish()
    }
}

impl ConfigMessage {
    /// Parses one line (without or with its `\n`) and checks it is a usable config.
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let message: Self =
            serde_json::from_str(line.trim_end_matches(['\n', '\r'])).map_err(|e| {
                // serde_json's message may quote input: keep only its category and position.
                ProtocolError::Malformed(format!(
                    "{:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?;
        if message.kind != "config" {
            return Err(ProtocolError::Malformed(format!(
                "expected type \"config\", got {:?}",
                message.kind
            )));
        }
        if message.jitconfig.is_empty() {
            return Err(ProtocolError::Malformed("jitconfig is empty".into()));
        }
        if !message.run.starts_with('/') {
            return Err(ProtocolError::Malformed(format!(
                "run must be an absolute path, got {:?}",
                message.run
            )));
        }
        Ok(message)
    }

    /// Overwrites the JIT config in memory before the message is dropped.
    pub fn wipe(self) {
        wipe_string(self.jitconfig);
    }
}

/// Zeroes a string's bytes before freeing them.
pub fn wipe_string(s: String) {
    let mut bytes = s.into_bytes();
    bytes.fill(0);
    drop(std::hint::black_box(bytes));
}

/// Reads exactly one line of at most [`MAX_LINE_BYTES`]; nothing after its `\n` is consumed
/// beyond what the reader buffers.
pub fn read_line<R: BufRead>(reader: &mut R) -> Result<String, ProtocolError> {
    let mut buf = Vec::new();
    let mut limited = reader.by_ref().take(MAX_LINE_BYTES + 1);
    let n = limited
        .read_until(b'\n', &mut buf)
        .map_err(ProtocolError::Io)?;
    if n == 0 {
        return Err(ProtocolError::Closed);
    }
    if buf.last() != Some(&b'\n') {
        let too_long = buf.len() as u64 > MAX_LINE_BYTES;
        buf.fill(0);
        return Err(if too_long {
            ProtocolError::TooLong
        } else {
            ProtocolError::Closed
        });
    }
    String::from_utf8(buf).map_err(|e| {
        let mut bytes = e.into_bytes();
        bytes.fill(0);
        ProtocolError::Malformed("the line is not UTF-8".into())
    })
}

#[derive(Debug)]
pub enum ProtocolError {
    /// The host closed the channel before a whole line arrived.
    Closed,
    TooLong,
    Malformed(String),
    Encode(serde_json::Error),
    Io(std::io::Error),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => write!(
                f,
                "the host closed the config channel before sending a line"
            ),
            Self::TooLong => write!(f, "the config line is longer than {MAX_LINE_BYTES} bytes"),
            Self::Malformed(why) => write!(f, "the config line is malformed: {why}"),
            Self::Encode(_) => write!(f, "encoding an event failed"),
            Self::Io(_) => write!(f, "the config channel failed"),
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Encode(e) => Some(e),
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn events_serialise_as_documented() {
        let cases = [
            (
                GuestEvent::Ready {
                    kernel: "6.1.0-56-amd64".into(),
                },
                r#"{"event":"ready","kernel":"6.1.0-56-amd64"}"#,
            ),
            (GuestEvent::Started, r#"{"event":"started"}"#),
            (
                GuestEvent::Exited { code: -1 },
                r#"{"event":"exited","code":-1}"#,
            ),
            (
                GuestEvent::Error {
                    message: "no \"disk\"".into(),
                },
                r#"{"event":"error","message":"no \"disk\""}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(event.to_line().unwrap(), format!("{json}\n"));
            let back: GuestEvent = serde_json::from_str(json).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn config_parses_and_debug_redacts() {
        let line =
            "{\"type\":\"config\",\"jitconfig\":\"c2VjcmV0\",\"run\":\"/home/runner/actions-runner/run.sh\"}\n";
        let config = ConfigMessage::parse(line).unwrap();
        assert_eq!(config.jitconfig, "c2VjcmV0");
        assert_eq!(config.run, "/home/runner/actions-runner/run.sh");
        assert!(!format!("{config:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn bad_configs_are_refused_without_echoing_them() {
        for line in [
            r#"{"type":"other","jitconfig":"x","run":"/r"}"#,
            r#"{"type":"config","jitconfig":"","run":"/r"}"#,
            r#"{"type":"config","jitconfig":"x","run":"relative.sh"}"#,
            r#"{"type":"config","jitconfig":"x","run":"/r","extra":1}"#,
            r#"{"type":"config","run":"/r"}"#,
            r#"{"type":"config","jitconfig":"SECRETSECRET","run":"/r""#,
            "not json SECRETSECRET",
        ] {
            let err = ConfigMessage::parse(line).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_)), "{line}: {err}");
            assert!(!err.to_string().contains("SECRETSECRET"), "{err}");
        }
    }

    #[test]
    fn read_line_takes_one_line_and_reports_closed_channels() {
        let mut input: &[u8] = b"{\"a\":1}\n{\"b\":2}\n";
        assert_eq!(read_line(&mut input).unwrap(), "{\"a\":1}\n");
        let mut partial: &[u8] = b"{\"a\":";
        assert!(matches!(
            read_line(&mut partial),
            Err(ProtocolError::Closed)
        ));
        let mut empty: &[u8] = b"";
        assert!(matches!(read_line(&mut empty), Err(ProtocolError::Closed)));
        let long = vec![b'x'; MAX_LINE_BYTES as usize + 10];
        let mut long: &[u8] = &long;
        assert!(matches!(read_line(&mut long), Err(ProtocolError::TooLong)));
    }
}
