//! Every real payload in `shared/github/fixtures/` parses into its typed event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;

use mayfly_github::webhook::{WebhookEvent, WorkflowJobAction};

fn fixtures_dir() -> PathBuf {
    std::env::var_os("MAYFLY_GITHUB_CONTRACT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/github"))
        .join("fixtures")
}

#[test]
fn every_fixture_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures directory") {
        let path = entry.expect("dir entry").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_owned();
        let event = file.split('.').next().expect("event prefix");
        let body = std::fs::read(&path).expect("read fixture");
        let parsed = WebhookEvent::parse(event, &body).unwrap_or_else(|e| panic!("{file}: {e}"));
        match (event, parsed) {
            ("workflow_job", WebhookEvent::WorkflowJob(ev)) => {
                let action = file.split('.').nth(1).expect("action");
                let expected = match action {
                    "queued" => WorkflowJobAction::Queued,
                    "waiting" => WorkflowJobAction::Waiting,
                    "in_progress" => WorkflowJobAction::InProgress,
                    "completed" => WorkflowJobAction::Completed,
                    other => panic!("{file}: unexpected action {other}"),
                };
                assert_eq!(ev.action, expected, "{file}");
                assert!(!ev.workflow_job.labels.is_empty(), "{file}");
                assert!(!ev.sender.login.is_empty(), "{file}");
                if expected == WorkflowJobAction::Completed {
                    assert!(ev.workflow_job.conclusion.is_some(), "{file}");
                }
            }
            ("ping", WebhookEvent::Ping(ev)) => assert!(ev.hook.is_some(), "{file}"),
            ("installation", WebhookEvent::Installation(ev)) => {
                assert!(ev.installation.id > 0, "{file}");
                assert!(ev.installation.created_at.is_some(), "{file}: created_at");
            }
            ("installation_repositories", WebhookEvent::InstallationRepositories(ev)) => {
                assert!(ev.installation.id > 0, "{file}");
            }
            (event, other) => panic!("{file}: {event} parsed as {other:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 18, "expected all 18 fixtures");
}
