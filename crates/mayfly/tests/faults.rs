//! Faults with everything real: `mayfly server` and `mayfly agent` as processes killed with
//! SIGKILL, QEMU VMs, the simulator (as GitHub) in the internet stand-in. A killed agent's VM
//! dies with it, the server marks it lost within the lease, GitHub fails the job and removes its
//! runner, and a new agent on the host leaves nothing; a server killed mid-run and restarted
//! loses no job and runs none twice. Webhooks do not reach the server here (it listens on
//! loopback, the simulator lives in another namespace): the reconciler, every second, is how
//! the server learns of jobs and their ends. Needs root and the test image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[allow(dead_code)] // shared with the VM tests, which use more of it
#[path = "vm/support.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mayfly_core::JobId;
use mayfly_sim::{Conclusion, JobStatus};
use mayfly_store::{CommonStore, SqliteStore, Store, VmRow};
use support::{processes_mentioning, state_root, test_image, SimProcess};

const LABELS: [&str; 2] = ["self-hosted", "mayfly-linux-2cpu"];
/// The server's and the agent's lease, short for the test.
const LEASE_SECS: u64 = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) {
    let waited = tokio::time::timeout(Duration::from_secs(secs), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not within {secs} s: {what}");
}

/// A `mayfly server` process (insecure-dev on loopback: plain gRPC for agents) on a SQLite
/// store, talking to the simulator as its GitHub. Restartable on the same ports and data.
struct Server {
    dir: tempfile::TempDir,
    key: mayfly_store::DbKey,
    config: PathBuf,
    agent_port: u16,
    child: Option<tokio::process::Child>,
}

impl Server {
    async fn start(sim: &SimProcess) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = mayfly_store::DbKey::random();
        write_private(&dir.path().join("db.key"), key.to_hex().as_str());
        let (port, agent_port) = (free_port(), free_port());
        let sim_dir = sim.dir.path().join("sim");
        let config = format!(
            r#"
listen = "127.0.0.1:{port}"
data_dir = "{data}"
insecure_dev = true
agent_listen = "127.0.0.1:{agent_port}"
reconcile_interval_secs = 1
agent_lease_secs = {LEASE_SECS}

[webhook]
secret_files = ["{sim_dir}/webhook-secret"]

[database]
key_file = "{data}/../db.key"

[github]
api_url = "{api}"
app_id = 1
private_key_file = "{sim_dir}/app-private-key.pem"

[[profiles]]
name = "mayfly-linux-2cpu"
labels = ["self-hosted", "linux"]
vcpus = 1
memory_mib = 1024
disk_gib = 2
image = "{image}"
"#,
            data = dir.path().join("data").display(),
            sim_dir = sim_dir.display(),
            api = sim.base,
            image = test_image().1,
        );
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let path = dir.path().join("mayfly.toml");
        std::fs::write(&path, config).unwrap();
        let mut server = Self {
            dir,
            key,
            config: path,
            agent_port,
            child: None,
        };
        server.restart().await;
        server
    }

    async fn restart(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .arg("server")
            .arg("--config")
            .arg(&self.config)
            .env("MAYFLY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let agent_port = self.agent_port;
        until("the server listens for agents", 60, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", agent_port))
                .await
                .is_ok()
        })
        .await;
    }

    async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    fn agent_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.agent_port)
    }

    /// The server's store, opened beside it.
    async fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.dir.path().join("data").join("mayfly.db"), &self.key)
            .await
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// A `mayfly agent` process on `root`.
fn start_agent(server: &Server, root: &Path, id: &str) -> tokio::process::Child {
    let (images, _) = test_image();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "--server-url", &server.agent_url(), "--id", id])
        .args(["--accel", "tcg", "--slots", "2", "--memory-mib", "4096"])
        .args(["--lease-secs", &LEASE_SECS.to_string(), "--images"])
        .arg(images)
        .arg("--state-root")
        .arg(root)
        .arg("--journal")
        .arg(root.join("agent-journal.json"))
        .env("MAYFLY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(root.with_extension("agent.log"))
                .unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn vms_for(store: &SqliteStore, job: u64) -> Vec<VmRow> {
    store
        .vms(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.for_job_id == job as i64)
        .collect()
}

fn qemu_of(vm: &str) -> Vec<u32> {
    processes_mentioning(vm)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"qemu-system"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_lost_its_job_fails_at_github_and_a_new_agent_leaves_nothing() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let sim = SimProcess::start_with(&["--runner-timeout-secs", "10"]).await;
        let (_, repo) = sim.tenant("org-kill-agent").await;
        let server = Server::start(&sim).await;
        let root = state_root();
        let mut agent = start_agent(&server, root.path(), "host-k");
        let job = sim.job(&repo, &LABELS, "sleep 300").await;
        until("the job's runner took it", 240, || async {
            sim.job_state(job.id).await.status == JobStatus::InProgress
        })
        .await;
        let store = server.store().await;
        let vm = vms_for(&store, job.id).await.remove(0);
        let vm_id = vm.vm_id.clone().expect("the VM was started");
        assert!(!qemu_of(&vm_id).is_empty());

        agent.start_kill().unwrap();
        agent.wait().await.unwrap();
        // The guest sees its agent gone and powers off: no VM outlives its owner.
        until("QEMU exits once its agent is gone", 60, || async {
            qemu_of(&vm_id).is_empty()
        })
        .await;
        // The server hears nothing for the lease: the VM is lost.
        until("the server marks the VM lost", 30, || async {
            store.vm(&vm.start_id).await.unwrap().unwrap().state == "lost"
        })
        .await;
        // GitHub fails the job whose runner went silent and removes the runner; the server
        // learns it from the REST API.
        until("GitHub fails the job", 60, || async {
            let state = sim.job_state(job.id).await;
            state.status == JobStatus::Completed && state.conclusion == Some(Conclusion::Failure)
        })
        .await;
        until("the server records the job completed", 30, || async {
            store
                .job(JobId(job.id as i64))
                .await
                .unwrap()
                .is_some_and(|j| j.status == mayfly_core::JobStatus::Completed)
        })
        .await;
        assert!(
            !sim.runner_exists(&repo, vm.runner_id.unwrap()).await,
            "the lost VM's runner is still registered at GitHub"
        );

        // A new agent on the host reaps what is left and reports it.
        let mut second = start_agent(&server, root.path(), "host-k");
        until("the new agent reports the VM destroyed", 60, || async {
            let row = store.vm(&vm.start_id).await.unwrap().unwrap();
            row.state == "destroyed" && row.destruction.is_some()
        })
        .await;
        let row = store.vm(&vm.start_id).await.unwrap().unwrap();
        let record = mayfly_proto::record_from_json(row.destruction.as_deref().unwrap()).unwrap();
        assert!(record.complete(), "{record:#?}");
        assert!(
            processes_mentioning(&vm_id).is_empty(),
            "a process of {vm_id} survived"
        );
        assert!(!root.path().join("vms").join(&vm_id).exists());
        assert!(!root.path().join("net").join(&vm_id).exists());
        let _ = second.start_kill();
        let _ = second.wait().await;
        store.close().await;
        sim.stop().await;
        drop(server);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_and_restarted_loses_no_job_and_runs_none_twice() {
    tokio::time::timeout(Duration::from_secs(480), async {
        let sim = SimProcess::start().await;
        let (_, repo) = sim.tenant("org-kill-server").await;
        let mut server = Server::start(&sim).await;
        let root = state_root();
        let mut agent = start_agent(&server, root.path(), "host-s");
        let mut jobs = Vec::new();
        for _ in 0..3 {
            jobs.push(sim.job(&repo, &LABELS, "sleep 5; echo done").await.id);
        }
        until("a job is running", 240, || async {
            sim.job_state(jobs[0]).await.status == JobStatus::InProgress
        })
        .await;
        server.kill9().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.restart().await;

        for job in &jobs {
            let job = *job;
            until(&format!("job {job} completes"), 300, || async {
                sim.job_state(job).await.status == JobStatus::Completed
            })
            .await;
            assert_eq!(
                sim.job_state(job).await.conclusion,
                Some(Conclusion::Success),
                "job {job}; server log:\n{}",
                server.log()
            );
        }
        let store = server.store().await;
        let settled = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let vms = store.vms(false).await.unwrap();
                if vms
                    .iter()
                    .all(|v| matches!(v.state.as_str(), "destroyed" | "failed"))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "VMs left: {:#?}\nserver log:\n{}",
            store.vms(true).await.unwrap(),
            server.log()
        );
        let vms = store.vms(false).await.unwrap();
        // GitHub's record of which runner ran each job (the server binds a job to its VM only
        // once it hears the runner's name, which without webhooks can come late): exactly one of
        // our VMs carries that runner, and no VM is bound to a job twice.
        for job in &jobs {
            let runner = sim
                .job_state(*job)
                .await
                .runner_name
                .expect("a runner ran it");
            let ran: Vec<_> = vms.iter().filter(|v| v.runner_name == runner).collect();
            assert_eq!(ran.len(), 1, "job {job} ran on {} VMs: {vms:#?}", ran.len());
            let bound = vms
                .iter()
                .filter(|v| v.ran_job_id == Some(*job as i64))
                .count();
            assert!(bound <= 1, "job {job} bound to {bound} VMs: {vms:#?}");
        }
        let _ = agent.start_kill();
        let _ = agent.wait().await;
        store.close().await;
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}
