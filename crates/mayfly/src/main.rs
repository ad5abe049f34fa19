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
    /// The master key of sealed values: create it, or rotate it while servers run.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Check that this host can run mayfly's VMs (QEMU, KVM or TCG, networking tools, root)
    /// and say how to fix what is missing.
    Doctor(cmd::doctor::DoctorArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // An agent whose VMs are simulated says so on every line the process logs.
    let prefix = match &cli.command {
        Command::Agent(args) if args.runs_simulated_vms() => Some(cmd::agent::SIMULATED_LOG_PREFIX),
        _ => None,
    };
    let level = match cli.command {
        Command::Quickstart(_) | Command::Bench(_) | Command::Chaos(_) => "warn",
        Command::Token(_) | Command::Audit(_) | Command::Keys(_) | Command::Agents(_) => "warn",
        Command::Usage(_) => "warn",
        _ => "info",
    };
    logging::init(level, prefix);
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
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => exit::report(&failure),
    }
}
