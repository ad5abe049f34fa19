//! `mayfly image build` and `mayfly image list`: guest images in a content-addressed store
//! (`mayfly_vm::image`). `build` prints the image's digest on stdout and its progress on stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mayfly_vm::image::{build, BuildError, BuildInputs, BuildStep, ImageStore};

use crate::exit::{Failure, RuntimeContext};

/// Where images live unless `--store` says otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/mayfly/images";
/// Where downloaded Debian packages are kept unless `--cache` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/mayfly/packages";

/// Subcommands of `mayfly image`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a guest image (Debian kernel and busybox, mayfly-guest, a runner directory) into
    /// the store. Prints its digest; the same inputs always give the same digest.
    Build(BuildArgs),
    /// List the images in the store (not verified; starting a VM verifies its image).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The static mayfly-guest binary (scripts/build-guest-image builds one).
    #[arg(long, value_name = "FILE")]
    guest: PathBuf,
    /// Directory copied to /opt/runner in the guest; it must hold run.sh.
    #[arg(long, value_name = "DIR")]
    runner_dir: PathBuf,
    /// The image store.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STORE)]
    store: PathBuf,
    /// Where Debian packages are downloaded and unpacked; reused while their hashes match.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CACHE)]
    cache: PathBuf,
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
        | BuildError::UnknownPackage { .. } => Failure::Config(error.into()),
        other => Failure::Runtime(other.into()),
    }
}

async fn build_image(args: BuildArgs) -> Result<(), Failure> {
    if !args.runner_dir.join("run.sh").is_file() {
        return Err(Failure::Config(anyhow::anyhow!(
            "{} has no run.sh: the guest starts /opt/runner/run.sh --jitconfig …",
            args.runner_dir.display()
        )));
    }
    let bar = ProgressBar::new(BuildStep::COUNT);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:20} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let inputs = BuildInputs {
        guest_binary: args.guest,
        runner_dir: args.runner_dir,
        package_cache_dir: args.cache,
    };
    let store = ImageStore::new(args.store);
    let task_bar = bar.clone();
    let result = tokio::task::spawn_blocking(move || {
        build(&inputs, &store, &mut |step| {
            task_bar.set_position(step.position());
            task_bar.set_message(step.to_string());
        })
    })
    .await
    .context("the build task failed")
    .runtime_err()?;
    bar.finish_and_clear();
    let image = result.map_err(classify)?;
    eprintln!(
        "image {} in {} (kernel {}, {} modules)",
        image.digest,
        image.dir.display(),
        image.manifest.kernel_version,
        image.manifest.modules.len()
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
