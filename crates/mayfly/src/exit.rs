//! Exit codes of `mayfly`, mapped in this one place.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failed while running (network, store, a child process) |
//! | 2 | bad command line (clap's own code), or a query the server refused as bad input (400) |
//! | 3 | bad configuration: a file, a key, a permission; nothing was started |

use std::process::ExitCode;

pub const HELP: &str = "Exit codes: 0 success · 1 failed while running · 2 bad command line or \
a query the server refused · 3 bad configuration (nothing was started).\nLogs go to stderr; set MAYFLY_LOG (e.g. \
MAYFLY_LOG=debug) to change the level, MAYFLY_LOG_FORMAT=json for one JSON object a line.";

/// Why a subcommand failed.
#[derive(Debug)]
pub enum Failure {
    /// The configuration cannot be used; nothing was started.
    Config(anyhow::Error),
    /// Something failed while running.
    Runtime(anyhow::Error),
    /// The server refused the input as bad (400): like a bad command line.
    BadInput(anyhow::Error),
}

/// Prints the error chain to stderr and returns the exit code.
pub fn report(failure: &Failure) -> ExitCode {
    let (code, error) = match failure {
        Failure::Config(e) => (3, e),
        Failure::Runtime(e) => (1, e),
        Failure::BadInput(e) => (2, e),
    };
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(code)
}

/// Marks an error as a configuration problem.
pub trait ConfigContext<T> {
    fn config_err(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ConfigContext<T> for Result<T, E> {
    fn config_err(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Config(e.into()))
    }
}

/// Marks an error as a failure while running.
pub trait RuntimeContext<T> {
    fn runtime_err(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> RuntimeContext<T> for Result<T, E> {
    fn runtime_err(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Runtime(e.into()))
    }
}
