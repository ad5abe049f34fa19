//! The guest's serial console, kept in memory only: the last few kilobytes, for diagnosing a
//! boot that failed. It may hold job output, so it is never written to disk or logged, and it is
//! dropped with the VM.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

const KEEP: usize = 64 * 1024;

/// A bounded tail of the console.
#[derive(Debug, Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    /// Reads `source` until it ends, keeping the last 64 KiB.
    pub fn follow(&self, mut source: impl AsyncRead + Unpin + Send + 'static) {
        let tail = self.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = source.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.push(&buf[..n]);
            }
        });
    }

    fn push(&self, bytes: &[u8]) {
        let Ok(mut tail) = self.0.lock() else { return };
        tail.extend(bytes);
        let excess = tail.len().saturating_sub(KEEP);
        tail.drain(..excess);
    }

    /// The last `max` bytes as text.
    pub fn last(&self, max: usize) -> String {
        let Ok(tail) = self.0.lock() else {
            return String::new();
        };
        let skip = tail.len().saturating_sub(max);
        let bytes: Vec<u8> = tail.iter().skip(skip).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether the console so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.last(KEEP).contains(needle)
    }
}
