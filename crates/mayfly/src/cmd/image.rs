//! `mayfly image build` and `mayfly image list`: guest images in a content-addressed store
//! (`mayfly_vm::image`). `build` prints the image's digest on stdout and its progress on stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mayfly_vm::image::{
    build, BuildError, BuildInputs, BuildStep, ImageStore, RootfsSource, DEBIAN_SUITE,
    DEFAULT_SOURCE_DATE_EPOCH,
};

use crate::exit::{Failure, RuntimeContext};

/// Where images live unless `--store` says otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/mayfly/images";
/// Where the builder keeps the kernel packages and the Debian root's tar unless `--work` says
/// otherwise.
pub const DEFAULT_WORK: &str = "/var/cache/mayfly/image-build";

/// Subcommands of `mayfly image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a guest image into the store: by default a Debian 12 root filesystem (mmdebstrap)
    /// with what GitHub's actions/runner and ordinary jobs need (bash, glibc, libicu, git, curl,
    /// sudo, Docker, …), or your own root filesystem tarball (--rootfs-tar); plus Debian's
    /// kernel, mayfly-guest as init, the user `runner` and the runner directory. Prints the
    /// digest; the same inputs always give the same digest.
    Build(BuildArgs),
    /// List the images in the store (not verified; starting a VM verifies its image).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The static mayfly-guest binary (scripts/build-guest-image builds one).
    #[arg(long, value_name = "FILE")]
    guest: PathBuf,
    /// The runner directory (actions/runner's layout, with run.sh), copied to
    /// /home/runner/actions-runner in the guest and owned by the user runner.
    #[arg(long, value_name = "DIR")]
    runner_dir: PathBuf,
    /// Import this root filesystem tarball instead of making a Debian one (e.g. `docker export`
    /// of an Ubuntu image). It must have bash, glibc ≥ 2.28, cryptsetup, mkfs.ext4 and setpriv;
    /// what jobs would miss (libicu, git, Docker, …) is listed as a warning.
    #[arg(long, value_name = "FILE", conflicts_with = "packages")]
    rootfs_tar: Option<PathBuf>,
    /// More Debian packages for the default root filesystem (comma-separated or repeated).
    #[arg(long, value_name = "PKG", value_delimiter = ',')]
    packages: Vec<String>,
    /// The image store.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STORE)]
    store: PathBuf,
    /// Where the builder keeps the kernel packages and the Debian root's tar.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_WORK)]
    work: PathBuf,
    /// Every timestamp in the image (and mmdebstrap's SOURCE_DATE_EPOCH); defaults to the
    /// SOURCE_DATE_EPOCH environment variable, else a fixed time.
    #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH", default_value_t = DEFAULT_SOURCE_DATE_EPOCH)]
    source_date_epoch: i64,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The image store.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STORE)]
    store: PathBuf,
}

pub async fn run(command: ImageCommand) -> Result<(), Failure> {
    match command {
        ImageCommand::Build(args) => build_image(args).await,
        ImageCommand::List(args) => list(args),
    }
}

/// Problems with what the user gave or installed are configuration errors (exit 3).
fn classify(error: BuildError) -> Failure {
    match error {
        BuildError::MissingTool { .. }
        | BuildError::GuestNotStatic { .. }
        | BuildError::Elf { .. }
        | BuildError::RunnerDir(_)
        | BuildError::Packages(_)
        | BuildError::RootfsTar { .. }
        | BuildError::Unsuitable { .. }
        | BuildError::NoSpace { .. } => Failure::Config(error.into()),
        other => Failure::Runtime(other.into()),
    }
}

async fn build_image(args: BuildArgs) -> Result<(), Failure> {
    let bar = ProgressBar::new(BuildStep::COUNT);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:20} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let source = match args.rootfs_tar {
        Some(path) => RootfsSource::Tar { path },
        None => RootfsSource::Debian {
            suite: DEBIAN_SUITE.to_owned(),
            extra: args.packages,
        },
    };
    let inputs = BuildInputs {
        guest_binary: args.guest,
        runner_dir: args.runner_dir,
        source,
        work_dir: args.work,
        source_date_epoch: args.source_date_epoch,
    };
    let store = ImageStore::new(args.store);
    let task_bar = bar.clone();
    let result = tokio::task::spawn_blocking(move || {
        build(&inputs, &store, &mut |step| {
            task_bar.set_position(step.position());
            // Warnings stay on screen; the rest is the bar's message.
            if let BuildStep::Requirements { missing } = &step {
                if !missing.is_empty() {
                    task_bar.println(step.to_string());
                }
            }
            task_bar.set_message(step.to_string());
        })
    })
    .await
    .context("the build task failed")
    .runtime_err()?;
    bar.finish_and_clear();
    let image = result.map_err(classify)?;
    let size: u64 = image.manifest.artifacts.values().map(|a| a.size).sum();
    eprintln!(
        "image {} in {} (kernel {}, {} MiB)",
        image.digest,
        image.dir.display(),
        image.manifest.kernel_version,
        size >> 20
    );
    print_line(&image.digest);
    Ok(())
}

#[allow(clippy::print_stdout)] // the digest is the command's output
fn print_line(line: &str) {
    println!("{line}");
}

fn list(args: ListArgs) -> Result<(), Failure> {
    let store = ImageStore::new(&args.store);
    let images = store.list().runtime_err()?;
    if images.is_empty() {
        eprintln!(
            "no images in {}: build one with `mayfly image build`",
            args.store.display()
        );
    }
    for image in images {
        let line = match &image.manifest {
            Some(m) => {
                let size: u64 = m.artifacts.values().map(|a| a.size).sum();
                format!(
                    "{}  kernel {}  {:.1} MiB",
                    image.digest,
                    m.kernel_version,
                    size as f64 / f64::from(1 << 20)
                )
            }
            None => format!("{}  (no readable manifest)", image.digest),
        };
        print_line(&line);
    }
    Ok(())
}
