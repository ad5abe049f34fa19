//! `mayfly bench control-plane`: the control plane alone, at load these machines cannot reach
//! with real VMs: `mayfly server` (TLS, its agent listener with mTLS) as a child process on a
//! real store (encrypted SQLite, and PostgreSQL with `--postgres`); in this process the GitHub
//! simulator and simulated agents (`crate::simulated`: they run no VM; their "guest" plays the runner against
//! the simulator). It measures, per store:
//!
//! - intake: signed `workflow_job` deliveries (each a new delivery id and job id) POSTed by
//!   `--concurrency` clients, accepted per second, beside `GET /healthz` per second from the same
//!   clients in the same run; and the processor's applied deliveries per second;
//! - webhook received → StartVm sent, p50/p99, for jobs queued at the simulator at
//!   `--jobs-per-minute` and run to completion by the simulated agents; GitHub's JIT-config
//!   round trip (each VM's `jit_config` start step) inside that span, and the span without it
//!   (mayfly's own part). The simulator hands out 16 runner keys made at its start unless
//!   `--fresh-runner-keys`: making an RSA key per runner is GitHub's cost, and here it would
//!   take the server's cores;
//! - a scheduling pass's reads (`open_jobs`, `open_vms`, and the silent agents' VMs) with the
//!   tables as the run left them, and again with `--history` finished jobs added;
//! - a backlog of `--in-flight` jobs queued at once: how long the agents' slots take to work
//!   through it, and how many were in flight together;
//! - the server's peak RSS (VmHWM) over its whole run: it runs as a `mayfly server` child process
//!   ([`SimulatedStack::start_process`]) so that its memory is its own.
//!
//! Not a test: it asserts nothing about time. The report, with the machine, goes to
//! BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use mayfly_github::webhook::{signature_header, WebhookSecret};
use mayfly_sim::{JobStatus, NewJob};
use mayfly_store::{SqliteStore, Store};
use tokio_util::sync::CancellationToken;

use super::chaos::{fresh_database, psql};
use crate::exit::{Failure, RuntimeContext};
use crate::simulated::{
    enrol_simulated_agents, run_simulated_agents, simulated_profile, SimulatedAgentsConfig,
    SimulatedStack, SimulatedTimings,
};

const SECRET: &[u8] = b"bench-control-plane-secret";

/// Flags of `mayfly bench control-plane`.
#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Signed deliveries POSTed in the intake burst.
    #[arg(long, default_value_t = 10_000)]
    deliveries: u32,
    /// Concurrent HTTP clients for the intake burst and the /healthz comparison.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Jobs queued at the simulator and run through the server to the simulated agents.
    #[arg(long, default_value_t = 10_000)]
    jobs: u32,
    /// The rate they are queued at.
    #[arg(long, default_value_t = 1000)]
    jobs_per_minute: u32,
    /// Installations (customers) the jobs are spread over, a repository each: GitHub lets one
    /// installation register 10,000 runners an hour, which 10,000 jobs and more would exceed.
    #[arg(long, default_value_t = 8)]
    installations: usize,
    /// Simulated agents, and VM slots of each.
    #[arg(long, default_value_t = 10)]
    agents: u32,
    #[arg(long, default_value_t = 20)]
    slots: u32,
    /// Jobs queued at once after those, all in flight together while the agents work through
    /// them (the server's peak RSS is read after).
    #[arg(long, default_value_t = 10_000)]
    in_flight: u32,
    /// Finished jobs added before the pass is timed again.
    #[arg(long, default_value_t = 1_000_000)]
    history: u32,
    /// Also run on PostgreSQL: a fresh database is made on this server and dropped after, e.g.
    /// postgres://postgres@127.0.0.1:5432/test.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Let the simulator make a new RSA key for every runner, as GitHub does (about 0.1 s of
    /// CPU each, on the cores the server uses), instead of reusing 16.
    #[arg(long)]
    fresh_runner_keys: bool,
    /// Where to append the report.
    #[arg(long, default_value = "BENCHMARKS.md", value_name = "FILE")]
    out: PathBuf,
}

/// What one store's run measured.
#[derive(Debug, Default)]
struct Measured {
    store: String,
    healthz_per_sec: f64,
    accepted: u64,
    refused: u64,
    intake_per_sec: f64,
    applied_per_sec: f64,
    jobs_done: usize,
    jobs_secs: f64,
    /// Per VM: webhook received → StartVm sent, GitHub's JIT round trip within it, and the
    /// rest (mayfly's own part).
    to_start_ms: Vec<f64>,
    jit_ms: Vec<f64>,
    ours_ms: Vec<f64>,
    /// Per VM: received → the start of the commit that applied its job (the delivery's
    /// `processed_at`); the rest of mayfly's part comes after.
    applied_ms: Vec<f64>,
    in_flight_done: usize,
    in_flight_secs: f64,
    in_flight_peak: usize,
    /// The server process's peak RSS over its whole run.
    server_rss_mib: Option<f64>,
    pass_ms_now: f64,
    pass_ms_history: f64,
    history_rows: u32,
}

/// Where the slowest 1 % of mayfly's part went: how much of it came before the job was applied
/// (intake's wait for its commit to start: the delivery's `processed_at` is stamped then) and
/// how much after (the commit, then the scheduler), as means over those jobs.
fn tail_split(ours_ms: &[f64], applied_ms: &[f64]) -> Option<String> {
    let mut by_ours: Vec<(f64, f64)> = ours_ms
        .iter()
        .copied()
        .zip(applied_ms.iter().copied())
        .collect();
    if by_ours.len() < 10 {
        return None;
    }
    by_ours.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let slowest = &by_ours[..by_ours.len().div_ceil(100)];
    let n = slowest.len() as f64;
    let ours = slowest.iter().map(|s| s.0).sum::<f64>() / n;
    let applied = slowest.iter().map(|s| s.1).sum::<f64>() / n;
    Some(format!(
        "the slowest 1 % of mayfly's part ({} VMs, mean {ours:.1} ms): received → its commit began {applied:.1} ms, \
         then → StartVm (JIT round trip left out) {:.1} ms.\n",
        slowest.len(),
        ours - applied
    ))
}

#[allow(clippy::print_stdout)] // the report is the command's output
pub async fn run(args: ControlPlaneArgs) -> Result<(), Failure> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; numbers for BENCHMARKS.md come from `scripts/bench control-plane` (release)");
    }
    let mut results = vec![bench_one(&args, None).await.runtime_err()?];
    if let Some(url) = &args.postgres {
        let (db_url, name) = fresh_database(url, format!("mayfly_bench_{}", std::process::id()))
            .await
            .runtime_err()?;
        let result = bench_one(&args, Some(&db_url)).await;
        let _ = psql(url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        results.push(result.runtime_err()?);
    }
    let report = report(&args, &results);
    print!("{report}");
    super::bench::append_report(&args.out, &report)
}

async fn bench_one(args: &ControlPlaneArgs, postgres: Option<&str>) -> anyhow::Result<Measured> {
    let dir = Scratch::new(if postgres.is_some() { "pg" } else { "sqlite" })?;
    // The server runs as a child process (its memory its own); this process reads the same
    // database to time what the server did.
    let (database, name) = match postgres {
        Some(url) => {
            let master_key_file = dir.path().join("master.key");
            mayfly_store::MasterKey::random().write(&master_key_file)?;
            (
                mayfly_server::DatabaseConfig {
                    postgres_url: Some(url.to_owned()),
                    master_key_file: Some(master_key_file),
                    ..Default::default()
                },
                "PostgreSQL",
            )
        }
        None => {
            super::quickstart::quickstart_db_key(dir.path()).map_err(|e| anyhow!("{e:?}"))?;
            (
                mayfly_server::DatabaseConfig {
                    key_file: Some(dir.path().join("db.key")),
                    ..Default::default()
                },
                "SQLite (SQLCipher)",
            )
        }
    };
    eprintln!("== {name}");
    let mut m = Measured {
        store: name.to_owned(),
        ..Measured::default()
    };

    let stack = SimulatedStack::start_process(
        &std::env::current_exe()?,
        database.clone(),
        dir.path(),
        SECRET,
        simulated_profile(),
        (!args.fresh_runner_keys).then_some(16),
    )
    .await?;
    let mut sqlite = None;
    let store: Arc<dyn Store> = match postgres {
        Some(url) => Arc::new(mayfly_store::PgStore::connect(url).await?),
        None => {
            let key =
                super::quickstart::quickstart_db_key(dir.path()).map_err(|e| anyhow!("{e:?}"))?;
            let opened = SqliteStore::open(&dir.path().join("mayfly.db"), &key).await?;
            sqlite = Some(opened.clone());
            Arc::new(opened)
        }
    };
    let SimulatedStack {
        sim,
        server,
        cert_pem,
        ..
    } = &stack;
    let base = server.base_url().replace("127.0.0.1", "localhost");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes())?)
        .pool_max_idle_per_host(args.concurrency)
        // One connection a client, as GitHub delivers webhooks over HTTP/1.1.
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?;

    // 1. /healthz, then the intake burst, from the same clients.
    let healthz_for = Duration::from_secs(5);
    let served = hammer(args.concurrency, healthz_for, u64::MAX, {
        let (http, url) = (http.clone(), format!("{base}healthz"));
        move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        }
    })
    .await;
    m.healthz_per_sec = served.0 as f64 / served.2.as_secs_f64();
    eprintln!("GET /healthz: {:.0}/s", m.healthz_per_sec);

    // Bodies and signatures are made before the clock starts, as a load generator such as wrk
    // sends prepared requests: what is timed is the server's work, not the client's JSON.
    let template: serde_json::Value = serde_json::from_slice(include_bytes!(
        "../../../../testdata/github/fixtures/workflow_job.queued.json"
    ))?;
    let secret = WebhookSecret::new(SECRET.to_vec());
    let prepared: Vec<(Vec<u8>, String)> = (0..u64::from(args.deliveries))
        .map(|i| {
            let mut payload = template.clone();
            payload["workflow_job"]["id"] = serde_json::json!(5_000_000_000_u64 + i);
            // No profile takes these: intake and processing only, no VM asked for.
            payload["workflow_job"]["labels"] = serde_json::json!(["bench-intake-only"]);
            let body = serde_json::to_vec(&payload).unwrap_or_default();
            let signature = signature_header(&secret, &body);
            (body, signature)
        })
        .collect();
    let prepared = Arc::new(prepared);
    let intake_started = Instant::now();
    let burst = hammer(
        args.concurrency,
        Duration::from_secs(600),
        u64::from(args.deliveries),
        {
            let (http, url) = (http.clone(), format!("{base}webhooks/github"));
            move |i| {
                let (http, url, prepared) = (http.clone(), url.clone(), prepared.clone());
                async move {
                    let Some((body, signature)) =
                        usize::try_from(i).ok().and_then(|i| prepared.get(i))
                    else {
                        return false;
                    };
                    http.post(&url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "workflow_job")
                        .header("x-github-delivery", format!("bench-{i}"))
                        .header("x-hub-signature-256", signature.as_str())
                        .body(body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            }
        },
    )
    .await;
    m.accepted = burst.0;
    m.refused = burst.1;
    m.intake_per_sec = burst.0 as f64 / burst.2.as_secs_f64();
    eprintln!(
        "intake: {} accepted ({} refused) in {:.1} s: {:.0}/s",
        burst.0,
        burst.1,
        burst.2.as_secs_f64(),
        m.intake_per_sec
    );
    loop {
        if store.pending_deliveries(1).await?.is_empty() {
            break;
        }
        if intake_started.elapsed() > Duration::from_secs(900) {
            return Err(anyhow!(
                "the processor did not apply the burst in 15 minutes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.applied_per_sec = burst.0 as f64 / intake_started.elapsed().as_secs_f64();
    eprintln!(
        "applied: {:.0}/s (burst start to last applied)",
        m.applied_per_sec
    );

    // 2. Jobs through the loop, to simulated agents.
    let names: Vec<String> = (0..args.agents).map(|i| format!("bench-{i}")).collect();
    let agents = enrol_simulated_agents(
        store.as_ref(),
        &server.base_url(),
        cert_pem,
        &names,
        &dir.path().join("credentials"),
    )
    .await?;
    let journal_dir = dir.path().join("journals");
    std::fs::create_dir_all(&journal_dir)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run_simulated_agents(
        SimulatedAgentsConfig {
            server_url: stack.agent_url()?,
            agents,
            slots: args.slots,
            timings: SimulatedTimings {
                create: Duration::from_millis(5),
                boot: Duration::from_millis(200),
                runner_start: Duration::from_millis(50),
                job: Duration::from_millis(500),
                destroy: Duration::from_millis(5),
                poll: Duration::from_millis(100),
                acquire_for: Duration::from_secs(120),
                renew: Duration::from_secs(5),
            },
            journal_dir,
            sim_ca_pem: None,
            lease: Duration::from_secs(60),
        },
        shutdown.clone(),
    ));
    let control = sim.control();
    let repos = stack.repos(args.installations.max(1))?;
    let repo_of = |i: usize| repos[i % repos.len()].clone();
    let gap = Duration::from_secs_f64(60.0 / f64::from(args.jobs_per_minute.max(1)));
    let loop_started = Instant::now();
    let mut jobs = Vec::new();
    let mut next = Instant::now();
    for i in 0..args.jobs as usize {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        jobs.push(
            control
                .create_job(NewJob {
                    repository: repo_of(i),
                    labels: vec!["self-hosted".into(), "simulated".into()],
                    ..NewJob::default()
                })
                .map_err(|e| anyhow!("{e}"))?
                .id,
        );
    }
    m.jobs_done = wait_for_jobs(&control, &jobs, |_| {}).await;
    m.jobs_secs = loop_started.elapsed().as_secs_f64();
    eprintln!(
        "jobs: {}/{} completed in {:.1} s",
        m.jobs_done,
        jobs.len(),
        m.jobs_secs
    );
    // Webhook received (the queued delivery's record) → VM row written and StartVm sent.
    let queued: std::collections::HashMap<i64, String> = control
        .deliveries()
        .into_iter()
        .filter(|d| d.event == "workflow_job" && d.action.as_deref() == Some("queued"))
        .filter_map(|d| {
            let job = d.json().ok()?["workflow_job"]["id"].as_i64()?;
            Some((job, d.guid))
        })
        .collect();
    for vm in store.vms(false).await? {
        let Some(guid) = queued.get(&vm.for_job_id) else {
            continue;
        };
        let Some(record) = store
            .delivery(&mayfly_core::DeliveryId::parse(guid)?)
            .await?
        else {
            continue;
        };
        let total = (vm.requested_at - record.received_at)
            .num_microseconds()
            .unwrap_or(0) as f64
            / 1000.0;
        let jit = vm
            .start_steps
            .as_deref()
            .and_then(|s| serde_json::from_str::<Vec<mayfly_core::StartStep>>(s).ok())
            .and_then(|steps| steps.into_iter().find(|s| s.step == "jit_config"))
            .map_or(0.0, |s| s.millis);
        let applied = record.processed_at.map_or(0.0, |at| {
            (at - record.received_at).num_microseconds().unwrap_or(0) as f64 / 1000.0
        });
        m.to_start_ms.push(total);
        m.jit_ms.push(jit);
        m.ours_ms.push(total - jit);
        m.applied_ms.push(applied);
    }
    // 3. A backlog: `--in-flight` jobs queued at once, all in flight (queued or running) until
    // the agents' slots work through them; the server's peak RSS is taken after.
    let burst_started = Instant::now();
    let backlog = (0..args.in_flight as usize)
        .map(|i| {
            control
                .create_job(NewJob {
                    repository: repo_of(i),
                    labels: vec!["self-hosted".into(), "simulated".into()],
                    ..NewJob::default()
                })
                .map(|j| j.id)
                .map_err(|e| anyhow!("{e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let done = wait_for_jobs(&control, &backlog, |open| {
        m.in_flight_peak = m.in_flight_peak.max(open);
    })
    .await;
    m.in_flight_done = done;
    m.in_flight_secs = burst_started.elapsed().as_secs_f64();
    m.server_rss_mib = server.peak_rss_mib();
    eprintln!(
        "backlog: {done}/{} completed in {:.1} s, at most {} in flight; server peak RSS {}",
        backlog.len(),
        m.in_flight_secs,
        m.in_flight_peak,
        mib(m.server_rss_mib)
    );

    shutdown.cancel();
    let _ = running.await;
    // The server stops first: both timings below are of the store alone, in the same state.
    stack.server.shutdown().await;

    // 4. A pass's reads, as the run left the tables, then with history added; each with the
    // planner's statistics up to date, as the server's hourly refresh keeps them.
    store.refresh_statistics().await?;
    m.pass_ms_now = time_pass(store.as_ref()).await?;
    eprintln!("adding {} finished jobs…", args.history);
    store
        .seed_history(
            args.history,
            10_000_000_000,
            chrono::Utc::now() - chrono::Duration::days(30),
        )
        .await?;
    m.history_rows = args.history;
    // The history went in as one transaction; in service it comes in small ones that SQLite
    // checkpoints as it goes, so its log is moved into the file before the pass is timed.
    if let Some(sqlite) = &sqlite {
        sqlite.checkpoint().await?;
    }
    // A server refreshes the statistics hourly; the history stands for 90 days of jobs, so the
    // planner knows of it as it would in service.
    store.refresh_statistics().await?;
    m.pass_ms_history = time_pass(store.as_ref()).await?;
    if m.pass_ms_history > 1.1 * m.pass_ms_now {
        // The plans say where the history is read.
        for line in store.pass_query_plans().await? {
            eprintln!("  plan: {line}");
        }
    }
    eprintln!(
        "pass reads: {:.2} ms, with {} finished jobs {:.2} ms",
        m.pass_ms_now, args.history, m.pass_ms_history
    );

    stack.sim.shutdown().await;
    store.close().await;
    Ok(m)
}

/// Waits (up to 30 minutes) until the simulator has completed every one of `jobs`, telling
/// `open` how many are not completed every half second; returns how many completed.
async fn wait_for_jobs(
    control: &mayfly_sim::SimControl,
    jobs: &[u64],
    mut open: impl FnMut(usize),
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last_report = Instant::now();
    loop {
        let done = jobs
            .iter()
            .filter(|id| {
                control
                    .job(**id)
                    .is_some_and(|j| j.status == JobStatus::Completed)
            })
            .count();
        open(jobs.len() - done);
        if done == jobs.len() || Instant::now() > deadline {
            return done;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("jobs: {done}/{} completed", jobs.len());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn mib(m: Option<f64>) -> String {
    m.map_or_else(|| "unknown".to_owned(), |m| format!("{m:.0} MiB"))
}

/// A directory for one run, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mayfly-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Median of 21 runs of what a scheduling pass reads, in milliseconds.
async fn time_pass(store: &dyn Store) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..21 {
        let now = chrono::Utc::now();
        let started = Instant::now();
        store
            .open_jobs(now - chrono::Duration::hours(1), false)
            .await?;
        store
            .undecided_changed_since(now - chrono::Duration::seconds(5))
            .await?;
        store.open_vms().await?;
        store
            .vms_of_silent_agents(now - chrono::Duration::seconds(60))
            .await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Runs `request(i)` from `clients` concurrent loops until `count` requests were made or `for_`
/// passed; returns (succeeded, failed, elapsed).
async fn hammer<F, Fut>(
    clients: usize,
    for_: Duration,
    count: u64,
    request: F,
) -> (u64, u64, Duration)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (next, ok, bad, stop, request) = (
            next.clone(),
            ok.clone(),
            bad.clone(),
            stop.clone(),
            request.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || stop.load(Ordering::Relaxed) || started.elapsed() > for_ {
                    return;
                }
                if request(i).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    stop.store(true, Ordering::Relaxed);
    (
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        started.elapsed(),
    )
}

fn report(args: &ControlPlaneArgs, results: &[Measured]) -> String {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut text = format!(
        "\n## {date} — control plane ({build} build)\n\nMachine: {machine}. \
         `mayfly bench control-plane --deliveries {d} --concurrency {c} --jobs {j} \
         --jobs-per-minute {r} --in-flight {f} --installations {n} --agents {a} --slots {s} --history {h}`: `mayfly \
         server` (TLS) in a process of its own; the simulator and {a} simulated agents (no VMs) \
         in the bench's process, whose peak RSS was {rss}; the simulator {keys}. Received → \
         StartVm is per VM: in all, GitHub's JIT-config round trip within it, and the rest \
         (mayfly's own part). Backlog: {f} jobs queued at once after the others, all in flight \
         together; the server's peak RSS is over its whole run.\n\n\
         | store | GET /healthz /s | deliveries accepted /s | intake ÷ healthz | applied /s | jobs done | received → StartVm p50 / p99 | JIT round trip p50 / p99 | mayfly's part p50 / p99 | backlog: done, most in flight | server peak RSS | pass reads | with {h} finished jobs | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine = super::bench::machine(),
        d = args.deliveries,
        c = args.concurrency,
        j = args.jobs,
        r = args.jobs_per_minute,
        a = args.agents,
        s = args.slots,
        h = args.history,
        keys = if args.fresh_runner_keys {
            "makes a new RSA key per runner, as GitHub does"
        } else {
            "hands out 16 runner keys made at its start (GitHub's cost of making keys left out)"
        },
        f = args.in_flight,
        n = args.installations,
        rss = mib(crate::simulated::peak_rss_mib("/proc/self/status")),
    );
    for m in results {
        let spread = |samples: &[f64]| match super::bench::percentiles(samples.to_vec()) {
            Some((p50, p99, _)) => format!("{p50:.1} ms / {p99:.1} ms"),
            None => "— / —".to_owned(),
        };
        text.push_str(&format!(
            "| {store} | {hz:.0} | {acc:.0} ({refused} refused) | {share:.0} % | {applied:.0} | {done}/{jobs} in {secs:.0} s | {total} | {jit} | {ours} | {bdone}/{f} in {bsecs:.0} s, {peak} | {rss} | {now:.2} ms | {hist:.2} ms | {ratio:.2} |\n",
            store = m.store,
            hz = m.healthz_per_sec,
            acc = m.intake_per_sec,
            refused = m.refused,
            share = 100.0 * m.intake_per_sec / m.healthz_per_sec.max(1.0),
            applied = m.applied_per_sec,
            done = m.jobs_done,
            jobs = args.jobs,
            secs = m.jobs_secs,
            total = spread(&m.to_start_ms),
            jit = spread(&m.jit_ms),
            ours = spread(&m.ours_ms),
            bdone = m.in_flight_done,
            f = args.in_flight,
            bsecs = m.in_flight_secs,
            peak = m.in_flight_peak,
            rss = mib(m.server_rss_mib),
            now = m.pass_ms_now,
            hist = m.pass_ms_history,
            ratio = m.pass_ms_history / m.pass_ms_now.max(0.001),
        ));
    }
    for m in results {
        if let Some(tail) = tail_split(&m.ours_ms, &m.applied_ms) {
            text.push_str(&format!("\n{}: {tail}", m.store));
        }
    }
    text.push_str(
        "\nGoals (issue 13): intake ≥ 10,000/s or ≥ 50 % of /healthz; received → StartVm ≤ 20 ms p99 \
         at 1,000 jobs/minute, GitHub's round trips excluded (mayfly's part); pass with 1,000,000 \
         finished jobs ≤ 1.1 × without; server RSS ≤ 64 MiB with 10,000 jobs in flight.\n",
    );
    text
}
