//! Usage reports for customers and operators: from the metadata rows of jobs (and the VMs that
//! ran them) within a range of UTC days, the per-day numbers, the top repositories and
//! workflows, the per-job log with each job's phase waterfall, and webhook delivery health. The
//! API (`/api/v1/usage/…`, `mayfly usage`) and the dashboard both answer from [`Report`], so
//! what a page shows, what its export holds and what the CLI prints are the same numbers.
//!
//! Definitions (said on the dashboard too):
//! - a job belongs to the UTC day mayfly first heard of it;
//! - *executed* seconds: GitHub's job start → job completion; *billed* seconds: executed rounded
//!   up to whole minutes (at least one), per job, as GitHub bills hosted runners; *VM* seconds: VM process
//!   started → VM destroyed, what the job cost the provider;
//! - *queue* seconds: queued at GitHub → the runner started (what the customer waited);
//! - failure rate: failed or timed-out jobs over completed jobs.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, Utc};
use mayfly_core::Phase;
use mayfly_store::{JobRecord, VmRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The conclusions GitHub reports for a job, and `pending` for a job not completed.
pub const CONCLUSIONS: [&str; 8] = [
    "success",
    "failure",
    "cancelled",
    "skipped",
    "timed_out",
    "neutral",
    "action_required",
    "pending",
];

/// What a report covers, as asked in a query string (the API's and the dashboard's).
#[derive(Debug, Default, Clone, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportParams {
    /// `today`, `7d`, `30d` (any `Nd`: the last N UTC days, today included), `this-month` or
    /// `last-month`. Default `30d` (or the retention, when shorter). Not with `from`/`to`.
    pub range: Option<String>,
    /// First UTC day (`YYYY-MM-DD`), with `to`.
    pub from: Option<String>,
    /// Last UTC day (`YYYY-MM-DD`), inclusive.
    pub to: Option<String>,
    /// `owner/name`: a repository of the caller's installations.
    pub repo: Option<String>,
    /// A workflow name of one of the caller's jobs in the range.
    pub workflow: Option<String>,
    /// A runner label of one of the caller's jobs in the range.
    pub label: Option<String>,
    /// A hardware profile (machine type) this server offers.
    pub machine_type: Option<String>,
    /// One of GitHub's job conclusions, or `pending`.
    pub conclusion: Option<String>,
    /// Only this installation (a tenant may name only its own).
    pub installation: Option<i64>,
    /// Grouping of `summary` and `top`: comma-separated `day`, `repo`, `workflow`,
    /// `machine-type`.
    pub by: Option<String>,
}

impl ReportParams {
    /// Empty values (an HTML form's unset fields) count as not given.
    fn normalised(self) -> Self {
        let keep = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Self {
            range: keep(self.range),
            from: keep(self.from),
            to: keep(self.to),
            repo: keep(self.repo),
            workflow: keep(self.workflow),
            label: keep(self.label),
            machine_type: keep(self.machine_type),
            conclusion: keep(self.conclusion),
            installation: self.installation,
            by: keep(self.by),
        }
    }

    /// The same query without the grouping, as a query string (for export links).
    pub fn query_string(&self) -> String {
        let query = Self {
            by: None,
            ..self.clone().normalised()
        };
        // Strings and integers always encode.
        serde_urlencoded::to_string(&query).unwrap_or_default()
    }
}

/// What reports need from the server's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs older than this are purged, so a range may not reach further back.
    pub retention_days: u32,
    /// The hardware profiles this server offers.
    pub machine_types: Vec<String>,
}

/// The report for `params` of what `visible` may see, read from the store, and the params as
/// it read them (empty values dropped).
pub(crate) async fn load(
    state: &crate::AppState,
    visible: &Visible,
    params: ReportParams,
) -> Result<(Report, ReportParams), ReportError> {
    let params = params.normalised();
    let today = state.clock.now().date_naive();
    let range = DayRange::resolve(&params, today, state.reports.retention_days)?;
    let unavailable = |e: mayfly_store::StoreError| {
        tracing::error!(error = %crate::error::chain(&e), "a usage report could not be read");
        ReportError::Unavailable
    };
    let installations = state.store.installations().await.map_err(unavailable)?;
    let repos: BTreeSet<String> = installations
        .iter()
        .filter(|i| visible.sees(Some(i.installation_id.0)))
        .flat_map(|i| i.repos.iter().map(ToString::to_string))
        .collect();
    let (jobs, vms) = state
        .store
        .jobs_seen_between(range.start(), range.end())
        .await
        .map_err(unavailable)?;
    let ctx = Context {
        visible,
        repos: &repos,
        machine_types: &state.reports.machine_types,
    };
    let report = Report::build(range, &params, &ctx, &jobs, &vms)?;
    Ok((report, params))
}

/// Why a report cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// The caller's range or filters (a 400 with this reason).
    #[error("{0}")]
    Invalid(String),
    #[error("the store is unavailable; retry later")]
    Unavailable,
}

impl From<ReportError> for crate::ApiError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Invalid(why) => crate::ApiError::Invalid(why),
            ReportError::Unavailable => crate::ApiError::Unavailable,
        }
    }
}

/// Whose jobs a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visible {
    /// An operator: every tenant.
    All,
    /// These installations (a tenant token's one, or a signed-in user's).
    Only(BTreeSet<i64>),
}

impl Visible {
    pub fn sees(&self, installation: Option<i64>) -> bool {
        match self {
            Visible::All => true,
            Visible::Only(set) => installation.is_some_and(|i| set.contains(&i)),
        }
    }
}

/// Inclusive UTC days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DayRange {
    #[schema(value_type = String, example = "2026-11-01")]
    pub from: NaiveDate,
    #[schema(value_type = String, example = "2026-11-30")]
    pub to: NaiveDate,
}

impl DayRange {
    pub fn start(&self) -> DateTime<Utc> {
        self.from.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The first moment after the range.
    pub fn end(&self) -> DateTime<Utc> {
        (self.to + Days::new(1))
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    }

    pub fn days(&self) -> impl Iterator<Item = NaiveDate> {
        let to = self.to;
        self.from.iter_days().take_while(move |d| *d <= to)
    }

    /// The range asked for by `p` on `today`, within `retention_days`.
    pub fn resolve(
        p: &ReportParams,
        today: NaiveDate,
        retention_days: u32,
    ) -> Result<Self, ReportError> {
        let oldest = today - Days::new(u64::from(retention_days.max(1)) - 1);
        let range = match (&p.range, &p.from, &p.to) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ReportError::Invalid(
                    "give either range or from/to, not both".into(),
                ))
            }
            (None, Some(from), Some(to)) => {
                let from = parse_day("from", from)?;
                let to = parse_day("to", to)?;
                if from > to {
                    return Err(ReportError::Invalid(format!(
                        "from ({from}) is after to ({to})"
                    )));
                }
                Self { from, to }
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(ReportError::Invalid("give both from and to".into()))
            }
            (Some(name), None, None) => named_range(name, today)?,
            (None, None, None) => Self {
                from: today - Days::new(u64::from(retention_days.clamp(1, 30)) - 1),
                to: today,
            },
        };
        if range.to > today {
            return Err(ReportError::Invalid(format!(
                "to ({}) is in the future (today is {today}, UTC)",
                range.to
            )));
        }
        if range.from < oldest {
            return Err(ReportError::Invalid(format!(
                "from ({}) is older than the retention of {retention_days} days: the oldest day kept is {oldest}",
                range.from
            )));
        }
        Ok(range)
    }
}

fn parse_day(name: &str, value: &str) -> Result<NaiveDate, ReportError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| {
        ReportError::Invalid(format!("{name} must be a day as YYYY-MM-DD, not {value:?}"))
    })
}

fn named_range(name: &str, today: NaiveDate) -> Result<DayRange, ReportError> {
    let first_of_month = today.with_day(1).unwrap_or(today);
    match name {
        "today" => Ok(DayRange {
            from: today,
            to: today,
        }),
        "this-month" => Ok(DayRange {
            from: first_of_month,
            to: today,
        }),
        "last-month" => {
            let to = first_of_month - Days::new(1);
            Ok(DayRange {
                from: first_of_month - Months::new(1),
                to,
            })
        }
        _ => {
            let days = name
                .strip_suffix('d')
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| (1..=3660).contains(n))
                .ok_or_else(|| {
                    ReportError::Invalid(format!(
                        "range must be today, Nd (e.g. 7d, 30d), this-month or last-month, not {name:?}"
                    ))
                })?;
            Ok(DayRange {
                from: today - Days::new(days - 1),
                to: today,
            })
        }
    }
}

/// The filters of a report, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Filters {
    pub repo: Option<String>,
    pub workflow: Option<String>,
    pub label: Option<String>,
    pub machine_type: Option<String>,
    pub conclusion: Option<String>,
    pub installation: Option<i64>,
}

impl Filters {
    fn keeps(&self, job: &JobRecord) -> bool {
        self.repo
            .as_deref()
            .is_none_or(|r| job.repo.to_string().eq_ignore_ascii_case(r))
            && self
                .workflow
                .as_deref()
                .is_none_or(|w| job.workflow_name.as_deref() == Some(w))
            && self
                .label
                .as_deref()
                .is_none_or(|l| job.labels.iter().any(|x| x == l))
            && self
                .machine_type
                .as_deref()
                .is_none_or(|m| job.dispatch.profile.as_deref() == Some(m))
            && self
                .conclusion
                .as_deref()
                .is_none_or(|c| conclusion(job) == c)
            && self
                .installation
                .is_none_or(|i| job.installation_id.map(|x| x.0) == Some(i))
    }
}

fn conclusion(job: &JobRecord) -> &str {
    job.conclusion.as_deref().unwrap_or("pending")
}

/// What [`Report::build`] needs besides the rows.
#[derive(Debug)]
pub struct Context<'a> {
    pub visible: &'a Visible,
    /// Repositories of the visible installations.
    pub repos: &'a BTreeSet<String>,
    /// The machine types (hardware profiles) the server offers.
    pub machine_types: &'a [String],
}

/// How one job went, one row of the per-job log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobLine {
    pub job_id: i64,
    pub run_id: i64,
    pub installation_id: Option<i64>,
    pub repository: String,
    pub workflow: Option<String>,
    pub job_name: String,
    /// Who started the run.
    pub sender: String,
    pub labels: Vec<String>,
    pub machine_type: Option<String>,
    /// GitHub's conclusion, or `pending`.
    pub conclusion: String,
    /// The UTC day it counts on.
    #[schema(value_type = String)]
    pub day: NaiveDate,
    pub queued_at: Option<DateTime<Utc>>,
    pub webhook_received_at: DateTime<Utc>,
    /// Queued at GitHub → runner started.
    pub queue_seconds: Option<f64>,
    /// GitHub's job start → completion.
    pub executed_seconds: Option<f64>,
    /// Executed seconds rounded up to whole minutes (at least one).
    pub billed_seconds: Option<i64>,
    /// VM process started → VM destroyed.
    pub vm_seconds: Option<f64>,
    /// The phase waterfall, in order.
    pub phases: Vec<PhaseSpan>,
}

/// One bar of a job's waterfall.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PhaseSpan {
    /// `webhook lag`, `waiting for capacity`, `VM boot`, `runner start`, `job`, `destroy`
    /// (`mayfly_core::STRETCHES`, the phases of the metrics' histogram too).
    pub phase: String,
    /// Seconds from the job's first known moment to this phase's start.
    pub offset_seconds: f64,
    pub seconds: f64,
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds().max(0) as f64 / 1000.0
}

impl JobLine {
    pub fn new(job: &JobRecord, vm: Option<&VmRow>) -> Self {
        let ordered = job.phase_times(vm).monotonic();
        let at = |phase: Phase| ordered.at(phase);
        let first = ordered.first();
        let phases = ordered
            .stretches()
            .into_iter()
            .map(|(stretch, from, to)| PhaseSpan {
                phase: stretch.label.to_owned(),
                offset_seconds: first.map_or(0.0, |first| seconds(first, from)),
                seconds: seconds(from, to),
            })
            .collect();
        let executed = match (at(Phase::JobStarted), at(Phase::JobCompleted)) {
            (Some(s), Some(c)) => Some(seconds(s, c)),
            _ => None,
        };
        let queue_end = at(Phase::RunnerStarted).or(at(Phase::JobStarted));
        Self {
            job_id: job.job_id.0,
            run_id: job.run_id.0,
            installation_id: job.installation_id.map(|i| i.0),
            repository: job.repo.to_string(),
            workflow: job.workflow_name.clone(),
            job_name: job.job_name.clone(),
            sender: job.sender.clone(),
            labels: job.labels.clone(),
            machine_type: job.dispatch.profile.clone(),
            conclusion: conclusion(job).to_owned(),
            day: job.first_seen_at.date_naive(),
            queued_at: job.created_at,
            webhook_received_at: job.first_seen_at,
            queue_seconds: match (at(Phase::QueuedAtGithub).or(first), queue_end) {
                (Some(q), Some(r)) => Some(seconds(q, r)),
                _ => None,
            },
            executed_seconds: executed,
            // GitHub's times are whole seconds: a job that started and completed in the same second
            // still ran, and is billed its minute.
            billed_seconds: executed.map(|s| ((s / 60.0).ceil() as i64).max(1) * 60),
            vm_seconds: match (at(Phase::VmStarted), at(Phase::VmDestroyed)) {
                (Some(s), Some(d)) => Some(seconds(s, d)),
                _ => None,
            },
            phases,
        }
    }

    fn failed(&self) -> bool {
        matches!(self.conclusion.as_str(), "failure" | "timed_out")
    }

    fn completed(&self) -> bool {
        self.conclusion != "pending"
    }

    fn key(&self, by: GroupKey) -> String {
        match by {
            GroupKey::Day => self.day.to_string(),
            GroupKey::Repo => self.repository.clone(),
            GroupKey::Workflow => self.workflow.clone().unwrap_or_else(|| "(none)".into()),
            GroupKey::MachineType => self.machine_type.clone().unwrap_or_else(|| "(none)".into()),
        }
    }
}

/// What `summary` and `top` group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupKey {
    Day,
    Repo,
    Workflow,
    MachineType,
}

impl GroupKey {
    pub fn name(self) -> &'static str {
        match self {
            GroupKey::Day => "day",
            GroupKey::Repo => "repo",
            GroupKey::Workflow => "workflow",
            GroupKey::MachineType => "machine-type",
        }
    }

    /// `day,repo` → the keys, in the order given; unknown names are an error.
    pub fn parse_list(text: &str) -> Result<Vec<GroupKey>, ReportError> {
        let mut keys = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let key = match part {
                "day" => GroupKey::Day,
                "repo" | "repository" => GroupKey::Repo,
                "workflow" => GroupKey::Workflow,
                "machine-type" | "machine_type" => GroupKey::MachineType,
                other => {
                    return Err(ReportError::Invalid(format!(
                        "by must list day, repo, workflow or machine-type, not {other:?}"
                    )))
                }
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

/// Numbers over a group of jobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GroupRow {
    /// The group's values, by key name (`day`, `repo`, `workflow`, `machine-type`).
    pub group: BTreeMap<String, String>,
    pub jobs: u64,
    /// Jobs by conclusion (`pending` for not completed).
    pub conclusions: BTreeMap<String, u64>,
    /// Failed or timed-out over completed; absent with no completed job.
    pub failure_rate: Option<f64>,
    pub executed_seconds: f64,
    pub billed_seconds: i64,
    pub vm_seconds: f64,
    pub duration_p50: Option<f64>,
    pub duration_p90: Option<f64>,
    pub queue_p50: Option<f64>,
    pub queue_p90: Option<f64>,
    pub queue_p99: Option<f64>,
}

impl GroupRow {
    /// Jobs that succeeded.
    pub fn succeeded(&self) -> u64 {
        self.conclusions.get("success").copied().unwrap_or(0)
    }

    /// Jobs that failed or timed out (what the failure rate counts).
    pub fn failed(&self) -> u64 {
        ["failure", "timed_out"]
            .iter()
            .map(|c| self.conclusions.get(*c).copied().unwrap_or(0))
            .sum()
    }

    fn of<'a>(group: BTreeMap<String, String>, jobs: impl Iterator<Item = &'a JobLine>) -> Self {
        let mut row = GroupRow {
            group,
            ..GroupRow::default()
        };
        let (mut durations, mut queues) = (Vec::new(), Vec::new());
        let (mut completed, mut failed) = (0_u64, 0_u64);
        for job in jobs {
            row.jobs += 1;
            *row.conclusions.entry(job.conclusion.clone()).or_default() += 1;
            completed += u64::from(job.completed());
            failed += u64::from(job.failed());
            row.executed_seconds += job.executed_seconds.unwrap_or(0.0);
            row.billed_seconds += job.billed_seconds.unwrap_or(0);
            row.vm_seconds += job.vm_seconds.unwrap_or(0.0);
            durations.extend(job.executed_seconds);
            queues.extend(job.queue_seconds);
        }
        row.executed_seconds = round3(row.executed_seconds);
        row.vm_seconds = round3(row.vm_seconds);
        row.failure_rate = (completed > 0).then(|| round3(failed as f64 / completed as f64));
        row.duration_p50 = percentile(&mut durations, 50);
        row.duration_p90 = percentile(&mut durations, 90);
        row.queue_p50 = percentile(&mut queues, 50);
        row.queue_p90 = percentile(&mut queues, 90);
        row.queue_p99 = percentile(&mut queues, 99);
        row
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile.
fn percentile(values: &mut [f64], p: usize) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

/// Groups `jobs` by `keys` (in key order); with no keys, one row over all.
pub fn group(jobs: &[JobLine], keys: &[GroupKey]) -> Vec<GroupRow> {
    let mut groups: BTreeMap<Vec<String>, Vec<&JobLine>> = BTreeMap::new();
    for job in jobs {
        groups
            .entry(keys.iter().map(|k| job.key(*k)).collect())
            .or_default()
            .push(job);
    }
    if groups.is_empty() && keys.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    groups
        .into_iter()
        .map(|(values, members)| {
            let group = keys
                .iter()
                .map(|k| k.name().to_owned())
                .zip(values)
                .collect();
            GroupRow::of(group, members.into_iter())
        })
        .collect()
}

/// Groups by `key` and puts the most billed first.
pub fn top(jobs: &[JobLine], key: GroupKey, limit: usize) -> Vec<GroupRow> {
    let mut rows = group(jobs, &[key]);
    rows.sort_by(|a, b| {
        b.billed_seconds
            .cmp(&a.billed_seconds)
            .then(b.jobs.cmp(&a.jobs))
            .then(a.group.cmp(&b.group))
    });
    rows.truncate(limit);
    rows
}

/// One day of the per-day chart.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DayRow {
    #[schema(value_type = String)]
    pub day: NaiveDate,
    /// Billed minutes by machine type.
    pub minutes_by_machine_type: BTreeMap<String, f64>,
    /// Billed minutes by repository.
    pub minutes_by_repo: BTreeMap<String, f64>,
    #[serde(flatten)]
    pub numbers: GroupRow,
}

/// How webhooks reached mayfly for the jobs in the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DeliveryHealth {
    /// Jobs mayfly learnt of from a webhook.
    pub by_webhook: u64,
    /// Jobs whose webhook never came; the reconciler found them at GitHub.
    pub recovered_by_reconciler: u64,
    /// Queued at GitHub → webhook received.
    pub lag_p50: Option<f64>,
    pub lag_p90: Option<f64>,
    pub lag_max: Option<f64>,
}

/// Everything a usage page shows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Report {
    pub range: DayRange,
    /// Always `UTC`: days are UTC days.
    pub timezone: String,
    pub filters: Filters,
    pub totals: GroupRow,
    pub days: Vec<DayRow>,
    pub repositories: Vec<GroupRow>,
    pub workflows: Vec<GroupRow>,
    pub deliveries: DeliveryHealth,
    /// The per-job log, newest first.
    pub jobs: Vec<JobLine>,
    /// What the filters can be set to (the caller's own values in the range).
    pub choices: Choices,
}

/// The values a filter may take, for the dashboard's selects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Choices {
    pub repos: Vec<String>,
    pub workflows: Vec<String>,
    pub labels: Vec<String>,
    pub machine_types: Vec<String>,
    pub conclusions: Vec<String>,
}

/// The reconciler's stand-in sender for a job whose webhook never came.
const RECOVERED_SENDER: &str = "(recovered by the reconciler)";

impl Report {
    /// The report over `jobs`/`vms` (the range's rows, any tenant) for what `ctx` may see.
    pub fn build(
        range: DayRange,
        p: &ReportParams,
        ctx: &Context<'_>,
        jobs: &[JobRecord],
        vms: &[VmRow],
    ) -> Result<Self, ReportError> {
        let visible: Vec<&JobRecord> = jobs
            .iter()
            .filter(|j| ctx.visible.sees(j.installation_id.map(|i| i.0)))
            .filter(|j| {
                let day = j.first_seen_at.date_naive();
                day >= range.from && day <= range.to
            })
            .collect();
        let choices = Choices {
            repos: ctx.repos.iter().cloned().collect(),
            workflows: sorted(visible.iter().filter_map(|j| j.workflow_name.clone())),
            labels: sorted(visible.iter().flat_map(|j| j.labels.iter().cloned())),
            machine_types: sorted(
                ctx.machine_types
                    .iter()
                    .cloned()
                    .chain(visible.iter().filter_map(|j| j.dispatch.profile.clone())),
            ),
            conclusions: CONCLUSIONS.iter().map(|c| (*c).to_owned()).collect(),
        };
        let filters = check_filters(p, ctx, &choices)?;
        // The VM that ran each job: the one whose runner took it, else the one started for it.
        let mut ran: BTreeMap<i64, &VmRow> = BTreeMap::new();
        for vm in vms {
            if vm.ran_job_id.is_none() {
                ran.entry(vm.for_job_id).or_insert(vm);
            }
        }
        for vm in vms {
            if let Some(job) = vm.ran_job_id {
                ran.insert(job, vm);
            }
        }
        let mut lines: Vec<JobLine> = visible
            .iter()
            .filter(|j| filters.keeps(j))
            .map(|j| JobLine::new(j, ran.get(&j.job_id.0).copied()))
            .collect();
        lines.sort_by(|a, b| {
            b.webhook_received_at
                .cmp(&a.webhook_received_at)
                .then(b.job_id.cmp(&a.job_id))
        });
        let mut by_day: BTreeMap<NaiveDate, Vec<&JobLine>> = BTreeMap::new();
        for job in &lines {
            by_day.entry(job.day).or_default().push(job);
        }
        let days = range
            .days()
            .map(|day| {
                let of_day = by_day.get(&day).map(Vec::as_slice).unwrap_or_default();
                let minutes_by = |key: GroupKey| {
                    let mut minutes = BTreeMap::new();
                    for j in of_day {
                        *minutes.entry(j.key(key)).or_insert(0.0) +=
                            j.billed_seconds.unwrap_or(0) as f64 / 60.0;
                    }
                    minutes
                };
                DayRow {
                    day,
                    minutes_by_machine_type: minutes_by(GroupKey::MachineType),
                    minutes_by_repo: minutes_by(GroupKey::Repo),
                    numbers: GroupRow::of(
                        [("day".to_owned(), day.to_string())].into(),
                        of_day.iter().copied(),
                    ),
                }
            })
            .collect();
        let recovered = visible
            .iter()
            .filter(|j| filters.keeps(j) && j.sender == RECOVERED_SENDER)
            .count() as u64;
        let mut lags: Vec<f64> = visible
            .iter()
            .filter(|j| filters.keeps(j) && j.sender != RECOVERED_SENDER)
            .filter_map(|j| j.created_at.map(|c| seconds(c, j.first_seen_at)))
            .collect();
        let deliveries = DeliveryHealth {
            by_webhook: lines.len() as u64 - recovered,
            recovered_by_reconciler: recovered,
            lag_p50: percentile(&mut lags, 50),
            lag_p90: percentile(&mut lags, 90),
            lag_max: lags.iter().copied().reduce(f64::max),
        };
        Ok(Self {
            range,
            timezone: "UTC".into(),
            filters,
            totals: group(&lines, &[]).pop().unwrap_or_default(),
            days,
            repositories: top(&lines, GroupKey::Repo, 20),
            workflows: top(&lines, GroupKey::Workflow, 20),
            deliveries,
            jobs: lines,
            choices,
        })
    }
}

fn sorted(values: impl Iterator<Item = String>) -> Vec<String> {
    values.collect::<BTreeSet<_>>().into_iter().collect()
}

fn check_filters(
    p: &ReportParams,
    ctx: &Context<'_>,
    choices: &Choices,
) -> Result<Filters, ReportError> {
    // A value is taken as the allowed one it names (in any case), so the filter then matches
    // the rows exactly.
    let one_of = |name: &str, value: &Option<String>, allowed: &[String], what: &str| match value {
        None => Ok(None),
        Some(v) => allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(v))
            .map(|a| Some(a.clone()))
            .ok_or_else(|| ReportError::Invalid(format!("{name} {v:?} is not {what}"))),
    };
    if let Some(i) = p.installation {
        if !ctx.visible.sees(Some(i)) {
            return Err(ReportError::Invalid(format!(
                "installation {i} is not one you may see"
            )));
        }
    }
    Ok(Filters {
        repo: one_of("repo", &p.repo, &choices.repos, "a repository of your installations")?,
        workflow: one_of(
            "workflow",
            &p.workflow,
            &choices.workflows,
            "a workflow of your jobs in this range",
        )?,
        label: one_of(
            "label",
            &p.label,
            &choices.labels,
            "a runner label of your jobs in this range",
        )?,
        machine_type: one_of(
            "machine_type",
            &p.machine_type,
            &choices.machine_types,
            "a machine type of this server",
        )?,
        conclusion: one_of(
            "conclusion",
            &p.conclusion,
            &choices.conclusions,
            "a job conclusion (success, failure, cancelled, skipped, timed_out, neutral, action_required, pending)",
        )?,
        installation: p.installation,
    })
}

/// The per-job log as CSV (one row per job; the waterfall as `phase=seconds` pairs).
pub fn jobs_csv(jobs: &[JobLine]) -> String {
    let mut out = String::from(
        "job_id,run_id,installation_id,repository,workflow,job_name,sender,labels,machine_type,conclusion,day,queued_at,webhook_received_at,queue_seconds,executed_seconds,billed_seconds,vm_seconds,phases\n",
    );
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for j in jobs {
        let fields = [
            j.job_id.to_string(),
            j.run_id.to_string(),
            j.installation_id.map(|i| i.to_string()).unwrap_or_default(),
            j.repository.clone(),
            j.workflow.clone().unwrap_or_default(),
            j.job_name.clone(),
            j.sender.clone(),
            j.labels.join(" "),
            j.machine_type.clone().unwrap_or_default(),
            j.conclusion.clone(),
            j.day.to_string(),
            j.queued_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            j.webhook_received_at.to_rfc3339(),
            opt(j.queue_seconds),
            opt(j.executed_seconds),
            j.billed_seconds.map(|s| s.to_string()).unwrap_or_default(),
            opt(j.vm_seconds),
            j.phases
                .iter()
                .map(|p| format!("{}={}", p.phase, p.seconds))
                .collect::<Vec<_>>()
                .join(";"),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Grouped rows as CSV: the group's keys, then the numbers.
pub fn groups_csv(rows: &[GroupRow], keys: &[GroupKey]) -> String {
    let mut header: Vec<String> = keys.iter().map(|k| k.name().to_owned()).collect();
    header.extend(
        [
            "jobs",
            "succeeded",
            "failed",
            "failure_rate",
            "executed_seconds",
            "billed_seconds",
            "vm_seconds",
            "duration_p50",
            "duration_p90",
            "queue_p50",
            "queue_p90",
            "queue_p99",
        ]
        .map(String::from),
    );
    let mut out = header.join(",");
    out.push('\n');
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in rows {
        let mut fields: Vec<String> = keys
            .iter()
            .map(|k| r.group.get(k.name()).cloned().unwrap_or_default())
            .collect();
        fields.extend([
            r.jobs.to_string(),
            r.succeeded().to_string(),
            r.failed().to_string(),
            opt(r.failure_rate),
            r.executed_seconds.to_string(),
            r.billed_seconds.to_string(),
            r.vm_seconds.to_string(),
            opt(r.duration_p50),
            opt(r.duration_p90),
            opt(r.queue_p50),
            opt(r.queue_p90),
            opt(r.queue_p99),
        ]);
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet does
/// not run it as a formula (repository and workflow names come from customers).
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) && value.parse::<f64>().is_err() {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn params(range: Option<&str>, from: Option<&str>, to: Option<&str>) -> ReportParams {
        ReportParams {
            range: range.map(Into::into),
            from: from.map(Into::into),
            to: to.map(Into::into),
            ..ReportParams::default()
        }
    }

    #[test]
    fn ranges_are_utc_days_within_retention() {
        let today = day("2026-11-27");
        let r = |p| DayRange::resolve(&p, today, 90);
        assert_eq!(
            r(params(Some("today"), None, None)).unwrap(),
            DayRange {
                from: today,
                to: today
            }
        );
        assert_eq!(
            r(params(Some("7d"), None, None)).unwrap().from,
            day("2026-11-21")
        );
        assert_eq!(
            r(params(Some("last-month"), None, None)).unwrap(),
            DayRange {
                from: day("2026-10-01"),
                to: day("2026-10-31")
            }
        );
        assert_eq!(
            r(params(Some("this-month"), None, None)).unwrap().from,
            day("2026-11-01")
        );
        assert_eq!(r(params(None, None, None)).unwrap().from, day("2026-10-29"));
        assert!(r(params(None, Some("2026-11-10"), Some("2026-11-01")))
            .unwrap_err()
            .to_string()
            .contains("after"));
        assert!(r(params(Some("91d"), None, None))
            .unwrap_err()
            .to_string()
            .contains("retention"));
        assert!(r(params(None, Some("2026-11-01"), Some("2026-11-28")))
            .unwrap_err()
            .to_string()
            .contains("future"));
        for bad in ["yesterday", "0d", "-3d", "7 d", ""] {
            if bad.is_empty() {
                continue;
            }
            assert!(r(params(Some(bad), None, None)).is_err(), "{bad}");
        }
        assert!(r(params(Some("7d"), Some("2026-11-01"), None)).is_err());
        assert!(r(params(None, Some("2026-11-01"), None)).is_err());
        assert!(r(params(None, Some("2026-13-01"), Some("2026-11-01"))).is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50), Some(50.0));
        assert_eq!(percentile(&mut v, 99), Some(99.0));
        assert_eq!(percentile(&mut [3.0], 90), Some(3.0));
        assert_eq!(percentile(&mut [], 50), None);
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-1.5"), "-1.5");
    }
}
