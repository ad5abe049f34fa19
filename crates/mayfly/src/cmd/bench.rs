//! `mayfly bench`: runs the quickstart loop twice on the same image, the jobs on VMs booted for
//! them (cold) and then on a warm pool, each job queued when it can start at once, and reports
//! p50/p99 of each phase and of each step of a VM's start and teardown beside a bare
//! `qemu-system-x86_64` boot of the same image measured in the same run; then writes the
//! numbers, with the machine they ran on, to BENCHMARKS.md. Not a test: it asserts nothing about
//! time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use mayfly_vm::GuestChannel;
use tokio::process::Command;

use super::quickstart::{run_loop, QuickstartArgs};
use crate::exit::{Failure, RuntimeContext};

/// Flags of `mayfly bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchKind>,
    /// The loop's flags; `--warm N` is the warm-pool run's pool (1 when not given).
    #[command(flatten)]
    run: QuickstartArgs,
    /// Bare QEMU boots of the same image to measure for comparison.
    #[arg(long, default_value_t = 5)]
    bare_boots: u32,
    /// Where to write the report (appended as a new section).
    #[arg(long, default_value = "BENCHMARKS.md", value_name = "FILE")]
    out: PathBuf,
}

/// Benchmarks other than the default (jobs through the whole loop on real VMs).
#[derive(Debug, clap::Subcommand)]
enum BenchKind {
    /// The control plane alone at load: webhook intake beside /healthz, received → StartVm
    /// latency with simulated agents (no VMs), a scheduling pass with and without a million
    /// finished jobs, on SQLite (and PostgreSQL with --postgres).
    ControlPlane(super::bench_control_plane::ControlPlaneArgs),
}

/// p50 and p99 (nearest rank) of a sample, in its unit, and its size.
pub(super) fn percentiles(mut v: Vec<f64>) -> Option<(f64, f64, usize)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Some((rank(0.50), rank(0.99), v.len()))
}

fn secs(
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<f64> {
    Some((to? - from?).num_milliseconds() as f64 / 1000.0)
}

/// One bare boot: QEMU with the image's kernel, initramfs, read-only base disk and a sparse
/// scratch disk, no network, no namespace, no driver, timed from spawn to the guest's `ready`
/// on the channel (the guest's own work — dm-crypt, mkfs, overlay, switch_root — included).
async fn bare_boot(
    image: &mayfly_vm::image::Image,
    accel: mayfly_vm::Accel,
    dir: &Path,
) -> anyhow::Result<f64> {
    let scratch = dir.join("bare-scratch.raw");
    let _ = std::fs::remove_file(&scratch);
    std::fs::File::create(&scratch)?.set_len(20 << 30)?;
    let socket = dir.join("bare.sock");
    let _ = std::fs::remove_file(&socket);
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(accel.qemu_args())
        .args([
            "-machine",
            "q35",
            "-m",
            "512",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "null",
        ])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet", "-drive"])
        .arg(format!(
            "if=none,id=base,file={},format=raw,readonly=on",
            image.rootfs.display()
        ))
        .args([
            "-device",
            "virtio-blk-pci,drive=base,serial=mayfly-base",
            "-drive",
        ])
        .arg(format!(
            "if=none,id=scratch,file={},format=raw,cache=unsafe",
            scratch.display()
        ))
        .args([
            "-device",
            "virtio-blk-pci,drive=scratch,serial=mayfly-scratch",
        ])
        .args(["-device", "virtio-serial-pci", "-chardev"])
        .arg(format!(
            "socket,id=cfg,path={},server=on,wait=off",
            socket.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=cfg,name=org.mayfly.config",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("could not start qemu-system-x86_64")?;
    let mut channel = GuestChannel::connect(&socket, Duration::from_secs(10)).await?;
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Ok(mayfly_vm::GuestEvent::Ready { .. }) = channel.next_event().await {
                return;
            }
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = qemu.kill().await;
    let _ = std::fs::remove_file(&scratch);
    ready.context("the bare guest did not report ready")?;
    Ok(elapsed)
}

pub(super) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
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
        "{model}, {cores} cores, {mem_gib:.0} GiB RAM, host kernel {}",
        kernel.trim()
    )
}

#[allow(clippy::print_stdout)] // the report is the command's output
pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if let Some(BenchKind::ControlPlane(args)) = args.what {
        return super::bench_control_plane::run(args).await;
    }
    if args.run.workflow().is_some() {
        return Err(Failure::Config(anyhow::anyhow!(
            "mayfly bench measures --jobs N identical jobs; --workflow is for mayfly quickstart"
        )));
    }
    // Each job is queued when it can start at once, so the phases measure mayfly, not the
    // queue: first on cold VMs, then on a warm pool.
    let cold_args = args.run.paced_with_warm(0);
    let pool = args.run.warm().max(1);
    let warm_args = args.run.paced_with_warm(pool);
    eprintln!(
        "cold path: {} jobs, each on a VM booted for it",
        args.run.jobs
    );
    let cold_run = run_loop(&cold_args).await?;
    eprintln!(
        "warm pool of {pool}: {} jobs, each given a VM booted before it came",
        args.run.jobs
    );
    let warm_run = run_loop(&warm_args).await?;
    let cold = Samples::of(&cold_run);
    let warm = Samples::of(&warm_run);

    let dir = tempfile_dir()?;
    let mut bare = Vec::new();
    for _ in 0..args.bare_boots {
        bare.push(
            bare_boot(&cold_run.image, cold_run.accel.accel, &dir)
                .await
                .runtime_err()?,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    let boot_p50 = percentiles(cold.boot.clone()).map(|p| p.0);
    let bare_p50 = percentiles(bare.clone()).map(|p| p.0);
    let ratio = match (boot_p50, bare_p50) {
        (Some(b), Some(r)) if r > 0.0 => format!("{:.2}", b / r),
        _ => "—".to_owned(),
    };
    let outcome = &cold_run;
    let size: u64 = outcome
        .image
        .manifest
        .artifacts
        .values()
        .map(|a| a.size)
        .sum();
    // scripts/build-guest-image records how long the image's build took.
    let build_secs = outcome
        .image
        .dir
        .parent()
        .and_then(|store| std::fs::read_to_string(store.join("test-image.build-secs")).ok())
        .map_or_else(|| "not recorded".to_owned(), |s| format!("{} s", s.trim()));
    let source = match &outcome.image.manifest.source {
        mayfly_vm::image::RootfsSource::Debian { suite, .. } => {
            format!("Debian {suite} (mmdebstrap)")
        }
        mayfly_vm::image::RootfsSource::Tar { path } => format!("the tarball {}", path.display()),
    };
    let phases = [
        secs_row("webhook received → VM process started (cold)", &cold.to_vm),
        secs_row(
            "VM started → runner started (cold: guest ready, config handed over, runner process started)",
            &cold.boot,
        ),
        secs_row("webhook received → runner started (cold)", &cold.to_runner),
        secs_row("webhook received → runner started (warm pool)", &warm.to_runner),
        secs_row("job end → VM destroyed (cold)", &cold.teardown),
        secs_row("job end → VM destroyed (warm pool)", &warm.teardown),
        secs_row("bare qemu-system-x86_64 boot → guest ready", &bare),
    ]
    .join("\n");
    let report = format!(
        "\n## {date} — {jobs} jobs cold, then {jobs} on a warm pool of {pool}; {slots} VM slots\n\n\
         Machine: {machine}; acceleration: {accel:?} ({reason}).\n\
         Image {digest}: {source}, kernel {kernel}, {size_mib} MiB (base disk, kernel, initramfs); \
         its build (`scripts/build-guest-image`, mmdebstrap included) took {build_secs}.\n\
         Each job was queued when it could start at once (a free slot; in the warm run, a pool VM \
         waiting), so no phase includes waiting for capacity. \"Webhook received\" is when the \
         server applied the job's `queued` delivery; \"job end\" is the runner's exit, or, when \
         GitHub's `completed` made mayfly destroy the VM first, the destroy's start.\n\n\
         | phase | n | p50 | p99 |\n|---|---|---|---|\n{phases}\n\n\
         Ratio of mayfly's boot (VM started → runner started, p50) to a bare QEMU boot of the same \
         image (spawn → guest ready, p50): **{ratio}**. Jobs without a VM: {failed}.\n\n\
         Cold path, step by step (each VM's start as the server and the agent timed it; \
         `a: b` is part of step `a`):\n\n{cold_steps}\n\
         Warm pool, step by step (steps before `AssignVm delivered` happened before the job came):\n\n{warm_steps}\n\
         Teardown, step by step (cold and warm VMs):\n\n{destroy}",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        jobs = args.run.jobs,
        slots = args.run.slots(),
        machine = machine(),
        accel = outcome.accel.accel,
        reason = outcome.accel.reason.replace('\n', " / "),
        digest = &outcome.image.digest[..16],
        kernel = outcome.image.manifest.kernel_version,
        size_mib = size >> 20,
        failed = cold.failed + warm.failed,
        cold_steps = millis_table(&cold.steps),
        warm_steps = millis_table(&warm.steps),
        destroy = millis_table(&merge(&cold.destroy_steps, &warm.destroy_steps)),
    );
    print!("{report}");
    append_report(&args.out, &report)
}

/// One run's samples, in seconds (phases) and milliseconds (steps).
#[derive(Debug, Default)]
struct Samples {
    to_vm: Vec<f64>,
    boot: Vec<f64>,
    to_runner: Vec<f64>,
    teardown: Vec<f64>,
    /// Per step, in the order steps first appear.
    steps: Vec<(String, Vec<f64>)>,
    destroy_steps: Vec<(String, Vec<f64>)>,
    failed: usize,
}

impl Samples {
    fn of(outcome: &super::quickstart::LoopOutcome) -> Self {
        let mut s = Self::default();
        for job in &outcome.jobs {
            let vm = job
                .dispatch
                .vm_start_id
                .as_deref()
                .and_then(|id| outcome.vms.iter().find(|v| v.start_id == id));
            let Some(vm) = vm else {
                s.failed += 1;
                continue;
            };
            s.to_vm.extend(secs(Some(job.first_seen_at), vm.started_at));
            // Until the guest says the runner process started (older rows: the hand-over).
            s.boot
                .extend(secs(vm.started_at, vm.runner_started_at.or(vm.booted_at)));
            s.to_runner
                .extend(secs(Some(job.first_seen_at), vm.runner_started_at));
            let record: Option<mayfly_core::DestructionRecord> = vm
                .destruction
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok());
            // The job ends when the runner exits. When the completed webhook made mayfly destroy
            // the VM first, its end is when the destroy began (GitHub's `completed_at` has whole
            // seconds only, too coarse for this).
            s.teardown.extend(match vm.exited_at {
                Some(exited) => secs(Some(exited), vm.destroyed_at),
                None => record
                    .as_ref()
                    .and_then(|r| secs(Some(r.started_at), Some(r.finished_at))),
            });
            let steps: Vec<mayfly_core::StartStep> = vm
                .start_steps
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default();
            for step in steps {
                add(&mut s.steps, &step.step, step.millis);
            }
            if let Some(record) = record {
                let mut last = record.started_at;
                for step in &record.steps {
                    let took = (step.at - last).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    add(&mut s.destroy_steps, &generic(&step.what), took.max(0.0));
                    last = step.at;
                }
            }
        }
        s
    }
}

fn add(samples: &mut Vec<(String, Vec<f64>)>, name: &str, value: f64) {
    match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(value),
        None => samples.push((name.to_owned(), vec![value])),
    }
}

fn merge(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)]) -> Vec<(String, Vec<f64>)> {
    let mut all = a.to_vec();
    for (name, values) in b {
        for v in values {
            add(&mut all, name, *v);
        }
    }
    all
}

/// A destroy step's name without what differs from VM to VM (names of its namespace, links,
/// paths): words with digits become `…`.
fn generic(what: &str) -> String {
    what.split(' ')
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) {
                "…"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn secs_row(name: &str, sample: &[f64]) -> String {
    match percentiles(sample.to_vec()) {
        Some((p50, p99, n)) => format!("| {name} | {n} | {p50:.2} s | {p99:.2} s |"),
        None => format!("| {name} | 0 | — | — |"),
    }
}

fn millis_table(steps: &[(String, Vec<f64>)]) -> String {
    let mut out = String::from("| step | n | p50 | p99 |\n|---|---|---|---|\n");
    for (name, values) in steps {
        if let Some((p50, p99, n)) = percentiles(values.clone()) {
            out.push_str(&format!("| {name} | {n} | {p50:.1} ms | {p99:.1} ms |\n"));
        }
    }
    out
}

/// Appends `report` to the benchmarks file `out` (made with its heading if missing).
pub(super) fn append_report(out: &std::path::Path, report: &str) -> Result<(), Failure> {
    let mut text = std::fs::read_to_string(out).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `mayfly bench` (`scripts/bench`); never asserted in tests.\n".to_owned()
    });
    text.push_str(report);
    std::fs::write(out, text)
        .with_context(|| format!("could not write {}", out.display()))
        .runtime_err()?;
    eprintln!("appended to {}", out.display());
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf, Failure> {
    let dir = std::env::temp_dir().join(format!("mayfly-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).runtime_err()?;
    Ok(dir)
}
