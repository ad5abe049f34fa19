//! The `--workflow` file of `mayfly quickstart`: JSON `{"jobs":[{"name":…,"steps":[{"name":…,
//! "run":…}]}]}`, each job queued once. Read and checked before anything starts, so a bad file
//! is a configuration error that names the file and what is wrong with it.

use std::path::Path;

use anyhow::{bail, Context};
use mayfly_sim::JobStep;
use serde::Deserialize;

/// At most this many jobs, as `--jobs`.
pub const MAX_JOBS: usize = 100;

/// A parsed, checked workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub jobs: Vec<WorkflowJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowJob {
    pub name: String,
    pub steps: Vec<WorkflowStep>,
}

/// One `run:` step; without a name it is called `Run <its first line>`, as on GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStep {
    #[serde(default)]
    pub name: Option<String>,
    pub run: String,
}

impl WorkflowJob {
    /// The steps as the simulator takes them.
    pub fn job_steps(&self) -> Vec<JobStep> {
        self.steps
            .iter()
            .map(|step| JobStep {
                name: step.name.clone().unwrap_or_else(|| {
                    format!("Run {}", step.run.lines().next().unwrap_or("").trim())
                }),
                run: step.run.clone(),
            })
            .collect()
    }
}

/// Reads and checks the workflow file at `path`; errors name the file.
pub fn load(path: &Path) -> anyhow::Result<Workflow> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read the workflow file {}", path.display()))?;
    parse(&text).with_context(|| format!("the workflow file {} is not usable", path.display()))
}

/// Parses and checks a workflow: 1–100 jobs, each with a name and at least one step, no step
/// with an empty `run`.
pub fn parse(text: &str) -> anyhow::Result<Workflow> {
    let workflow: Workflow = serde_json::from_str(text).context(
        "expected JSON like {\"jobs\":[{\"name\":\"build\",\"steps\":[{\"name\":\"…\",\"run\":\"…\"}]}]}",
    )?;
    if workflow.jobs.is_empty() {
        bail!("it has no jobs");
    }
    if workflow.jobs.len() > MAX_JOBS {
        bail!(
            "it has {} jobs; at most {MAX_JOBS} are allowed",
            workflow.jobs.len()
        );
    }
    for (i, job) in workflow.jobs.iter().enumerate() {
        let number = i + 1;
        if job.name.trim().is_empty() {
            bail!("job {number} has an empty name");
        }
        if job.steps.is_empty() {
            bail!("job {number} ({:?}) has no steps", job.name);
        }
        for (j, step) in job.steps.iter().enumerate() {
            if step.run.trim().is_empty() {
                bail!(
                    "step {} of job {number} ({:?}) has an empty run",
                    j + 1,
                    job.name
                );
            }
        }
    }
    Ok(workflow)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn jobs_and_their_steps_are_read_in_order() {
        let workflow = parse(
            r#"{"jobs":[
                {"name":"works","steps":[{"name":"Say hi","run":"echo hi"},{"run":"true\nfalse"}]},
                {"name":"fails","steps":[{"name":"Fail","run":"exit 3"}]}
            ]}"#,
        )
        .unwrap();
        let names: Vec<&str> = workflow.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["works", "fails"]);
        assert_eq!(
            workflow.jobs[0].job_steps(),
            [
                JobStep {
                    name: "Say hi".into(),
                    run: "echo hi".into()
                },
                JobStep {
                    name: "Run true".into(),
                    run: "true\nfalse".into()
                },
            ]
        );
    }

    #[test]
    fn the_example_file_is_a_valid_workflow() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/quickstart-workflow.json");
        let workflow = load(&path).unwrap();
        assert!(workflow.jobs.iter().all(|j| !j.steps.is_empty()));
    }

    #[test]
    fn bad_workflows_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "expected JSON like"),
            ("{\"jobs\":[]}", "it has no jobs"),
            ("[]", "expected JSON like"),
            (
                "{\"jobs\":[{\"name\":\"a\",\"steps\":[]}]}",
                "job 1 (\"a\") has no steps",
            ),
            (
                "{\"jobs\":[{\"name\":\" \",\"steps\":[{\"run\":\"x\"}]}]}",
                "job 1 has an empty name",
            ),
            (
                "{\"jobs\":[{\"name\":\"a\",\"steps\":[{\"run\":\"x\"},{\"run\":\"\"}]}]}",
                "step 2 of job 1 (\"a\") has an empty run",
            ),
            (
                "{\"jobs\":[{\"name\":\"a\",\"steps\":[{\"run\":\"x\",\"uses\":\"y\"}]}]}",
                "unknown field `uses`",
            ),
            (
                "{\"jobs\":[{\"steps\":[{\"run\":\"x\"}]}]}",
                "missing field `name`",
            ),
            ("{\"jobs\":[],\"on\":\"push\"}", "unknown field `on`"),
        ] {
            let err = error(text);
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        let many = format!(
            "{{\"jobs\":[{}]}}",
            vec!["{\"name\":\"a\",\"steps\":[{\"run\":\"x\"}]}"; MAX_JOBS + 1].join(",")
        );
        assert!(error(&many).contains("at most 100"), "{}", error(&many));
    }

    #[test]
    fn a_file_that_cannot_be_read_or_parsed_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = format!("{:#}", load(&missing).unwrap_err());
        assert!(
            err.contains("could not read the workflow file") && err.contains("missing.json"),
            "{err}"
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"jobs\":[]}").unwrap();
        let err = format!("{:#}", load(&bad).unwrap_err());
        assert!(
            err.contains("the workflow file")
                && err.contains("bad.json")
                && err.contains("no jobs"),
            "{err}"
        );
    }
}
