//! Webhook delivery: headers, signatures and schemas of every event the simulator sends, the
//! delivery log, failures without retry, redelivery, and the drop/delay faults.

use std::time::Duration;

use mayfly_sim::{AccountType, DeliveryOutcome, JobStatus, NewJob};
use serde_json::Value;

use super::contract::check_deliveries;
use super::support::{bounded, secret, Receiver, TestSim};

fn job(repo: &str) -> NewJob {
    NewJob {
        repository: repo.into(),
        labels: vec!["self-hosted".into(), "mayfly-2cpu".into()],
        ..NewJob::default()
    }
}

#[tokio::test]
async fn every_event_is_signed_and_matches_the_webhook_schema() {
    bounded(async {
        let mut hooks = Receiver::start().await;
        let url = hooks.url.clone();
        let t = TestSim::start_with(move |c| c.webhook_url = Some(url)).await;

        let (inst, repo, _) = t.org_with_repo().await;
        let created = hooks.next().await;
        assert_eq!(created.kind(), "installation.created");
        assert_eq!(created.json()["installation"]["id"], inst.id);
        assert_eq!(
            created.header("x-github-hook-installation-target-id"),
            Some("1")
        );
        let added = hooks.next().await;
        assert_eq!(added.kind(), "installation_repositories.added");
        assert_eq!(added.json()["repositories_added"][0]["full_name"], repo);

        // Org repository: `organization` present; a gated job goes waiting → queued.
        let gated = t
            .sim
            .create_job(NewJob {
                waiting: true,
                ..job(&repo)
            })
            .unwrap();
        let waiting = hooks.next().await;
        assert_eq!(waiting.kind(), "workflow_job.waiting");
        let body = waiting.json();
        assert_eq!(body["workflow_job"]["status"], "waiting");
        assert_eq!(body["organization"]["login"], "acme");
        assert_eq!(body["installation"]["id"], inst.id);
        assert_eq!(body["repository"]["full_name"], repo);
        assert!(body["workflow_job"]["runner_id"].is_null());
        t.sim.approve_job(gated.id).unwrap();
        let queued = hooks.next().await;
        assert_eq!(queued.kind(), "workflow_job.queued");
        assert_eq!(queued.json()["workflow_job"]["id"], gated.id);

        t.sim.cancel_job(gated.id).unwrap();
        let cancelled = hooks.next().await;
        assert_eq!(cancelled.kind(), "workflow_job.completed");
        assert_eq!(cancelled.json()["workflow_job"]["conclusion"], "cancelled");

        // User repository: no `organization`; the sender is the user.
        let alice = t.install("alice", AccountType::User);
        let dotfiles = t.repo(alice.id, "dotfiles");
        hooks.next_of("installation_repositories.added").await;
        t.sim.create_job(job(&dotfiles)).unwrap();
        let body = hooks.next_of("workflow_job.queued").await.json();
        assert!(body.get("organization").is_none());
        assert_eq!(body["sender"]["login"], "alice");

        // The log holds the same bytes and headers, in order, all delivered.
        let log = t
            .sim
            .wait_for_deliveries(Duration::from_secs(10), |log| {
                log.iter().all(|d| d.outcome != DeliveryOutcome::Pending)
            })
            .await
            .unwrap();
        check_deliveries(&log, &secret());
        assert!(log
            .iter()
            .all(|d| matches!(d.outcome, DeliveryOutcome::Delivered { status: 200 })));
        let kinds: Vec<String> = log
            .iter()
            .map(|d| format!("{}.{}", d.event, d.action.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            &kinds[..5],
            [
                "installation.created",
                "installation_repositories.added",
                "workflow_job.waiting",
                "workflow_job.queued",
                "workflow_job.completed"
            ]
        );
        let guids: std::collections::BTreeSet<_> = log.iter().map(|d| d.guid.clone()).collect();
        assert_eq!(guids.len(), log.len(), "one GUID per delivery");
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_dropped_queued_webhook_leaves_the_job_visible_through_rest() {
    bounded(async {
        let mut hooks = Receiver::start().await;
        let url = hooks.url.clone();
        let t = TestSim::start_with(move |c| c.webhook_url = Some(url)).await;
        let (_, repo, token) = t.org_with_repo().await;
        hooks.next_of("installation_repositories.added").await;

        t.sim.drop_next_webhooks(1);
        let lost = t.sim.create_job(job(&repo)).unwrap();
        let seen = t.sim.create_job(job(&repo)).unwrap();
        // The first delivery that arrives is the second job's: the first was dropped.
        let first = hooks.next().await.json();
        assert_eq!(first["workflow_job"]["id"], seen.id);
        let log = t.sim.deliveries();
        let dropped: Vec<_> = log
            .iter()
            .filter(|d| d.outcome == DeliveryOutcome::Dropped)
            .collect();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].json().unwrap()["workflow_job"]["id"], lost.id);

        // Reconciliation path: queued runs, then their jobs.
        let (_, _, runs) = t
            .get(&format!("/repos/{repo}/actions/runs?status=queued"), &token)
            .await;
        assert_eq!(runs["total_count"], 2);
        let run_ids: Vec<u64> = runs["workflow_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        assert!(run_ids.contains(&lost.run_id));
        let (_, _, jobs) = t
            .get(
                &format!("/repos/{repo}/actions/runs/{}/jobs", lost.run_id),
                &token,
            )
            .await;
        assert_eq!(jobs["total_count"], 1);
        assert_eq!(jobs["jobs"][0]["id"], lost.id);
        assert_eq!(jobs["jobs"][0]["status"], "queued");
        assert_eq!(
            jobs["jobs"][0]["labels"],
            serde_json::json!(["self-hosted", "mayfly-2cpu"])
        );
        let (_, _, run) = t
            .get(
                &format!("/repos/{repo}/actions/runs/{}", lost.run_id),
                &token,
            )
            .await;
        assert_eq!(run["status"], "queued");

        // Once the job is cancelled it leaves the queued list and shows up as completed.
        t.sim.cancel_job(lost.id).unwrap();
        let (_, _, runs) = t
            .get(&format!("/repos/{repo}/actions/runs?status=queued"), &token)
            .await;
        assert_eq!(runs["total_count"], 1);
        let (_, _, done) = t
            .get(
                &format!("/repos/{repo}/actions/runs?status=completed"),
                &token,
            )
            .await;
        assert_eq!(done["workflow_runs"][0]["conclusion"], "cancelled");
        let (_, _, by_conclusion) = t
            .get(
                &format!("/repos/{repo}/actions/runs?status=cancelled"),
                &token,
            )
            .await;
        assert_eq!(by_conclusion["total_count"], 1);
        assert_eq!(t.sim.job(seen.id).unwrap().status, JobStatus::Queued);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn failed_deliveries_are_logged_not_retried_and_can_be_redelivered() {
    bounded(async {
        let mut hooks = Receiver::start().await;
        let url = hooks.url.clone();
        let t = TestSim::start_with(move |c| c.webhook_url = Some(url)).await;
        let (_, repo, _) = t.org_with_repo().await;
        hooks.next_of("installation_repositories.added").await;

        hooks.answer(500);
        let created = t.sim.create_job(job(&repo)).unwrap();
        let attempt = hooks.next().await;
        let log = t
            .sim
            .wait_for_deliveries(Duration::from_secs(10), |log| {
                log.last()
                    .is_some_and(|d| d.outcome != DeliveryOutcome::Pending)
            })
            .await
            .unwrap();
        let failed = log.last().unwrap().clone();
        assert!(matches!(
            failed.outcome,
            DeliveryOutcome::Failed {
                status: Some(500),
                ..
            }
        ));
        assert_eq!(failed.guid, attempt.header("x-github-delivery").unwrap());

        hooks.answer(200);
        let new_id = t.sim.redeliver(failed.id).unwrap();
        let again = hooks.next().await;
        assert_eq!(
            again.header("x-github-delivery"),
            Some(failed.guid.as_str())
        );
        assert_eq!(again.body.as_ref(), failed.body.as_slice());
        assert_eq!(again.json()["workflow_job"]["id"], created.id);
        let log = t
            .sim
            .wait_for_deliveries(Duration::from_secs(10), |log| {
                log.iter()
                    .any(|d| d.id == new_id && d.outcome != DeliveryOutcome::Pending)
            })
            .await
            .unwrap();
        let redelivered = log.iter().find(|d| d.id == new_id).unwrap();
        assert!(redelivered.redelivery);
        assert_eq!(
            redelivered.outcome,
            DeliveryOutcome::Delivered { status: 200 }
        );
        // Nothing else was sent: no automatic retry.
        assert_eq!(log.iter().filter(|d| d.guid == failed.guid).count(), 2);
    })
    .await;
}

#[tokio::test]
async fn unreachable_or_unset_webhook_url_is_logged_as_failed() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, _) = t.org_with_repo().await;
        t.sim.create_job(job(&repo)).unwrap();
        let log = t
            .sim
            .wait_for_deliveries(Duration::from_secs(10), |log| {
                log.len() == 3 && log.iter().all(|d| d.outcome != DeliveryOutcome::Pending)
            })
            .await
            .unwrap();
        assert!(log
            .iter()
            .all(|d| matches!(d.outcome, DeliveryOutcome::Failed { status: None, .. })));

        // A closed port: the connection is refused, logged, not retried.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        t.sim
            .set_webhook_url(Some(format!("http://{addr}/hook").parse().unwrap()));
        t.sim.create_job(job(&repo)).unwrap();
        let log = t
            .sim
            .wait_for_deliveries(Duration::from_secs(10), |log| {
                log.len() == 4 && log[3].outcome != DeliveryOutcome::Pending
            })
            .await
            .unwrap();
        assert!(matches!(
            log[3].outcome,
            DeliveryOutcome::Failed { status: None, .. }
        ));
    })
    .await;
}

#[tokio::test]
async fn delayed_deliveries_still_arrive_in_order() {
    bounded(async {
        let mut hooks = Receiver::start().await;
        let url = hooks.url.clone();
        let t = TestSim::start_with(move |c| c.webhook_url = Some(url)).await;
        let (_, repo, _) = t.org_with_repo().await;
        hooks.next_of("installation_repositories.added").await;
        t.sim.delay_webhooks(Duration::from_millis(150));
        let started = std::time::Instant::now();
        let created = t.sim.create_job(job(&repo)).unwrap();
        t.sim.cancel_job(created.id).unwrap();
        let first = hooks.next().await;
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(first.kind(), "workflow_job.queued");
        let second = hooks.next().await;
        assert_eq!(second.kind(), "workflow_job.completed");
        let body: Value = second.json();
        assert_eq!(body["workflow_job"]["conclusion"], "cancelled");
    })
    .await;
}
