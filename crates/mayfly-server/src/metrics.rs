//! `/metrics` for operators: OpenMetrics text from prometheus-client's encoder, behind an admin
//! token. Names follow Prometheus' conventions (`mayfly_` prefix, base units, `_total`); every
//! label is bounded (configured profiles, fixed phases, results and reasons, the tenant on
//! counters and gauges only), never a job, run, runner or repository id, never webhook text.
//! Counters and histograms are fed where the work happens; store-derived gauges per scrape.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use mayfly_core::{JobStatus, PhaseTimes};
use mayfly_store::{JobRecord, Store, StoreError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::agents::AgentHub;

mod scrape;
pub use scrape::{classic_text, routes, CLASSIC_TEXT, OPENMETRICS};

/// Bucket bounds (seconds) for every duration: 0.5 s to 30 min.
const BUCKETS: [f64; 14] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// What became of a webhook delivery.
pub const DELIVERY_RESULTS: [&str; 9] = [
    "accepted",
    "duplicate",
    "ignored",
    "rejected_signature",
    "bad_request",
    "bad_payload",
    "too_large",
    "unavailable",
    "rate_limited",
];

/// GitHub's job conclusions; anything else is counted as `other` (webhook text is never a label).
const CONCLUSIONS: [&str; 9] = [
    "success",
    "failure",
    "cancelled",
    "skipped",
    "timed_out",
    "neutral",
    "action_required",
    "stale",
    "startup_failure",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    conclusion: &'static str,
    profile: String,
    installation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileTenant {
    profile: String,
    installation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitingLabels {
    reason: &'static str,
    installation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
    profile: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabel {
    profile: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GitHubLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstallationLabel {
    installation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    dispatch_failures: Family<ProfileTenant, Counter>,
    jobs_waiting: Family<WaitingLabels, Gauge>,
    waiting_since: Family<ReasonLabel, FloatGauge>,
    phases: HistogramFamily<PhaseLabels>,
    vm_boot: HistogramFamily<ProfileLabel>,
    deliveries: Family<ResultLabel, Counter>,
    webhook_lag: Histogram,
    intake_batch: Histogram,
    jit_config: Histogram,
    pass: Histogram,
    github_requests: Family<GitHubLabels, Counter>,
    rate_limit_remaining: Family<InstallationLabel, Gauge>,
    rate_limit_limit: Family<InstallationLabel, Gauge>,
    agents: Gauge,
    slots: Family<StateLabel, Gauge>,
    hub: OnceLock<Arc<AgentHub>>,
    readers: scrape::Readers,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mayfly");
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs",
            "Jobs completed at GitHub, by conclusion, machine type (profile) and installation",
            jobs.clone(),
        );
        let dispatch_failures = Family::<ProfileTenant, Counter>::default();
        registry.register(
            "job_dispatch_failures",
            "Jobs mayfly gave up placing (no JIT config, VM failures) after its retries",
            dispatch_failures.clone(),
        );
        let jobs_waiting = Family::<WaitingLabels, Gauge>::default();
        registry.register(
            "jobs_waiting",
            "Jobs queued at GitHub and not yet running, by why they wait and installation",
            jobs_waiting.clone(),
        );
        let waiting_since = Family::<ReasonLabel, FloatGauge>::default();
        registry.register_with_unit(
            "jobs_waiting_oldest_timestamp",
            "When mayfly first heard of the longest-waiting job, by why it waits (Unix time)",
            Unit::Seconds,
            waiting_since.clone(),
        );
        let phases: HistogramFamily<PhaseLabels> =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "job_phase_duration",
            "Time jobs spent in each phase (webhook_lag, waiting_for_capacity, vm_boot, \
             runner_start, job_run, destroy), observed once the job completed and its VM is gone",
            Unit::Seconds,
            phases.clone(),
        );
        let vm_boot: HistogramFamily<ProfileLabel> =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "vm_boot_duration",
            "From the VM process starting to the guest starting the runner, by profile",
            Unit::Seconds,
            vm_boot.clone(),
        );
        let deliveries = Family::<ResultLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries received, by result",
            deliveries.clone(),
        );
        for result in DELIVERY_RESULTS {
            let _ = deliveries.get_or_create(&ResultLabel { result });
        }
        let webhook_lag = duration_histogram();
        registry.register_with_unit(
            "webhook_lag",
            "From the moment a workflow_job payload names (queued, started or completed) to its \
             delivery being recorded",
            Unit::Seconds,
            webhook_lag.clone(),
        );
        let intake_batch = Histogram::new([
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
        ]);
        registry.register(
            "intake_commit_deliveries",
            "Webhook deliveries recorded by one commit (group commit: requests that arrived while \
             the previous commit synced share the next)",
            intake_batch.clone(),
        );
        let jit_config =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        registry.register_with_unit(
            "github_jit_config_duration",
            "GitHub's answer time to a JIT runner config request (it registers the runner and \
             makes its key), token request included",
            Unit::Seconds,
            jit_config.clone(),
        );
        let pass = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register_with_unit(
            "scheduler_pass_duration",
            "One scheduling pass: its reads, claims, JIT configs, starts and clean-up",
            Unit::Seconds,
            pass.clone(),
        );
        let github_requests = Family::<GitHubLabels, Counter>::default();
        registry.register(
            "github_api_requests",
            "HTTP requests to GitHub's REST API (each attempt), by method and result",
            github_requests.clone(),
        );
        let rate_limit_remaining = Family::<InstallationLabel, Gauge>::default();
        registry.register(
            "github_rate_limit_remaining",
            "GitHub's x-ratelimit-remaining on the latest answer, by installation (`app` for \
             App-JWT calls)",
            rate_limit_remaining.clone(),
        );
        let rate_limit_limit = Family::<InstallationLabel, Gauge>::default();
        registry.register(
            "github_rate_limit_limit",
            "GitHub's x-ratelimit-limit on the latest answer, by installation",
            rate_limit_limit.clone(),
        );
        let agents = Gauge::default();
        registry.register(
            "agents_connected",
            "Agents connected to this server",
            agents.clone(),
        );
        let slots = Family::<StateLabel, Gauge>::default();
        registry.register(
            "vm_slots",
            "VM slots of the connected agents (their Hello capacity), free or busy",
            slots.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running mayfly's version", build);
        Self {
            registry,
            jobs,
            dispatch_failures,
            jobs_waiting,
            waiting_since,
            phases,
            vm_boot,
            deliveries,
            webhook_lag,
            intake_batch,
            jit_config,
            pass,
            github_requests,
            rate_limit_remaining,
            rate_limit_limit,
            agents,
            slots,
            hub: OnceLock::new(),
            readers: scrape::Readers::default(),
        }
    }

    /// Lets scrapes count the agents connected and their slots.
    pub(crate) fn watch_agents(&self, hub: Arc<AgentHub>) {
        let _ = self.hub.set(hub);
    }

    /// A webhook delivery's result (one of [`DELIVERY_RESULTS`]).
    pub(crate) fn delivery(&self, result: &'static str) {
        self.deliveries.get_or_create(&ResultLabel { result }).inc();
    }

    /// One intake commit recorded `deliveries` deliveries.
    pub(crate) fn intake_batch(&self, deliveries: usize) {
        self.intake_batch.observe(deliveries as f64);
    }

    /// One scheduling pass's duration.
    pub(crate) fn pass(&self, took: std::time::Duration) {
        self.pass.observe(took.as_secs_f64());
    }

    /// One JIT config request's round trip to GitHub.
    pub(crate) fn jit_config(&self, took: std::time::Duration) {
        self.jit_config.observe(took.as_secs_f64());
    }

    pub(crate) fn webhook_lag(&self, lag: chrono::Duration) {
        self.webhook_lag.observe(seconds(lag));
    }

    /// A job completed at GitHub (counted once, by the server that applied the delivery).
    pub(crate) fn job_completed(&self, job: &JobRecord) {
        let conclusion = job.conclusion.as_deref().map_or("none", |c| {
            CONCLUSIONS.into_iter().find(|k| *k == c).unwrap_or("other")
        });
        self.jobs
            .get_or_create(&JobLabels {
                conclusion,
                profile: profile_of(job),
                installation: installation_of(job),
            })
            .inc();
    }

    pub(crate) fn dispatch_failed(&self, job: &JobRecord, profile: Option<&str>) {
        self.dispatch_failures
            .get_or_create(&ProfileTenant {
                profile: profile.unwrap_or("none").to_owned(),
                installation: installation_of(job),
            })
            .inc();
    }

    /// A VM's boot, from its process starting to the guest starting the runner.
    pub(crate) fn vm_booted(&self, profile: &str, took: chrono::Duration) {
        self.vm_boot
            .get_or_create(&ProfileLabel {
                profile: profile.to_owned(),
            })
            .observe(seconds(took));
    }

    /// A finished job's phases; a phase with an unknown end is left out.
    pub(crate) fn job_phases(&self, profile: &str, times: &PhaseTimes) {
        for (stretch, from, to) in times.monotonic().stretches() {
            self.phases
                .get_or_create(&PhaseLabels {
                    phase: stretch.name,
                    profile: profile.to_owned(),
                })
                .observe(seconds(to - from));
        }
    }

    /// Updates the gauges that come from the store and the agent hub, then encodes everything.
    pub async fn render(&self, store: &dyn Store) -> Result<String, StoreError> {
        self.refresh_waiting(&store.queued_jobs().await?);
        match self.hub.get() {
            Some(hub) => {
                let hosts = hub.hosts();
                let live = store.open_vms().await?;
                let total: i64 = hosts.iter().map(|h| i64::from(h.free_slots)).sum();
                let busy = live
                    .iter()
                    .filter(|v| {
                        !matches!(v.state.as_str(), "destroyed" | "failed" | "lost")
                            && hosts.iter().any(|h| h.host == v.host)
                    })
                    .count();
                let busy = i64::try_from(busy).unwrap_or(i64::MAX).min(total);
                self.agents
                    .set(i64::try_from(hosts.len()).unwrap_or(i64::MAX));
                self.slots
                    .get_or_create(&StateLabel { state: "busy" })
                    .set(busy);
                self.slots
                    .get_or_create(&StateLabel { state: "free" })
                    .set(total - busy);
            }
            None => {
                self.agents.set(0);
                self.slots
                    .get_or_create(&StateLabel { state: "busy" })
                    .set(0);
                self.slots
                    .get_or_create(&StateLabel { state: "free" })
                    .set(0);
            }
        }
        let mut body = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut body, &self.registry);
        Ok(body)
    }

    fn refresh_waiting(&self, jobs: &[JobRecord]) {
        self.jobs_waiting.clear();
        self.waiting_since.clear();
        let mut oldest: HashMap<&'static str, DateTime<Utc>> = HashMap::new();
        for job in jobs {
            let Some(reason) = waiting_reason(job) else {
                continue;
            };
            self.jobs_waiting
                .get_or_create(&WaitingLabels {
                    reason,
                    installation: installation_of(job),
                })
                .inc();
            let since = oldest.entry(reason).or_insert(job.first_seen_at);
            *since = (*since).min(job.first_seen_at);
        }
        for (reason, since) in oldest {
            self.waiting_since
                .get_or_create(&ReasonLabel { reason })
                .set(since.timestamp_millis() as f64 / 1000.0);
        }
    }
}

/// Why a job queued at GitHub is not running yet, or `None` if it is not waiting.
fn waiting_reason(job: &JobRecord) -> Option<&'static str> {
    if job.status != JobStatus::Queued {
        return None;
    }
    Some(match job.dispatch.disposition.as_str() {
        "new" if job.dispatch.failure.is_some() => "retrying",
        "new" => "no_capacity",
        "placing" => "placing",
        "placed" => "vm_starting",
        "ignored" => "no_matching_profile",
        _ => return None,
    })
}

fn profile_of(job: &JobRecord) -> String {
    job.dispatch
        .profile
        .clone()
        .unwrap_or_else(|| "none".to_owned())
}

fn installation_of(job: &JobRecord) -> String {
    job.installation_id
        .map_or_else(|| "none".to_owned(), |i| i.0.to_string())
}

fn seconds(d: chrono::Duration) -> f64 {
    (d.num_milliseconds().max(0) as f64) / 1000.0
}

impl mayfly_github::RequestObserver for Metrics {
    fn observe(&self, exchange: &mayfly_github::Exchange) {
        let result = match exchange.status {
            None => "transport_error",
            Some(429) => "rate_limited",
            Some(403) if exchange.rate_limit_remaining == Some(0) => "rate_limited",
            Some(s) if s < 400 => "ok",
            Some(s) if s < 500 => "client_error",
            Some(_) => "server_error",
        };
        self.github_requests
            .get_or_create(&GitHubLabels {
                method: exchange.method,
                result,
            })
            .inc();
        let installation = exchange
            .installation
            .map_or_else(|| "app".to_owned(), |i| i.0.to_string());
        let label = InstallationLabel { installation };
        if let Some(remaining) = exchange.rate_limit_remaining {
            self.rate_limit_remaining
                .get_or_create(&label)
                .set(i64::try_from(remaining).unwrap_or(i64::MAX));
        }
        if let Some(limit) = exchange.rate_limit_limit {
            self.rate_limit_limit
                .get_or_create(&label)
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total_and_drops_openmetrics_lines() {
        let m = Metrics::new();
        m.delivery("accepted");
        m.webhook_lag(chrono::Duration::milliseconds(1500));
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &m.registry).unwrap();
        assert!(
            om.contains("# TYPE mayfly_webhook_deliveries counter"),
            "{om}"
        );
        assert!(om.contains("mayfly_webhook_deliveries_total{result=\"accepted\"} 1"));
        assert!(om.ends_with("# EOF\n"));
        let classic = classic_text(&om);
        assert!(classic.contains("# TYPE mayfly_webhook_deliveries_total counter"));
        assert!(classic.contains("# HELP mayfly_webhook_deliveries_total "));
        assert!(classic.contains("mayfly_webhook_deliveries_total{result=\"accepted\"} 1"));
        assert!(classic.contains("mayfly_webhook_lag_seconds_count 1"));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    }

    fn encoded(m: &Metrics) -> String {
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &m.registry).unwrap();
        om
    }

    #[test]
    fn github_answers_are_counted_by_result_and_rate_limits_kept_per_installation() {
        use mayfly_github::{Exchange, RequestObserver};
        let m = Metrics::new();
        let exchange =
            |status: Option<u16>, installation: Option<i64>, remaining: Option<u64>| Exchange {
                method: "GET",
                status,
                installation: installation.map(mayfly_core::InstallationId),
                rate_limit_remaining: remaining,
                rate_limit_limit: remaining.map(|_| 5000),
            };
        m.observe(&exchange(Some(200), Some(7), Some(4000)));
        m.observe(&exchange(Some(403), Some(7), Some(0)));
        m.observe(&exchange(Some(403), None, None));
        m.observe(&exchange(Some(429), None, None));
        m.observe(&exchange(Some(502), None, None));
        m.observe(&exchange(None, None, None));
        let om = encoded(&m);
        for line in [
            r#"mayfly_github_api_requests_total{method="GET",result="ok"} 1"#,
            r#"mayfly_github_api_requests_total{method="GET",result="rate_limited"} 2"#,
            r#"mayfly_github_api_requests_total{method="GET",result="client_error"} 1"#,
            r#"mayfly_github_api_requests_total{method="GET",result="server_error"} 1"#,
            r#"mayfly_github_api_requests_total{method="GET",result="transport_error"} 1"#,
            r#"mayfly_github_rate_limit_remaining{installation="7"} 0"#,
            r#"mayfly_github_rate_limit_limit{installation="7"} 5000"#,
        ] {
            assert!(om.contains(line), "no {line} in\n{om}");
        }
    }

    #[test]
    fn a_job_s_phases_are_observed_in_order_and_unknown_ones_left_out() {
        let m = Metrics::new();
        let at = |s: i64| Some(DateTime::from_timestamp(s, 0).unwrap());
        m.job_phases(
            "small",
            &PhaseTimes {
                queued_at_github: at(100),
                webhook_received: at(101),
                vm_requested: at(103),
                vm_started: at(104),
                guest_ready: at(110),
                runner_started: at(111),
                // GitHub's whole second, "before" the runner started: ordered() makes it 0 s.
                job_started: at(110),
                job_completed: None,
                runner_exited: at(200),
                vm_destroyed: at(205),
            },
        );
        let om = encoded(&m);
        for (phase, sum) in [
            ("webhook_lag", "1.0"),
            ("waiting_for_capacity", "2.0"),
            ("vm_boot", "7.0"),
            ("runner_start", "1.0"),
        ] {
            let line = format!(
                r#"mayfly_job_phase_duration_seconds_sum{{phase="{phase}",profile="small"}} {sum}"#
            );
            assert!(om.contains(&line), "no {line} in\n{om}");
        }
        assert!(!om.contains(r#"phase="job_run""#), "{om}");
        assert!(!om.contains(r#"phase="destroy""#), "{om}");
    }
}
