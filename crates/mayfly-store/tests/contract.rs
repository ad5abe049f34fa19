//! The store contract: every `Store` implementation must pass these, SQLite and PostgreSQL alike.
//! PostgreSQL runs against the server at `MAYFLY_TEST_POSTGRES_URL`, one fresh database per test;
//! a server that is not running fails the tests (it never skips them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use chrono::{Duration, TimeZone, Utc};
use mayfly_core::{
    DeliveryId, InstallationChange, InstallationChangeKind, InstallationId, IntakeEvent, JobEvent,
    JobId, JobStatus, RunId, Transition,
};
use mayfly_store::{CommonStore, NewDelivery, PgStore, Recorded, SqliteStore, Store};

fn job_event(status: JobStatus) -> JobEvent {
    JobEvent {
        job_id: JobId(77),
        run_id: RunId(5),
        installation_id: Some(InstallationId(9)),
        repo: "org-a/app".parse().unwrap(),
        repo_id: 1000,
        org: Some("org-a".into()),
        sender: "alice".into(),
        status,
        conclusion: None,
        labels: vec!["mayfly-linux-2cpu".into()],
        job_name: "build".into(),
        workflow_name: Some("CI".into()),
        runner_id: None,
        runner_name: None,
        created_at: Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
        started_at: None,
        completed_at: None,
    }
}

/// Job 77 taken by runner `mayfly-r`.
fn running_event() -> JobEvent {
    JobEvent {
        status: JobStatus::InProgress,
        runner_name: Some("mayfly-r".into()),
        started_at: Some(Utc::now()),
        ..job_event(JobStatus::Queued)
    }
}

/// The ids of the deliveries still to be processed, oldest first.
async fn pending_ids(store: &dyn Store) -> Vec<String> {
    store
        .pending_deliveries(100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.delivery_id.as_str().to_owned())
        .collect()
}

fn delivery(id: &str, intake: IntakeEvent) -> NewDelivery {
    NewDelivery {
        delivery_id: DeliveryId::parse(id).unwrap(),
        event: "workflow_job".into(),
        action: Some("queued".into()),
        received_at: Utc::now(),
        intake,
    }
}

/// Stores keep timestamps to the microsecond (PostgreSQL's precision): values that must round-trip
/// exactly are made at that precision.
fn now_micros() -> chrono::DateTime<Utc> {
    use chrono::DurationRound;
    Utc::now()
        .duration_trunc(Duration::microseconds(1))
        .unwrap()
}

async fn record_and_apply(store: &dyn Store, id: &str, event: JobEvent) -> Transition {
    let d = delivery(id, IntakeEvent::Job(event.clone()));
    assert_eq!(store.record_delivery(&d).await.unwrap(), Recorded::New);
    store
        .apply_job_event(&d.delivery_id, &event, Utc::now())
        .await
        .unwrap()
        .expect("a new delivery is applied")
}

async fn deliveries_are_deduplicated_and_queued_in_order(store: &dyn Store) {
    let first = delivery("d-1", IntakeEvent::Ping);
    let second = delivery("d-2", IntakeEvent::Job(job_event(JobStatus::Queued)));
    assert_eq!(store.record_delivery(&first).await.unwrap(), Recorded::New);
    assert_eq!(store.record_delivery(&second).await.unwrap(), Recorded::New);
    assert_eq!(
        store.record_delivery(&first).await.unwrap(),
        Recorded::Duplicate
    );

    let pending = store.pending_deliveries(10).await.unwrap();
    let ids: Vec<_> = pending.iter().map(|p| p.delivery_id.as_str()).collect();
    assert_eq!(ids, ["d-1", "d-2"]);
    assert_eq!(pending[1].intake, second.intake);

    store
        .finish_delivery(&first.delivery_id, "ping", Utc::now())
        .await
        .unwrap();
    let pending = store.pending_deliveries(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let record = store.delivery(&first.delivery_id).await.unwrap().unwrap();
    assert_eq!(record.outcome.as_deref(), Some("ping"));
    assert!(record.processed_at.is_some());
}

async fn job_states_only_move_forward(store: &dyn Store) {
    assert_eq!(
        record_and_apply(store, "j-1", job_event(JobStatus::Queued)).await,
        Transition::Advance(JobStatus::Queued)
    );
    let mut done = job_event(JobStatus::Completed);
    done.conclusion = Some("success".into());
    done.completed_at = Some(Utc::now());
    assert_eq!(
        record_and_apply(store, "j-2", done).await,
        Transition::Advance(JobStatus::Completed)
    );
    // The in_progress delivery arrives last: stale, but it names the runner.
    let mut started = job_event(JobStatus::InProgress);
    started.runner_name = Some("mayfly-vm-1".into());
    started.runner_id = Some(3);
    started.started_at = Some(Utc::now() - Duration::seconds(5));
    assert_eq!(
        record_and_apply(store, "j-3", started).await,
        Transition::Stale
    );

    let job = store.job(JobId(77)).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.conclusion.as_deref(), Some("success"));
    assert_eq!(job.runner_name.as_deref(), Some("mayfly-vm-1"));
    assert!(job.started_at.is_some());
    assert_eq!(job.sender, "alice");
    assert_eq!(job.labels, ["mayfly-linux-2cpu"]);
    assert!(store.pending_deliveries(10).await.unwrap().is_empty());
    assert_eq!(store.jobs().await.unwrap().len(), 1);
}

async fn installations_track_their_repositories(store: &dyn Store) {
    let change = InstallationChange {
        installation_id: InstallationId(9),
        account: Some("org-a".into()),
        kind: InstallationChangeKind::Created,
        repos_added: vec!["org-a/app".parse().unwrap(), "org-a/lib".parse().unwrap()],
        repos_removed: vec![],
    };
    let d = delivery("i-1", IntakeEvent::Installation(change.clone()));
    store.record_delivery(&d).await.unwrap();
    store
        .apply_installation_change(&d.delivery_id, &change, Utc::now())
        .await
        .unwrap();
    let removed = InstallationChange {
        kind: InstallationChangeKind::RepositoriesChanged,
        account: None,
        repos_added: vec![],
        repos_removed: vec!["org-a/lib".parse().unwrap()],
        ..change
    };
    let d = delivery("i-2", IntakeEvent::Installation(removed.clone()));
    store.record_delivery(&d).await.unwrap();
    store
        .apply_installation_change(&d.delivery_id, &removed, Utc::now())
        .await
        .unwrap();

    let all = store.installations().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].account.as_deref(), Some("org-a"));
    assert_eq!(all[0].state, "active");
    assert_eq!(all[0].repos, ["org-a/app".parse().unwrap()]);
}

/// Intake records while the processor applies: neither may fail on the other's write.
async fn concurrent_recording_and_applying(store: &dyn Store) {
    let writes = (0..40).map(|i| async move {
        let mut event = job_event(if i % 2 == 0 {
            JobStatus::Queued
        } else {
            JobStatus::InProgress
        });
        event.job_id = JobId(1000 + i / 2);
        let d = delivery(&format!("c-{i}"), IntakeEvent::Job(event.clone()));
        store.record_delivery(&d).await.unwrap();
        store
            .apply_job_event(&d.delivery_id, &event, Utc::now())
            .await
            .unwrap();
    });
    futures::future::join_all(writes).await;
    assert_eq!(store.jobs().await.unwrap().len(), 20);
    assert!(store.pending_deliveries(100).await.unwrap().is_empty());
}

/// The scheduler's decisions and VM rows round-trip; live VMs are those not destroyed.
async fn dispatch_and_vm_rows_round_trip(store: &dyn Store) {
    record_and_apply(store, "v-1", job_event(JobStatus::Queued)).await;
    let dispatch = mayfly_store::JobDispatch {
        profile: Some("mayfly-linux-2cpu".into()),
        disposition: "placed".into(),
        failure: None,
        attempts: 1,
        vm_start_id: None,
    };
    store.set_job_dispatch(JobId(77), &dispatch).await.unwrap();
    assert_eq!(
        store.job(JobId(77)).await.unwrap().unwrap().dispatch,
        dispatch
    );

    let mut vm = mayfly_store::VmRow::requested(
        mayfly_store::Placement {
            start_id: "start-1".into(),
            host: "host-a".into(),
            profile: "mayfly-linux-2cpu".into(),
            installation_id: 9,
            repo: "org-a/app".into(),
            runner_name: "mayfly-start-1".into(),
            runner_id: Some(5),
            for_job_id: 77,
        },
        now_micros(),
    );
    store.insert_vm(&vm).await.unwrap();
    assert!(
        store.insert_vm(&vm).await.is_err(),
        "a start id is used once"
    );
    assert_eq!(store.vms(true).await.unwrap(), [vm.clone()]);
    vm.state = "destroyed".into();
    vm.vm_id = Some("vm-0000000000000001".into());
    vm.runner_started_at = Some(now_micros());
    vm.destroyed_at = Some(now_micros());
    vm.destruction = Some("{}".into());
    store.update_vm(&vm).await.unwrap();
    assert!(store.vms(true).await.unwrap().is_empty());
    assert_eq!(store.vms(false).await.unwrap(), [vm]);
}

/// A scheduling pass reads only what can change a decision: with 100,000 finished jobs (and their
/// VMs) in the tables, the pass's queries return exactly the open rows, and the database plans
/// none of them as a full scan of `jobs` or `vms`.
async fn a_pass_reads_open_work_not_history(store: &dyn Store) {
    let placed = |vm: Option<&str>| mayfly_store::JobDispatch {
        profile: None,
        disposition: "placed".into(),
        failure: None,
        attempts: 1,
        vm_start_id: vm.map(str::to_owned),
    };
    // With no planner statistics yet (a new database: SQLite never gathers them on its own),
    // no range walks an index of every row (a full scan of these empty tables is nothing)…
    assert_pass_reads_open_work_only(store, false).await;
    const HISTORY: u32 = 100_000;
    let long_ago = Utc::now() - Duration::days(30);
    store
        .seed_history(HISTORY, 1_000_000, long_ago)
        .await
        .unwrap();
    let vm_row = |start: &str, job: i64| {
        mayfly_store::VmRow::requested(
            mayfly_store::Placement {
                start_id: start.into(),
                host: "host-a".into(),
                profile: "mayfly-linux-2cpu".into(),
                installation_id: 9,
                repo: "org-a/app".into(),
                runner_name: format!("mayfly-{start}"),
                runner_id: Some(5),
                for_job_id: job,
            },
            now_micros(),
        )
    };
    // Open: a queued job with its live VM; a completed job whose idle VM's runner is still to
    // be deleted; a job that names a runner but is bound to none.
    record_and_apply(store, "o-1", job_event(JobStatus::Queued)).await;
    store.insert_vm(&vm_row("live", 77)).await.unwrap();
    let done = JobEvent {
        job_id: JobId(78),
        status: JobStatus::Completed,
        completed_at: Some(Utc::now()),
        ..job_event(JobStatus::Queued)
    };
    record_and_apply(store, "o-2", done.clone()).await;
    let mut idle = vm_row("idle", 78);
    idle.state = "destroyed".into();
    store.insert_vm(&idle).await.unwrap();
    let unbound = JobEvent {
        job_id: JobId(79),
        runner_name: Some("someone-elses-runner".into()),
        ..done
    };
    record_and_apply(store, "o-3", unbound).await;
    // Decided (a completed job left `new` would be open until the scheduler skips it).
    for id in [78, 79] {
        store
            .set_job_dispatch(JobId(id), &placed(None))
            .await
            .unwrap();
    }
    // Settled, though recent: a completed job, its VM destroyed after its runner ran it.
    let settled = JobEvent {
        job_id: JobId(80),
        status: JobStatus::Completed,
        completed_at: Some(Utc::now()),
        ..job_event(JobStatus::Queued)
    };
    record_and_apply(store, "o-4", settled).await;
    store
        .set_job_dispatch(JobId(80), &placed(Some("ran")))
        .await
        .unwrap();
    let mut ran = vm_row("ran", 80);
    ran.state = "destroyed".into();
    ran.ran_job_id = Some(80);
    store.insert_vm(&ran).await.unwrap();

    let jobs: Vec<i64> = store
        .open_jobs(Utc::now() - Duration::hours(1), true)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id.0)
        .collect();
    assert_eq!(jobs, [77, 78, 79]);
    let vms: Vec<String> = store
        .open_vms()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.start_id)
        .collect();
    assert_eq!(vms, ["live", "idle"]);
    // An unbound job stops being looked at once its window has passed.
    let later: Vec<i64> = store
        .open_jobs(Utc::now() + Duration::seconds(1), true)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id.0)
        .collect();
    assert_eq!(later, [77, 78]);

    assert_pass_reads_open_work_only(store, true).await;
    // A flood of queued jobs no profile serves (decided at intake, never placed) beside the
    // history of placed and completed ones: a planner that takes disposition and status as
    // independent guesses thousands of jobs placed and still open, and reads the whole table.
    let flood: Vec<NewDelivery> = (0..3_000)
        .map(|i| {
            delivery(
                &format!("flood-{i}"),
                IntakeEvent::Job(JobEvent {
                    job_id: JobId(5_000_000 + i),
                    labels: vec!["ubuntu-latest".into()],
                    ..job_event(JobStatus::Queued)
                }),
            )
        })
        .collect();
    let ignored = (0..3_000).map(|i| 5_000_000 + i).collect();
    store
        .record_and_apply(&flood, Utc::now(), &ignored)
        .await
        .unwrap();
    store.refresh_statistics().await.unwrap();
    assert_pass_reads_open_work_only(store, true).await;
    // The history is all there, just not read.
    assert_eq!(
        store
            .jobs_by_id(&[1_000_000, 1_099_999, 77])
            .await
            .unwrap()
            .len(),
        3
    );
    let by_runner = store
        .vms_by_key(
            mayfly_store::VmKey::RunnerName,
            &["mayfly-live".into(), "nope".into()],
        )
        .await
        .unwrap();
    assert_eq!(by_runner.len(), 1);
}

/// Group commit's store side: a batch of deliveries is recorded in one transaction, each told
/// whether it is new (a copy earlier in the batch, or recorded before, is a duplicate); a batch of
/// job events applies each once, a job's events in their order.
async fn deliveries_and_job_events_go_in_batches(store: &dyn Store) {
    let queued = job_event(JobStatus::Queued);
    let running = running_event();
    let other = JobEvent {
        job_id: JobId(5),
        ..job_event(JobStatus::Queued)
    };
    assert_eq!(
        store
            .record_delivery(&delivery("b-0", IntakeEvent::Ping))
            .await
            .unwrap(),
        Recorded::New
    );
    let batch = [
        delivery("b-1", IntakeEvent::Job(running.clone())),
        delivery("b-0", IntakeEvent::Ping),
        delivery("b-2", IntakeEvent::Job(queued.clone())),
        delivery("b-1", IntakeEvent::Job(running.clone())),
        delivery("b-3", IntakeEvent::Job(other.clone())),
    ];
    assert_eq!(
        store.record_deliveries(&batch).await.unwrap(),
        [
            Recorded::New,
            Recorded::Duplicate,
            Recorded::New,
            Recorded::Duplicate,
            Recorded::New
        ]
    );
    let id = |s: &str| DeliveryId::parse(s).unwrap();
    // `in_progress` before `queued` (as GitHub may deliver them), and one applied already.
    store
        .apply_job_event(&id("b-3"), &other, Utc::now())
        .await
        .unwrap();
    let applied = store
        .apply_job_events(
            &[
                (id("b-3"), other.clone()),
                (id("b-1"), running.clone()),
                (id("b-2"), queued.clone()),
            ],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(
        applied,
        [
            None,
            Some(Transition::Advance(JobStatus::InProgress)),
            Some(Transition::Stale)
        ]
    );
    let job = store.job(JobId(77)).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::InProgress);
    assert_eq!(job.runner_name.as_deref(), Some("mayfly-r"));
    assert!(store
        .pending_deliveries(10)
        .await
        .unwrap()
        .iter()
        .all(|p| p.delivery_id.as_str() == "b-0"));
    assert!(store.record_deliveries(&[]).await.unwrap().is_empty());
}

/// Intake's commit: a batch is recorded and its new job events applied at once (each delivery
/// processed, with its outcome); duplicates and other events are left as `record_deliveries`
/// leaves them, the other events pending for the processor. A new queued job intake says no
/// profile serves is inserted decided (`ignored`); one that comes already running is not.
async fn intake_records_and_applies_in_one_commit(store: &dyn Store) {
    let queued = job_event(JobStatus::Queued);
    let running = running_event();
    let unserved = JobEvent {
        job_id: JobId(78),
        labels: vec!["ubuntu-latest".into()],
        ..job_event(JobStatus::Queued)
    };
    let unserved_running = JobEvent {
        job_id: JobId(79),
        ..running.clone()
    };
    store
        .record_delivery(&delivery("i-0", IntakeEvent::Ping))
        .await
        .unwrap();
    let batch = [
        delivery("i-1", IntakeEvent::Job(queued.clone())),
        delivery("i-0", IntakeEvent::Ping),
        delivery("i-2", IntakeEvent::Job(running.clone())),
        delivery("i-3", IntakeEvent::Ping),
        delivery("i-1", IntakeEvent::Job(queued.clone())),
        delivery("i-4", IntakeEvent::Job(unserved.clone())),
        delivery("i-5", IntakeEvent::Job(unserved_running.clone())),
    ];
    let ignored = [78, 79].into_iter().collect();
    let intake = store
        .record_and_apply(&batch, Utc::now(), &ignored)
        .await
        .unwrap();
    assert!(intake.apply_error.is_none(), "{:?}", intake.apply_error);
    assert_eq!(
        intake.recorded,
        [
            Recorded::New,
            Recorded::Duplicate,
            Recorded::New,
            Recorded::New,
            Recorded::Duplicate,
            Recorded::New,
            Recorded::New
        ]
    );
    assert_eq!(
        intake.applied,
        [
            Some(Transition::Advance(JobStatus::Queued)),
            None,
            Some(Transition::Advance(JobStatus::InProgress)),
            None,
            None,
            Some(Transition::Advance(JobStatus::Queued)),
            Some(Transition::Advance(JobStatus::InProgress))
        ]
    );
    let disposition = async |id| {
        store
            .job(JobId(id))
            .await
            .unwrap()
            .unwrap()
            .dispatch
            .disposition
    };
    assert_eq!(disposition(77).await, "new");
    assert_eq!(disposition(78).await, "ignored");
    assert_eq!(
        disposition(79).await,
        "new",
        "only a queued job is decided at intake"
    );
    let job = store.job(JobId(77)).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::InProgress);
    assert_eq!(job.runner_name.as_deref(), Some("mayfly-r"));
    let id = |s: &str| DeliveryId::parse(s).unwrap();
    let running_delivery = store.delivery(&id("i-2")).await.unwrap().unwrap();
    assert!(running_delivery.processed_at.is_some());
    assert_eq!(
        running_delivery.outcome.as_deref(),
        Some("job 77 → in_progress")
    );
    assert_eq!(
        pending_ids(store).await,
        ["i-0", "i-3"],
        "only the pings are left"
    );
    // Applying an event intake applied changes nothing.
    assert_eq!(
        store
            .apply_job_event(&id("i-2"), &running, Utc::now())
            .await
            .unwrap(),
        None
    );
    let empty = store
        .record_and_apply(&[], Utc::now(), &Default::default())
        .await
        .unwrap();
    assert!(empty.recorded.is_empty() && empty.applied.is_empty());
}

/// A batch larger than one statement's chunk, of new jobs, jobs the store has, a job's second
/// event and a job that comes completed: each event applied once, in order, with its outcome.
async fn a_large_batch_applies_each_event_once_with_its_outcome(store: &dyn Store) {
    let id = |s: String| DeliveryId::parse(&s).unwrap();
    let event = |job: i64, status: JobStatus| JobEvent {
        job_id: JobId(job),
        runner_name: (status != JobStatus::Queued).then(|| format!("runner-{job}")),
        completed_at: (status == JobStatus::Completed).then(Utc::now),
        conclusion: (status == JobStatus::Completed).then(|| "success".to_owned()),
        ..job_event(status)
    };
    // Jobs 1000..1010 are in the store already.
    for job in 1000..1010 {
        record_and_apply(store, &format!("old-{job}"), event(job, JobStatus::Queued)).await;
    }
    let mut batch = Vec::new();
    for job in 1000..1300 {
        batch.push((id(format!("new-{job}")), event(job, JobStatus::Queued)));
    }
    // A second event for a job new in this batch, and one that arrives completed.
    batch.push((id("second-1100".into()), event(1100, JobStatus::InProgress)));
    batch.push((id("done-2000".into()), event(2000, JobStatus::Completed)));
    let recorded: Vec<NewDelivery> = batch
        .iter()
        .map(|(d, e)| delivery(d.as_str(), IntakeEvent::Job(e.clone())))
        .collect();
    store.record_deliveries(&recorded).await.unwrap();
    let applied = store.apply_job_events(&batch, Utc::now()).await.unwrap();
    for ((delivery, e), transition) in batch.iter().zip(&applied) {
        let expected = if delivery.as_str().starts_with("new-") && e.job_id.0 < 1010 {
            Transition::Unchanged
        } else {
            Transition::Advance(e.status)
        };
        assert_eq!(*transition, Some(expected), "{delivery}");
        let record = store.delivery(delivery).await.unwrap().unwrap();
        assert!(record.processed_at.is_some(), "{delivery}");
        let outcome = match expected {
            Transition::Advance(s) => format!("job {} → {}", e.job_id, s.as_str()),
            _ => format!("job {} unchanged", e.job_id),
        };
        assert_eq!(record.outcome.as_deref(), Some(outcome.as_str()));
    }
    let job = store.job(JobId(1100)).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::InProgress);
    assert_eq!(job.runner_name.as_deref(), Some("runner-1100"));
    assert_eq!(
        store.job(JobId(1299)).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    let done = store.job(JobId(2000)).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.conclusion.as_deref(), Some("success"));
    // Applied again (another server's stale claim), nothing is applied twice.
    let again = store.apply_job_events(&batch, Utc::now()).await.unwrap();
    assert!(again.iter().all(Option::is_none));
    assert!(store.pending_deliveries(10).await.unwrap().is_empty());
}

/// A usage range returns exactly the jobs first seen inside it, with their VMs.
async fn jobs_are_read_by_the_day_mayfly_saw_them(store: &dyn Store) {
    let day = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap();
    for (id, seen) in [
        (1_i64, day(1, 23)),
        (2, day(2, 0)),
        (3, day(2, 23)),
        (4, day(3, 0)),
    ] {
        let event = JobEvent {
            job_id: JobId(id),
            ..job_event(JobStatus::Queued)
        };
        let d = delivery(&format!("r-{id}"), IntakeEvent::Job(event.clone()));
        store.record_delivery(&d).await.unwrap();
        store
            .apply_job_event(&d.delivery_id, &event, seen)
            .await
            .unwrap();
        let vm = mayfly_store::VmRow::requested(
            mayfly_store::Placement {
                start_id: format!("start-{id}"),
                host: "host-a".into(),
                profile: "mayfly-linux-2cpu".into(),
                installation_id: 9,
                repo: "org-a/app".into(),
                runner_name: format!("mayfly-start-{id}"),
                runner_id: None,
                for_job_id: id,
            },
            seen,
        );
        store.insert_vm(&vm).await.unwrap();
    }
    let (jobs, vms) = store.jobs_seen_between(day(2, 0), day(3, 0)).await.unwrap();
    let ids: Vec<i64> = jobs.iter().map(|j| j.job_id.0).collect();
    assert_eq!(ids, [2, 3], "the range is [from, to)");
    let vm_jobs: Vec<i64> = vms.iter().map(|v| v.for_job_id).collect();
    assert_eq!(vm_jobs, [2, 3]);
    let (none, _) = store.jobs_seen_between(day(5, 0), day(6, 0)).await.unwrap();
    assert!(none.is_empty());
}

/// Retention: exactly the rows older than the cut-offs go; live jobs and unprocessed deliveries
/// stay whatever their age.
async fn purge_removes_exactly_the_expired_rows(store: &dyn Store) {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let day = Duration::days(1);
    let at = |days: i64| t0 + day * i32::try_from(days).unwrap();
    let apply = async |id: i64, status: JobStatus, delivery_id: &str, when| {
        let mut e = job_event(status);
        e.job_id = JobId(id);
        let mut d = delivery(delivery_id, IntakeEvent::Job(e.clone()));
        d.received_at = when;
        store.record_delivery(&d).await.unwrap();
        store
            .apply_job_event(&d.delivery_id, &e, when)
            .await
            .unwrap();
    };
    apply(1, JobStatus::Completed, "p-1", at(0)).await; // old and finished: expires
    apply(2, JobStatus::Queued, "p-2", at(0)).await; // old but still queued: kept
    apply(3, JobStatus::Completed, "p-3", at(95)).await; // recent: kept
    let mut unprocessed = delivery("p-4", IntakeEvent::Ping);
    unprocessed.received_at = at(0);
    store.record_delivery(&unprocessed).await.unwrap(); // old but not processed: kept

    // "Now" is day 100; jobs are kept 90 days, deliveries 30.
    let now = at(100);
    let purged = store.purge(now - day * 90, now - day * 30).await.unwrap();
    assert_eq!(purged.jobs, 1);
    assert_eq!(
        purged.deliveries, 2,
        "p-1 and p-2 were processed and are old"
    );
    let left: Vec<i64> = store
        .jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id.0)
        .collect();
    assert_eq!(left, [2, 3]);
    assert!(store
        .delivery(&DeliveryId::parse("p-3").unwrap())
        .await
        .unwrap()
        .is_some());
    assert!(store
        .delivery(&DeliveryId::parse("p-4").unwrap())
        .await
        .unwrap()
        .is_some());
    assert!(store
        .delivery(&DeliveryId::parse("p-1").unwrap())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store.purge(now - day * 90, now - day * 30).await.unwrap(),
        mayfly_store::Purged::default()
    );
}

/// Each delivery is applied exactly once, however many servers try at once.
async fn a_delivery_is_applied_exactly_once(store: &dyn Store) {
    let event = job_event(JobStatus::Queued);
    let d = delivery("once-1", IntakeEvent::Job(event.clone()));
    store.record_delivery(&d).await.unwrap();
    let attempts = (0..8).map(|_| store.apply_job_event(&d.delivery_id, &event, Utc::now()));
    let applied: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        applied.iter().filter(|a| a.is_some()).count(),
        1,
        "{applied:?}"
    );
    let ping = delivery("once-2", IntakeEvent::Ping);
    store.record_delivery(&ping).await.unwrap();
    assert!(store
        .finish_delivery(&ping.delivery_id, "ping", Utc::now())
        .await
        .unwrap());
    assert!(!store
        .finish_delivery(&ping.delivery_id, "ping", Utc::now())
        .await
        .unwrap());
    let change = InstallationChange {
        installation_id: InstallationId(3),
        kind: InstallationChangeKind::Created,
        account: Some("org-c".into()),
        repos_added: vec![],
        repos_removed: vec![],
    };
    let d = delivery("once-3", IntakeEvent::Installation(change.clone()));
    store.record_delivery(&d).await.unwrap();
    assert!(store
        .apply_installation_change(&d.delivery_id, &change, Utc::now())
        .await
        .unwrap());
    assert!(!store
        .apply_installation_change(&d.delivery_id, &change, Utc::now())
        .await
        .unwrap());
}

/// Two servers claiming at once get disjoint batches; a stale claim is taken over.
async fn servers_claim_disjoint_deliveries(store: &dyn Store) {
    for i in 0..12 {
        store
            .record_delivery(&delivery(&format!("cl-{i:02}"), IntakeEvent::Ping))
            .await
            .unwrap();
    }
    let now = Utc::now();
    let long_ago = now - Duration::minutes(5);
    let (a, b) = futures::join!(
        store.claim_deliveries("server-a", 5, now, long_ago),
        store.claim_deliveries("server-b", 5, now, long_ago),
    );
    let ids = |v: &[mayfly_store::PendingDelivery]| -> Vec<String> {
        v.iter()
            .map(|d| d.delivery_id.as_str().to_owned())
            .collect()
    };
    let (a, b) = (ids(&a.unwrap()), ids(&b.unwrap()));
    assert_eq!(a.len() + b.len(), 10, "{a:?} {b:?}");
    assert!(a.iter().all(|id| !b.contains(id)), "{a:?} {b:?}");
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(a, sorted, "oldest first");
    // The two left over go to whoever asks; claimed ones are not handed out again.
    let rest = ids(&store
        .claim_deliveries("server-b", 100, now, long_ago)
        .await
        .unwrap());
    assert_eq!(
        rest.len(),
        2 + b.len(),
        "server-b sees its own claims again: {rest:?}"
    );
    // server-a died: once its claims are stale, server-b takes them over.
    let later = now + Duration::minutes(2);
    let taken = ids(&store
        .claim_deliveries("server-b", 100, later, later - Duration::minutes(1))
        .await
        .unwrap());
    assert_eq!(taken.len(), 12, "{taken:?}");
}

/// Of several servers claiming one job, exactly one gets it; a stale claim can be taken over.
async fn a_job_is_claimed_by_one_server(store: &dyn Store) {
    record_and_apply(store, "jc-1", job_event(JobStatus::Queued)).await;
    let now = Utc::now();
    let owners: Vec<String> = (0..8).map(|i| format!("server-{i}")).collect();
    let claims = owners
        .iter()
        .map(|o| store.claim_job(JobId(77), o, "linux", now, now - Duration::minutes(2)));
    let won: Vec<bool> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let job = store.job(JobId(77)).await.unwrap().unwrap();
    assert_eq!(job.dispatch.disposition, "placing");
    assert_eq!(job.dispatch.profile.as_deref(), Some("linux"));
    assert!(!store
        .claim_job(JobId(77), "late", "linux", now, now - Duration::minutes(2))
        .await
        .unwrap());
    let later = now + Duration::minutes(3);
    assert!(store
        .claim_job(
            JobId(77),
            "late",
            "linux",
            later,
            later - Duration::minutes(2)
        )
        .await
        .unwrap());
}

/// A lease has one holder until it expires; the holder renews it.
async fn leases_have_one_holder(store: &dyn Store) {
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let min = Duration::minutes(1);
    assert!(store.try_lease("purge", "a", t0, t0 + min).await.unwrap());
    assert!(!store.try_lease("purge", "b", t0, t0 + min).await.unwrap());
    assert!(store
        .try_lease("reconciler", "b", t0, t0 + min)
        .await
        .unwrap());
    assert!(store
        .try_lease("purge", "a", t0 + min / 2, t0 + min * 2)
        .await
        .unwrap());
    assert!(!store
        .try_lease("purge", "b", t0 + min, t0 + min * 2)
        .await
        .unwrap());
    let t3 = t0 + min * 3;
    assert!(store.try_lease("purge", "b", t3, t3 + min).await.unwrap());
    assert!(!store.try_lease("purge", "a", t3, t3 + min).await.unwrap());
}

/// Finished jobs add up per tenant, day and profile, and the rollup outlives the job rows.
async fn usage_rolls_up_and_outlives_job_rows(store: &dyn Store) {
    let t0 = Utc.with_ymd_and_hms(2026, 2, 1, 9, 0, 0).unwrap();
    for (id, minutes) in [(1_i64, 3_i64), (2, 5)] {
        let mut e = job_event(JobStatus::Queued);
        e.job_id = JobId(id);
        record_and_apply(store, &format!("u-q-{id}"), e.clone()).await;
        let dispatch = mayfly_store::JobDispatch {
            profile: Some("linux-2cpu".into()),
            disposition: "placed".into(),
            ..Default::default()
        };
        store.set_job_dispatch(JobId(id), &dispatch).await.unwrap();
        e.status = JobStatus::InProgress;
        e.started_at = Some(t0);
        record_and_apply(store, &format!("u-p-{id}"), e.clone()).await;
        e.status = JobStatus::Completed;
        e.conclusion = Some("success".into());
        e.completed_at = Some(t0 + Duration::minutes(minutes));
        record_and_apply(store, &format!("u-c-{id}"), e.clone()).await;
        // A redelivered `completed` is not counted twice.
        let d = delivery(&format!("u-c2-{id}"), IntakeEvent::Job(e.clone()));
        store.record_delivery(&d).await.unwrap();
        store
            .apply_job_event(&d.delivery_id, &e, Utc::now())
            .await
            .unwrap();
    }
    let expected = vec![mayfly_store::UsageRow {
        installation_id: 9,
        day: "2026-02-01".into(),
        profile: "linux-2cpu".into(),
        jobs: 2,
        run_seconds: 8 * 60,
    }];
    assert_eq!(store.usage(Some(9)).await.unwrap(), expected);
    assert_eq!(store.usage(None).await.unwrap(), expected);
    assert!(store.usage(Some(10)).await.unwrap().is_empty());
    let far = Utc::now() + Duration::days(1000);
    let purged = store.purge(far, far).await.unwrap();
    assert_eq!(purged.jobs, 2);
    assert!(store.jobs().await.unwrap().is_empty());
    assert_eq!(store.usage(Some(9)).await.unwrap(), expected);
}

/// Sealed values: open with the master key, bound to their row, unchanged by a master-key
/// rotation that happens while another reader keeps using them.
async fn sealed_values(store: &dyn Store) {
    use mayfly_store::{SealError, Sealer};
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    mayfly_store::MasterKey::random().write(&key_file).unwrap();
    let sealer = Sealer::new(key_file.clone());
    let other_server = Sealer::new(key_file.clone());
    sealer
        .seal(store, "webhook-secret", "primary", b"sealed-secret-value-1")
        .await
        .unwrap();
    sealer
        .seal(store, "webhook-secret", "spare", b"sealed-secret-value-2")
        .await
        .unwrap();
    let opened = other_server
        .open(store, "webhook-secret", "primary")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.as_slice(), b"sealed-secret-value-1");
    assert!(sealer
        .open(store, "webhook-secret", "missing")
        .await
        .unwrap()
        .is_none());

    // Moved to another row: does not open.
    let mut moved = store
        .secret("webhook-secret", "primary")
        .await
        .unwrap()
        .unwrap();
    moved.name = "spare".into();
    store.put_secret(&moved, Utc::now()).await.unwrap();
    let err = sealer
        .open(store, "webhook-secret", "spare")
        .await
        .unwrap_err();
    assert!(matches!(err, SealError::Tampered { .. }), "{err}");
    // Altered: does not open.
    let mut altered = moved.clone();
    altered.name = "primary".into();
    let last = altered.sealed.len() - 1;
    altered.sealed[last] ^= 1;
    store.put_secret(&altered, Utc::now()).await.unwrap();
    assert!(matches!(
        sealer.open(store, "webhook-secret", "primary").await,
        Err(SealError::Tampered { .. })
    ));
    sealer
        .seal(store, "webhook-secret", "primary", b"sealed-secret-value-1")
        .await
        .unwrap();

    // Rotation: a new master key, the values unchanged, the other reader unaffected.
    let before: Vec<_> = store.data_keys().await.unwrap();
    let (old_id, new_id) = sealer.rotate(store).await.unwrap();
    assert_ne!(old_id, new_id);
    let after = store.data_keys().await.unwrap();
    assert_eq!(before.len(), after.len());
    assert!(after.iter().all(|k| k.master_key_id == new_id));
    assert!(after
        .iter()
        .zip(&before)
        .all(|(a, b)| a.wrapped != b.wrapped));
    let opened = other_server
        .open(store, "webhook-secret", "primary")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opened.as_slice(), b"sealed-secret-value-1");
    assert_eq!(
        mayfly_store::MasterKey::read(&key_file).unwrap().id(),
        new_id
    );
    // The old key no longer opens anything.
    let stranger = dir.path().join("old.key");
    mayfly_store::MasterKey::random().write(&stranger).unwrap();
    let err = Sealer::new(stranger)
        .open(store, "webhook-secret", "primary")
        .await
        .unwrap_err();
    assert!(matches!(err, SealError::WrongMasterKey { .. }), "{err}");
}

/// Tokens are kept as hashes, found by hash, revoked once.
async fn tokens_are_found_by_hash_and_revoked(store: &dyn Store) {
    let token = mayfly_store::TokenRow {
        id: "tok-1".into(),
        name: "dashboards".into(),
        scope: "tenant".into(),
        installation_id: Some(9),
        token_hash: "ab".repeat(32),
        created_at: now_micros(),
        revoked_at: None,
    };
    store.insert_token(&token).await.unwrap();
    assert!(store.insert_token(&token).await.is_err(), "ids are unique");
    assert_eq!(
        store.token_by_hash(&"ab".repeat(32)).await.unwrap(),
        Some(token.clone())
    );
    assert!(store
        .token_by_hash(&"cd".repeat(32))
        .await
        .unwrap()
        .is_none());
    assert!(store.revoke_token("tok-1", Utc::now()).await.unwrap());
    assert!(!store.revoke_token("tok-1", Utc::now()).await.unwrap());
    assert!(!store.revoke_token("nope", Utc::now()).await.unwrap());
    let listed = store.tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at.is_some());
}

/// Concurrent appends make one unbroken chain.
async fn the_audit_log_is_one_chain(store: &dyn Store) {
    let events: Vec<_> = (0..10)
        .map(|i| mayfly_store::NewAudit {
            at: Utc::now(),
            actor: format!("token:t{i}"),
            source: Some("127.0.0.1:1".into()),
            action: "api.get".into(),
            target: Some(format!("/api/v1/jobs/{i}")),
            outcome: "200".into(),
        })
        .collect();
    let appends = events.iter().map(|e| store.append_audit(e));
    for row in futures::future::join_all(appends).await {
        row.unwrap();
    }
    let rows = store.audit_log(0, 100).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(mayfly_store::verify_chain(&rows), Ok(10));
    assert_eq!(store.audit_log(7, 100).await.unwrap().len(), 3);
}

/// A bootstrap token works once, before it expires, with its own secret; agents are known by
/// certificate, re-enrolled with a new one, revoked.
async fn bootstrap_tokens_are_one_time_and_agents_revocable(store: &dyn Store) {
    use mayfly_store::BootstrapUse;
    let now = now_micros();
    for (id, expires) in [
        ("b-1", now + Duration::hours(1)),
        ("b-2", now - Duration::seconds(1)),
    ] {
        store
            .insert_bootstrap(&mayfly_store::BootstrapRow {
                id: id.into(),
                agent_name: format!("host-{id}"),
                secret_hash: format!("hash-{id}"),
                created_at: now - Duration::hours(2),
                expires_at: expires,
            })
            .await
            .unwrap();
    }
    assert_eq!(
        store.consume_bootstrap("b-1", "wrong", now).await.unwrap(),
        BootstrapUse::Unknown
    );
    assert_eq!(
        store
            .consume_bootstrap("nope", "hash-b-1", now)
            .await
            .unwrap(),
        BootstrapUse::Unknown
    );
    assert_eq!(
        store
            .consume_bootstrap("b-2", "hash-b-2", now)
            .await
            .unwrap(),
        BootstrapUse::Expired
    );
    assert_eq!(
        store
            .consume_bootstrap("b-1", "hash-b-1", now)
            .await
            .unwrap(),
        BootstrapUse::Accepted {
            agent_name: "host-b-1".into()
        }
    );
    assert_eq!(
        store
            .consume_bootstrap("b-1", "hash-b-1", now)
            .await
            .unwrap(),
        BootstrapUse::AlreadyUsed
    );

    store.enrol_agent("host-b-1", "fp-1", now).await.unwrap();
    assert_eq!(
        store.agent_by_cert("fp-1").await.unwrap().unwrap().name,
        "host-b-1"
    );
    store.enrol_agent("host-b-1", "fp-2", now).await.unwrap();
    assert!(
        store.agent_by_cert("fp-1").await.unwrap().is_none(),
        "the old certificate is gone"
    );
    assert!(store.revoke_agent("host-b-1", now).await.unwrap());
    assert!(!store.revoke_agent("host-b-1", now).await.unwrap());
    assert!(store
        .agent_by_cert("fp-2")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert_eq!(store.agents().await.unwrap().len(), 1);
}

async fn with_sqlite(test: impl AsyncFnOnce(&dyn Store)) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("mayfly.db"),
        &mayfly_store::DbKey::random(),
    )
    .await
    .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), test(&store))
        .await
        .unwrap();
    store.ping().await.unwrap();
    // Let SQLite's worker threads finish before the process exits (SQLCipher's OpenSSL cleans
    // up at exit).
    store.close().await;
}

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `url` with its database replaced by `database` (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{database}{query}", &base[..authority_end])
}

/// Runs `test` against a `PgStore` on a database of its own, created on the server at
/// `MAYFLY_TEST_POSTGRES_URL` and dropped afterwards, even when the test fails.
async fn with_postgres(test: impl AsyncFnOnce(&dyn Store)) {
    with_postgres_at(async move |store: &PgStore, _: &str| test(store).await).await;
}

/// A fresh database for `test`, given the store and the database's URL (to change its schema
/// behind the store's back), dropped after.
async fn with_postgres_at(test: impl AsyncFnOnce(&PgStore, &str)) {
    use futures::FutureExt;
    use sqlx::Connection;

    let admin_url =
        std::env::var("MAYFLY_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
    let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {admin_url} ({e}): the contract tests need it. Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or point \
             MAYFLY_TEST_POSTGRES_URL at a server (trust auth)"
        ),
    };
    let name = format!("mayfly_test_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = with_database(&admin_url, &name);
    let outcome = std::panic::AssertUnwindSafe(async {
        let store = PgStore::connect(&url).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), test(&store, &url))
            .await
            .unwrap();
        store.ping().await.unwrap();
        store.close().await;
    })
    .catch_unwind()
    .await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// When applying fails in intake's commit (here a trigger refuses every new job), the batch is
/// still recorded, unapplied, for the processor, which applies it once it can.
#[tokio::test]
async fn postgres_intake_records_a_batch_it_cannot_apply() {
    use sqlx::Connection;
    with_postgres_at(async |store: &PgStore, url: &str| {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
             CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs
               FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let queued = job_event(JobStatus::Queued);
        let batch = [
            delivery("f-1", IntakeEvent::Job(queued.clone())),
            delivery("f-2", IntakeEvent::Ping),
        ];
        let intake = store
            .record_and_apply(&batch, Utc::now(), &Default::default())
            .await
            .unwrap();
        let error = intake.apply_error.expect("applying was refused");
        assert!(
            format!("{error:?}").contains("refused by the test"),
            "{error:?}"
        );
        assert_eq!(intake.recorded, [Recorded::New, Recorded::New]);
        assert_eq!(intake.applied, [None, None]);
        assert!(store.job(JobId(77)).await.unwrap().is_none());
        assert_eq!(pending_ids(store).await, ["f-1", "f-2"]);

        sqlx::raw_sql("DROP TRIGGER refuse_jobs ON jobs")
            .execute(&mut conn)
            .await
            .unwrap();
        let f1 = DeliveryId::parse("f-1").unwrap();
        assert_eq!(
            store
                .apply_job_event(&f1, &queued, Utc::now())
                .await
                .unwrap(),
            Some(Transition::Advance(JobStatus::Queued))
        );
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn sqlite_recorded_deliveries_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    let key = mayfly_store::DbKey::random();
    let store = SqliteStore::open(&path, &key).await.unwrap();
    store
        .record_delivery(&delivery("keep-me", IntakeEvent::Ping))
        .await
        .unwrap();
    store.close().await;
    let store = SqliteStore::open(&path, &key).await.unwrap();
    let pending = store.pending_deliveries(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].delivery_id.as_str(), "keep-me");
}

#[tokio::test]
async fn sqlite_a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mayfly.db");
    std::fs::write(
        &path,
        b"this is not a database, it is a text file of some length....",
    )
    .unwrap();
    let err = SqliteStore::open(&path, &mayfly_store::DbKey::random())
        .await
        .unwrap_err();
    let shown = format!("{err}");
    assert!(shown.contains("mayfly.db"), "{shown}");
}

/// Each contract function, once per backend: tests `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_backends {
    ($($flavor:tt $name:ident),* $(,)?) => {
        $(on_both_backends!(@one $flavor $name);)*
    };
    (@one current $name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::with_sqlite(super::$name).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::with_postgres(super::$name).await;
            }
        }
    };
    (@one threads $name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::with_sqlite(super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::with_postgres(super::$name).await;
            }
        }
    };
}

on_both_backends!(
    current deliveries_are_deduplicated_and_queued_in_order,
    current job_states_only_move_forward,
    current installations_track_their_repositories,
    threads concurrent_recording_and_applying,
    current dispatch_and_vm_rows_round_trip,
    current jobs_are_read_by_the_day_mayfly_saw_them,
    current purge_removes_exactly_the_expired_rows,
    threads a_delivery_is_applied_exactly_once,
    threads servers_claim_disjoint_deliveries,
    threads a_job_is_claimed_by_one_server,
    current leases_have_one_holder,
    current usage_rolls_up_and_outlives_job_rows,
    current sealed_values,
    current tokens_are_found_by_hash_and_revoked,
    threads the_audit_log_is_one_chain,
    current bootstrap_tokens_are_one_time_and_agents_revocable,
    current a_pass_reads_open_work_not_history,
    current deliveries_and_job_events_go_in_batches,
    current intake_records_and_applies_in_one_commit,
    current a_large_batch_applies_each_event_once_with_its_outcome,
);

/// No query of a scheduling pass walks `jobs` or `vms` other than through the indexes that
/// leave finished work out: neither a full scan nor a range over an index of every row (say
/// `vms_by_ran_job` for `ran_job_id IS NOT NULL`, which is every VM that ever ran a job).
async fn assert_pass_reads_open_work_only(store: &dyn Store, with_history: bool) {
    let plans = store.pass_query_plans().await.unwrap();
    assert!(!plans.is_empty());
    // A walk over jobs or vms is bounded only through the partial indexes that leave finished
    // work out (a walk of an index over all rows — say one matching an ORDER BY — is a full
    // scan too).
    let bounded = [
        "jobs_open",
        "jobs_placed_open",
        // A range of recent changes to undecided jobs, not the history.
        "jobs_undecided_by_updated",
        "jobs_unbound",
        "jobs_pkey",
        "vms_open",
        "vms_unsettled",
        "vms_by_host",
        "vms_live_host",
    ];
    for line in &plans {
        let full_scan = line.contains("SCAN jobs")
            || line.contains("SCAN vms")
            || line.contains("Seq Scan on jobs")
            || line.contains("Seq Scan on vms");
        let sqlite_walk = (line.contains("SEARCH jobs") || line.contains("SEARCH vms"))
            && (line.contains(">?") || line.contains("<?"));
        let pg_walk =
            line.contains("Scan using") && (line.contains(" on jobs") || line.contains(" on vms"));
        if (with_history && full_scan) || sqlite_walk || pg_walk {
            assert!(
                bounded.iter().any(|index| line.contains(index)),
                "a pass reads more than open work: {line}\n{}",
                plans.join("\n")
            );
        }
    }
}
