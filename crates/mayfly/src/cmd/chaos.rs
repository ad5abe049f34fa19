//! `mayfly chaos` (`scripts/chaos`): a long run through the real loop — the simulator, one or two
//! servers (two on one PostgreSQL database with `--postgres`), one agent per server, real VMs,
//! each a separate process — while faults drawn from a seeded RNG are injected: kill -9 of a
//! server, an agent or a QEMU, the agent's link cut, GitHub answering 5xx/429, webhooks dropped
//! and duplicated, PostgreSQL restarted. At the end it counts jobs lost, duplicate VMs, events
//! lost and what is left on the host 60 s later, prints the table and appends it to
//! RELIABILITY.md with the seed and the fault schedule. Not a test: a tool, like `mayfly bench`.

pub(crate) mod cluster;
mod faults;
mod relay;
mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use mayfly_sim::NewJob;
use mayfly_store::Store;
use mayfly_vm::network::InternetStandIn;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use self::cluster::{Cluster, ServerSpec};
use self::faults::{FaultKind, FaultRecord, Targets};
use self::relay::Forwarder;
use super::quickstart::{create_orgs, greeting_job, prepare_data_dir, PROFILE};
use super::sim::ensure_identity;
use crate::exit::{ConfigContext, Failure, RuntimeContext};

const DEFAULT_SLOTS: u32 = 2;
const DEFAULT_FAULT_EVERY_SECS: u64 = 30;

/// Flags of `mayfly chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Jobs to queue through the simulator, at a steady rate within the agents' slots.
    #[arg(long, default_value_t = 200)]
    jobs: u32,
    /// Seed of the fault schedule [default: random, printed at start].
    #[arg(long)]
    seed: Option<u64>,
    /// VM slots in all (split between the agents).
    #[arg(long, default_value_t = DEFAULT_SLOTS)]
    slots: u32,
    /// Run two servers on this PostgreSQL database server (a fresh database is made on it and
    /// dropped after), e.g. postgres://postgres@127.0.0.1:5432/test; PostgreSQL restarts
    /// become one of the faults (`pg_ctlcluster`).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Draw only these kinds of fault, comma-separated [default: all; restart-postgres only
    /// with --postgres].
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    faults: Vec<FaultKind>,
    /// Mean seconds between faults (each gap is drawn between half and one and a half of it).
    #[arg(long, default_value_t = DEFAULT_FAULT_EVERY_SECS)]
    fault_every_secs: u64,
    /// Stop injecting faults after this many seconds [default: when every job is queued].
    #[arg(long, value_name = "SECS")]
    duration_secs: Option<u64>,
    /// The server's agent_lease_secs and the agent's --lease-secs.
    #[arg(long, default_value_t = 15)]
    lease_secs: u64,
    /// The server's reconcile_interval_secs (recovers dropped webhooks).
    #[arg(long, default_value_t = 10)]
    reconcile_secs: u64,
    /// After the faults stop, give up waiting for the jobs after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// After the jobs, wait this long before counting what is left on the host.
    #[arg(long, default_value_t = 60)]
    settle_secs: u64,
    /// Directory for the run (logs in logs/; the VM state roots are kept between runs).
    #[arg(long, default_value = "target/mayfly-chaos", value_name = "DIR")]
    data_dir: PathBuf,
    /// Image store holding the guest image.
    #[arg(long, default_value = "target/mayfly-images", value_name = "DIR")]
    images: PathBuf,
    /// Image digest to boot [default: the store's `test-image` file].
    #[arg(long, value_name = "DIGEST")]
    image: Option<String>,
    /// Where to append the report.
    #[arg(long, default_value = "RELIABILITY.md", value_name = "FILE")]
    out: PathBuf,
}

/// The simulator's jobs: id → (status, conclusion).
type SimJobs = BTreeMap<u64, (String, Option<String>)>;

async fn sim_jobs(http: &reqwest::Client, sim: &str) -> anyhow::Result<SimJobs> {
    let jobs: Vec<serde_json::Value> = http
        .get(format!("{sim}_sim/jobs"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(jobs
        .iter()
        .filter_map(|j| {
            Some((
                j["id"].as_u64()?,
                (
                    j["status"].as_str()?.to_owned(),
                    j["conclusion"].as_str().map(str::to_owned),
                ),
            ))
        })
        .collect())
}

fn elapsed(started: Instant) -> String {
    format!("[{:>6.1} s]", started.elapsed().as_secs_f64())
}

/// A fresh database beside the one `url` names; returns its URL and name.
/// Makes database `name` on the server at `url`; returns its URL and name.
pub(super) async fn fresh_database(url: &str, name: String) -> anyhow::Result<(String, String)> {
    psql(url, &format!("CREATE DATABASE {name}")).await?;
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .context("the PostgreSQL URL has no database")?;
    Ok((format!("{base}/{name}"), name))
}

pub(super) async fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("psql")
        .args([url, "-q", "-c", sql])
        .status()
        .await
        .context("could not run psql")?;
    if !status.success() {
        return Err(anyhow!("psql {sql:?}: {status}"));
    }
    Ok(())
}

/// The newest PostgreSQL cluster version on this machine (for `pg_ctlcluster`).
fn postgres_version() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    versions.pop()
}

#[allow(clippy::print_stdout)] // the report is the command's output
pub async fn run(args: ChaosArgs) -> Result<(), Failure> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::Config(anyhow!(
            "mayfly chaos boots VMs in their own network namespaces: run it as root"
        )));
    }
    let menu = FaultKind::menu(args.postgres.is_some(), &args.faults).config_err()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chaos seed: {seed} (replay with --seed {seed})");
    let images = std::path::absolute(&args.images).config_err()?;
    let digest = match &args.image {
        Some(digest) => digest.clone(),
        None => std::fs::read_to_string(images.join("test-image"))
            .map(|d| d.trim().to_owned())
            .with_context(|| {
                format!(
                    "no guest image in {}: run scripts/build-guest-image first",
                    images.display()
                )
            })
            .config_err()?,
    };
    let data_dir = prepare_data_dir(&std::path::absolute(&args.data_dir).config_err()?)?;
    let root = data_dir.root.clone();
    let logs = root.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).config_err()?;
    let sim_dir = root.join("sim");
    ensure_identity(&sim_dir).config_err()?;
    let inet = InternetStandIn::ensure().await.config_err()?;
    let exe = std::env::current_exe().config_err()?;

    let (postgres, database) = match &args.postgres {
        Some(url) => {
            let (db_url, name) = fresh_database(url, format!("mayfly_chaos_{seed:016x}"))
                .await
                .config_err()?;
            (Some(db_url), Some(name))
        }
        None => (None, None),
    };
    let n = if postgres.is_some() { 2 } else { 1 };
    let variant = if postgres.is_some() {
        "2 servers on PostgreSQL, 2 agents".to_owned()
    } else {
        "1 server on SQLite, 1 agent".to_owned()
    };
    eprintln!("variant: {variant}; {} VM slot(s)", args.slots);

    let sim_port = super::quickstart::free_port_hint();
    let sim_base = format!("http://{}:{sim_port}/", inet.addr());
    let mut cluster = Cluster::new(exe.clone());
    let spec = ServerSpec {
        root: &root,
        sim_dir: &sim_dir,
        sim_base: &sim_base,
        digest: &digest,
        postgres_url: postgres.as_deref(),
        lease_secs: args.lease_secs,
        reconcile_secs: args.reconcile_secs,
    };
    for i in 0..n {
        cluster.add_server(i, &spec).config_err()?;
    }
    if postgres.is_some() {
        let key = root.join("server/master.key");
        if !key.exists() {
            mayfly_store::MasterKey::random().write(&key).config_err()?;
        }
    }
    // The simulator delivers from the internet stand-in to the host's side of its link; the
    // relay there hands each delivery to a server on loopback, round robin.
    let relay = Forwarder::start(
        (inet.host_addr(), 0).into(),
        cluster
            .servers
            .iter()
            .map(|s| ([127, 0, 0, 1], s.port).into())
            .collect(),
    )
    .await
    .config_err()?;
    let mut sim = inet
        .command(&exe)
        .args([
            "sim",
            "--exit-with-parent",
            "--listen",
            &format!("{}:{sim_port}", inet.addr()),
            "--data-dir",
        ])
        .arg(&sim_dir)
        .args([
            "--webhook-url",
            &format!("http://{}/webhooks/github", relay.addr),
        ])
        .env("MAYFLY_LOG", "info")
        .stderr(std::fs::File::create(logs.join("sim.log")).config_err()?)
        .kill_on_drop(true)
        .spawn()
        .context("could not start the simulator")
        .runtime_err()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .runtime_err()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim_jobs(&http, &sim_base).await.is_err() {
        if Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow!("the simulator did not start")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..n {
        cluster.start_server(i).await.runtime_err()?;
    }
    let per_agent = (args.slots / n as u32).max(1);
    for i in 0..n {
        cluster
            .add_agent(i, &root, &images, per_agent, args.lease_secs)
            .await
            .runtime_err()?;
        cluster.start_agent(i).runtime_err()?;
    }
    let accel = mayfly_vm::accel::probe(
        std::path::Path::new("qemu-system-x86_64"),
        &mayfly_vm::image::ImageStore::new(images.clone())
            .get(&digest)
            .config_err()?
            .kernel,
    )
    .await;
    let machine = report::machine(&format!("{:?}", accel.accel));
    eprintln!("machine: {machine}");
    eprintln!("logs: {}", logs.display());
    eprintln!(
        "agent↔server links: TCP forwarders in this process (a cut forwards nothing and resets nothing)"
    );
    let repos = create_orgs(&http, &sim_base).await.runtime_err()?;

    // The faults, in their own task: it owns the processes, and gives them back at the end.
    let started = Instant::now();
    let stop_faults = CancellationToken::new();
    let targets = Targets {
        sim_base: sim_base.clone(),
        http: http.clone(),
        started,
        postgres_cluster: postgres.as_ref().and_then(|_| postgres_version()),
    };
    let every = args.fault_every_secs.max(2);
    let fault_task = {
        let stop = stop_faults.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut records: Vec<FaultRecord> = Vec::new();
            let mut findings: Vec<String> = Vec::new();
            loop {
                let gap = Duration::from_millis(rand::Rng::gen_range(
                    &mut rng,
                    every * 500..=every * 1500,
                ));
                let until = Instant::now() + gap;
                while Instant::now() < until && !stop.is_cancelled() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    for gone in cluster.exited() {
                        eprintln!("{} FINDING: {gone}", elapsed(started));
                        findings.push(gone);
                    }
                }
                if stop.is_cancelled() {
                    break;
                }
                let at = started.elapsed().as_secs_f64();
                let what = faults::inject(&mut rng, &menu, &mut cluster, &targets).await;
                eprintln!("{} fault #{}: {what}", elapsed(started), records.len() + 1);
                records.push(FaultRecord { at_secs: at, what });
            }
            (cluster, records, findings)
        })
    };

    // Queue the jobs at a steady rate: at most two per slot waiting or running at once.
    let mut queued: Vec<u64> = Vec::new();
    let mut last_progress = Instant::now();
    let window = (args.slots as usize * 2).max(2);
    let mut snapshot = SimJobs::new();
    let (mut last_done, mut last_completion) = (0, Instant::now());
    let fault_deadline = args.duration_secs.map(|d| started + Duration::from_secs(d));
    loop {
        if let Ok(jobs) = sim_jobs(&http, &sim_base).await {
            snapshot = jobs;
        }
        let done = queued
            .iter()
            .filter(|id| snapshot.get(id).is_some_and(|(s, _)| s == "completed"))
            .count();
        if queued.len() < args.jobs as usize && queued.len() - done < window {
            let i = queued.len() as u32 + 1;
            let (name, steps) = greeting_job(i);
            let job = NewJob {
                repository: repos[i as usize % repos.len()].clone(),
                labels: vec!["self-hosted".into(), PROFILE.into()],
                name: Some(name),
                steps,
                sender: Some(["alice", "bob"][i as usize % 2].to_owned()),
                ..NewJob::default()
            };
            let created: anyhow::Result<serde_json::Value> = async {
                Ok(http
                    .post(format!("{sim_base}_sim/jobs"))
                    .json(&job)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?)
            }
            .await;
            match created.map(|j| j["id"].as_u64()) {
                Ok(Some(id)) => queued.push(id),
                other => eprintln!("{} could not queue a job: {other:?}", elapsed(started)),
            }
            continue;
        }
        if last_progress.elapsed() > Duration::from_secs(15) {
            last_progress = Instant::now();
            eprintln!(
                "{} jobs: queued {}/{}, completed {done}",
                elapsed(started),
                queued.len(),
                args.jobs
            );
        }
        if done != last_done {
            (last_done, last_completion) = (done, Instant::now());
        }
        // Jobs that never finish hold the window shut: stop queueing and report what happened.
        if last_completion.elapsed() > Duration::from_secs(300) {
            eprintln!(
                "{} no job completed for 300 s: {} of {} queued; counting now",
                elapsed(started),
                queued.len(),
                args.jobs
            );
            break;
        }
        let all_queued = queued.len() >= args.jobs as usize;
        if all_queued || fault_deadline.is_some_and(|d| Instant::now() > d) {
            if all_queued {
                break;
            }
            stop_faults.cancel();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop_faults.cancel();
    eprintln!(
        "{} every job queued; the faults stop after the one under way",
        elapsed(started)
    );
    let (mut cluster, records, mut findings) = fault_task
        .await
        .map_err(|e| Failure::Runtime(anyhow!("the fault task failed: {e}")))?;

    // Wait for the jobs: until every one completed, or what is left stays as it is for 180 s
    // (a job whose runner died mid-run stays in progress at the simulator), or the timeout.
    let calm = Instant::now();
    let deadline = calm + Duration::from_secs(args.timeout_secs);
    let mut unchanged_since = Instant::now();
    let mut previous: Vec<(u64, String)> = Vec::new();
    loop {
        if let Ok(jobs) = sim_jobs(&http, &sim_base).await {
            snapshot = jobs;
        }
        for gone in cluster.exited() {
            eprintln!("{} FINDING: {gone}", elapsed(started));
            findings.push(gone);
        }
        let open: Vec<(u64, String)> = queued
            .iter()
            .filter_map(|id| match snapshot.get(id) {
                Some((s, _)) if s == "completed" => None,
                Some((s, _)) => Some((*id, s.clone())),
                None => Some((*id, "unknown".to_owned())),
            })
            .collect();
        if open != previous {
            previous = open.clone();
            unchanged_since = Instant::now();
        }
        if last_progress.elapsed() > Duration::from_secs(15) {
            last_progress = Instant::now();
            eprintln!(
                "{} jobs: {} of {} not completed yet",
                elapsed(started),
                open.len(),
                queued.len()
            );
        }
        if open.is_empty()
            || unchanged_since.elapsed() > Duration::from_secs(180)
            || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let duration_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} waiting {} s before counting what is left on the host",
        elapsed(started),
        args.settle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let state_roots: Vec<PathBuf> = cluster
        .agents
        .iter()
        .map(|a| a.state_root.clone())
        .collect();
    let orphans = report::orphans(&state_roots);
    if let Ok(jobs) = sim_jobs(&http, &sim_base).await {
        snapshot = jobs;
    }

    // The store's view, with the servers stopped (SQLite has one writer) and the agents alive.
    cluster.stop_servers().await;
    let (jobs, vms) = read_store(&root, postgres.as_deref()).await.runtime_err()?;
    cluster.stop_agents().await;
    let _ = sim.kill().await;
    drop(relay);
    if let (Some(url), Some(name)) = (&args.postgres, &database) {
        let _ = psql(url, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }

    let counts = report::count(&queued, &snapshot, &jobs, &vms);
    let report = report::Report {
        variant: &variant,
        seed,
        replay_flags: replay_flags(&args),
        machine,
        duration_secs,
        counts: &counts,
        orphans: &orphans,
        faults: &records,
        findings: &findings,
    };
    let section = report.markdown();
    print!("{section}");
    report::append(&args.out, &section)
        .with_context(|| format!("could not write {}", args.out.display()))
        .runtime_err()?;
    eprintln!("appended to {}", args.out.display());
    drop(data_dir);
    match report.failures() {
        0 => Ok(()),
        bad => Err(Failure::Runtime(anyhow!(
            "{bad} count(s) that should be 0 are not (seed {seed})"
        ))),
    }
}

/// Every job and VM row of the run's store.
/// The flags besides `--jobs` and `--seed` that a replay of this run needs.
fn replay_flags(args: &ChaosArgs) -> String {
    let mut flags = String::new();
    if args.postgres.is_some() {
        flags.push_str(" --postgres URL");
    }
    if !args.faults.is_empty() {
        let kinds: Vec<String> = args
            .faults
            .iter()
            .filter_map(|kind| kind.to_possible_value().map(|v| v.get_name().to_owned()))
            .collect();
        flags.push_str(&format!(" --faults {}", kinds.join(",")));
    }
    if args.fault_every_secs != DEFAULT_FAULT_EVERY_SECS {
        flags.push_str(&format!(" --fault-every-secs {}", args.fault_every_secs));
    }
    if args.slots != DEFAULT_SLOTS {
        flags.push_str(&format!(" --slots {}", args.slots));
    }
    flags
}

async fn read_store(
    root: &std::path::Path,
    postgres: Option<&str>,
) -> anyhow::Result<(Vec<mayfly_store::JobRecord>, Vec<mayfly_store::VmRow>)> {
    let store: Box<dyn Store> = match postgres {
        Some(url) => Box::new(mayfly_store::PgStore::connect(url).await?),
        None => {
            let dir = root.join("server/server-0");
            let key = super::quickstart::quickstart_db_key(&dir).map_err(|e| anyhow!("{e:?}"))?;
            Box::new(mayfly_store::SqliteStore::open(&dir.join("mayfly.db"), &key).await?)
        }
    };
    let jobs = store.jobs().await?;
    let vms = store.vms(false).await?;
    store.close().await;
    Ok((jobs, vms))
}
