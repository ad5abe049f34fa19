//! `mayfly keys`: the master key that wraps the data keys of sealed values (DESIGN.md §5).
//! `init` makes one; `rotate` re-wraps every data key under a fresh master key while servers
//! run (they read the key file whenever they unwrap), then replaces the key file.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use mayfly_store::{MasterKey, SealError, Sealer};

use super::server::{load_config, open_store};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the master key file (64 hex digits, mode 600) if there is none. Servers sharing
    /// one PostgreSQL database must share this file: copy it to each of them.
    Init(KeysArgs),
    /// Re-wrap every data key under a new master key and replace the master key file. Running
    /// servers keep working. Safe to run again if it was interrupted.
    Rotate(KeysArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The server's TOML configuration (for the database and `[database] master_key_file`).
    #[arg(long, short, env = "MAYFLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's data directory [default: from the configuration, /var/lib/mayfly].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[allow(clippy::print_stdout)] // the key ids are the command's output
pub async fn run(command: KeysCommand) -> Result<(), Failure> {
    let (args, rotate) = match command {
        KeysCommand::Init(args) => (args, false),
        KeysCommand::Rotate(args) => (args, true),
    };
    let mut config = load_config(args.config.as_deref())?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let key_file = config.master_key_path();
    if !rotate {
        if key_file.exists() {
            let key = MasterKey::read(&key_file).config_err()?;
            println!(
                "{} already holds master key {}",
                key_file.display(),
                key.id()
            );
            return Ok(());
        }
        let key = MasterKey::random();
        key.write(&key_file).config_err()?;
        println!("wrote master key {} to {}", key.id(), key_file.display());
        return Ok(());
    }
    let store = open_store(&config).await?;
    // Audited before it happens: a rotation that cannot be recorded does not happen.
    let actor = super::token::cli_actor();
    audit(store.as_ref(), &actor, "attempt").await?;
    let (old, new) = match Sealer::new(key_file.clone()).rotate(store.as_ref()).await {
        Ok(ids) => ids,
        // A key file that is missing, unreadable, too open or not ours: configuration.
        Err(
            e @ (SealError::Read { .. }
            | SealError::Permissions { .. }
            | SealError::BadKey { .. }
            | SealError::WrongMasterKey { .. }),
        ) => return Err(e).config_err(),
        Err(e) => return Err(e).runtime_err(),
    };
    tracing::info!(%old, %new, "master key rotated");
    audit(store.as_ref(), &actor, &format!("ok: {old} → {new}")).await?;
    store.close().await;
    println!(
        "rotated the master key: {old} → {new}; {} now holds the new key (servers sharing the database need the new file too)",
        key_file.display()
    );
    Ok(())
}

async fn audit(store: &dyn mayfly_store::Store, actor: &str, outcome: &str) -> Result<(), Failure> {
    store
        .append_audit(&mayfly_store::NewAudit {
            at: chrono::Utc::now(),
            actor: actor.to_owned(),
            source: None,
            action: "keys rotate".into(),
            target: None,
            outcome: outcome.to_owned(),
        })
        .await
        .runtime_err()?;
    Ok(())
}
