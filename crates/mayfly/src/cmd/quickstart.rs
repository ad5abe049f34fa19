//! `mayfly quickstart`: the whole loop on one machine, GitHub simulated. It starts the GitHub
//! simulator inside the internet stand-in namespace (where guests can reach it, as they would
//! reach github.com), the server (TLS with a local CA, embedded store), and a local agent that
//! dials the server over gRPC; then it queues N jobs across two organisations and follows each
//! one: webhook → VM started → runner started → job done → VM destroyed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mayfly_core::{JobId, JobStatus, Profile, SystemClock};
use mayfly_server::{
    Dependencies, GitHubConfig, ServerConfig, TlsFiles as ServerTls, WebhookConfig,
};
use mayfly_sim::{AccountType, NewInstallation, NewJob, NewRepo};
use mayfly_store::{JobRecord, SqliteStore, Store, VmRow};
use mayfly_vm::image::ImageStore;
use mayfly_vm::network::InternetStandIn;
use mayfly_vm::{NetworkMode, QemuConfig, QemuDriver};
use tokio_util::sync::CancellationToken;

use super::local_ca::LocalCa;
use super::sim::{ensure_identity, APP_PRIVATE_KEY, WEBHOOK_SECRET};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Flags of `mayfly quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// How many jobs to queue, spread over two simulated organisations (1–100).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub jobs: u32,
    /// Directory for the quickstart's state: local CA, simulator identity, database, VM state.
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
    /// Give up if the jobs have not all finished after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout_secs: u64,
}

const PROFILE: &str = "mayfly-linux-2cpu";
const ORGS: [&str; 2] = ["acme-robotics", "globex-labs"];

impl QuickstartArgs {
    pub fn slots(&self) -> u32 {
        self.slots
    }
}

/// What one run of the loop produced.
#[derive(Debug)]
pub struct LoopOutcome {
    pub jobs: Vec<JobRecord>,
    pub vms: Vec<VmRow>,
    pub queued_at: BTreeMap<i64, DateTime<Utc>>,
    pub image: mayfly_vm::image::Image,
    pub accel: mayfly_vm::AccelProbe,
}

pub async fn run(args: QuickstartArgs) -> Result<(), Failure> {
    let outcome = run_loop(&args).await?;
    print_table(&outcome.jobs, &outcome.vms, &outcome.queued_at)
}

/// Runs the loop and returns every job and VM row, without judging them.
pub async fn run_loop(args: &QuickstartArgs) -> Result<LoopOutcome, Failure> {
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
    let dir = std::path::absolute(&args.data_dir).config_err()?;
    std::fs::create_dir_all(&dir).config_err()?;
    // passt (user nobody) must be able to traverse to its runtime directory.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .config_err()?;
    let ca = LocalCa::load_or_create(&dir.join("ca")).config_err()?;
    let sim_dir = dir.join("sim");
    let (_, webhook_secret) = ensure_identity(&sim_dir).config_err()?;
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
        boot_timeout_secs: 180,
        idle_timeout_secs: 300,
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
            app_id: 1,
            private_key_file: sim_dir.join(APP_PRIVATE_KEY),
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
        ..ServerConfig::default()
    };
    std::fs::create_dir_all(&server_config.data_dir).config_err()?;
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

    let result = drive(args, &sim_base, store.as_ref()).await;
    stop_agent.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    server.shutdown().await;
    let _ = sim.kill().await;
    store.close().await;
    let (jobs, vms, queued_at) = result?;
    Ok(LoopOutcome {
        jobs,
        vms,
        queued_at,
        image: image_for_outcome,
        accel,
    })
}

/// The quickstart's database key: a key file in its data directory, made on first run.
fn quickstart_db_key(dir: &std::path::Path) -> Result<mayfly_store::DbKey, Failure> {
    let file = dir.join("db.key");
    if !file.exists() {
        let key = mayfly_store::DbKey::random();
        super::sim::write_private(&file, key.to_hex().as_bytes()).config_err()?;
    }
    let config = mayfly_server::DatabaseConfig {
        key_file: Some(file),
        ..Default::default()
    };
    config.key(&dir.join("mayfly.db")).config_err()
}

fn free_port_hint() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9443)
}

type Rows = (Vec<JobRecord>, Vec<VmRow>, BTreeMap<i64, DateTime<Utc>>);

async fn drive(args: &QuickstartArgs, sim: &str, store: &dyn Store) -> Result<Rows, Failure> {
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
    let mut repos = Vec::new();
    for org in ORGS {
        let inst = post(
            "_sim/installations",
            serde_json::to_value(NewInstallation {
                account: org.to_owned(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .runtime_err()?,
        )
        .await
        .runtime_err()?;
        let id = inst["id"]
            .as_u64()
            .context("installation id")
            .runtime_err()?;
        let repo = post(
            "_sim/repos",
            serde_json::to_value(NewRepo {
                installation_id: id,
                name: "app".into(),
                private: true,
            })
            .runtime_err()?,
        )
        .await
        .runtime_err()?;
        repos.push(
            repo["full_name"]
                .as_str()
                .context("repo name")
                .runtime_err()?
                .to_owned(),
        );
    }
    let mut queued_at: BTreeMap<i64, DateTime<Utc>> = BTreeMap::new();
    for i in 0..args.jobs as usize {
        let job = post(
            "_sim/jobs",
            serde_json::to_value(NewJob {
                repository: repos[i % repos.len()].clone(),
                labels: vec!["self-hosted".into(), PROFILE.into()],
                name: Some(format!("build-{}", i + 1)),
                script: Some(format!(
                    "echo job {} ran on $(uname -r); echo quickstart-marker > $HOME/marker",
                    i + 1
                )),
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

    let bar = ProgressBar::new(u64::from(args.jobs) * 4);
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
        let all_done = jobs.len() == queued_at.len()
            && jobs.iter().all(|j| j.status == JobStatus::Completed)
            && vms.iter().all(|v| v.state == "destroyed");
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
        "{:<20} {:<18} {:<20} {:>10} {:>10} {:>10} {:>10}  conclusion",
        "org/repo", "profile", "VM", "→VM start", "→runner", "→job done", "→VM gone"
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
        println!(
            "{:<20} {:<18} {:<20} {:>10} {:>10} {:>10} {:>10}  {}",
            job.repo.to_string(),
            job.dispatch.profile.as_deref().unwrap_or("—"),
            vm.and_then(|v| v.vm_id.clone())
                .unwrap_or_else(|| "—".to_owned()),
            since(from, vm.and_then(|v| v.started_at)),
            since(from, vm.and_then(|v| v.booted_at)),
            since(from, vm.and_then(|v| v.exited_at).or(job.completed_at)),
            since(from, vm.and_then(|v| v.destroyed_at)),
            conclusion
        );
    }
    println!();
    println!(
        "{} job(s), {} distinct VM(s), every VM destroyed: {}",
        jobs.len(),
        seen_vms.len(),
        vms.iter().all(|v| v.state == "destroyed")
    );
    let _ = JobId(0);
    if bad > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{bad} job(s) did not succeed or left a VM"
        )));
    }
    Ok(())
}
