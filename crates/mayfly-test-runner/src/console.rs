//! What the runner says. Status lines go to stdout with the real listener's `<time>Z: ` prefix
//! and to its log in `_diag/` once that is open; errors go to stderr and the log; job output is
//! echoed to stdout (the VM's serial console) as it arrives. Failing to write any of these never
//! stops a job. The JIT config never reaches this module.

use std::fs::File;
use std::io::{self, Write as _};

use chrono::Utc;

#[derive(Debug, Default)]
pub struct Console {
    log: Option<File>,
}

impl Console {
    pub fn attach_log(&mut self, log: File) {
        self.log = Some(log);
    }

    fn log(&mut self, level: &str, text: &str) {
        if let Some(log) = &mut self.log {
            let now = Utc::now().format("%Y-%m-%d %H:%M:%S%.3fZ");
            let _ = writeln!(log, "[{now} {level} Runner] {text}");
        }
    }

    /// A line such as `2024-05-01 10:00:00Z: Listening for Jobs`.
    pub fn status(&mut self, text: &str) {
        let now = Utc::now().format("%Y-%m-%d %H:%M:%SZ");
        let _ = writeln!(io::stdout().lock(), "{now}: {text}");
        self.log("INFO", text);
    }

    pub fn error(&mut self, text: &str) {
        let _ = writeln!(io::stderr().lock(), "Runner.Listener: {text}");
        self.log("ERR ", text);
    }

    /// Job output, as it arrives.
    pub fn echo(&mut self, bytes: &[u8]) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}
