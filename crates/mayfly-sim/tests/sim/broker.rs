//! The job broker: a JIT runner authenticates with its config's key, takes exactly one job whose
//! labels it covers, completes it, and is gone.

use axum::http::StatusCode;
use mayfly_sim::runner_client::{RunnerClient, RunnerClientError};
use mayfly_sim::{Conclusion, ControlError, JobStatus, JobStep, NewJob, SCRIPT_STEP_NAME};
use reqwest::Method;

use super::support::{bounded, Receiver, TestSim};

fn job(repo: &str, labels: &[&str]) -> NewJob {
    NewJob {
        repository: repo.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        script: Some("echo hi".into()),
        ..NewJob::default()
    }
}

#[tokio::test]
async fn a_runner_takes_one_matching_job_completes_it_and_is_spent() {
    bounded(async {
        let mut hooks = Receiver::start().await;
        let url = hooks.url.clone();
        let t = TestSim::start_with(move |c| c.webhook_url = Some(url)).await;
        let (_, repo, token) = t.org_with_repo().await;
        let created = t
            .sim
            .create_job(job(&repo, &["self-hosted", "mayfly-2cpu"]))
            .unwrap();
        let queued = hooks.next_of("workflow_job.queued").await.json();
        assert_eq!(queued["workflow_job"]["id"], created.id);

        let (runner_id, encoded) = t
            .jit(
                &token,
                &repo,
                "vm-1",
                &["self-hosted", "mayfly-2cpu", "X64", "Linux"],
            )
            .await;
        let mut runner = RunnerClient::from_encoded_jit_config(&encoded, None).unwrap();
        assert_eq!(runner.runner_id(), runner_id);
        let acquired = runner.acquire().await.unwrap().expect("a job");
        assert_eq!(acquired.job_id, created.id);
        assert_eq!(acquired.repository, repo);
        assert_eq!(acquired.name, "build");
        assert_eq!(
            acquired.steps,
            [JobStep {
                name: SCRIPT_STEP_NAME.into(),
                run: "echo hi".into()
            }]
        );

        let started = hooks.next_of("workflow_job.in_progress").await.json();
        assert_eq!(started["workflow_job"]["runner_name"], "vm-1");
        assert_eq!(started["workflow_job"]["runner_id"], runner_id);
        let (_, _, rest_job) = t
            .get(
                &format!("/repos/{repo}/actions/jobs/{}", created.id),
                &token,
            )
            .await;
        assert_eq!(rest_job["status"], "in_progress");
        assert_eq!(rest_job["runner_name"], "vm-1");
        let (_, _, rest_runner) = t
            .get(
                &format!("/repos/{repo}/actions/runners/{runner_id}"),
                &token,
            )
            .await;
        assert_eq!(rest_runner["status"], "online");
        assert_eq!(rest_runner["busy"], true);
        // A busy runner cannot be deleted (422), and cannot take a second job.
        let (status, _, _) = t
            .call(
                Method::DELETE,
                &format!("/repos/{repo}/actions/runners/{runner_id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        t.sim.create_job(job(&repo, &["self-hosted"])).unwrap();
        assert!(matches!(
            runner.acquire().await,
            Err(RunnerClientError::AlreadyAssigned)
        ));

        runner
            .complete(acquired.job_id, Conclusion::Failure, "boom")
            .await
            .unwrap();
        let done = hooks.next_of("workflow_job.completed").await.json();
        assert_eq!(done["workflow_job"]["conclusion"], "failure");
        assert_eq!(done["workflow_job"]["runner_name"], "vm-1");
        let sim_job = t.sim.job(created.id).unwrap();
        assert_eq!(sim_job.status, JobStatus::Completed);
        assert_eq!(sim_job.output.as_deref(), Some("boom"));

        // GitHub removed the runner; its credential is spent.
        assert_eq!(
            t.get(
                &format!("/repos/{repo}/actions/runners/{runner_id}"),
                &token
            )
            .await
            .0,
            StatusCode::NOT_FOUND
        );
        assert!(matches!(
            runner.acquire().await,
            Err(RunnerClientError::Unauthorized)
        ));
        assert!(matches!(
            runner.authenticate().await,
            Err(RunnerClientError::Unauthorized)
        ));
        let mut fresh = RunnerClient::from_encoded_jit_config(&encoded, None).unwrap();
        assert!(matches!(
            fresh.acquire().await,
            Err(RunnerClientError::Unauthorized)
        ));
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_runner_whose_labels_do_not_cover_the_job_gets_nothing() {
    bounded(async {
        let t = TestSim::start().await;
        let (inst, repo, token) = t.org_with_repo().await;
        let other_repo = t.repo(inst.id, "web");
        let created = t
            .sim
            .create_job(job(&repo, &["self-hosted", "gpu"]))
            .unwrap();
        t.sim
            .create_job(job(&other_repo, &["self-hosted"]))
            .unwrap();
        let (_, encoded) = t.jit(&token, &repo, "vm-1", &["self-hosted", "X64"]).await;
        let mut runner = RunnerClient::from_encoded_jit_config(&encoded, None).unwrap();
        // Not gpu, and the other repository's job is not this repo runner's.
        assert!(runner.acquire().await.unwrap().is_none());
        assert_eq!(t.sim.job(created.id).unwrap().status, JobStatus::Queued);
        // Labels match case-insensitively, as on GitHub; a later job can be picked up by polling.
        let later = t
            .sim
            .create_job(job(&repo, &["SELF-HOSTED", "x64"]))
            .unwrap();
        let acquired = runner.acquire().await.unwrap().unwrap();
        assert_eq!(acquired.job_id, later.id);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn an_org_runner_takes_a_job_of_any_repository_of_its_org() {
    bounded(async {
        let t = TestSim::start().await;
        let (inst, _, token) = t.org_with_repo().await;
        let web = t.repo(inst.id, "web");
        let created = t.sim.create_job(job(&web, &["self-hosted"])).unwrap();
        let (status, _, body) = t
            .post(
                "/orgs/acme/actions/runners/generate-jitconfig",
                &token,
                serde_json::json!({ "name": "org-vm", "runner_group_id": 1, "labels": ["self-hosted"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let mut runner = RunnerClient::from_encoded_jit_config(body["encoded_jit_config"].as_str().unwrap(), None).unwrap();
        assert_eq!(runner.acquire().await.unwrap().unwrap().job_id, created.id);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_deleted_runner_cannot_authenticate() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let (runner_id, encoded) = t.jit(&token, &repo, "vm-1", &["self-hosted"]).await;
        let (status, _, _) = t
            .call(
                Method::DELETE,
                &format!("/repos/{repo}/actions/runners/{runner_id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let mut runner = RunnerClient::from_encoded_jit_config(&encoded, None).unwrap();
        assert!(matches!(
            runner.authenticate().await,
            Err(RunnerClientError::Unauthorized)
        ));
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_job_of_steps_is_handed_out_in_order_and_malformed_steps_are_refused() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let step = |name: &str, run: &str| JobStep {
            name: name.into(),
            run: run.into(),
        };
        let steps = vec![step("Build", "make"), step("Test", "make test\nmake lint")];
        let created = t
            .sim
            .create_job(NewJob {
                steps: steps.clone(),
                ..job(&repo, &["self-hosted"])
            })
            .map(|_| ());
        // `job()` sets `script` too: both at once are refused.
        assert!(matches!(created, Err(ControlError::Invalid(_))), "{created:?}");
        let no_script = |steps: Vec<JobStep>| NewJob {
            steps,
            script: None,
            ..job(&repo, &["self-hosted"])
        };
        for bad in [vec![step("", "make")], vec![step("Build", "  \n")]] {
            let refused = t.sim.create_job(no_script(bad)).map(|_| ());
            assert!(matches!(refused, Err(ControlError::Invalid(_))), "{refused:?}");
        }
        let created = t.sim.create_job(no_script(steps.clone())).unwrap();

        // Over HTTP the same rules hold, and unknown fields are refused rather than ignored.
        for body in [
            serde_json::json!({ "repository": repo, "labels": ["x"], "steps": [{ "name": "a" }] }),
            serde_json::json!({ "repository": repo, "labels": ["x"], "steps": [{ "name": "a", "run": "b", "if": "c" }] }),
            serde_json::json!({ "repository": repo, "labels": ["x"], "script": "a", "steps": [{ "name": "a", "run": "b" }] }),
            serde_json::json!({ "repository": repo, "labels": ["x"], "scripts": "a" }),
        ] {
            let response = t
                .http
                .post(t.url("/_sim/jobs"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }

        let (_, encoded) = t.jit(&token, &repo, "vm-1", &["self-hosted"]).await;
        let mut runner = RunnerClient::from_encoded_jit_config(&encoded, None).unwrap();
        let acquired = runner.acquire().await.unwrap().unwrap();
        assert_eq!(acquired.job_id, created.id);
        assert_eq!(acquired.steps, steps);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_runner_that_stops_renewing_loses_its_job_as_github_fails_it_and_is_removed() {
    bounded(async {
        let mut hooks = Receiver::start().await;
        let url = hooks.url.clone();
        let t = TestSim::start_with(move |c| {
            c.webhook_url = Some(url);
            c.runner_timeout = std::time::Duration::from_secs(3);
        })
        .await;
        let (_, repo, token) = t.org_with_repo().await;
        let kept = t.sim.create_job(job(&repo, &["self-hosted"])).unwrap();
        let lost = t.sim.create_job(job(&repo, &["self-hosted"])).unwrap();
        let (_, a) = t.jit(&token, &repo, "vm-a", &["self-hosted"]).await;
        let (lost_runner, b) = t.jit(&token, &repo, "vm-b", &["self-hosted"]).await;
        let mut alive = RunnerClient::from_encoded_jit_config(&a, None).unwrap();
        let mut silent = RunnerClient::from_encoded_jit_config(&b, None).unwrap();
        let first = alive.acquire().await.unwrap().unwrap();
        let second = silent.acquire().await.unwrap().unwrap();
        assert_eq!(
            [first.job_id, second.job_id],
            [kept.id, lost.id],
            "oldest job first"
        );

        // One runner renews for 6 s; the other says nothing.
        for _ in 0..6 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            alive.renew(first.job_id).await.unwrap();
        }
        let failed = hooks.next_of("workflow_job.completed").await.json();
        assert_eq!(failed["workflow_job"]["id"], lost.id);
        assert_eq!(failed["workflow_job"]["conclusion"], "failure");
        assert_eq!(t.sim.job(kept.id).unwrap().status, JobStatus::InProgress);
        let (status, _, _) = t
            .get(
                &format!("/repos/{repo}/actions/runners/{lost_runner}"),
                &token,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the lost runner is removed");
        alive
            .complete(first.job_id, Conclusion::Success, "done")
            .await
            .unwrap();
        assert!(matches!(
            silent.renew(second.job_id).await,
            Err(RunnerClientError::Unauthorized)
        ));
        t.check_contract();
    })
    .await;
}
