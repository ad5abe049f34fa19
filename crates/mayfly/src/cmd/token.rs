//! `mayfly token create|list|revoke`: bearer tokens for `/api/v1`. Works on the server's store
//! directly (same configuration), so it needs the database key, as an operator on the server
//! host has. Every create and revoke is audited.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use mayfly_server::tokens::{self, Scope};

use super::server::{load_config, open_store};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (it is stored only as a hash).
    Create(CreateArgs),
    /// List tokens: id, name, scope, installation, created, revoked.
    List(StoreArgs),
    /// Revoke a token by id; calls with it get 401 from then on.
    Revoke(RevokeArgs),
}

/// Where the store is.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The server's TOML configuration (for the database).
    #[arg(long, short, env = "MAYFLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server's data directory [default: from the configuration, /var/lib/mayfly].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    /// Everything, the audit log included.
    Admin,
    /// Every tenant's jobs, VMs, usage and installations; not the audit log.
    Read,
    /// One installation's data only (needs --installation).
    Tenant,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// What the token is for (shown in `mayfly token list`).
    #[arg(long)]
    name: String,
    /// What the token may see.
    #[arg(long, value_enum)]
    scope: ScopeArg,
    /// The GitHub App installation id a tenant token is limited to.
    #[arg(long, value_name = "ID", required_if_eq("scope", "tenant"))]
    installation: Option<i64>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The token's id (`tok_…`, from `mayfly token list`).
    id: String,
}

/// `cli:<user>`: who ran an operator command, for the audit log.
pub fn cli_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid {}", nix::unistd::getuid()));
    format!("cli:{user}")
}

pub async fn open(args: &StoreArgs) -> Result<std::sync::Arc<dyn mayfly_store::Store>, Failure> {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if config.database.postgres_url.is_none() && !config.database_path().exists() {
        return Err(anyhow::anyhow!(
            "there is no database at {}: give the server's --data-dir or --config (the server \
             makes the database when it first starts)",
            config.database_path().display()
        ))
        .config_err();
    }
    open_store(&config).await
}

#[allow(clippy::print_stdout)] // the token and the listing are the command's output
pub async fn run(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create(args) => {
            let scope = match (args.scope, args.installation) {
                (ScopeArg::Admin, None) => Scope::Admin,
                (ScopeArg::Read, None) => Scope::Read,
                (ScopeArg::Tenant, Some(i)) => Scope::Tenant(i),
                _ => {
                    return Err(anyhow::anyhow!(
                        "--installation goes with --scope tenant, and only with it"
                    ))
                    .config_err()
                }
            };
            let store = open(&args.store).await?;
            let token = tokens::create(store.as_ref(), &cli_actor(), &args.name, scope)
                .await
                .runtime_err()?;
            println!("{}", token.expose());
            store.close().await;
            eprintln!(
                "created {} ({}); this is the only time the token is shown",
                token.row.id,
                scope.name()
            );
        }
        TokenCommand::List(args) => {
            let store = open(&args).await?;
            println!("ID\tNAME\tSCOPE\tINSTALLATION\tCREATED\tREVOKED");
            for t in store.tokens().await.runtime_err()? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    t.id,
                    t.name,
                    t.scope,
                    t.installation_id.map(|i| i.to_string()).unwrap_or_default(),
                    t.created_at.format("%Y-%m-%d %H:%M:%S"),
                    t.revoked_at
                        .map(|r| r.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default()
                );
            }
            store.close().await;
        }
        TokenCommand::Revoke(args) => {
            let store = open(&args.store).await?;
            let revoked = tokens::revoke(store.as_ref(), &cli_actor(), &args.id)
                .await
                .runtime_err()?;
            store.close().await;
            if revoked {
                eprintln!("revoked {}", args.id);
            } else {
                return Err(anyhow::anyhow!(
                    "there is no live token {}; see `mayfly token list`",
                    args.id
                ))
                .runtime_err();
            }
        }
    }
    Ok(())
}
