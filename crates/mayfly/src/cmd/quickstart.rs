//! `mayfly quickstart`: the whole loop on one machine, GitHub simulated. It starts the GitHub
//! simulator inside the internet stand-in namespace (where guests can reach it, as they would
//! reach github.com), the server (TLS with a local CA, embedded store), and a local agent that
//! dials the server over gRPC; then it queues N jobs (or a `--workflow` file's jobs) across two
//! organisations and follows each one: webhook → VM started → runner started → job done → VM
//! destroyed.
//!
//! The simulator's world lives in its memory, so each run meets a new GitHub; the data directory
//! keeps only what does not depend on it (see `prepare_data_dir`), and a lock keeps two runs out
//! of one directory.

mod workflow;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mayfly_core::{JobId, JobStatus, Phase, Profile, SystemClock};
use mayfly_server::{
    Dependencies, GitHubConfig, ServerConfig, TlsFiles as ServerTls, WebhookConfig,
};
use mayfly_sim::{AccountType, JobStep, NewInstallation, NewJob, NewRepo, SCRIPT_STEP_NAME};
use mayfly_store::{JobRecord, SqliteStore, Store, VmRow};
use mayfly_vm::image::ImageStore;
use mayfly_vm::network::InternetStandIn;
use mayfly_vm::{NetworkMode, QemuConfig, QemuDriver};
use tokio_util::sync::CancellationToken;

use super::local_ca::LocalCa;
use super::sim::{ensure_identity, APP_PRIVATE_KEY, OAUTH_CLIENT_SECRET, WEBHOOK_SECRET};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Flags of `mayfly quickstart`.
#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// How many jobs to queue, spread over two simulated organisations (1–100).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub jobs: u32,
    /// Queue the jobs of this JSON file instead, each once:
    /// {"jobs":[{"name":"build","steps":[{"name":"Test","run":"make test"}]}]}. Each step runs
    /// with `bash -eo pipefail`; a job stops at its first failing step. The table shows each
    /// job's conclusion, and the quickstart exits 1 unless every job succeeded, so a workflow
    /// with a failing job exits 1: that is how to see it fail. Example:
    /// testdata/quickstart-workflow.json.
    #[arg(long, value_name = "FILE", conflicts_with = "jobs")]
    workflow: Option<PathBuf>,
    /// Directory for the quickstart's state. Kept between runs: the local CA, the simulated
    /// App's key and webhook secret, and the VM state (where VMs of an interrupted run are
    /// found and destroyed). Made afresh by every run, as the simulated GitHub is: the server's
    /// database and the local agent's enrolment (the previous run's stay until the next run).
    /// One run at a time per directory.
    #[arg(long, default_value = "mayfly-quickstart", value_name = "DIR")]
    data_dir: PathBuf,
    /// Image store holding the guest image (`scripts/build-guest-image` fills target/mayfly-images).
    #[arg(long, default_value = "target/mayfly-images", value_name = "DIR")]
    images: PathBuf,
    /// Image digest to boot [default: the store's `test-image` file].
    #[arg(long, value_name = "DIGEST")]
    image: Option<String>,
    /// VMs that may run at once on this machine.
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// Keep this many VMs booted ahead of the jobs (the warm pool, within --slots): each holds
    /// nothing until a job is given to it, once, and goes after that job. The jobs are queued
    /// once the pool is warm.
    #[arg(long, default_value_t = 0, value_name = "N")]
    warm: u32,
    /// Give up if the jobs have not all finished after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout_secs: u64,
    /// After the table, keep the server, agent and simulated GitHub running and print the
    /// usage dashboard's URL and how to sign in (simulated GitHub users, or the operator's
    /// admin token), until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Queue each job only when it can start at once (`mayfly bench`): on a warm VM when there
    /// is a pool, else in a free slot.
    #[arg(skip)]
    pace: bool,
}

pub(crate) const PROFILE: &str = "mayfly-linux-2cpu";
const ORGS: [&str; 2] = ["acme-robotics", "globex-labs"];

impl QuickstartArgs {
    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn warm(&self) -> u32 {
        self.warm
    }

    /// The same run paced (each job queued when it can start at once) with a warm pool of `n`.
    pub fn paced_with_warm(&self, n: u32) -> Self {
        Self {
            warm: n,
            pace: true,
            ..self.clone()
        }
    }

    pub fn workflow(&self) -> Option<&Path> {
        self.workflow.as_deref()
    }

    /// The jobs to queue, as (name, steps): the workflow file's, or `--jobs` greeting jobs.
    fn planned_jobs(&self) -> Result<Vec<(String, Vec<JobStep>)>, Failure> {
        let Some(path) = &self.workflow else {
            return Ok((1..=self.jobs).map(greeting_job).collect());
        };
        let workflow = workflow::load(path).config_err()?;
        Ok(workflow
            .jobs
            .iter()
            .map(|job| (job.name.clone(), job.job_steps()))
            .collect())
    }
}

/// The `i`th greeting job: one step that says where it ran and leaves a marker file.
pub fn greeting_job(i: u32) -> (String, Vec<JobStep>) {
    let run = format!("echo job {i} ran on $(uname -r); echo quickstart-marker > $HOME/marker");
    let step = JobStep {
        name: SCRIPT_STEP_NAME.to_owned(),
        run,
    };
    (format!("build-{i}"), vec![step])
}

/// What one run of the loop produced.
#[derive(Debug)]
pub struct LoopOutcome {
    pub jobs: Vec<JobRecord>,
    pub vms: Vec<VmRow>,
    pub queued_at: BTreeMap<i64, DateTime<Utc>>,
    pub image: mayfly_vm::image::Image,
    pub accel: mayfly_vm::AccelProbe,
    /// With `--stay`: the table was printed (and judged) before staying.
    pub judged: Option<Result<(), Failure>>,
}

pub async fn run(args: QuickstartArgs) -> Result<(), Failure> {
    let outcome = run_loop(&args).await?;
    match outcome.judged {
        // --stay printed the table before it stayed.
        Some(judged) => judged,
        None => print_table(&outcome.jobs, &outcome.vms, &outcome.queued_at),
    }
}

/// Runs the loop and returns every job and VM row, without judging them.
pub async fn run_loop(args: &QuickstartArgs) -> Result<LoopOutcome, Failure> {
    // A bad workflow file is refused before anything starts.
    let planned = args.planned_jobs()?;
    if !nix::unistd::geteuid().is_root() {
        return Err(Failure::Config(anyhow::anyhow!(
            "the quickstart boots VMs in their own network namespaces: run it as root (sudo)"
        )));
    }
    let images = ImageStore::new(std::path::absolute(&args.images).config_err()?);
    let digest = match &args.image {
        Some(digest) => digest.clone(),
        None => std::fs::read_to_string(args.images.join("test-image"))
            .map(|d| d.trim().to_owned())
            .with_context(|| {
                format!(
                    "no guest image in {}: run scripts/build-guest-image first",
                    args.images.display()
                )
            })
            .config_err()?,
    };
    let image = images.get(&digest).config_err()?;
    let data_dir = prepare_data_dir(&std::path::absolute(&args.data_dir).config_err()?)?;
    let dir = data_dir.root.clone();
    let ca = LocalCa::load_or_create(&dir.join("ca")).config_err()?;
    let sim_dir = dir.join("sim");
    let webhook_secret = ensure_identity(&sim_dir).config_err()?.webhook_secret;
    let inet = InternetStandIn::ensure().await.config_err()?;

    // The simulated GitHub, in the internet stand-in, delivering webhooks to the server over TLS
    // at the host's side of the stand-in link.
    let server_listener = std::net::TcpListener::bind((inet.host_addr(), 0)).config_err()?;
    let server_addr = server_listener.local_addr().config_err()?;
    drop(server_listener);
    let sim_port = free_port_hint();
    let sim_base = format!("http://{}:{sim_port}/", inet.addr());
    let mut sim = inet
        .command(std::env::current_exe().config_err()?)
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
            &format!("https://{server_addr}/webhooks/github"),
            "--webhook-ca-file",
        ])
        .arg(&ca.ca_cert)
        .args([
            "--oauth-callback-url",
            &format!("https://{server_addr}/dashboard/callback"),
        ])
        .env("MAYFLY_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("could not start the simulator")
        .runtime_err()?;

    let profile = Profile {
        name: PROFILE.to_owned(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        vcpus: 1,
        memory_mib: 512,
        image: digest.clone(),
        max_runtime_secs: 600,
        disk_gib: 20,
        runner_entry: None,
        boot_timeout_secs: 180,
        idle_timeout_secs: 300,
        warm: args.warm,
        warm_max_age_secs: 3600,
    };
    let server_config = ServerConfig {
        listen: server_addr,
        data_dir: dir.join("server"),
        tls: Some(ServerTls {
            cert_file: ca.server_cert.clone(),
            key_file: ca.server_key.clone(),
            ca_file: Some(ca.ca_cert.clone()),
        }),
        webhook: WebhookConfig {
            secret_files: vec![sim_dir.join(WEBHOOK_SECRET)],
            ..WebhookConfig::default()
        },
        agent_listen: "127.0.0.1:0".parse().config_err()?,
        github: Some(GitHubConfig {
            api_url: sim_base.clone(),
            app_id: Some(1),
            private_key_file: Some(sim_dir.join(APP_PRIVATE_KEY)),
            ca_file: None,
        }),
        profiles: vec![profile],
        security_txt: Some(mayfly_server::config::SecurityTxtConfig {
            contact: vec!["mailto:security@example.com".into()],
            policy: None,
            encryption: None,
            preferred_languages: "en".into(),
            canonical: vec![format!(
                "https://localhost:{}/.well-known/security.txt",
                server_addr.port()
            )],
            expires_days: 180,
        }),
        dashboard: Some(mayfly_server::DashboardConfig {
            public_url: format!("https://{server_addr}/"),
            // The simulator's App (id 1) has GitHub's kind of client id.
            client_id: Some(format!("Iv23li{:014}", 1)),
            client_secret_file: Some(sim_dir.join(OAUTH_CLIENT_SECRET)),
            github_url: sim_base.clone(),
            session_hours: 8,
        }),
        ..ServerConfig::default()
    };
    // Only root reads the server's state; `prepare_data_dir` removed the previous run's.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&server_config.data_dir)
        .with_context(|| format!("could not create {}", server_config.data_dir.display()))
        .config_err()?;
    let store = Arc::new(
        SqliteStore::open(
            &server_config.database_path(),
            &quickstart_db_key(&server_config.data_dir)?,
        )
        .await
        .config_err()?,
    );
    let github = super::server::github_client(
        server_config
            .github
            .as_ref()
            .context("github")
            .config_err()?,
        None,
    )
    .config_err()?;
    let server = mayfly_server::start(
        &server_config,
        Dependencies {
            store: store.clone(),
            clock: Arc::new(SystemClock),
            webhook_secrets: vec![webhook_secret],
            github: Some(Arc::new(github)),
        },
    )
    .await
    .config_err()?;
    let agent_addr = server
        .agent_addr()
        .context("the server has no agent listener")
        .runtime_err()?;

    // The local agent enrols as a remote one would: a one-time bootstrap token pinning the
    // quickstart CA, a client certificate, then mTLS.
    let ca_pem = std::fs::read_to_string(&ca.ca_cert).config_err()?;
    let ca_sha256 = mayfly_server::agent_pki::pem_sha256(&ca_pem)
        .context("the quickstart CA is not PEM")
        .config_err()?;
    let (token, _) = mayfly_server::agent_pki::create_bootstrap(
        store.as_ref(),
        "quickstart",
        "quickstart-host",
        &ca_sha256,
        chrono::Duration::minutes(10),
    )
    .await
    .runtime_err()?;
    let credentials_dir = dir.join("agent-credentials");
    let credentials = super::agent::enrol(&server.base_url(), &token, &credentials_dir)
        .await
        .context("the local agent could not enrol")
        .runtime_err()?;
    let (_, agent_tls) = super::agent::load_credentials(&credentials_dir).runtime_err()?;

    // The local agent, dialling the server through the same protocol remote agents use.
    let accel =
        mayfly_vm::accel::probe(std::path::Path::new("qemu-system-x86_64"), &image.kernel).await;
    let image_for_outcome = image.clone();
    let mut qemu = QemuConfig::new(dir.join("state"), images, accel.accel);
    qemu.network = NetworkMode::Isolated;
    let driver = Arc::new(QemuDriver::new(qemu).config_err()?);
    // As `mayfly agent` does: the image is hashed once, before any VM, not by the first VM.
    driver
        .verify_image(&digest)
        .await
        .context("the guest image does not match its digest; run scripts/build-guest-image")
        .config_err()?;
    let mut agent_config = mayfly_agent::AgentConfig::new(
        credentials.agent,
        format!("https://localhost:{}", agent_addr.port()),
        driver,
        dir.join("state/agent-journal.json"),
    );
    agent_config.tls = Some(agent_tls);
    agent_config.slots = args.slots;
    agent_config.images = vec![digest];
    let stop_agent = CancellationToken::new();
    let agent = tokio::spawn(mayfly_agent::run(agent_config, stop_agent.clone()));

    eprintln!("GitHub simulator: {sim_base} (in the internet stand-in namespace)");
    eprintln!("mayfly server:    {}", server.base_url());
    eprintln!(
        "  trust its CA with: curl --cacert {} {}healthz",
        ca.ca_cert.display(),
        server.base_url()
    );
    eprintln!(
        "agent:            enrolled with a one-time token; mTLS to {}",
        agent_addr
    );
    eprintln!("acceleration:     {:?} ({})", accel.accel, accel.reason);
    eprintln!(
        "data directory:   {} (database and enrolment new for this run; CA and App key kept)",
        dir.display()
    );

    let result = drive(args, &planned, &sim_base, store.as_ref()).await;
    let judged = match (&result, args.stay) {
        (Ok((jobs, vms, queued_at)), true) => {
            let judged = print_table(jobs, vms, queued_at);
            stay(
                store.as_ref(),
                &server.base_url(),
                &sim_base,
                &ca.ca_cert,
                &dir.join("server/operator-token"),
            )
            .await;
            Some(judged)
        }
        _ => None,
    };
    stop_agent.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    server.shutdown().await;
    let _ = sim.kill().await;
    store.close().await;
    drop(data_dir);
    let (jobs, vms, queued_at) = result?;
    Ok(LoopOutcome {
        jobs,
        vms,
        queued_at,
        image: image_for_outcome,
        accel,
        judged,
    })
}

/// `--stay`: says where the dashboard is and how to sign in, then waits for Ctrl-C. The
/// operator's admin token goes to a file only root reads, never to the terminal.
async fn stay(
    store: &dyn mayfly_store::Store,
    server: &str,
    sim: &str,
    ca: &Path,
    token_file: &Path,
) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let password = mayfly_sim::SIM_USER_PASSWORD;
    eprintln!();
    eprintln!("Everything keeps running until Ctrl-C.");
    eprintln!("Usage dashboard: {server}dashboard");
    eprintln!(
        "  your browser must trust the quickstart CA {}",
        ca.display()
    );
    eprintln!("  Sign in with GitHub (the simulator at {sim}), password {password:?}:");
    eprintln!("    mona (acme-robotics), hubot (globex-labs), octocat (both), nemo (none)");
    let admin = mayfly_server::tokens::create(
        store,
        "quickstart",
        "quickstart-operator",
        mayfly_server::tokens::Scope::Admin,
    )
    .await;
    let written = admin.map_err(anyhow::Error::from).and_then(|token| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(token_file)?;
        writeln!(f, "{}", token.expose())?;
        Ok(())
    });
    match written {
        Ok(()) => {
            eprintln!(
                "  or as the operator: paste the admin token in {} (Operator sign-in)",
                token_file.display()
            );
            eprintln!(
                "Metrics: curl --cacert {} -H \"Authorization: Bearer $(cat {})\" {server}metrics",
                ca.display(),
                token_file.display()
            );
        }
        Err(e) => eprintln!("  (no operator token: {e})"),
    }
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping…");
}

/// Subdirectories that hold what one run's server knew: removed before each run.
const PER_RUN: [&str; 2] = ["server", "agent-credentials"];
const LOCK_FILE: &str = "quickstart.lock";

/// The quickstart's data directory, held for one run (the lock goes with this value).
#[derive(Debug)]
pub struct DataDir {
    pub root: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Readies `dir` for a run: creates it (mode 711: passt, running as nobody, must reach its
/// runtime directory below), takes its lock, and removes the previous run's server state and
/// agent credentials. The simulator keeps its installations, repositories and jobs in memory
/// and counts their ids from the same start every time, so a database of an earlier run would
/// disagree with it: repeated job ids would look finished, and the reconciler would ask about
/// installations the new simulator does not have; the agent CA in that database would not know
/// the new agent either. Kept: the local CA, the simulator's App key and webhook secret (the
/// server is pointed at them anew each run), and the VM state directory with the agent's
/// journal, from which the agent destroys what an interrupted run left.
pub fn prepare_data_dir(dir: &std::path::Path) -> Result<DataDir, Failure> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create {}", dir.display()))
        .config_err()?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("could not set the mode of {}", dir.display()))
        .config_err()?;
    let lock_path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("could not open {}", lock_path.display()))
        .config_err()?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            Failure::Config(if errno == nix::errno::Errno::EWOULDBLOCK {
                anyhow::anyhow!(
                    "another mayfly quickstart is running with {}: wait for it to finish, or \
                     give this one another --data-dir",
                    dir.display()
                )
            } else {
                anyhow::anyhow!("could not lock {}: {errno}", lock_path.display())
            })
        },
    )?;
    for name in PER_RUN {
        let path = dir.join(name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| {
                        format!("could not remove the previous run's {}", path.display())
                    })
                    .config_err()
            }
        }
    }
    Ok(DataDir {
        root: dir.to_owned(),
        _lock: lock,
    })
}

/// The quickstart's database key: a key file in its data directory, made with the database.
pub(crate) fn quickstart_db_key(dir: &std::path::Path) -> Result<mayfly_store::DbKey, Failure> {
    let file = dir.join("db.key");
    if !file.exists() {
        let key = mayfly_store::DbKey::random();
        super::atomic_file::write_private(&file, key.to_hex().as_bytes()).config_err()?;
    }
    let config = mayfly_server::DatabaseConfig {
        key_file: Some(file),
        ..Default::default()
    };
    config.key(&dir.join("mayfly.db")).config_err()
}

pub(crate) fn free_port_hint() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9443)
}

type Rows = (Vec<JobRecord>, Vec<VmRow>, BTreeMap<i64, DateTime<Utc>>);

/// Installs the App on the quickstart's two organisations in the simulator, each with one
/// private repository `app`; returns the repositories' full names.
pub async fn create_orgs(http: &reqwest::Client, sim: &str) -> anyhow::Result<Vec<String>> {
    let post = |path: &str, body: serde_json::Value| {
        let request = http.post(format!("{sim}{path}")).json(&body);
        async move {
            let response = request.send().await?.error_for_status()?;
            response.json::<serde_json::Value>().await
        }
    };
    let mut repos = Vec::new();
    for org in ORGS {
        let inst = post(
            "_sim/installations",
            serde_json::to_value(NewInstallation {
                account: org.to_owned(),
                account_type: AccountType::Organization,
                sender: None,
            })?,
        )
        .await?;
        let id = inst["id"].as_u64().context("installation id")?;
        let repo = post(
            "_sim/repos",
            serde_json::to_value(NewRepo {
                installation_id: id,
                name: "app".into(),
                private: true,
            })?,
        )
        .await?;
        repos.push(repo["full_name"].as_str().context("repo name")?.to_owned());
    }
    Ok(repos)
}

/// Waits until `n` pool VMs are booted and waiting for a job.
async fn warm_up(n: u32, timeout_secs: u64, store: &dyn Store) -> Result<(), Failure> {
    if n == 0 {
        return Ok(());
    }
    let bar = ProgressBar::new(u64::from(n));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("warm pool: VMs booted and waiting, holding nothing");
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let warm = store
            .vms(true)
            .await
            .runtime_err()?
            .iter()
            .filter(|v| v.waits_for_job())
            .count() as u64;
        bar.set_position(warm);
        if warm >= u64::from(n) {
            bar.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            bar.abandon();
            return Err(Failure::Runtime(anyhow::anyhow!(
                "the warm pool did not fill in {timeout_secs} s ({warm} of {n} VMs ready); see the agent's log"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until a job queued now can start at once: every job `queued` so far has its VM, and a
/// pool VM waits for the next (or, without a pool, a slot is free). A job is placed when its VM
/// is asked for (or a pool VM given to it).
async fn wait_for_room(
    args: &QuickstartArgs,
    store: &dyn Store,
    queued: &BTreeMap<i64, DateTime<Utc>>,
) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let warm = args.warm.min(args.slots);
    loop {
        let placed = store
            .jobs()
            .await
            .runtime_err()?
            .iter()
            .filter(|j| queued.contains_key(&j.job_id.0) && j.dispatch.disposition == "placed")
            .count();
        let vms = store.vms(true).await.runtime_err()?;
        let ready = placed == queued.len()
            && if warm > 0 {
                vms.iter().filter(|v| v.waits_for_job()).count() >= warm as usize
            } else {
                vms.len() < args.slots as usize
            };
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "no room for the next job within {} s",
                args.timeout_secs
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drive(
    args: &QuickstartArgs,
    planned: &[(String, Vec<JobStep>)],
    sim: &str,
    store: &dyn Store,
) -> Result<Rows, Failure> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .runtime_err()?;
    let post = |path: &str, body: serde_json::Value| {
        let request = http.post(format!("{sim}{path}")).json(&body);
        async move {
            let response = request.send().await?.error_for_status()?;
            response.json::<serde_json::Value>().await
        }
    };
    // The simulator takes a moment to start listening.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{sim}_sim/jobs")).send().await.is_err() {
        if Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "the simulator did not start"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let repos = create_orgs(&http, sim).await.runtime_err()?;
    warm_up(args.warm.min(args.slots), args.timeout_secs, store).await?;
    let mut queued_at: BTreeMap<i64, DateTime<Utc>> = BTreeMap::new();
    for (i, (name, steps)) in planned.iter().enumerate() {
        if args.pace {
            wait_for_room(args, store, &queued_at).await?;
        }
        let job = post(
            "_sim/jobs",
            serde_json::to_value(NewJob {
                repository: repos[i % repos.len()].clone(),
                labels: vec!["self-hosted".into(), PROFILE.into()],
                name: Some(name.clone()),
                steps: steps.clone(),
                sender: Some(["alice", "bob"][i % 2].to_owned()),
                ..NewJob::default()
            })
            .runtime_err()?,
        )
        .await
        .runtime_err()?;
        let id = job["id"].as_i64().context("job id").runtime_err()?;
        queued_at.insert(id, Utc::now());
    }

    let bar = ProgressBar::new(planned.len() as u64 * 4);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message("webhook → VM started → runner started → job done → VM destroyed");
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let (jobs, vms) = loop {
        let jobs: Vec<JobRecord> = store
            .jobs()
            .await
            .runtime_err()?
            .into_iter()
            .filter(|j| queued_at.contains_key(&j.job_id.0))
            .collect();
        let vms = store.vms(false).await.runtime_err()?;
        let progress: u64 = jobs
            .iter()
            .map(|j| {
                let vm = ran_on(j, &vms);
                u64::from(vm.is_some_and(|v| v.started_at.is_some()))
                    + u64::from(vm.is_some_and(|v| v.booted_at.is_some()))
                    + u64::from(j.status == JobStatus::Completed)
                    + u64::from(vm.is_some_and(|v| v.state == "destroyed"))
            })
            .sum();
        bar.set_position(progress);
        let failed = jobs.iter().any(|j| j.dispatch.disposition == "failed");
        // Pool VMs never given a job stay until the quickstart stops.
        let all_done = jobs.len() == queued_at.len()
            && jobs.iter().all(|j| j.status == JobStatus::Completed)
            && vms
                .iter()
                .filter(|v| !v.in_pool())
                .all(|v| v.state == "destroyed");
        if all_done || failed {
            break (jobs, vms);
        }
        if Instant::now() > deadline {
            bar.abandon_with_message("timed out");
            return Err(Failure::Runtime(anyhow::anyhow!(
                "not every job finished within {} s",
                args.timeout_secs
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    Ok((jobs, vms, queued_at))
}

/// A job name from the workflow file as one terminal-safe word: control characters and spaces
/// become `_` (the table's columns are split on whitespace).
fn terminal_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

fn ran_on<'a>(job: &JobRecord, vms: &'a [VmRow]) -> Option<&'a VmRow> {
    let start = job.dispatch.vm_start_id.as_deref()?;
    vms.iter().find(|v| v.start_id == start)
}

fn since(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> String {
    to.map(|t| {
        format!(
            "{:.1} s",
            (t - from).num_milliseconds().max(0) as f64 / 1000.0
        )
    })
    .unwrap_or_else(|| "—".to_owned())
}

#[allow(clippy::print_stdout)] // the table is the command's output
fn print_table(
    jobs: &[JobRecord],
    vms: &[VmRow],
    queued_at: &BTreeMap<i64, DateTime<Utc>>,
) -> Result<(), Failure> {
    println!();
    println!(
        "{:<20} {:<14} {:<18} {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  conclusion",
        "org/repo",
        "job",
        "profile",
        "VM",
        "→VM start",
        "→ready",
        "→runner",
        "→job run",
        "→job done",
        "→VM gone"
    );
    let mut bad = 0;
    let mut seen_vms = std::collections::BTreeSet::new();
    for job in jobs {
        let from = queued_at
            .get(&job.job_id.0)
            .copied()
            .unwrap_or(job.first_seen_at);
        let vm = ran_on(job, vms);
        let conclusion = job.conclusion.clone().unwrap_or_else(|| {
            job.dispatch
                .failure
                .clone()
                .unwrap_or_else(|| "—".to_owned())
        });
        let destroyed = vm.is_some_and(|v| v.state == "destroyed");
        if conclusion != "success" || !destroyed {
            bad += 1;
        }
        if let Some(vm) = vm {
            seen_vms.insert(vm.vm_id.clone());
        }
        // The moments in order (GitHub's whole seconds never put a phase before an earlier one).
        let ordered = job.phase_times(vm).ordered();
        let at = |phase: Phase| {
            since(
                from,
                ordered
                    .iter()
                    .find(|(p, _)| *p == phase)
                    .and_then(|(_, at)| *at),
            )
        };
        println!(
            "{:<20} {:<14} {:<18} {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            job.repo.to_string(),
            terminal_safe(&job.job_name),
            job.dispatch.profile.as_deref().unwrap_or("—"),
            vm.and_then(|v| v.vm_id.clone())
                .unwrap_or_else(|| "—".to_owned()),
            at(Phase::VmStarted),
            at(Phase::GuestReady),
            at(Phase::RunnerStarted),
            at(Phase::JobStarted),
            at(Phase::JobCompleted),
            at(Phase::VmDestroyed),
            conclusion
        );
    }
    println!();
    let waiting = vms
        .iter()
        .filter(|v| v.in_pool() && v.state != "destroyed")
        .count();
    println!(
        "{} job(s), {} distinct VM(s), every job's VM destroyed: {}",
        jobs.len(),
        seen_vms.len(),
        vms.iter()
            .filter(|v| !v.in_pool())
            .all(|v| v.state == "destroyed")
    );
    if waiting > 0 {
        println!(
            "{waiting} warm pool VM(s) still waiting, holding nothing (destroyed when the quickstart stops)"
        );
    }
    let _ = JobId(0);
    if bad > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{bad} job(s) did not succeed or left a VM"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// What a finished (or interrupted) run leaves in its data directory.
    fn leave_a_run(dir: &std::path::Path) {
        for sub in ["ca", "sim", "server", "agent-credentials", "state/vms/vm-1"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for file in [
            "ca/ca.pem",
            "sim/app-private-key.pem",
            "server/mayfly.db",
            "server/db.key",
            "agent-credentials/agent.key",
            "state/agent-journal.json",
        ] {
            std::fs::write(dir.join(file), file).unwrap();
        }
    }

    #[test]
    fn each_run_starts_a_new_server_state_and_keeps_ca_app_key_and_vm_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("qs");
        for run in 0..3 {
            let prepared = prepare_data_dir(&dir).unwrap();
            assert_eq!(prepared.root, dir);
            for gone in ["server", "agent-credentials"] {
                assert!(!dir.join(gone).exists(), "run {run}: {gone} was kept");
            }
            if run > 0 {
                for kept in [
                    "ca/ca.pem",
                    "sim/app-private-key.pem",
                    "state/agent-journal.json",
                    "state/vms/vm-1",
                ] {
                    assert!(dir.join(kept).exists(), "run {run}: {kept} was removed");
                }
            }
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o711);
            leave_a_run(&dir);
            drop(prepared);
        }
    }

    #[test]
    fn a_second_run_in_the_same_directory_is_refused_while_the_first_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("qs");
        let first = prepare_data_dir(&dir).unwrap();
        leave_a_run(&dir);
        let Err(Failure::Config(err)) = prepare_data_dir(&dir) else {
            panic!("a second run got the directory");
        };
        assert!(
            err.to_string().contains("another mayfly quickstart"),
            "{err}"
        );
        assert!(
            dir.join("server/db.key").exists(),
            "the refused run removed the running one's state"
        );
        drop(first);
        prepare_data_dir(&dir).unwrap();
    }
}
