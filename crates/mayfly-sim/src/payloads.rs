//! JSON bodies shaped like GitHub's component schemas (`<simple-user>`, `<repository>`,
//! `<installation>`, `<job>`, `<workflow-run>`, `<runner>`, webhook envelopes). Every required
//! key of the OpenAPI subset is always present; URLs point at the simulator's own base URL.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::state::{
    Account, AccountType, Installation, Job, JobStatus, Repo, Run, Runner, DEFAULT_GROUP_NAME,
};

/// The simulated App's identity.
#[derive(Debug, Clone)]
pub(crate) struct AppInfo {
    pub id: u64,
    pub slug: String,
    pub name: String,
    pub client_id: String,
    pub description: Option<String>,
    /// The homepage; `None`: the simulator's base URL.
    pub external_url: Option<String>,
    pub owner: Account,
    /// What the App asks of installations; every installation grants it.
    pub permissions: std::collections::BTreeMap<String, crate::state::Level>,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl AppInfo {
    /// The App configured at start.
    pub(crate) fn new(id: u64) -> Self {
        Self {
            id,
            slug: "mayfly-sim".into(),
            name: "mayfly (simulated)".into(),
            client_id: format!("Iv23li{id:014}"),
            description: Some("A GitHub App simulated by mayfly-sim.".into()),
            external_url: None,
            owner: Account {
                id: 9_000_000,
                login: "mayfly-app-owner".into(),
                kind: AccountType::User,
            },
            permissions: crate::state::installation_permissions(),
            events: vec!["workflow_job".into()],
            created_at: DateTime::from_timestamp(1_704_067_200, 0).unwrap_or_default(),
        }
    }
}

/// Builds absolute URLs under the simulator's base URL (API and "html" share one origin).
#[derive(Debug, Clone)]
pub(crate) struct Links {
    base: String,
}

impl Links {
    pub(crate) fn new(base: &url::Url) -> Self {
        Self {
            base: base.as_str().trim_end_matches('/').to_string(),
        }
    }

    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }
}

/// RFC 3339 in whole seconds, as GitHub prints timestamps.
pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A legacy-style global node id (`base64("04:User1")` and so on).
pub(crate) fn node_id(kind: &str, id: u64) -> String {
    STANDARD.encode(format!("{:02}:{kind}{id}", kind.len()))
}

pub(crate) fn simple_user(links: &Links, account: &Account) -> Value {
    let login = &account.login;
    let user = |rest: &str| links.at(&format!("users/{login}{rest}"));
    json!({
        "login": login,
        "id": account.id,
        "node_id": node_id(account.kind.as_str(), account.id),
        "avatar_url": links.at(&format!("avatars/u/{}?v=4", account.id)),
        "gravatar_id": "",
        "url": user(""),
        "html_url": links.at(login),
        "followers_url": user("/followers"),
        "following_url": user("/following{/other_user}"),
        "gists_url": user("/gists{/gist_id}"),
        "starred_url": user("/starred{/owner}{/repo}"),
        "subscriptions_url": user("/subscriptions"),
        "organizations_url": user("/orgs"),
        "repos_url": user("/repos"),
        "events_url": user("/events{/privacy}"),
        "received_events_url": user("/received_events"),
        "type": account.kind.as_str(),
        "user_view_type": "public",
        "site_admin": false,
    })
}

/// `<organization-simple-webhooks>`.
pub(crate) fn organization(links: &Links, org: &Account) -> Value {
    let login = &org.login;
    let o = |rest: &str| links.at(&format!("orgs/{login}{rest}"));
    json!({
        "login": login,
        "id": org.id,
        "node_id": node_id("Organization", org.id),
        "url": o(""),
        "repos_url": o("/repos"),
        "events_url": o("/events"),
        "hooks_url": o("/hooks"),
        "issues_url": o("/issues"),
        "members_url": o("/members{/member}"),
        "public_members_url": o("/public_members{/member}"),
        "avatar_url": links.at(&format!("avatars/u/{}?v=4", org.id)),
        "description": null,
    })
}

/// A full repository object: satisfies `<repository>`, `<minimal-repository>` and
/// `<repository-webhooks>` (all 73 required keys).
pub(crate) fn repository(links: &Links, repo: &Repo) -> Value {
    let full = repo.full_name();
    let r = |rest: &str| links.at(&format!("repos/{full}{rest}"));
    let host = links.base().split("://").nth(1).unwrap_or("localhost");
    let created = ts(repo.created_at);
    json!({
        "id": repo.id,
        "node_id": node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": full,
        "private": repo.private,
        "owner": simple_user(links, &repo.owner),
        "html_url": links.at(&full),
        "description": null,
        "fork": false,
        "url": r(""),
        "forks_url": r("/forks"),
        "keys_url": r("/keys{/key_id}"),
        "collaborators_url": r("/collaborators{/collaborator}"),
        "teams_url": r("/teams"),
        "hooks_url": r("/hooks"),
        "issue_events_url": r("/issues/events{/number}"),
        "events_url": r("/events"),
        "assignees_url": r("/assignees{/user}"),
        "branches_url": r("/branches{/branch}"),
        "tags_url": r("/tags"),
        "blobs_url": r("/git/blobs{/sha}"),
        "git_tags_url": r("/git/tags{/sha}"),
        "git_refs_url": r("/git/refs{/sha}"),
        "trees_url": r("/git/trees{/sha}"),
        "statuses_url": r("/statuses/{sha}"),
        "languages_url": r("/languages"),
        "stargazers_url": r("/stargazers"),
        "contributors_url": r("/contributors"),
        "subscribers_url": r("/subscribers"),
        "subscription_url": r("/subscription"),
        "commits_url": r("/commits{/sha}"),
        "git_commits_url": r("/git/commits{/sha}"),
        "comments_url": r("/comments{/number}"),
        "issue_comment_url": r("/issues/comments{/number}"),
        "contents_url": r("/contents/{+path}"),
        "compare_url": r("/compare/{base}...{head}"),
        "merges_url": r("/merges"),
        "archive_url": r("/{archive_format}{/ref}"),
        "downloads_url": r("/downloads"),
        "issues_url": r("/issues{/number}"),
        "pulls_url": r("/pulls{/number}"),
        "milestones_url": r("/milestones{/number}"),
        "notifications_url": r("/notifications{?since,all,participating}"),
        "labels_url": r("/labels{/name}"),
        "releases_url": r("/releases{/id}"),
        "deployments_url": r("/deployments"),
        "created_at": created,
        "updated_at": created,
        "pushed_at": created,
        "git_url": format!("git://{host}/{full}.git"),
        "ssh_url": format!("git@{host}:{full}.git"),
        "clone_url": links.at(&format!("{full}.git")),
        "svn_url": links.at(&full),
        "homepage": null,
        "size": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "language": null,
        "has_issues": true,
        "has_projects": true,
        "has_downloads": true,
        "has_wiki": true,
        "has_pages": false,
        "has_discussions": false,
        "forks_count": 0,
        "mirror_url": null,
        "archived": false,
        "disabled": false,
        "open_issues_count": 0,
        "license": null,
        "allow_forking": true,
        "is_template": false,
        "web_commit_signoff_required": false,
        "topics": [],
        "visibility": if repo.private { "private" } else { "public" },
        "forks": 0,
        "open_issues": 0,
        "watchers": 0,
        "default_branch": "main",
    })
}

/// `{id, node_id, name, full_name, private}` as in installation webhooks.
pub(crate) fn repository_brief(repo: &Repo) -> Value {
    json!({
        "id": repo.id,
        "node_id": node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": repo.full_name(),
        "private": repo.private,
    })
}

/// A permissions object (`{"actions": "read", …}`).
pub(crate) fn permissions(
    granted: &std::collections::BTreeMap<String, crate::state::Level>,
) -> Value {
    granted
        .iter()
        .map(|(name, level)| (name.clone(), Value::from(level.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// `<installation>`; `/app/installations` items leave out `client_id`.
pub(crate) fn installation(
    links: &Links,
    app: &AppInfo,
    inst: &Installation,
    with_client_id: bool,
) -> Value {
    let html_url = match inst.account.kind {
        AccountType::Organization => links.at(&format!(
            "organizations/{}/settings/installations/{}",
            inst.account.login, inst.id
        )),
        AccountType::User => links.at(&format!("settings/installations/{}", inst.id)),
    };
    let mut value = json!({
        "id": inst.id,
        "account": simple_user(links, &inst.account),
        "repository_selection": "all",
        "access_tokens_url": links.at(&format!("app/installations/{}/access_tokens", inst.id)),
        "repositories_url": links.at("installation/repositories"),
        "html_url": html_url,
        "app_id": app.id,
        "app_slug": app.slug,
        "target_id": inst.account.id,
        "target_type": inst.account.kind.as_str(),
        "permissions": permissions(&app.permissions),
        "events": app.events,
        "created_at": ts(inst.created_at),
        "updated_at": ts(inst.created_at),
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null,
    });
    if with_client_id {
        value["client_id"] = json!(app.client_id);
    }
    value
}

/// `<integration>` for `GET /app`.
pub(crate) fn integration(links: &Links, app: &AppInfo, installations: usize) -> Value {
    json!({
        "id": app.id,
        "slug": app.slug,
        "client_id": app.client_id,
        "node_id": node_id("Integration", app.id),
        "owner": simple_user(links, &app.owner),
        "name": app.name,
        "description": app.description,
        "external_url": app.external_url.as_deref().unwrap_or(links.base()),
        "html_url": links.at(&format!("apps/{}", app.slug)),
        "created_at": ts(app.created_at),
        "updated_at": ts(app.created_at),
        "permissions": permissions(&app.permissions),
        "events": app.events,
        "installations_count": installations,
    })
}

pub(crate) fn runner(runner: &Runner) -> Value {
    let labels: Vec<Value> = runner
        .labels
        .iter()
        .map(|l| {
            json!({
                "id": l.id,
                "name": l.name,
                "type": if l.read_only { "read-only" } else { "custom" },
            })
        })
        .collect();
    json!({
        "id": runner.id,
        "runner_group_id": crate::state::DEFAULT_GROUP_ID,
        "name": runner.name,
        "os": if runner.online { "linux" } else { "unknown" },
        "status": if runner.online { "online" } else { "offline" },
        "busy": runner.busy,
        "ephemeral": true,
        "labels": labels,
    })
}

pub(crate) fn runner_group(links: &Links, org: &str) -> Value {
    json!({
        "id": crate::state::DEFAULT_GROUP_ID,
        "name": DEFAULT_GROUP_NAME,
        "visibility": "all",
        "default": true,
        "runners_url": links.at(&format!(
            "orgs/{org}/actions/runner_groups/{}/runners",
            crate::state::DEFAULT_GROUP_ID
        )),
        "inherited": false,
        "allows_public_repositories": true,
        "restricted_to_workflows": false,
        "selected_workflows": [],
        "workflow_restrictions_read_only": false,
    })
}

fn steps(job: &Job) -> Value {
    let started = job.started_at.map(ts);
    match job.status {
        JobStatus::Waiting | JobStatus::Queued => json!([]),
        JobStatus::InProgress => json!([{
            "name": "Set up job", "status": "in_progress", "conclusion": null,
            "number": 1, "started_at": started, "completed_at": null,
        }]),
        JobStatus::Completed => {
            let done = job.completed_at.map(ts);
            let conclusion = job.conclusion.map(|c| c.as_str());
            json!([
                { "name": "Set up job", "status": "completed", "conclusion": "success",
                  "number": 1, "started_at": started, "completed_at": started },
                { "name": "Run script", "status": "completed", "conclusion": conclusion,
                  "number": 2, "started_at": started, "completed_at": done },
            ])
        }
    }
}

/// `<job>` (REST) and the `workflow_job` object of webhooks: the same key set.
pub(crate) fn job(links: &Links, job: &Job, run: &Run, repo: &Repo) -> Value {
    let full = repo.full_name();
    let runner = job.runner.as_ref();
    json!({
        "id": job.id,
        "run_id": job.run_id,
        "run_url": links.at(&format!("repos/{full}/actions/runs/{}", job.run_id)),
        "run_attempt": 1,
        "node_id": node_id("CheckRun", job.id),
        "head_sha": run.head_sha,
        "head_branch": run.head_branch,
        "url": links.at(&format!("repos/{full}/actions/jobs/{}", job.id)),
        "html_url": links.at(&format!("{full}/actions/runs/{}/job/{}", job.run_id, job.id)),
        "status": job.status.as_str(),
        "conclusion": job.conclusion.map(|c| c.as_str()),
        "created_at": ts(job.created_at),
        // GitHub reports started_at = created_at until a runner picks the job up.
        "started_at": ts(job.started_at.unwrap_or(job.created_at)),
        "completed_at": job.completed_at.map(ts),
        "name": job.name,
        "steps": steps(job),
        "check_run_url": links.at(&format!("repos/{full}/check-runs/{}", job.id)),
        "labels": job.labels,
        "runner_id": runner.map(|r| r.id),
        "runner_name": runner.map(|r| r.name.clone()),
        "runner_group_id": runner.map(|r| r.group_id),
        "runner_group_name": runner.map(|_| DEFAULT_GROUP_NAME),
        "workflow_name": run.workflow_name,
    })
}

/// `<workflow-run>`; `status`/`conclusion` come from `World::run_status`.
pub(crate) fn workflow_run(
    links: &Links,
    run: &Run,
    repo: &Repo,
    status: &str,
    conclusion: Option<&str>,
) -> Value {
    let full = repo.full_name();
    let r = |rest: &str| links.at(&format!("repos/{full}/actions/runs/{}{rest}", run.id));
    let check_suite_id = run.id + 1_000_000_000;
    let actor = simple_user(links, &run.actor);
    let repository = repository(links, repo);
    let person = json!({ "name": run.actor.login, "email": format!("{}@users.noreply.invalid", run.actor.login) });
    json!({
        "id": run.id,
        "name": run.workflow_name,
        "node_id": node_id("WorkflowRun", run.id),
        "head_branch": run.head_branch,
        "head_sha": run.head_sha,
        "path": ".github/workflows/ci.yml",
        "display_title": format!("{} #{}", run.workflow_name, run.run_number),
        "run_number": run.run_number,
        "event": "push",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": run.workflow_id,
        "check_suite_id": check_suite_id,
        "check_suite_node_id": node_id("CheckSuite", check_suite_id),
        "url": r(""),
        "html_url": links.at(&format!("{full}/actions/runs/{}", run.id)),
        "pull_requests": [],
        "created_at": ts(run.created_at),
        "updated_at": ts(run.updated_at),
        "actor": actor,
        "triggering_actor": actor,
        "run_attempt": 1,
        "referenced_workflows": [],
        "run_started_at": ts(run.run_started_at),
        "jobs_url": r("/jobs"),
        "logs_url": r("/logs"),
        "check_suite_url": links.at(&format!("repos/{full}/check-suites/{check_suite_id}")),
        "artifacts_url": r("/artifacts"),
        "cancel_url": r("/cancel"),
        "rerun_url": r("/rerun"),
        "previous_attempt_url": null,
        "workflow_url": links.at(&format!("repos/{full}/actions/workflows/{}", run.workflow_id)),
        "head_commit": {
            "id": run.head_sha,
            "tree_id": run.head_sha.chars().rev().collect::<String>(),
            "message": format!("Trigger {}", run.workflow_name),
            "timestamp": ts(run.created_at),
            "author": person,
            "committer": person,
        },
        "repository": repository,
        "head_repository": repository,
        "head_repository_id": repo.id,
    })
}

/// The common envelope of App webhook deliveries about a repository.
pub(crate) fn repo_event(
    links: &Links,
    action: &str,
    repo: &Repo,
    sender: &Account,
) -> serde_json::Map<String, Value> {
    let mut body = serde_json::Map::new();
    body.insert("action".into(), json!(action));
    body.insert("repository".into(), repository(links, repo));
    body.insert("sender".into(), simple_user(links, sender));
    body.insert(
        "installation".into(),
        json!({ "id": repo.installation_id, "node_id": node_id("Installation", repo.installation_id) }),
    );
    if repo.owner.kind == AccountType::Organization {
        body.insert("organization".into(), organization(links, &repo.owner));
    }
    body
}
