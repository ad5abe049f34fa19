//! Logs go to stderr as text; `MAYFLY_LOG` sets the filter (default `info`, or `warn` for
//! commands that draw their own progress). A prefix, when given, starts every line (an agent
//! of simulated VMs says so this way, whatever logs).

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub fn init(default: &str, prefix: Option<&'static str>) {
    let filter = EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour for people at a terminal; plain text for log files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match prefix {
        Some(prefix) => builder
            .event_format(Prefixed {
                prefix,
                inner: tracing_subscriber::fmt::format(),
            })
            .init(),
        None => builder.init(),
    }
}

/// Writes `prefix`, then the line as `inner` formats it.
struct Prefixed<F> {
    prefix: &'static str,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        writer.write_str(self.prefix)?;
        self.inner.format_event(ctx, writer, event)
    }
}
