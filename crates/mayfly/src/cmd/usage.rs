//! `mayfly usage summary|jobs|top`: the server's usage reports (`/api/v1/usage/…`) as an aligned
//! table for people, the server's JSON for programs, CSV for spreadsheets. The numbers are the
//! server's; the CSV is written by the functions behind the dashboard's export
//! (`mayfly_server::usage`), so the CLI, the API and the dashboard cannot disagree.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use mayfly_server::usage::{self, DayRange, GroupKey, GroupRow, JobLine, ReportParams};

use super::api_client::{strip_controls, ApiArgs, ApiClient};
use crate::exit::{Failure, RuntimeContext};

const EXAMPLES: &str = "Examples:
  export MAYFLY_SERVER=https://mayfly.example.com:8443 MAYFLY_TOKEN_FILE=~/.mayfly-token
  mayfly usage summary --since 30d --by day,repo
  mayfly usage summary --from 2026-10-01 --to 2026-10-31 --by machine-type --format csv > oct.csv
  mayfly usage top --since this-month --by workflow
  mayfly usage jobs --since today --repo acme/api --conclusion failure --format json

Days are UTC days. A 400 from the server (a bad range or filter) exits 2; other failures 1.";

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Jobs, failure rate, executed/billed/VM time and queue percentiles, grouped by --by
    /// (default: per UTC day).
    #[command(after_help = EXAMPLES)]
    Summary(SummaryArgs),
    /// One line per job, newest first: queue, executed, billed and VM time, conclusion.
    #[command(after_help = EXAMPLES)]
    Jobs(QueryArgs),
    /// The repositories (or workflows, machine types, days: --by) with the most billed minutes,
    /// at most 20.
    #[command(after_help = EXAMPLES)]
    Top(TopArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for reading (the default on a terminal).
    Table,
    /// The server's JSON, pretty-printed (the default when piped).
    Json,
    /// Comma-separated, one header line (the dashboard's export).
    Csv,
}

/// What every usage command asks: which server, which days, which jobs, in what format.
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Which UTC days: today, Nd (the last N days, today included, e.g. --since 7d),
    /// this-month or last-month [default: 30d, or the server's retention when shorter].
    #[arg(long, value_name = "RANGE", conflicts_with_all = ["from", "to"])]
    since: Option<String>,
    /// First UTC day, with --to, e.g. --from 2026-10-01 --to 2026-10-31.
    #[arg(long, value_name = "YYYY-MM-DD", requires = "to")]
    from: Option<String>,
    /// Last UTC day (inclusive), with --from.
    #[arg(long, value_name = "YYYY-MM-DD", requires = "from")]
    to: Option<String>,
    /// Only this repository, e.g. --repo acme/api.
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    /// Only jobs of this workflow (its name), e.g. --workflow CI.
    #[arg(long, value_name = "NAME")]
    workflow: Option<String>,
    /// Only jobs with this runs-on label, e.g. --label linux.
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    /// Only jobs on this machine type (a hardware profile of the server), e.g.
    /// --machine-type small.
    #[arg(long, value_name = "NAME")]
    machine_type: Option<String>,
    /// Only jobs that ended so: success, failure, cancelled, skipped, timed_out, neutral,
    /// action_required, or pending (not completed), e.g. --conclusion failure.
    #[arg(long, value_name = "CONCLUSION")]
    conclusion: Option<String>,
    /// Only this GitHub App installation (a tenant token may name only its own), e.g.
    /// --installation 4242.
    #[arg(long, value_name = "ID")]
    installation: Option<i64>,
    /// Output format [default: table on a terminal, json when piped].
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<Format>,
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// Group by these, comma-separated, in this order: day, repo, workflow, machine-type;
    /// e.g. --by day,repo.
    #[arg(long, default_value = "day", value_name = "KEYS")]
    by: String,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    query: QueryArgs,
    /// What to rank: repo, workflow, machine-type or day; e.g. --by workflow.
    #[arg(long, default_value = "repo", value_name = "KEY")]
    by: String,
}

impl QueryArgs {
    fn params(&self, by: Option<&str>) -> ReportParams {
        ReportParams {
            range: self.since.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            repo: self.repo.clone(),
            workflow: self.workflow.clone(),
            label: self.label.clone(),
            machine_type: self.machine_type.clone(),
            conclusion: self.conclusion.clone(),
            installation: self.installation,
            by: by.map(str::to_owned),
        }
    }

    /// The days asked for, for the table's title (the server checked them already).
    fn describe_range(&self) -> String {
        let today = chrono::Utc::now().date_naive();
        match DayRange::resolve(&self.params(None), today, 3660) {
            Ok(r) if self.since.is_none() && self.from.is_none() => format!(
                "UTC days {} to {} (the default: the last 30 days, or the retention when shorter)",
                r.from, r.to
            ),
            Ok(r) => format!("UTC days {} to {}", r.from, r.to),
            Err(_) => "the range asked for (UTC days)".into(),
        }
    }

    fn format(&self) -> Format {
        self.format.unwrap_or(if std::io::stdout().is_terminal() {
            Format::Table
        } else {
            Format::Json
        })
    }
}

pub async fn run(command: UsageCommand) -> Result<(), Failure> {
    let (query, by, path) = match &command {
        UsageCommand::Summary(a) => (&a.query, Some(a.by.as_str()), "api/v1/usage/summary"),
        UsageCommand::Top(a) => (&a.query, Some(a.by.as_str()), "api/v1/usage/top"),
        UsageCommand::Jobs(q) => (q, None, "api/v1/usage/jobs"),
    };
    let client = ApiClient::new(&query.api)?;
    let body = client.get(path, &query.params(by)).await?;
    let undecodable = || format!("the server's answer to {path} is not what mayfly expects");
    let out = match (query.format(), by) {
        (Format::Json, _) => {
            let value: serde_json::Value = serde_json::from_slice(&body)
                .with_context(undecodable)
                .runtime_err()?;
            let mut text = serde_json::to_string_pretty(&value).runtime_err()?;
            text.push('\n');
            text
        }
        (format, Some(by)) => {
            let rows: Vec<GroupRow> = serde_json::from_slice(&body)
                .with_context(undecodable)
                .runtime_err()?;
            // The server accepted `by`, so it parses.
            let keys = GroupKey::parse_list(by).runtime_err()?;
            if format == Format::Csv {
                usage::groups_csv(&rows, &keys)
            } else {
                let title = match command {
                    UsageCommand::Top(_) => format!("Top {} by billed minutes", keys_text(&keys)),
                    _ => format!("Usage by {}", keys_text(&keys)),
                };
                format!(
                    "{title}, {}{}\n\n{}\n{FOOTNOTE}",
                    query.describe_range(),
                    filters_text(query),
                    groups_table(&rows, &keys)
                )
            }
        }
        (format, None) => {
            let jobs: Vec<JobLine> = serde_json::from_slice(&body)
                .with_context(undecodable)
                .runtime_err()?;
            if format == Format::Csv {
                usage::jobs_csv(&jobs)
            } else {
                format!(
                    "Jobs, newest first, {}{}\n\n{}\n{FOOTNOTE}",
                    query.describe_range(),
                    filters_text(query),
                    jobs_table(&jobs)
                )
            }
        }
    };
    write_stdout(&out)
}

const FOOTNOTE: &str = "Days are UTC days. Executed: job start to completion at GitHub (s); \
billed: executed rounded up\nto whole minutes per job (min); VM: VM start to destroyed (s); \
queue: queued at GitHub to runner started (s).\n";

/// Writes the whole output; a reader that went away (`| head`) is not an error.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.runtime_err(),
    }
}

fn keys_text(keys: &[GroupKey]) -> String {
    keys.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

fn filters_text(q: &QueryArgs) -> String {
    let installation = q.installation.map(|i| i.to_string());
    let set: Vec<String> = [
        ("repo", &q.repo),
        ("workflow", &q.workflow),
        ("label", &q.label),
        ("machine type", &q.machine_type),
        ("conclusion", &q.conclusion),
        ("installation", &installation),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.as_ref().map(|v| format!("{name} {}", strip_controls(v))))
    .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("; only {}", set.join(", "))
    }
}

fn secs(v: f64) -> String {
    format!("{v:.1}")
}

fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), secs)
}

fn minutes(billed_seconds: i64) -> String {
    (billed_seconds / 60).to_string()
}

fn groups_table(rows: &[GroupRow], keys: &[GroupKey]) -> String {
    if rows.is_empty() {
        return "(no jobs)\n".into();
    }
    let mut header: Vec<String> = keys.iter().map(|k| k.name().to_uppercase()).collect();
    header.extend(
        [
            "JOBS",
            "SUCCEEDED",
            "FAILED",
            "FAILURE RATE",
            "EXECUTED s",
            "BILLED min",
            "VM s",
            "DURATION p50 s",
            "DURATION p90 s",
            "QUEUE p50 s",
            "QUEUE p90 s",
        ]
        .map(String::from),
    );
    let body = rows
        .iter()
        .map(|r| {
            let mut cells: Vec<String> = keys
                .iter()
                .map(|k| r.group.get(k.name()).cloned().unwrap_or_default())
                .collect();
            cells.extend([
                r.jobs.to_string(),
                r.succeeded().to_string(),
                r.failed().to_string(),
                r.failure_rate
                    .map_or_else(|| "-".into(), |f| format!("{:.1}%", f * 100.0)),
                secs(r.executed_seconds),
                minutes(r.billed_seconds),
                secs(r.vm_seconds),
                opt_secs(r.duration_p50),
                opt_secs(r.duration_p90),
                opt_secs(r.queue_p50),
                opt_secs(r.queue_p90),
            ]);
            cells
        })
        .collect();
    table(&header, body, keys.len())
}

fn jobs_table(jobs: &[JobLine]) -> String {
    if jobs.is_empty() {
        return "(no jobs)\n".into();
    }
    let header = [
        "DAY",
        "JOB ID",
        "REPO",
        "WORKFLOW",
        "JOB",
        "MACHINE TYPE",
        "CONCLUSION",
        "QUEUE s",
        "EXECUTED s",
        "BILLED min",
        "VM s",
    ]
    .map(String::from);
    let body = jobs
        .iter()
        .map(|j| {
            vec![
                j.day.to_string(),
                j.job_id.to_string(),
                j.repository.clone(),
                j.workflow.clone().unwrap_or_else(|| "-".into()),
                j.job_name.clone(),
                j.machine_type.clone().unwrap_or_else(|| "-".into()),
                j.conclusion.clone(),
                opt_secs(j.queue_seconds),
                opt_secs(j.executed_seconds),
                j.billed_seconds.map_or_else(|| "-".into(), minutes),
                opt_secs(j.vm_seconds),
            ]
        })
        .collect();
    table(&header, body, 7)
}

/// Columns separated by two spaces; the first `text_columns` left-aligned, the numbers after
/// them right-aligned. Control characters (names come from customers) are dropped.
fn table(header: &[String], rows: Vec<Vec<String>>, text_columns: usize) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.to_vec())
        .chain(rows)
        .map(|r| r.iter().map(|c| strip_controls(c)).collect())
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i < text_columns {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tables_align_numbers_right_and_drop_control_characters() {
        let header = ["REPO", "JOBS"].map(String::from);
        let text = table(
            &header,
            vec![
                vec!["acme/api".into(), "7".into()],
                vec!["evil/\u{1b}[2Jrepo".into(), "12".into()],
            ],
            1,
        );
        assert_eq!(
            text,
            "REPO          JOBS\nacme/api         7\nevil/[2Jrepo    12\n"
        );
    }

    #[test]
    fn group_rows_show_seconds_minutes_and_percent() {
        let row = GroupRow {
            group: [("repo".to_owned(), "acme/api".to_owned())].into(),
            jobs: 4,
            conclusions: [("success".to_owned(), 3), ("failure".to_owned(), 1)].into(),
            failure_rate: Some(0.25),
            executed_seconds: 200.04,
            billed_seconds: 360,
            vm_seconds: 250.0,
            ..GroupRow::default()
        };
        let text = groups_table(&[row], &[GroupKey::Repo]);
        let line = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells[..8],
            ["acme/api", "4", "3", "1", "25.0%", "200.0", "6", "250.0"]
        );
    }
}
