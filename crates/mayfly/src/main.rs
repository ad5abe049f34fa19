//! `mayfly`: one binary, one subcommand per process (DESIGN.md §6). Subcommands decode their
//! flags and configuration, call into the crates once, and map failures to the exit codes in
//! [`exit`].
#![forbid(unsafe_code)]

mod cmd;
mod exit;
mod logging;
mod simulated;

use clap::{Parser, Subcommand};

/// mayfly gives every GitHub Actions job a fresh virtual machine that exists for that job alone
/// and is destroyed the moment the job ends.
#[derive(Debug, Parser)]
#[command(name = "mayfly", version, about, long_about = None, after_help = exit::HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up a new host: `init server` writes the configuration and makes the keys;
    /// `init agent` enrols a VM host and writes its configuration.
    #[command(subcommand)]
    Init(cmd::init::InitCommand),
    /// Run the control plane: webhook intake over TLS, scheduling, agents; on the encrypted
    /// embedded store, or on PostgreSQL shared by several servers.
    Server(cmd::server::ServerArgs),
    /// Run the agent of this host: dial the server, make a fresh VM for each job it is given,
    /// destroy it when the job ends, and report every step.
    Agent(cmd::agent::AgentArgs),
    /// Run a GitHub simulator (REST API, App auth, signed webhooks, a job broker) for tests and
    /// the quickstart. GitHub itself is not needed.
    Sim(cmd::sim::SimArgs),
    /// Run the whole loop on this machine with GitHub simulated: simulator, server (TLS, local
    /// CA), two organisations, N jobs, and a table of what happened to each.
    ///
    /// Run it as often as you like in the same --data-dir, also after a run was interrupted:
    /// every run meets a new simulated GitHub, so it starts with a new server database and a
    /// new agent enrolment, and keeps the local CA, the simulated App's key and the VM state
    /// (from which VMs an interrupted run left are destroyed).
    Quickstart(cmd::quickstart::QuickstartArgs),
    /// Run the quickstart loop with many jobs and append p50/p99 of each phase, beside bare QEMU
    /// boots of the same image, to BENCHMARKS.md with the machine it ran on.
    Bench(cmd::bench::BenchArgs),
    /// A long run through the real loop (simulator, servers, agents, VMs as separate processes)
    /// while faults from a printed seed are injected; counts lost jobs, duplicate VMs, lost
    /// events and orphans and appends them to RELIABILITY.md (scripts/chaos).
    Chaos(cmd::chaos::ChaosArgs),
    /// Build and list guest images (kernel, initramfs with mayfly-guest, runner disk).
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Single VMs: boot one from an image, or reap VMs left by a crashed owner.
    #[command(subcommand)]
    Vm(cmd::vm::VmCommand),
    /// Agent enrolment on the server: one-time bootstrap tokens, the enrolled agents, revoking.
    #[command(subcommand)]
    Agents(cmd::agents::AgentsCommand),
    /// API bearer tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// The audit log: verify its hash chain, export it as JSON lines.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Usage reports from a server's API: per-day or per-repository totals, the top
    /// repositories, the per-job log; as a table, JSON or CSV.
    #[command(subcommand)]
    Usage(cmd::usage::UsageCommand),
    /// The GitHub App: create it in one step with GitHub's manifest flow, its credentials
    /// sealed into the server's store.
    #[command(subcommand)]
    Github(cmd::github::GithubCommand),
    /// The master key of sealed values: create it, or rotate it while servers run.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout, e.g.
    /// `mayfly completions bash > /etc/bash_completion.d/mayfly`. The package installs them.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (mayfly.1 and one per subcommand) into a directory; the package
    /// installs them.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Check that this host can run mayfly's VMs (QEMU, KVM or TCG, networking tools, root)
    /// and say how to fix what is missing.
    Doctor(cmd::doctor::DoctorArgs),
}

#[allow(clippy::print_stdout)] // the completion script is the command's output
fn write_completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "mayfly", &mut std::io::stdout());
}

fn write_manpages(dir: &std::path::Path) -> Result<(), exit::Failure> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        .map_err(|e| {
            exit::Failure::Runtime(anyhow::anyhow!(
                "could not write the man pages into {}: {e}",
                dir.display()
            ))
        })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            write_completions(*shell);
            return std::process::ExitCode::SUCCESS;
        }
        Command::Manpages { dir } => {
            return match write_manpages(dir) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(failure) => exit::report(&failure),
            }
        }
        _ => {}
    }
    // An agent whose VMs are simulated says so on every line the process logs.
    let prefix = match &cli.command {
        Command::Agent(args) if args.runs_simulated_vms() => Some(cmd::agent::SIMULATED_LOG_PREFIX),
        _ => None,
    };
    let level = match cli.command {
        Command::Quickstart(_) | Command::Bench(_) | Command::Chaos(_) => "warn",
        Command::Token(_) | Command::Audit(_) | Command::Keys(_) | Command::Agents(_) => "warn",
        Command::Usage(_) | Command::Github(_) | Command::Init(_) => "warn",
        Command::Completions { .. } | Command::Manpages { .. } => "warn",
        _ => "info",
    };
    let format = match logging::Format::from_env() {
        Ok(format) => format,
        Err(e) => return exit::report(&exit::Failure::Config(anyhow::anyhow!(e))),
    };
    logging::init(level, format, prefix);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return exit::report(&exit::Failure::Runtime(e.into())),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => cmd::server::run(args).await,
            Command::Agent(args) => cmd::agent::run(args).await,
            Command::Sim(args) => cmd::sim::run(args).await,
            Command::Quickstart(args) => cmd::quickstart::run(args).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Chaos(args) => cmd::chaos::run(args).await,
            Command::Image(command) => cmd::image::run(command).await,
            Command::Vm(command) => cmd::vm::run(command).await,
            Command::Doctor(args) => cmd::doctor::run(args).await,
            Command::Keys(command) => cmd::keys::run(command).await,
            Command::Token(command) => cmd::token::run(command).await,
            Command::Agents(command) => cmd::agents::run(command).await,
            Command::Audit(command) => cmd::audit::run(command).await,
            Command::Usage(command) => cmd::usage::run(command).await,
            Command::Github(command) => cmd::github::run(command).await,
            Command::Init(command) => cmd::init::run(command).await,
            // Handled before the runtime starts.
            Command::Completions { .. } | Command::Manpages { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => exit::report(&failure),
    }
}
