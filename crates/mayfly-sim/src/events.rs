//! Turns state changes into webhook deliveries (`workflow_job`, `installation`,
//! `installation_repositories`). Callers hold the world lock while calling, so deliveries are
//! queued in exactly the order the state changed.

use serde_json::{json, Value};

use crate::payloads;
use crate::server::Shared;
use crate::state::{Account, Installation, Job, Repo, World};

/// Queues the `workflow_job` delivery for the job's current status.
pub(crate) fn workflow_job(shared: &Shared, world: &World, job: &Job) {
    let (Some(run), Some(repo)) = (world.runs.get(&job.run_id), world.repos.get(&job.repo_id))
    else {
        return;
    };
    let action = job.status.as_str();
    let mut body = payloads::repo_event(&shared.links, action, repo, &run.actor);
    body.insert(
        "workflow_job".into(),
        payloads::job(&shared.links, job, run, repo),
    );
    shared.webhooks.enqueue(
        "workflow_job",
        Some(action),
        &Value::Object(body),
        shared.clock.now(),
    );
}

/// `installation` / `created`.
pub(crate) fn installation_created(
    shared: &Shared,
    inst: &Installation,
    repos: &[Repo],
    sender: &Account,
) {
    let body = json!({
        "action": "created",
        "installation": payloads::installation(&shared.links, &shared.app(), inst, true),
        "repositories": repos.iter().map(payloads::repository_brief).collect::<Vec<_>>(),
        "requester": null,
        "sender": payloads::simple_user(&shared.links, sender),
    });
    shared
        .webhooks
        .enqueue("installation", Some("created"), &body, shared.clock.now());
}

/// `installation_repositories` / `added`.
pub(crate) fn repositories_added(
    shared: &Shared,
    inst: &Installation,
    added: &[Repo],
    sender: &Account,
) {
    let body = json!({
        "action": "added",
        "installation": payloads::installation(&shared.links, &shared.app(), inst, true),
        "repository_selection": "all",
        "repositories_added": added.iter().map(payloads::repository_brief).collect::<Vec<_>>(),
        "repositories_removed": [],
        "requester": null,
        "sender": payloads::simple_user(&shared.links, sender),
    });
    shared.webhooks.enqueue(
        "installation_repositories",
        Some("added"),
        &body,
        shared.clock.now(),
    );
}
