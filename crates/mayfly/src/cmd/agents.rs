//! `mayfly agents bootstrap|list|revoke`: the server side of agent enrolment. A bootstrap token
//! is one-time, expires, names the agent it makes, and pins the server CA.

use clap::{Args, Subcommand};

use super::server::load_config;
use super::token::{cli_actor, open, StoreArgs};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Make a one-time bootstrap token for a host; print it once. Give it to
    /// `mayfly agent enrol` on that host before it expires.
    Bootstrap(BootstrapArgs),
    /// List enrolled agents.
    List(StoreArgs),
    /// Revoke an agent: its certificate is refused from its next connection on.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The agent's name (the host's id; its certificate's common name).
    #[arg(long)]
    name: String,
    /// Minutes until the token expires.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=10080))]
    ttl_minutes: u32,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The agent's name.
    name: String,
}

#[allow(clippy::print_stdout)] // the token and the listing are the command's output
pub async fn run(command: AgentsCommand) -> Result<(), Failure> {
    match command {
        AgentsCommand::Bootstrap(args) => {
            if args.name.is_empty()
                || args.name.len() > 100
                || !args
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(anyhow::anyhow!(
                    "--name must be 1 to 100 letters, digits, '-', '_' or '.'"
                ))
                .config_err();
            }
            let config = load_config(args.store.config.as_deref())?;
            let files = config
                .tls
                .as_ref()
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the server has no [tls]: agents enrol only with a TLS server (its CA is what they pin)"
                    )
                })
                .config_err()?;
            let ca = mayfly_server::server_ca_pem(files).config_err()?;
            let sha = mayfly_server::agent_pki::pem_sha256(&ca)
                .ok_or_else(|| anyhow::anyhow!("the server CA certificate is not PEM"))
                .config_err()?;
            let store = open(&args.store).await?;
            let (token, claims) = mayfly_server::agent_pki::create_bootstrap(
                store.as_ref(),
                &cli_actor(),
                &args.name,
                &sha,
                chrono::Duration::minutes(i64::from(args.ttl_minutes)),
            )
            .await
            .runtime_err()?;
            store.close().await;
            println!("{}", token.as_str());
            eprintln!(
                "one-time token for agent {} (expires {}); on that host run: \
                 MAYFLY_AGENT_TOKEN=<token> mayfly agent enrol --server https://<this server>:<port>",
                args.name, claims.expires_at
            );
        }
        AgentsCommand::List(args) => {
            let store = open(&args).await?;
            println!("NAME\tENROLLED\tREVOKED\tCERT_SHA256");
            for a in store.agents().await.runtime_err()? {
                println!(
                    "{}\t{}\t{}\t{}",
                    a.name,
                    a.enrolled_at.format("%Y-%m-%d %H:%M:%S"),
                    a.revoked_at
                        .map(|r| r.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default(),
                    a.cert_sha256
                );
            }
            store.close().await;
        }
        AgentsCommand::Revoke(args) => {
            let store = open(&args.store).await?;
            let revoked =
                mayfly_server::agent_pki::revoke(store.as_ref(), &cli_actor(), &args.name)
                    .await
                    .runtime_err()?;
            store.close().await;
            if !revoked {
                return Err(anyhow::anyhow!(
                    "there is no live agent {}; see `mayfly agents list`",
                    args.name
                ))
                .runtime_err();
            }
            eprintln!("revoked agent {}", args.name);
        }
    }
    Ok(())
}
