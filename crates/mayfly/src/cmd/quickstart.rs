//! `mayfly quickstart`: the whole loop on one machine with GitHub simulated. It starts the
//! simulator and the server (TLS with a local CA, embedded store), creates two organisations,
//! queues jobs, and follows each from webhook to completed job row.
//!
//! Not yet here: VMs. Until the agent and the QEMU driver land, each job is run by an
//! in-process stand-in runner holding the job's repository-scoped JIT config; the table says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mayfly_core::{InstallationId, JobId, JobStatus, RepoFullName, SystemClock};
use mayfly_github::{
    AppCredentials, AppPrivateKeyPem, GitHubClient, GitHubClientConfig, JitConfigRequest,
};
use mayfly_server::{Dependencies, ServerConfig, TlsFiles as ServerTls, WebhookConfig};
use mayfly_sim::runner_client::RunnerClient;
use mayfly_sim::{
    AccountType, Conclusion, NewInstallation, NewJob, NewRepo, Sim, SimConfig, TlsFiles as SimTls,
};
use mayfly_store::{SqliteStore, Store};
use url::Url;

use super::local_ca::LocalCa;
use super::sim::{ensure_identity, APP_PRIVATE_KEY, WEBHOOK_SECRET};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Flags of `mayfly quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// How many jobs to queue, spread over two simulated organisations (1–50).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    jobs: u32,
    /// Directory for the quickstart's state: local CA, simulator identity, database.
    #[arg(long, default_value = "mayfly-quickstart", value_name = "DIR")]
    data_dir: PathBuf,
    /// Give up if the jobs have not all finished after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout_secs: u64,
}

/// The label jobs ask for; it names the hardware profile once profiles exist.
const LABELS: [&str; 2] = ["self-hosted", "mayfly-linux-2cpu"];
const ORGS: [&str; 2] = ["acme-robotics", "globex-labs"];

struct Tenant {
    installation: InstallationId,
    repo: RepoFullName,
}

/// What the quickstart saw happen to one job, on the wall clock.
struct Timeline {
    queued: DateTime<Utc>,
    /// When the server recorded the first delivery about the job (from its job row).
    recorded: Option<DateTime<Utc>>,
    running: Option<DateTime<Utc>>,
    done: Option<DateTime<Utc>>,
}

pub async fn run(args: QuickstartArgs) -> Result<(), Failure> {
    let dir = &args.data_dir;
    let ca = LocalCa::load_or_create(&dir.join("ca")).config_err()?;
    let ca_pem = ca.ca_pem().config_err()?;
    let sim_dir = dir.join("sim");
    let (public_pem, webhook_secret) = ensure_identity(&sim_dir).config_err()?;

    // The server: TLS with the local CA's certificate, the embedded store.
    let server_dir = dir.join("server");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("could not create {}", server_dir.display()))
        .config_err()?;
    let server_config = ServerConfig {
        listen: "127.0.0.1:0"
            .parse()
            .context("listen address")
            .config_err()?,
        data_dir: server_dir.clone(),
        tls: Some(ServerTls {
            cert_file: ca.server_cert.clone(),
            key_file: ca.server_key.clone(),
        }),
        webhook: WebhookConfig {
            secret_files: vec![sim_dir.join(WEBHOOK_SECRET)],
            ..WebhookConfig::default()
        },
        ..ServerConfig::default()
    };
    let store = Arc::new(
        SqliteStore::open(&server_config.database_path())
            .await
            .config_err()?,
    );
    let server = mayfly_server::start(
        &server_config,
        Dependencies {
            store: store.clone(),
            clock: Arc::new(SystemClock),
            webhook_secrets: vec![webhook_secret.clone()],
            github: None,
        },
    )
    .await
    .config_err()?;

    // The simulated GitHub, delivering webhooks to the server over TLS.
    let webhook_url = Url::parse(&format!("{}webhooks/github", server.base_url()))
        .context("webhook URL")
        .config_err()?;
    let mut sim_config = SimConfig::new(
        "127.0.0.1:0".parse().context("listen").config_err()?,
        public_pem,
        webhook_secret,
    );
    sim_config.tls = Some(SimTls {
        cert_pem: ca.server_cert.clone(),
        key_pem: ca.server_key.clone(),
    });
    sim_config.webhook_url = Some(webhook_url);
    sim_config.webhook_ca_pem = Some(ca_pem.clone());
    let sim = Sim::start(sim_config).await.config_err()?;
    eprintln!("GitHub simulator: {}", sim.base_url());
    eprintln!("mayfly server:    {}", server.base_url());
    eprintln!(
        "  trust its CA with: curl --cacert {} {}healthz",
        ca.ca_cert.display(),
        server.base_url()
    );

    let private_key = std::fs::read_to_string(sim_dir.join(APP_PRIVATE_KEY))
        .context("could not read the App private key")
        .config_err()?;
    let credentials = AppCredentials::new(1, AppPrivateKeyPem::new(private_key)).config_err()?;
    let mut client_config = GitHubClientConfig::new(sim.base_url(), credentials);
    client_config.extra_root_pem = Some(ca_pem.clone().into_bytes());
    let github = Arc::new(GitHubClient::new(client_config).config_err()?);

    let result = drive(&args, &sim, store.as_ref(), &github, &ca_pem).await;
    sim.shutdown().await;
    server.shutdown().await;
    store.close().await;
    result
}

async fn drive(
    args: &QuickstartArgs,
    sim: &mayfly_sim::SimHandle,
    store: &dyn Store,
    github: &Arc<GitHubClient>,
    ca_pem: &str,
) -> Result<(), Failure> {
    let control = sim.control();
    let mut tenants = Vec::new();
    for org in ORGS {
        let installation = control
            .create_installation(NewInstallation {
                account: org.to_owned(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .runtime_err()?;
        let repo = control
            .create_repo(NewRepo {
                installation_id: installation.id,
                name: "app".to_owned(),
                private: true,
            })
            .runtime_err()?;
        tenants.push(Tenant {
            installation: InstallationId(i64::try_from(installation.id).runtime_err()?),
            repo: repo.full_name.parse().runtime_err()?,
        });
    }

    let total = u64::from(args.jobs);
    let bar = ProgressBar::new(total * 3);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));

    let mut timelines: BTreeMap<i64, (usize, Timeline)> = BTreeMap::new();
    for i in 0..args.jobs as usize {
        let tenant = &tenants[i % tenants.len()];
        let job = control
            .create_job(NewJob {
                repository: tenant.repo.to_string(),
                labels: LABELS.iter().map(|l| (*l).to_owned()).collect(),
                name: Some(format!("build-{}", i + 1)),
                script: Some(format!("echo job {} of the quickstart", i + 1)),
                ..NewJob::default()
            })
            .runtime_err()?;
        let id = i64::try_from(job.id).runtime_err()?;
        let timeline = Timeline {
            queued: Utc::now(),
            recorded: None,
            running: None,
            done: None,
        };
        timelines.insert(id, (i % tenants.len(), timeline));
    }
    bar.set_message("jobs queued; waiting for webhooks");

    // One stand-in runner per job, each with a JIT config of its job's repository only.
    let mut runners = tokio::task::JoinSet::new();
    for (index, (_, (tenant, _))) in timelines.iter().enumerate() {
        let tenant = &tenants[*tenant];
        let request = JitConfigRequest::new(
            format!("mayfly-quickstart-{}", index + 1),
            LABELS.iter().map(|l| (*l).to_owned()).collect(),
        );
        let jit = github
            .generate_repo_jitconfig(tenant.installation, &tenant.repo, &request)
            .await
            .runtime_err()?;
        let mut runner = RunnerClient::from_encoded_jit_config(jit.config.expose(), Some(ca_pem))
            .runtime_err()?;
        runners.spawn(async move {
            loop {
                match runner.acquire().await? {
                    Some(job) => {
                        let output = format!("ran: {}", job.script);
                        runner
                            .complete(job.job_id, Conclusion::Success, &output)
                            .await?;
                        return Ok::<_, mayfly_sim::runner_client::RunnerClientError>(job.job_id);
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let now = Utc::now();
        for row in store.jobs().await.runtime_err()? {
            let Some((_, t)) = timelines.get_mut(&row.job_id.0) else {
                continue;
            };
            let step = |slot: &mut Option<DateTime<Utc>>, at: DateTime<Utc>| {
                if slot.is_none() {
                    *slot = Some(at);
                    bar.inc(1);
                }
            };
            step(&mut t.recorded, row.first_seen_at);
            if matches!(row.status, JobStatus::InProgress | JobStatus::Completed) {
                step(&mut t.running, now);
            }
            if row.status == JobStatus::Completed {
                step(&mut t.done, now);
            }
        }
        if timelines.values().all(|(_, t)| t.done.is_some()) {
            break;
        }
        if Instant::now() > deadline {
            bar.abandon_with_message("timed out");
            bail_runtime(format!(
                "not every job finished within {} s",
                args.timeout_secs
            ))?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_with_message("all jobs done");
    while let Some(result) = runners.join_next().await {
        result.runtime_err()?.runtime_err()?;
    }

    print_table(store, &timelines).await
}

fn bail_runtime(message: String) -> Result<(), Failure> {
    Err(Failure::Runtime(anyhow::anyhow!(message)))
}

fn millis(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> String {
    match to {
        Some(to) => format!("{} ms", (to - from).num_milliseconds().max(0)),
        None => "—".to_owned(),
    }
}

#[allow(clippy::print_stdout)] // the table is the command's output
async fn print_table(
    store: &dyn Store,
    timelines: &BTreeMap<i64, (usize, Timeline)>,
) -> Result<(), Failure> {
    println!();
    println!(
        "{:<22} {:>11} {:<22} {:>10} {:>10} {:>10}  conclusion",
        "org/repo", "job", "runner", "→recorded", "→running", "→done"
    );
    let mut failed = 0;
    for (id, (_, t)) in timelines {
        let Some(row) = store.job(JobId(*id)).await.runtime_err()? else {
            failed += 1;
            continue;
        };
        let conclusion = row.conclusion.clone().unwrap_or_else(|| "—".to_owned());
        if conclusion != "success" {
            failed += 1;
        }
        println!(
            "{:<22} {:>11} {:<22} {:>10} {:>10} {:>10}  {}",
            row.repo.to_string(),
            id,
            row.runner_name.clone().unwrap_or_else(|| "—".to_owned()),
            millis(t.queued, t.recorded),
            millis(t.queued, t.running),
            millis(t.queued, t.done),
            conclusion
        );
    }
    println!();
    println!("Times are from job creation in the simulator (running/done are observed by polling");
    println!("the store every 50 ms). Runners here are in-process stand-ins");
    println!(
        "holding each job's repository-scoped JIT config; VMs take their place in a later release."
    );
    if failed > 0 {
        return bail_runtime(format!("{failed} job(s) did not succeed"));
    }
    Ok(())
}
