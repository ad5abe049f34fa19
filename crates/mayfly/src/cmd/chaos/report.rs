//! What a chaos run counts at its end: jobs (from the simulator, GitHub's view), VMs (from the
//! server's store), and what is left on the host under the run's state roots; the table it
//! prints and the section it appends to RELIABILITY.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mayfly_store::{JobRecord, VmRow};

use super::faults::FaultRecord;

/// Pids of processes whose command line contains `program` and `under` (a state root).
pub fn processes_under(program: &str, under: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_program = args
            .first()
            .is_some_and(|a| a.rsplit('/').next().is_some_and(|n| n.starts_with(program)));
        if is_program && args.iter().any(|a| a.contains(under)) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// What is left on the host under the run's state roots.
#[derive(Debug, Default)]
pub struct Orphans {
    pub vm_dirs: Vec<String>,
    pub qemu: Vec<i32>,
    pub passt: Vec<i32>,
    pub netns: Vec<String>,
    /// Files other than the agents' journals (VM state, network dirs, sockets, disks, markers).
    pub files: Vec<String>,
}

impl Orphans {
    pub fn total(&self) -> usize {
        self.vm_dirs.len()
            + self.qemu.len()
            + self.passt.len()
            + self.netns.len()
            + self.files.len()
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            _ => out.push(path.display().to_string()),
        }
    }
}

/// Counts what the state roots still hold: VM directories, QEMU and passt processes, network
/// namespaces whose creator's marker points into a state root (and such markers without their
/// namespace), and every file except the agent's journal and its lock.
pub fn orphans(state_roots: &[PathBuf]) -> Orphans {
    let mut found = Orphans::default();
    let live_netns: Vec<String> = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for root in state_roots {
        let under = root.display().to_string();
        if let Ok(entries) = std::fs::read_dir(root.join("vms")) {
            found.vm_dirs.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        found.qemu.extend(processes_under("qemu-system", &under));
        found.passt.extend(processes_under("passt", &under));
        let mut files = Vec::new();
        walk(root, &mut files);
        found.files.extend(
            files
                .into_iter()
                // The agent's journal and its lock file are its bookkeeping, not leftovers.
                .filter(|f| {
                    !f.ends_with("agent-journal.json") && !f.ends_with("agent-journal.json.lock")
                }),
        );
        if let Ok(markers) = std::fs::read_dir(mayfly_vm::network::owner::OWNER_DIR) {
            for marker in markers.flatten() {
                let name = marker.file_name().to_string_lossy().into_owned();
                let Some(netns) = name.strip_suffix(".json") else {
                    continue;
                };
                let mine = mayfly_vm::network::owner::read(netns)
                    .is_some_and(|o| o.runtime_dir.starts_with(root));
                if !mine {
                    continue;
                }
                if live_netns.iter().any(|n| n == netns) {
                    found.netns.push(netns.to_owned());
                } else {
                    found.files.push(marker.path().display().to_string());
                }
            }
        }
    }
    found
}

/// The counts of a run.
#[derive(Debug, Default)]
pub struct Counts {
    pub queued: usize,
    pub completed: usize,
    /// Completed at GitHub, but not with success.
    pub completed_other: usize,
    /// Taken by a runner whose VM died under a fault before the runner exited: GitHub fails
    /// such a job when the runner stops answering (the simulator leaves it in progress).
    pub killed_mid_run: usize,
    /// Never completed, and not killed mid-run.
    pub lost: usize,
    /// Jobs whose ran_job_id is on more than one VM.
    pub duplicate_vms: usize,
    /// VMs started for the jobs of this run, all attempts.
    pub vms: usize,
    /// VMs the store does not know as destroyed (or failed) at the end, with their agent alive.
    pub events_lost: usize,
    pub lost_jobs: Vec<u64>,
    pub event_lost_vms: Vec<String>,
}

/// GitHub's view (the simulator's jobs, by id: (status, conclusion)) against the store's.
pub fn count(
    queued: &[u64],
    sim: &BTreeMap<u64, (String, Option<String>)>,
    _jobs: &[JobRecord],
    vms: &[VmRow],
) -> Counts {
    let mut c = Counts {
        queued: queued.len(),
        vms: vms.len(),
        ..Counts::default()
    };
    for id in queued {
        let job = i64::try_from(*id).unwrap_or(-1);
        match sim.get(id) {
            Some((status, Some(conclusion))) if status == "completed" => {
                if conclusion == "success" {
                    c.completed += 1;
                } else {
                    c.completed_other += 1;
                }
            }
            Some((status, _)) if status == "in_progress" => {
                // Its runner took it; did that runner's VM die before the runner exited?
                let died = vms.iter().any(|v| {
                    v.ran_job_id == Some(job) && v.exited_at.is_none() && v.state != "exited"
                });
                if died {
                    c.killed_mid_run += 1;
                } else {
                    c.lost += 1;
                    c.lost_jobs.push(*id);
                }
            }
            _ => {
                c.lost += 1;
                c.lost_jobs.push(*id);
            }
        }
    }
    let mut ran: BTreeMap<i64, usize> = BTreeMap::new();
    for vm in vms {
        if let Some(job) = vm.ran_job_id {
            *ran.entry(job).or_default() += 1;
        }
        if vm.state != "destroyed" && vm.state != "failed" {
            c.events_lost += 1;
            c.event_lost_vms.push(format!(
                "{} ({}, job {})",
                vm.vm_id.as_deref().unwrap_or(&vm.start_id),
                vm.state,
                vm.for_job_id
            ));
        }
    }
    c.duplicate_vms = ran.values().filter(|n| **n > 1).count();
    c
}

/// The machine, as the benchmarks describe it.
pub fn machine(accel: &str) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, {mem_gib:.0} GiB RAM, kernel {}, acceleration {accel}",
        kernel.trim()
    )
}

/// The run's report as Markdown (printed, and appended to RELIABILITY.md).
#[derive(Debug)]
pub struct Report<'a> {
    pub variant: &'a str,
    pub seed: u64,
    /// Flags beyond `--jobs` and `--seed` that shaped the schedule (`--postgres URL`, `--faults …`).
    pub replay_flags: String,
    pub machine: String,
    pub duration_secs: f64,
    pub counts: &'a Counts,
    pub orphans: &'a Orphans,
    pub faults: &'a [FaultRecord],
    pub findings: &'a [String],
}

impl Report<'_> {
    pub fn markdown(&self) -> String {
        let c = self.counts;
        let o = self.orphans;
        let mut text = format!(
            "\n## {date} — {queued} jobs, {variant}, seed {seed}\n\n\
             Machine: {machine}. Run took {mins:.1} min; {faults} faults.\n\
             Replay: `scripts/chaos --jobs {queued} --seed {seed}{flags}`.\n\n\
             | count | value |\n|---|---|\n\
             | jobs queued | {queued} |\n\
             | jobs completed (GitHub: completed, success) | {completed} |\n\
             | jobs completed otherwise | {other} |\n\
             | jobs killed mid-run (their VM died under a fault while the runner ran them) | {killed} |\n\
             | **jobs lost** (never completed, not killed mid-run) | **{lost}** |\n\
             | **duplicate VMs for one job** (jobs run by more than one runner VM) | **{dup}** |\n\
             | VMs started (all attempts) | {vms} |\n\
             | **events lost** (VMs the store does not know destroyed, agent alive, after 60 s) | **{events}** |\n\
             | **orphan VM state dirs** | **{vm_dirs}** |\n\
             | **orphan QEMU processes** | **{qemu}** |\n\
             | **orphan passt processes** | **{passt}** |\n\
             | **orphan network namespaces** | **{netns}** |\n\
             | **orphan files** under the state roots | **{files}** |\n",
            date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            queued = c.queued,
            variant = self.variant,
            seed = self.seed,
            machine = self.machine,
            mins = self.duration_secs / 60.0,
            faults = self.faults.len(),
            flags = self.replay_flags,
            completed = c.completed,
            other = c.completed_other,
            killed = c.killed_mid_run,
            lost = c.lost,
            dup = c.duplicate_vms,
            vms = c.vms,
            events = c.events_lost,
            vm_dirs = o.vm_dirs.len(),
            qemu = o.qemu.len(),
            passt = o.passt.len(),
            netns = o.netns.len(),
            files = o.files.len(),
        );
        if !c.lost_jobs.is_empty() {
            text.push_str(&format!("\nLost jobs: {:?}.\n", c.lost_jobs));
        }
        if !c.event_lost_vms.is_empty() {
            text.push_str(&format!(
                "\nVMs not known destroyed: {}.\n",
                c.event_lost_vms.join(", ")
            ));
        }
        if o.total() > 0 {
            text.push_str(&format!(
                "\nLeft behind: VM dirs {:?}, QEMU {:?}, passt {:?}, namespaces {:?}, files {:?}.\n",
                o.vm_dirs,
                o.qemu,
                o.passt,
                o.netns,
                o.files.iter().take(20).collect::<Vec<_>>()
            ));
        }
        for finding in self.findings {
            text.push_str(&format!("\nFinding: {finding}\n"));
        }
        text.push_str(
            "\n<details><summary>Fault schedule</summary>\n\n| time | fault |\n|---|---|\n",
        );
        for f in self.faults {
            text.push_str(&format!("| {:.1} s | {} |\n", f.at_secs, f.what));
        }
        text.push_str("\n</details>\n");
        text
    }

    /// The counts that must be zero.
    pub fn failures(&self) -> usize {
        self.counts.lost
            + self.counts.duplicate_vms
            + self.counts.events_lost
            + self.orphans.total()
    }
}

pub fn append(out: &Path, section: &str) -> std::io::Result<()> {
    let mut text = std::fs::read_to_string(out).unwrap_or_else(|_| {
        "# Reliability\n\nWritten by `mayfly chaos` (`scripts/chaos`): long runs through the real loop \
         (simulator, servers, agents, VMs as separate processes) while faults are injected at \
         moments drawn from a printed seed. Not a test: a record of what happened, with the seed \
         to replay it. Goal: 0 lost, 0 duplicates, 0 orphans.\n"
            .to_owned()
    });
    text.push_str(section);
    std::fs::write(out, text)
}
