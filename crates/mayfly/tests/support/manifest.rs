//! Drives `mayfly github app create` as an operator's browser would (shared by the tests that
//! need a GitHub App made through the manifest flow).
#![allow(dead_code)] // each test uses part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of `attr="…"` after `after` in `html`.
pub fn attribute(html: &str, after: &str, attr: &str) -> String {
    let from = html
        .find(after)
        .unwrap_or_else(|| panic!("{after} in {html}"));
    let rest = &html[from..];
    let start = rest.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
    let end = start + rest[start..].find('"').unwrap();
    unescape(&rest[start..end])
}

/// Starts `mayfly github app create` and returns it with the page's address it printed.
pub fn start_create(config: &Path, sim_url: &str, server_url: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args([
            "github",
            "app",
            "create",
            "--org",
            "acme",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(config)
        .args(["--url", server_url, "--github-url", sim_url])
        .env_remove("MAYFLY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let page = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("create exited: {:?}", child.try_wait()))
            .unwrap();
        if let Some(rest) = line.strip_prefix("Open ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, page)
}

pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("the command did not finish");
}

/// Runs `mayfly github app create` for `--org acme` to the end: opens the page, posts its form
/// to the simulator and follows the redirect back. Returns the command's stdout.
pub async fn create_app(config: &Path, sim_url: &str, server_url: &str) -> String {
    let (mut create, page_url) = start_create(config, sim_url, server_url);
    let browser = reqwest::Client::new();
    let page = browser
        .get(&page_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = attribute(&page, "<form", "action");
    let manifest = attribute(&page, "name=\"manifest\"", "value");
    let done = browser
        .post(&action)
        .form(&[("manifest", manifest)])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    let exit = wait_exit(&mut create).await;
    let mut stdout = String::new();
    std::io::Read::read_to_string(create.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(exit.success(), "{exit:?} {stdout}");
    stdout
}
