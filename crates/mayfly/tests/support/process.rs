//! `mayfly server` as a child process for tests: started from a configuration file with its
//! stderr in a log file, waited for until `/readyz` answers, killed when dropped.
#![allow(dead_code)] // each test uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    /// `mayfly server --config <config>` with `envs` set, logging into `log`.
    pub fn start(config: &Path, log: &Path, envs: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .arg("server")
            .arg("--config")
            .arg(config)
            .env_remove("MAYFLY_CONFIG")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `<base_url>/readyz` answers 2xx through `http`; panics with the log if the
    /// server exits or takes longer than 30 s.
    pub async fn wait_ready(&mut self, http: &reqwest::Client, base_url: &str) {
        let url = format!("{}/readyz", base_url.trim_end_matches('/'));
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited ({status}):\n{}", self.log());
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not become ready:\n{}", self.log());
    }

    /// Stops the server and returns its log.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
