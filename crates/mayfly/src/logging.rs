//! Logs go to stderr; `MAYFLY_LOG` sets the filter (default `info`, or `warn` for commands that
//! draw their own progress) and `MAYFLY_LOG_FORMAT` the format: `text` (the default) or `json`,
//! one JSON object a line for log collectors. A prefix, when given, starts every text line; a
//! JSON line carries it as its first key, `notice` (an agent of simulated VMs says so this way,
//! whatever logs).

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The log line formats `MAYFLY_LOG_FORMAT` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// The format `MAYFLY_LOG_FORMAT` names, or why it names none.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MAYFLY_LOG_FORMAT") {
            Err(_) => Ok(Self::Text),
            Ok(value) => Self::parse(&value),
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "MAYFLY_LOG_FORMAT={other:?} is not a log format; use `text` or `json`"
            )),
        }
    }
}

pub fn init(default: &str, format: Format, prefix: Option<&'static str>) {
    let filter = EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => {
            // Colour for people at a terminal; plain text for log files and journald.
            let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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
        Format::Json => {
            let builder = builder.with_ansi(false).json().flatten_event(true);
            match prefix {
                Some(prefix) => builder
                    .event_format(JsonNotice {
                        notice: prefix.trim(),
                        inner: tracing_subscriber::fmt::format().json().flatten_event(true),
                    })
                    .init(),
                None => builder.init(),
            }
        }
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

/// A JSON line as `inner` formats it, with `"notice": <notice>` as its first key.
struct JsonNotice<F> {
    notice: &'static str,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for JsonNotice<F>
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
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let notice = serde_json::to_string(self.notice).map_err(|_| std::fmt::Error)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"notice\":{notice},{rest}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::Format;

    #[test]
    fn formats_are_named_plainly() {
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert_eq!(Format::parse(" JSON "), Ok(Format::Json));
        assert_eq!(Format::parse("text"), Ok(Format::Text));
        assert_eq!(Format::parse(""), Ok(Format::Text));
        let wrong = Format::parse("yaml").unwrap_err();
        assert!(wrong.contains("use `text` or `json`"), "{wrong}");
    }
}
