//! `mayfly vm`: operator commands for single VMs. `boot` starts a VM from an image and keeps it
//! until interrupted (to check an image or a host); `reap` destroys VMs whose owner crashed and
//! VM networks nobody owns; `list` shows the VMs the server's store holds, warm pool VMs marked.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use mayfly_vm::image::ImageStore;
use mayfly_vm::{Accel, NetworkMode, QemuConfig, QemuDriver, VmDriver, VmSpec};

use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// `mayfly vm …`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a VM from an image, wait until its guest reports ready, keep it until SIGINT/SIGTERM,
    /// then destroy it and print the destruction record.
    Boot(BootArgs),
    /// Destroy VMs (QEMU, overlay, network, files) left behind by a crashed owner process, and
    /// VM networks (namespace, veth, passt) on this host that no VM state names and no live
    /// process owns. Prints what it removed as JSON (`vms`, `networks`, `files`).
    Reap(StateArgs),
    /// List the VMs the server's store holds that are not destroyed, one a line: start id,
    /// host, profile, state, pool (`waiting`: a warm pool VM booted ahead and holding nothing
    /// yet; `assigned`: a pool VM given its one job; `-`: started for its job), repository
    /// (empty for a waiting pool VM, which belongs to no tenant) and age.
    List(super::token::StoreArgs),
}

/// Where VM state lives.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// State directory of the VMs (per-VM directories under <DIR>/vms).
    #[arg(long, default_value = "/var/lib/mayfly/state", value_name = "DIR")]
    state_root: PathBuf,
    /// Image store.
    #[arg(long, default_value = "/var/lib/mayfly/images", value_name = "DIR")]
    images: PathBuf,
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AccelChoice {
    /// Probe KVM with a short timeout, fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

/// Flags of `mayfly vm boot`.
#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Digest of the image to boot (see `mayfly image list`).
    #[arg(long, value_name = "DIGEST")]
    image: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Size of the VM's scratch disk (sparse; the guest encrypts it).
    #[arg(long, value_name = "GIB", default_value_t = 20)]
    disk_gib: u32,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Boot without a network device (no namespace, no passt).
    #[arg(long)]
    no_network: bool,
    /// Seconds to wait for the guest to report ready before destroying it.
    #[arg(long, default_value_t = 120)]
    boot_timeout_secs: u64,
}

#[allow(clippy::print_stdout)] // the list is the command's output
async fn list(args: super::token::StoreArgs) -> Result<(), Failure> {
    let store = super::token::open(&args).await?;
    let vms = store.vms(true).await.runtime_err();
    store.close().await;
    let now = chrono::Utc::now();
    println!("START_ID\tHOST\tPROFILE\tSTATE\tPOOL\tREPOSITORY\tAGE");
    for vm in vms? {
        let pool = match (vm.pool, vm.in_pool()) {
            (false, _) => "-",
            (true, true) => "waiting",
            (true, false) => "assigned",
        };
        println!(
            "{}\t{}\t{}\t{}\t{pool}\t{}\t{}s",
            vm.start_id,
            vm.host,
            vm.profile,
            vm.state,
            vm.repo,
            (now - vm.requested_at).num_seconds().max(0)
        );
    }
    Ok(())
}

pub async fn run(command: VmCommand) -> Result<(), Failure> {
    match command {
        VmCommand::Boot(args) => boot(args).await,
        VmCommand::Reap(args) => reap(args).await,
        VmCommand::List(args) => list(args).await,
    }
}

fn driver(state: &StateArgs, accel: Accel, network: NetworkMode) -> Result<QemuDriver, Failure> {
    let mut config = QemuConfig::new(
        state.state_root.clone(),
        ImageStore::new(state.images.clone()),
        accel,
    );
    config.network = network;
    QemuDriver::new(config).config_err()
}

#[allow(clippy::print_stdout)] // the VM id and the record are the command's output
async fn boot(args: BootArgs) -> Result<(), Failure> {
    let store = ImageStore::new(args.state.images.clone());
    let image = store.get(&args.image).config_err()?;
    let accel = match args.accel {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => {
            let probe =
                mayfly_vm::accel::probe(std::path::Path::new("qemu-system-x86_64"), &image.kernel)
                    .await;
            eprintln!("acceleration: {:?} ({})", probe.accel, probe.reason);
            probe.accel
        }
    };
    let network = if args.no_network {
        NetworkMode::Disabled
    } else {
        NetworkMode::Isolated
    };
    let driver = driver(&args.state, accel, network)?;
    let spec = VmSpec {
        image: args.image.clone(),
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        disk_gib: args.disk_gib,
    };
    let vm = driver.create(&spec).await.runtime_err()?;
    println!("{vm}");
    if let Err(e) = driver.start(&vm).await {
        driver.destroy(&vm, "start failed").await;
        return Err(Failure::Runtime(e.into()));
    }
    let kernel = driver
        .wait_ready(&vm, Duration::from_secs(args.boot_timeout_secs))
        .await
        .runtime_err()?;
    eprintln!("VM {vm} ready (guest kernel {kernel}); Ctrl-C destroys it");
    super::server::shutdown_signal().await.runtime_err()?;
    let record = driver.destroy(&vm, "operator stopped it").await;
    println!("{}", serde_json::to_string_pretty(&record).runtime_err()?);
    Ok(())
}

#[allow(clippy::print_stdout)] // the records are the command's output
async fn reap(args: StateArgs) -> Result<(), Failure> {
    let driver = driver(&args, Accel::Tcg, NetworkMode::Isolated)?;
    let report = driver.reap_report().await;
    eprintln!(
        "reaped {} VM(s) and {} orphaned network(s); removed {} leftover runtime dir(s)",
        report.vms.len(),
        report.networks.len(),
        report.files.len()
    );
    for network in &report.networks {
        let failed = network.steps.iter().filter(|s| !s.ok).count();
        eprintln!(
            "  {}: {}{}",
            network.netns,
            network.why,
            if failed == 0 {
                String::new()
            } else {
                format!(" ({failed} step(s) failed)")
            }
        );
    }
    println!("{}", serde_json::to_string_pretty(&report).runtime_err()?);
    Ok(())
}
