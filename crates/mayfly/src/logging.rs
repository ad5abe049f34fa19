//! Logs go to stderr as text; `MAYFLY_LOG` sets the filter (default `info`, or `warn` for
//! commands that draw their own progress).

use tracing_subscriber::EnvFilter;

pub fn init(default: &str) {
    let filter = EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour for people at a terminal; plain text for log files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
