//! The dashboard's HTML (maud escapes every value it writes).

use std::sync::LazyLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use sha2::Digest;

use super::{charts, Session};
use crate::usage::{GroupRow, Report, ReportParams, CONCLUSIONS};

/// The stylesheet, vendored in the binary and served from `/dashboard/assets/`.
pub const CSS: &str = include_str!("dashboard.css");

/// Its subresource-integrity hash.
static CSS_SRI: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine;
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(CSS.as_bytes()))
    )
});

/// Scripts: none. Styles: the one stylesheet. Forms: back to this server only.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A rendered page with the dashboard's content security policy.
#[derive(Debug)]
pub struct Page(Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response =
            (StatusCode::OK, axum::response::Html(self.0.into_string())).into_response();
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        response
    }
}

fn layout(title: &str, body: Markup) -> Page {
    Page(html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mayfly" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css" integrity=(*CSS_SRI);
            }
            body { (body) }
        }
    })
}

/// A page with one message.
pub fn message(title: &str, text: &str) -> Page {
    layout(
        title,
        html! {
            main class="narrow" {
                h1 { (title) }
                p { (text) }
                p { a href="/dashboard" { "Back to the dashboard" } }
            }
        },
    )
}

/// Not signed in: sign in with GitHub, or as an operator with an admin token.
pub fn sign_in() -> Page {
    layout(
        "Sign in",
        html! {
            main class="narrow" {
                h1 { "mayfly usage" }
                p { "See your organisations' CI usage: jobs, minutes by machine type, queue times and each job's phases." }
                p { a id="sign-in-github" class="button" href="/dashboard/login" { "Sign in with GitHub" } }
                details {
                    summary { "Operator sign-in" }
                    form method="post" action="/dashboard/login/operator" {
                        label for="token" { "Admin token" }
                        input id="token" name="token" type="password" autocomplete="off" required;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        },
    )
}

fn header_bar(session: &Session) -> Markup {
    html! {
        header {
            strong { "mayfly usage" }
            span id="who" {
                "Signed in as " (session.who)
                @if session.operator { " — operator: every tenant" }
                @else if session.installations.is_empty() { " — no installations" }
                @else {
                    " — "
                    (session.installations.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(", "))
                }
            }
            form method="post" action="/dashboard/logout" { button type="submit" { "Sign out" } }
        }
    }
}

/// The refusal of a bad query, inside the signed-in frame.
pub fn refused(session: &Session, why: &str) -> Page {
    layout(
        "Bad request",
        html! {
            (header_bar(session))
            main {
                p class="error" id="error" { (why) }
                p { a href="/dashboard" { "Reset the filters" } }
            }
        },
    )
}

fn secs(v: Option<f64>) -> String {
    v.map_or("–".into(), |s| format!("{s:.1} s"))
}

fn minutes(seconds: f64) -> String {
    format!("{:.1}", seconds / 60.0)
}

fn rate(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{:.1} %", r * 100.0))
}

fn select(name: &str, label: &str, current: Option<&str>, choices: &[String]) -> Markup {
    html! {
        label {
            (label)
            select name=(name) {
                option value="" { "all" }
                @for c in choices {
                    option value=(c) selected[current == Some(c.as_str())] { (c) }
                }
            }
        }
    }
}

fn top_table(id: &str, title: &str, key: &str, rows: &[GroupRow]) -> Markup {
    html! {
        section {
            h2 { (title) }
            table id=(id) {
                thead { tr {
                    th { (key) } th { "jobs" } th { "billed min" } th { "p50 duration" }
                    th { "p90 duration" } th { "p90 queue" } th { "failure" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (r.group.values().next().map(String::as_str).unwrap_or("")) }
                            td class="num" { (r.jobs) }
                            td class="num" { (minutes(r.billed_seconds as f64)) }
                            td class="num" { (secs(r.duration_p50)) }
                            td class="num" { (secs(r.duration_p90)) }
                            td class="num" { (secs(r.queue_p90)) }
                            td class="num" { (rate(r.failure_rate)) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="7" { "No jobs in this range." } } }
                }
            }
        }
    }
}

/// The dashboard of `report`.
pub fn dashboard(session: &Session, report: &Report, params: &ReportParams) -> Page {
    let t = &report.totals;
    let query = params.query_string();
    let ranges = [
        ("today", "today"),
        ("7d", "7 days"),
        ("30d", "30 days"),
        ("this-month", "this month"),
        ("last-month", "last month"),
    ];
    // `params` as the report read them: unset fields are `None`.
    let custom = params.from.is_some();
    let range = params.range.as_deref();
    let conclusions: Vec<String> = CONCLUSIONS.iter().map(|c| (*c).to_owned()).collect();
    layout(
        "Usage",
        html! {
            (header_bar(session))
            main {
                form id="filters" method="get" action="/dashboard" {
                    label {
                        "Range"
                        select name="range" {
                            option value="" selected[custom] { "custom (from/to)" }
                            @for (value, text) in ranges {
                                option value=(value) selected[!custom && (range == Some(value) || (range.is_none() && value == "30d"))] { (text) }
                            }
                        }
                    }
                    label { "From" input type="date" name="from" value=(params.from.clone().unwrap_or_default()); }
                    label { "To" input type="date" name="to" value=(params.to.clone().unwrap_or_default()); }
                    (select("repo", "Repository", report.filters.repo.as_deref(), &report.choices.repos))
                    (select("workflow", "Workflow", report.filters.workflow.as_deref(), &report.choices.workflows))
                    (select("label", "Label", report.filters.label.as_deref(), &report.choices.labels))
                    (select("machine_type", "Machine type", report.filters.machine_type.as_deref(), &report.choices.machine_types))
                    (select("conclusion", "Conclusion", report.filters.conclusion.as_deref(), &conclusions))
                    button type="submit" { "Apply" }
                }
                p class="note" id="range" {
                    "From " (report.range.from) " to " (report.range.to) " (UTC days; a job counts on the day mayfly received it). "
                    "Export what is shown: "
                    a id="export-csv" href=(format!("/dashboard/export.csv?{query}")) { "CSV" } " · "
                    a id="export-json" href=(format!("/dashboard/export.json?{query}")) { "JSON" }
                }
                section class="tiles" id="totals" {
                    div { span class="big" { (t.jobs) } " jobs" }
                    div { span class="big" { (minutes(t.billed_seconds as f64)) } " billed min" }
                    div { span class="big" { (minutes(t.executed_seconds)) } " executed min" }
                    div { span class="big" { (rate(t.failure_rate)) } " failed" }
                    div { span class="big" { (secs(t.queue_p50)) } " queue p50" }
                    div { span class="big" { (secs(t.queue_p90)) } " p90" }
                    div { span class="big" { (secs(t.queue_p99)) } " p99" }
                }
                div class="charts" {
                    (charts::minutes(&report.days))
                    (charts::minutes_by_repo(&report.days))
                    (charts::jobs(&report.days))
                    (charts::queue(&report.days))
                }
                div class="tables" {
                    (top_table("top-repos", "Top repositories", "repository", &report.repositories))
                    (top_table("top-workflows", "Top workflows", "workflow", &report.workflows))
                }
                section id="deliveries" {
                    h2 { "Webhook deliveries" }
                    p {
                        (report.deliveries.by_webhook) " jobs arrived by webhook; "
                        (report.deliveries.recovered_by_reconciler) " were recovered by the reconciler (their webhook never came). "
                        "Lag (queued at GitHub → received): p50 " (secs(report.deliveries.lag_p50))
                        ", p90 " (secs(report.deliveries.lag_p90)) ", max " (secs(report.deliveries.lag_max)) "."
                    }
                }
                section {
                    h2 { "Jobs" }
                    p class="note" {
                        "Executed: GitHub's job start → completion. Billed: executed, rounded up to whole minutes per job. "
                        "VM: the VM's whole life. Phases (as in the metrics): webhook lag, waiting for capacity, VM boot, runner start, job, destroy."
                    }
                    table id="jobs" {
                        thead { tr {
                            th { "received (UTC)" } th { "repository" } th { "workflow / job" } th { "by" }
                            th { "machine type" } th { "conclusion" } th { "queue" } th { "executed" }
                            th { "billed" } th { "VM" } th { "phases" }
                        } }
                        tbody {
                            @for j in report.jobs.iter().take(500) {
                                tr data-job-id=(j.job_id) {
                                    td { (j.webhook_received_at.format("%Y-%m-%d %H:%M:%S")) }
                                    td { (j.repository) }
                                    td { (j.workflow.as_deref().unwrap_or("")) " / " (j.job_name) }
                                    td { (j.sender) }
                                    td { (j.machine_type.as_deref().unwrap_or("–")) }
                                    td class=(format!("c-{}", j.conclusion)) { (j.conclusion) }
                                    td class="num" { (secs(j.queue_seconds)) }
                                    td class="num" { (secs(j.executed_seconds)) }
                                    td class="num" { (j.billed_seconds.map_or("–".into(), |b| format!("{} min", b / 60))) }
                                    td class="num" { (secs(j.vm_seconds)) }
                                    td { (charts::waterfall(j)) }
                                }
                            }
                            @if report.jobs.is_empty() { tr { td colspan="11" id="no-jobs" { "No jobs in this range." } } }
                        }
                    }
                    @if report.jobs.len() > 500 {
                        p class="note" { "The newest 500 of " (report.jobs.len()) " jobs are shown; the exports hold all." }
                    }
                }
            }
        },
    )
}
