//! `mayfly bench`: runs the quickstart loop with many jobs and reports p50/p99 of each phase
//! beside a bare `qemu-system-x86_64` boot of the same image measured in the same run, then
//! writes the numbers, with the machine they ran on, to BENCHMARKS.md. Not a test: it asserts
//! nothing about time.

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
    let outcome = run_loop(&args.run).await?;
    let mut to_vm = Vec::new();
    let mut boot = Vec::new();
    let mut teardown = Vec::new();
    let mut failed = 0;
    for job in &outcome.jobs {
        let vm = job
            .dispatch
            .vm_start_id
            .as_deref()
            .and_then(|s| outcome.vms.iter().find(|v| v.start_id == s));
        let Some(vm) = vm else {
            failed += 1;
            continue;
        };
        to_vm.extend(secs(Some(job.first_seen_at), vm.started_at));
        // Until the guest says the runner process started (older rows: the hand-over).
        boot.extend(secs(vm.started_at, vm.runner_started_at.or(vm.booted_at)));
        // The job ends when the runner exits, or (when the completed webhook makes mayfly destroy
        // the VM first) when GitHub says it completed.
        teardown.extend(secs(vm.exited_at.or(job.completed_at), vm.destroyed_at));
    }
    let dir = tempfile_dir()?;
    let mut bare = Vec::new();
    for _ in 0..args.bare_boots {
        bare.push(
            bare_boot(&outcome.image, outcome.accel.accel, &dir)
                .await
                .runtime_err()?,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    let row = |name: &str, sample: Vec<f64>| match percentiles(sample) {
        Some((p50, p99, n)) => format!("| {name} | {n} | {p50:.2} s | {p99:.2} s |"),
        None => format!("| {name} | 0 | — | — |"),
    };
    let boot_p50 = percentiles(boot.clone()).map(|p| p.0);
    let bare_p50 = percentiles(bare.clone()).map(|p| p.0);
    let ratio = match (boot_p50, bare_p50) {
        (Some(b), Some(r)) if r > 0.0 => format!("{:.2}", b / r),
        _ => "—".to_owned(),
    };
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
    let report = format!(
        "\n## {date} — {jobs} jobs, {slots} VM slots\n\nMachine: {machine}; acceleration: {accel:?} ({reason}).\n\
         Image {digest}: {source}, kernel {kernel}, {size_mib} MiB (base disk, kernel, initramfs); \
         its build (`scripts/build-guest-image`, mmdebstrap included) took {build_secs}.\n\n| phase | n | p50 | p99 |\n|---|---|---|---|\n{a}\n{b}\n{c}\n{d}\n\n\
         Ratio of mayfly's boot (VM started → runner started, p50) to a bare QEMU boot of the same \
         image (spawn → guest ready, p50): **{ratio}**. Jobs without a VM: {failed}.\n",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        jobs = args.run.jobs,
        slots = args.run.slots(),
        machine = machine(),
        accel = outcome.accel.accel,
        reason = outcome.accel.reason.replace('\n', " / "),
        digest = &outcome.image.digest[..16],
        kernel = outcome.image.manifest.kernel_version,
        size_mib = size >> 20,
        a = row("webhook received → VM process started", to_vm),
        b = row("VM started → runner started (guest ready, config handed over, runner process started)", boot),
        c = row("job end → VM destroyed", teardown),
        d = row("bare qemu-system-x86_64 boot → guest ready", bare),
    );
    print!("{report}");
    append_report(&args.out, &report)
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
