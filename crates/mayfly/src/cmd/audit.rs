//! `mayfly audit verify|export`: the audit log's hash chain checked end to end, or written out
//! as JSON lines.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::token::{open, StoreArgs};
use crate::exit::{Failure, RuntimeContext};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain: names the first row that was edited, deleted, inserted or reordered.
    /// Exit 0 when intact, 1 when not.
    Verify(StoreArgs),
    /// Write every row as one JSON object per line (to stdout, or --output).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Write here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

async fn all_rows(store: &dyn mayfly_store::Store) -> Result<Vec<mayfly_store::AuditRow>, Failure> {
    let mut rows = Vec::new();
    loop {
        let after = rows.last().map_or(0, |r: &mayfly_store::AuditRow| r.seq);
        let page = store.audit_log(after, 1000).await.runtime_err()?;
        if page.is_empty() {
            return Ok(rows);
        }
        rows.extend(page);
    }
}

#[allow(clippy::print_stdout)] // the verdict and the export are the command's output
pub async fn run(command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::Verify(args) => {
            let store = open(&args).await?;
            let rows = all_rows(store.as_ref()).await?;
            store.close().await;
            match mayfly_store::verify_chain(&rows) {
                Ok(n) => {
                    let last = rows
                        .last()
                        .map_or(mayfly_store::GENESIS, |r| r.hash.as_str());
                    println!("audit log intact: {n} rows, last hash {last}");
                    Ok(())
                }
                Err(broken) => Err(anyhow::anyhow!("audit log broken: {broken}")).runtime_err(),
            }
        }
        AuditCommand::Export(args) => {
            let store = open(&args.store).await?;
            let rows = all_rows(store.as_ref()).await?;
            store.close().await;
            let mut out: Box<dyn Write> = match &args.output {
                Some(path) => Box::new(std::fs::File::create(path).runtime_err()?),
                None => Box::new(std::io::stdout().lock()),
            };
            for row in &rows {
                serde_json::to_writer(&mut out, row).runtime_err()?;
                out.write_all(b"\n").runtime_err()?;
            }
            out.flush().runtime_err()?;
            eprintln!("exported {} audit rows", rows.len());
            Ok(())
        }
    }
}
