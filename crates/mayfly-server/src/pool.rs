//! The warm pool's decisions, as pure functions over a pass's rows: which pool VM a job takes,
//! which pool VMs to start on which host, which to destroy. A pool VM is started ahead of any
//! job with `StartVm { warm }`: its guest boots and waits holding nothing (no runner config, no
//! runner registered at GitHub, no tenant's data). A job takes one waiting VM, once; from then
//! on it is an ordinary VM of that job and is destroyed after it. The scheduler does the I/O.

use chrono::{DateTime, Utc};
use mayfly_core::{HostSlots, Profile};
use mayfly_store::VmRow;

/// Whether a VM row still holds (or will hold) a slot.
fn live(vm: &VmRow) -> bool {
    !matches!(vm.state.as_str(), "destroyed" | "failed" | "lost")
}

/// A pool VM not yet given a job and not on its way out: it counts toward its pool.
fn unassigned(vm: &VmRow) -> bool {
    vm.in_pool() && live(vm) && !vm.destroy_requested
}

/// The waiting pool VM a job of `profile` takes, on one of `hosts` (those connected here):
/// the one that has waited longest. It is removed from `waiting`.
pub fn take(waiting: &mut Vec<VmRow>, profile: &Profile, hosts: &[HostSlots]) -> Option<VmRow> {
    let i = waiting
        .iter()
        .enumerate()
        .filter(|(_, vm)| {
            vm.waits_for_job()
                && vm.profile == profile.name
                && vm.image.as_deref() == Some(profile.image.as_str())
                && hosts.iter().any(|h| h.host == vm.host)
        })
        .min_by_key(|(_, vm)| vm.warm_at)
        .map(|(i, _)| i)?;
    Some(waiting.remove(i))
}

/// The pool VMs to start now, as (host, profile): on each host that has a profile's image, up
/// to the profile's `warm` VMs not yet given a job, within the host's free slots (`hosts` is
/// what is left after this pass's jobs took theirs).
pub fn refill<'p>(
    profiles: &'p [Profile],
    hosts: &mut [HostSlots],
    vms: &[VmRow],
) -> Vec<(String, &'p Profile)> {
    let mut starts = Vec::new();
    for profile in profiles.iter().filter(|p| p.warm > 0) {
        for host in hosts
            .iter_mut()
            .filter(|h| h.images.contains(&profile.image))
        {
            let have = vms
                .iter()
                .filter(|v| v.host == host.host && v.profile == profile.name && unassigned(v))
                .count();
            let want = usize::try_from(profile.warm).unwrap_or(usize::MAX);
            for _ in have..want {
                if host.free_slots == 0 {
                    break;
                }
                host.free_slots -= 1;
                starts.push((host.host.clone(), profile));
            }
        }
    }
    starts
}

/// Why a pool VM still waiting for a job should go now, if it should: it waited past its
/// profile's maximum age, its image is no longer the profile's, or its profile keeps no pool
/// (any more).
pub fn destroy_reason(
    vm: &VmRow,
    profiles: &[Profile],
    now: DateTime<Utc>,
) -> Option<&'static str> {
    if !vm.pool || vm.assigned_at.is_some() {
        return None;
    }
    let Some(profile) = profiles.iter().find(|p| p.name == vm.profile) else {
        return Some("pool VM of a profile that no longer exists");
    };
    if profile.warm == 0 {
        return Some("the profile keeps no warm pool now");
    }
    if vm.image.as_deref() != Some(profile.image.as_str()) {
        return Some("pool VM of an image that is no longer the profile's");
    }
    let age = (now - vm.requested_at).num_seconds();
    (age > i64::from(profile.warm_max_age_secs)).then_some("pool VM past its maximum age")
}

/// A waiting pool VM of another profile to destroy so that a queued job of `profile`, which
/// found no slot, gets one: on a host that has the job's image.
pub fn to_evict<'v>(vms: &'v [VmRow], profile: &Profile, hosts: &[HostSlots]) -> Option<&'v VmRow> {
    vms.iter()
        .filter(|v| unassigned(v) && v.profile != profile.name)
        .find(|v| {
            hosts
                .iter()
                .any(|h| h.host == v.host && h.images.contains(&profile.image))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_store::Placement;

    fn profile(name: &str, warm: u32) -> Profile {
        Profile {
            name: name.into(),
            labels: vec!["self-hosted".into()],
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 1,
            runner_entry: None,
            image: "img".into(),
            max_runtime_secs: 600,
            boot_timeout_secs: 60,
            idle_timeout_secs: 60,
            warm,
            warm_max_age_secs: 3600,
        }
    }

    fn host(name: &str, free: u32) -> HostSlots {
        HostSlots {
            host: name.into(),
            free_slots: free,
            images: vec!["img".into()],
        }
    }

    fn pool_vm(start_id: &str, host: &str, profile: &str, state: &str) -> VmRow {
        let mut vm = VmRow::requested(
            Placement {
                start_id: start_id.into(),
                host: host.into(),
                profile: profile.into(),
                installation_id: 0,
                repo: String::new(),
                runner_name: format!("mayfly-{start_id}"),
                runner_id: None,
                for_job_id: 0,
            },
            Utc::now(),
        );
        vm.pool = true;
        vm.image = Some("img".into());
        vm.state = state.into();
        if state == "warm" {
            vm.warm_at = Some(Utc::now());
        }
        vm
    }

    #[test]
    fn refill_tops_each_host_up_within_its_free_slots() {
        let profiles = [profile("a", 2), profile("b", 0)];
        let mut hosts = [host("h1", 5), host("h2", 1)];
        let vms = [
            pool_vm("1", "h1", "a", "warm"),
            // Given a job: no longer in the pool.
            VmRow {
                assigned_at: Some(Utc::now()),
                ..pool_vm("2", "h1", "a", "booted")
            },
            // Gone: no longer in the pool.
            pool_vm("3", "h1", "a", "destroyed"),
        ];
        let starts = refill(&profiles, &mut hosts, &vms);
        let hosts_started: Vec<&str> = starts.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts_started, ["h1", "h2"]);
        assert!(starts.iter().all(|(_, p)| p.name == "a"));
        assert_eq!(hosts[0].free_slots, 4);
        assert_eq!(hosts[1].free_slots, 0);
    }

    #[test]
    fn a_job_takes_a_waiting_vm_of_its_profile_once() {
        let p = profile("a", 1);
        let hosts = [host("h1", 0)];
        let mut waiting = vec![
            pool_vm("starting", "h1", "a", "started"),
            pool_vm("other", "h1", "b", "warm"),
            pool_vm("elsewhere", "h9", "a", "warm"),
            pool_vm("ready", "h1", "a", "warm"),
        ];
        let taken = take(&mut waiting, &p, &hosts).unwrap();
        assert_eq!(taken.start_id, "ready");
        assert!(
            take(&mut waiting, &p, &hosts).is_none(),
            "never the same VM twice"
        );
    }

    #[test]
    fn old_or_outdated_pool_vms_go_and_assigned_ones_are_left_alone() {
        let profiles = [profile("a", 1)];
        let now = Utc::now();
        let fresh = pool_vm("1", "h1", "a", "warm");
        assert_eq!(destroy_reason(&fresh, &profiles, now), None);
        let old = VmRow {
            requested_at: now - chrono::Duration::seconds(3601),
            ..fresh.clone()
        };
        assert_eq!(
            destroy_reason(&old, &profiles, now),
            Some("pool VM past its maximum age")
        );
        let outdated = VmRow {
            image: Some("old-img".into()),
            ..fresh.clone()
        };
        assert!(destroy_reason(&outdated, &profiles, now).is_some());
        let assigned = VmRow {
            assigned_at: Some(now),
            ..old
        };
        assert_eq!(destroy_reason(&assigned, &profiles, now), None);
        assert!(destroy_reason(&fresh, &[profile("a", 0)], now).is_some());
    }

    #[test]
    fn a_job_without_a_slot_evicts_a_waiting_vm_of_another_profile() {
        let vms = [
            pool_vm("mine", "h1", "a", "warm"),
            pool_vm("theirs", "h1", "b", "warm"),
        ];
        let evicted = to_evict(&vms, &profile("a", 1), &[host("h1", 0)]).unwrap();
        assert_eq!(evicted.start_id, "theirs");
        assert!(to_evict(&vms[..1], &profile("a", 1), &[host("h1", 0)]).is_none());
    }
}
