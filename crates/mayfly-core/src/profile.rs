//! Hardware profiles and placement. A job asks for hardware with its `runs-on` labels; the
//! profile whose name is among them, and whose labels cover all of them, runs it. Placement
//! picks the host with the most free slots. Both are pure functions.

use serde::{Deserialize, Serialize};

/// A kind of VM a provider sells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The label a job names to ask for this profile, e.g. `mayfly-linux-2cpu`.
    pub name: String,
    /// Other labels the runner carries (GitHub matches a job to runners whose labels cover the
    /// job's), e.g. `self-hosted`, `linux`, `x64`.
    #[serde(default = "default_labels")]
    pub labels: Vec<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The VM's scratch disk (sparse, encrypted in the guest): the job's writable space.
    #[serde(default = "default_disk_gib")]
    pub disk_gib: u32,
    /// The runner's entry point in the guest when the image needs another than the server's
    /// `runner_entry` (GitHub's layout: `/home/runner/actions-runner/run.sh`).
    #[serde(default)]
    pub runner_entry: Option<String>,
    /// The image digest.
    pub image: String,
    #[serde(default = "default_max_runtime")]
    pub max_runtime_secs: u32,
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u32,
    /// A booted VM whose runner has not taken a job after this long is destroyed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u32,
    /// The warm pool: VMs of this profile kept booted on each host that has the image, holding
    /// nothing (no config, no runner registration) until a job is assigned to one, once.
    /// Within the host's slots, after queued jobs. 0: none (every VM boots after its job came).
    #[serde(default)]
    pub warm: u32,
    /// A pool VM that has waited this long for a job is destroyed and replaced.
    #[serde(default = "default_warm_max_age")]
    pub warm_max_age_secs: u32,
}

fn default_labels() -> Vec<String> {
    ["self-hosted", "linux", "x64"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}
fn default_disk_gib() -> u32 {
    20
}
fn default_max_runtime() -> u32 {
    6 * 3600
}
fn default_boot_timeout() -> u32 {
    120
}
fn default_idle_timeout() -> u32 {
    600
}
/// The longest a pool VM may wait for its job (`warm_max_age_secs`): the guest powers itself
/// off after 25 hours without its config.
pub const WARM_MAX_AGE_LIMIT_SECS: u32 = 24 * 3600;

fn default_warm_max_age() -> u32 {
    3600
}

impl Profile {
    /// Every label the runner registers with: the profile's name and its other labels.
    pub fn runner_labels(&self) -> Vec<String> {
        let mut labels = self.labels.clone();
        if !labels.iter().any(|l| l.eq_ignore_ascii_case(&self.name)) {
            labels.push(self.name.clone());
        }
        labels
    }

    /// Whether a job with these `runs-on` labels is this profile's: it names the profile and the
    /// runner's labels cover every label it asks for (case-insensitively, as GitHub does).
    pub fn matches(&self, job_labels: &[String]) -> bool {
        let runner = self.runner_labels();
        job_labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case(&self.name))
            && job_labels
                .iter()
                .all(|l| runner.iter().any(|r| r.eq_ignore_ascii_case(l)))
    }
}

/// The profile for a job, if any. Jobs for other labels are not mayfly's.
pub fn match_profile<'a>(profiles: &'a [Profile], job_labels: &[String]) -> Option<&'a Profile> {
    profiles.iter().find(|p| p.matches(job_labels))
}

/// A host as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlots {
    pub host: String,
    pub free_slots: u32,
    /// Images the host has.
    pub images: Vec<String>,
}

/// The host for a VM of `profile`: one that has the image and a free slot, the freest first
/// (ties broken by name, so placement is deterministic).
pub fn place<'a>(profile: &Profile, hosts: &'a [HostSlots]) -> Option<&'a HostSlots> {
    hosts
        .iter()
        .filter(|h| h.free_slots > 0 && h.images.iter().any(|i| i == &profile.image))
        .max_by(|a, b| {
            a.free_slots
                .cmp(&b.free_slots)
                .then_with(|| b.host.cmp(&a.host))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Profile {
        Profile {
            name: name.into(),
            labels: default_labels(),
            vcpus: 2,
            memory_mib: 2048,
            image: "img".into(),
            max_runtime_secs: 60,
            disk_gib: 20,
            runner_entry: None,
            boot_timeout_secs: 60,
            idle_timeout_secs: 60,
            warm: 0,
            warm_max_age_secs: 3600,
        }
    }

    fn labels(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_job_gets_the_profile_it_names_when_the_runner_covers_all_its_labels() {
        let profiles = [profile("mayfly-linux-2cpu"), profile("mayfly-linux-8cpu")];
        let got = match_profile(&profiles, &labels(&["self-hosted", "Mayfly-Linux-8cpu"]));
        assert_eq!(got.map(|p| p.name.as_str()), Some("mayfly-linux-8cpu"));
        assert!(match_profile(&profiles, &labels(&["ubuntu-latest"])).is_none());
        assert!(
            match_profile(&profiles, &labels(&["self-hosted"])).is_none(),
            "must name a profile"
        );
        assert!(
            match_profile(&profiles, &labels(&["mayfly-linux-2cpu", "gpu"])).is_none(),
            "gpu not covered"
        );
    }

    #[test]
    fn placement_prefers_free_hosts_with_the_image() {
        let p = profile("x");
        let hosts = vec![
            HostSlots {
                host: "a".into(),
                free_slots: 1,
                images: vec!["img".into()],
            },
            HostSlots {
                host: "b".into(),
                free_slots: 3,
                images: vec!["other".into()],
            },
            HostSlots {
                host: "c".into(),
                free_slots: 2,
                images: vec!["img".into()],
            },
            HostSlots {
                host: "d".into(),
                free_slots: 2,
                images: vec!["img".into()],
            },
        ];
        assert_eq!(place(&p, &hosts).map(|h| h.host.as_str()), Some("c"));
        let full = vec![HostSlots {
            host: "a".into(),
            free_slots: 0,
            images: vec!["img".into()],
        }];
        assert!(place(&p, &full).is_none());
    }
}
