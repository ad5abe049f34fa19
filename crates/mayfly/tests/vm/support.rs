//! Shared pieces of the real-VM tests: the test image (built by `scripts/build-guest-image`),
//! a driver on a temporary state root, and the GitHub simulator running inside the internet
//! stand-in namespace, where guests can reach it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{InstallationId, RepoFullName};
use mayfly_github::{
    AppCredentials, AppPrivateKeyPem, GitHubClient, GitHubClientConfig, JitConfigRequest,
};
use mayfly_sim::{AccountType, NewInstallation, NewJob, NewRepo, SimJob};
use mayfly_vm::image::ImageStore;
use mayfly_vm::network::InternetStandIn;
use mayfly_vm::{Accel, NetworkMode, QemuConfig, QemuDriver};
use secrecy::SecretString;
use std::os::unix::fs::PermissionsExt;

/// The test image's store and digest.
pub fn test_image() -> (PathBuf, String) {
    let store = std::env::var_os("MAYFLY_TEST_IMAGE_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/mayfly-images")
        });
    let digest = std::fs::read_to_string(store.join("test-image")).unwrap_or_else(|_| {
        panic!(
            "no test image in {}: run scripts/build-guest-image",
            store.display()
        )
    });
    (store, digest.trim().to_owned())
}

/// A state root that `nobody` (passt) can traverse.
pub fn state_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mayfly-vm-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

pub fn accel() -> Accel {
    match std::env::var("MAYFLY_TEST_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

pub fn driver(state_root: &Path, network: NetworkMode) -> Arc<QemuDriver> {
    let (store, _) = test_image();
    let mut config = QemuConfig::new(state_root.to_owned(), ImageStore::new(store), accel());
    config.network = network;
    Arc::new(QemuDriver::new(config).unwrap())
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path);
                }
            }
        }
    }
    hits
}

pub fn netns_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
        })
        .unwrap_or(false)
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
                && pid != std::process::id()
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The simulator, as a `mayfly sim` process inside the internet stand-in.
pub struct SimProcess {
    child: tokio::process::Child,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl SimProcess {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With more arguments for `mayfly sim`.
    pub async fn start_with(args: &[&str]) -> Self {
        let inet = InternetStandIn::ensure().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = 20_000 + rand_port();
        let listen = format!("{}:{port}", inet.addr());
        let child = inet
            .command(env!("CARGO_BIN_EXE_mayfly"))
            .args(["sim", "--listen", &listen, "--data-dir"])
            .arg(dir.path().join("sim"))
            .args(args)
            .env("MAYFLY_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://{listen}/");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(r) = http.get(format!("{base}_sim/jobs")).send().await {
                    if r.status().is_success() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the simulator did not come up in the internet stand-in");
        Self {
            child,
            base,
            http,
            dir,
        }
    }

    async fn post<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &T,
    ) -> R {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// An organisation with one repository; returns (installation, repo).
    pub async fn tenant(&self, org: &str) -> (InstallationId, RepoFullName) {
        let inst: serde_json::Value = self
            .post(
                "_sim/installations",
                &NewInstallation {
                    account: org.into(),
                    account_type: AccountType::Organization,
                    sender: None,
                },
            )
            .await;
        let id = inst["id"].as_u64().unwrap();
        let repo: serde_json::Value = self
            .post(
                "_sim/repos",
                &NewRepo {
                    installation_id: id,
                    name: "app".into(),
                    private: true,
                },
            )
            .await;
        (
            InstallationId(id as i64),
            repo["full_name"].as_str().unwrap().parse().unwrap(),
        )
    }

    pub async fn job(&self, repo: &RepoFullName, labels: &[&str], script: &str) -> SimJob {
        self.post(
            "_sim/jobs",
            &NewJob {
                repository: repo.to_string(),
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                script: Some(script.to_owned()),
                ..NewJob::default()
            },
        )
        .await
    }

    pub async fn job_state(&self, id: u64) -> SimJob {
        let response = self
            .http
            .get(format!("{}_sim/jobs/{id}", self.base))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    /// A repository-level JIT config, asked for the way the server will: through mayfly's client.
    pub async fn jit(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
        name: &str,
        labels: &[&str],
    ) -> SecretString {
        let key = std::fs::read_to_string(self.dir.path().join("sim/app-private-key.pem")).unwrap();
        let credentials = AppCredentials::new(1, AppPrivateKeyPem::new(key)).unwrap();
        let client = GitHubClient::new(GitHubClientConfig::new(
            self.base.parse().unwrap(),
            credentials,
        ))
        .unwrap();
        let request = JitConfigRequest::new(name, labels.iter().map(|l| (*l).to_owned()).collect());
        let runner = client
            .generate_repo_jitconfig(installation, repo, &request)
            .await
            .unwrap();
        SecretString::from(runner.config.expose().to_owned())
    }

    /// Whether GitHub still has the repository's runner `id`.
    #[allow(dead_code)] // used by tests/faults.rs
    pub async fn runner_exists(&self, repo: &RepoFullName, id: i64) -> bool {
        let key = std::fs::read_to_string(self.dir.path().join("sim/app-private-key.pem")).unwrap();
        let credentials = AppCredentials::new(1, AppPrivateKeyPem::new(key)).unwrap();
        let client = GitHubClient::new(GitHubClientConfig::new(
            self.base.parse().unwrap(),
            credentials,
        ))
        .unwrap();
        let installation = client
            .list_installations()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.account.as_ref().is_some_and(|a| a.login == repo.owner()))
            .expect("the repository's installation")
            .id;
        client
            .get_repo_runner(InstallationId(installation), repo, id)
            .await
            .unwrap()
            .is_some()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn rand_port() -> u16 {
    (std::process::id() % 20_000) as u16
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros())
            .unwrap_or(0)
            % 10_000) as u16
}
