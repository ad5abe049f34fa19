//! `SqliteStore`: the embedded store, one SQLite file in WAL mode with `synchronous = FULL`, so a
//! delivery acknowledged to GitHub is on disk. Job rows change only through
//! [`JobStatus::transition`]: states move forward, stale deliveries fill in missing facts only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mayfly_core::{
    DeliveryId, InstallationChange, InstallationChangeKind, InstallationId, IntakeEvent, JobEvent,
    JobId, JobStatus, RepoFullName, RunId, Transition,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::codec::{from_json, parse};
use crate::error::QueryContext;
use crate::{
    AgentJournal, AgentRow, AuditRow, BootstrapRow, BootstrapUse, DeliveryRecord,
    InstallationRecord, JobDispatch, JobRecord, NewAudit, NewDelivery, PendingDelivery, Recorded,
    SealedRow, Store, StoreError, TokenRow, UsageRow, VmRow, WrappedKey,
};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Creates the database file, if missing, readable by its owner only (mode 600 whatever the
/// umask). SQLite gives the `-wal` and `-shm` files it makes later the database file's mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The `-wal` and `-shm` files beside `path`, narrowed to mode 600 in case a database made by
/// an older version (or by hand) left them open to others. Best effort: they hold ciphertext.
fn restrict_companions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let companion = PathBuf::from(name);
        let Ok(meta) = std::fs::metadata(&companion) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            let _ = std::fs::set_permissions(&companion, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// The embedded SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one connection that writes. SQLite has one writer at a time: writers queue here, in
    /// order, instead of in SQLite's busy handler, which sleeps up to 100 ms between tries.
    pool: SqlitePool,
    /// Connections that only read (WAL: they never wait for the writer, nor it for them).
    reader: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if missing) the encrypted database file with `key` and brings its schema
    /// up to date. A wrong key is reported as such and leaves the file as it was.
    pub async fn open(path: &Path, key: &crate::DbKey) -> Result<Self, StoreError> {
        create_private(path)?;
        let options = SqliteConnectOptions::new()
            .pragma("key", key.pragma_value().to_string())
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // SQLITE_NOTADB (26): what SQLCipher answers to a wrong key.
        let open_error = |source: sqlx::Error| {
            let code = source.as_database_error().and_then(|d| d.code());
            if code.is_some_and(|code| code == "26") {
                StoreError::WrongKey {
                    path: path.to_owned(),
                }
            } else {
                StoreError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        };
        // No ping before each use: a connection to a local file does not go stale, and the ping
        // is one more round trip to the connection's thread for every transaction.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        // Refuse to run unencrypted: only SQLCipher answers `cipher_version`.
        let cipher: Option<String> = sqlx::query_scalar("PRAGMA cipher_version")
            .fetch_optional(&pool)
            .await
            .op("read cipher_version")?;
        if cipher.as_deref().unwrap_or_default().is_empty() {
            return Err(StoreError::NoEncryption);
        }
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&pool)
            .await
            .map_err(open_error)?;
        MIGRATIONS
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(3)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        restrict_companions(path);
        Ok(Self {
            pool,
            reader,
            path: path.to_owned(),
        })
    }

    /// A write transaction that takes SQLite's write lock up front. A deferred `BEGIN` that
    /// reads before writing fails (busy snapshot) when another connection commits in between.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .op("begin write")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every value of every table, decrypted, as text: for audits and for tests that prove what
    /// is never stored. Not used on any request path.
    pub async fn plaintext_dump(&self) -> Result<String, StoreError> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(self.reader())
        .await
        .op("list tables")?;
        let mut out = String::new();
        for table in tables {
            let rows = sqlx::query(&format!("SELECT * FROM \"{}\"", table.replace('"', "")))
                .fetch_all(self.reader())
                .await
                .op("dump table")?;
            for row in rows {
                for i in 0..row.columns().len() {
                    let text = row
                        .try_get::<Option<String>, _>(i)
                        .ok()
                        .flatten()
                        .or_else(|| {
                            row.try_get::<Option<i64>, _>(i)
                                .ok()
                                .flatten()
                                .map(|v| v.to_string())
                        })
                        .or_else(|| {
                            row.try_get::<Option<Vec<u8>>, _>(i)
                                .ok()
                                .flatten()
                                .map(|b| String::from_utf8_lossy(&b).into_owned())
                        })
                        .unwrap_or_default();
                    out.push_str(&text);
                    out.push('\t');
                }
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// The connections for reads.
    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Checkpoints the write-ahead log into the database file and closes every connection.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Err(e) = self.checkpoint().await {
            tracing::warn!(error = %e, "could not checkpoint the database before closing");
        }
        self.pool.close().await;
    }

    /// Moves the write-ahead log into the database file and empties it. In service SQLite does
    /// this in small steps as the log grows; one huge transaction (history seeded for a
    /// benchmark) leaves a log every read must look through until this is done.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
            .op("checkpoint")?;
        Ok(())
    }
}

fn job_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<JobRecord, StoreError> {
    let get_str = |col: &str| row.try_get::<String, _>(col).op("read job");
    let status = get_str("status")?;
    Ok(JobRecord {
        job_id: JobId(row.try_get("job_id").op("read job")?),
        run_id: RunId(row.try_get("run_id").op("read job")?),
        installation_id: row
            .try_get::<Option<i64>, _>("installation_id")
            .op("read job")?
            .map(InstallationId),
        repo: parse(&get_str("repo")?, "job repository")?,
        repo_id: row.try_get("repo_id").op("read job")?,
        org: row.try_get("org").op("read job")?,
        sender: get_str("sender")?,
        status: JobStatus::parse(&status).ok_or(StoreError::Corrupt { what: "job status" })?,
        conclusion: row.try_get("conclusion").op("read job")?,
        labels: from_json(&get_str("labels")?, "job labels")?,
        job_name: get_str("job_name")?,
        workflow_name: row.try_get("workflow_name").op("read job")?,
        runner_id: row.try_get("runner_id").op("read job")?,
        runner_name: row.try_get("runner_name").op("read job")?,
        created_at: row.try_get("created_at").op("read job")?,
        started_at: row.try_get("started_at").op("read job")?,
        completed_at: row.try_get("completed_at").op("read job")?,
        first_seen_at: row.try_get("first_seen_at").op("read job")?,
        updated_at: row.try_get("updated_at").op("read job")?,
        dispatch: JobDispatch {
            profile: row.try_get("profile").op("read job")?,
            disposition: get_str("disposition")?,
            failure: row.try_get("failure").op("read job")?,
            attempts: u32::try_from(row.try_get::<i64, _>("attempts").op("read job")?).map_err(
                |_| StoreError::Corrupt {
                    what: "job attempts",
                },
            )?,
            vm_start_id: row.try_get("vm_start_id").op("read job")?,
        },
    })
}

fn pending_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<PendingDelivery, StoreError> {
    let id: String = row.try_get("delivery_id").op("read delivery")?;
    let intake: String = row.try_get("intake").op("read delivery")?;
    Ok(PendingDelivery {
        delivery_id: DeliveryId::parse(&id).map_err(|_| StoreError::Corrupt {
            what: "delivery id",
        })?,
        event: row.try_get("event").op("read delivery")?,
        intake: from_json::<IntakeEvent>(&intake, "intake event")?,
    })
}

/// Adds a job that just completed to its tenant's usage rollup (day of completion, UTC).
async fn roll_up_usage(conn: &mut sqlx::SqliteConnection, job: JobId) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT installation_id, profile, started_at, completed_at FROM jobs WHERE job_id = ?",
    )
    .bind(job.0)
    .fetch_optional(&mut *conn)
    .await
    .op("read job for usage")?;
    let Some(row) = row else {
        return Ok(());
    };
    let op = "read job for usage";
    let installation: Option<i64> = row.try_get("installation_id").op(op)?;
    let profile: Option<String> = row.try_get("profile").op(op)?;
    let started: Option<DateTime<Utc>> = row.try_get("started_at").op(op)?;
    let completed: Option<DateTime<Utc>> = row.try_get("completed_at").op(op)?;
    let (Some(installation), Some(profile), Some(started), Some(completed)) =
        (installation, profile, started, completed)
    else {
        return Ok(());
    };
    let seconds = (completed - started).num_seconds().max(0);
    sqlx::query(
        "INSERT INTO usage_daily (installation_id, day, profile, jobs, run_seconds)
         VALUES (?, ?, ?, 1, ?)
         ON CONFLICT (installation_id, day, profile) DO UPDATE SET
           jobs = usage_daily.jobs + 1, run_seconds = usage_daily.run_seconds + excluded.run_seconds",
    )
    .bind(installation)
    .bind(completed.format("%Y-%m-%d").to_string())
    .bind(profile)
    .bind(seconds)
    .execute(conn)
    .await
    .op("roll up usage")?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT delivery_id, event, intake FROM deliveries
             WHERE processed_at IS NULL ORDER BY seq LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await
        .op("list pending deliveries")?;
        rows.iter().map(pending_from_row).collect()
    }

    async fn apply_installation_change(
        &self,
        delivery: &DeliveryId,
        c: &InstallationChange,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if !claim_unprocessed(&mut tx, delivery, now).await? {
            return Ok(false);
        }
        let state = match c.kind {
            InstallationChangeKind::Deleted => Some("deleted"),
            InstallationChangeKind::Suspended => Some("suspended"),
            InstallationChangeKind::Created | InstallationChangeKind::Unsuspended => Some("active"),
            InstallationChangeKind::PermissionsChanged
            | InstallationChangeKind::RepositoriesChanged => None,
        };
        sqlx::query(
            "INSERT INTO installations (installation_id, account, state, updated_at)
             VALUES (?, ?, COALESCE(?, 'active'), ?)
             ON CONFLICT (installation_id) DO UPDATE SET
               account = COALESCE(excluded.account, installations.account),
               state = COALESCE(?, installations.state), updated_at = excluded.updated_at",
        )
        .bind(c.installation_id.0)
        .bind(&c.account)
        .bind(state)
        .bind(now)
        .bind(state)
        .execute(&mut *tx)
        .await
        .op("upsert installation")?;
        if c.kind == InstallationChangeKind::Deleted {
            sqlx::query("DELETE FROM installation_repos WHERE installation_id = ?")
                .bind(c.installation_id.0)
                .execute(&mut *tx)
                .await
                .op("forget installation repos")?;
        }
        for repo in &c.repos_added {
            sqlx::query(
                "INSERT OR IGNORE INTO installation_repos (installation_id, repo) VALUES (?, ?)",
            )
            .bind(c.installation_id.0)
            .bind(repo.to_string())
            .execute(&mut *tx)
            .await
            .op("add installation repo")?;
        }
        for repo in &c.repos_removed {
            sqlx::query("DELETE FROM installation_repos WHERE installation_id = ? AND repo = ?")
                .bind(c.installation_id.0)
                .bind(repo.to_string())
                .execute(&mut *tx)
                .await
                .op("remove installation repo")?;
        }
        set_outcome(&mut tx, delivery, "installation updated").await?;
        tx.commit().await.op("commit installation change")?;
        Ok(true)
    }

    async fn finish_delivery(
        &self,
        delivery: &DeliveryId,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if !claim_unprocessed(&mut tx, delivery, now).await? {
            return Ok(false);
        }
        set_outcome(&mut tx, delivery, outcome).await?;
        tx.commit().await.op("commit delivery")?;
        Ok(true)
    }

    async fn delivery(&self, delivery: &DeliveryId) -> Result<Option<DeliveryRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT event, action, received_at, processed_at, outcome FROM deliveries WHERE delivery_id = ?",
        )
        .bind(delivery.as_str())
        .fetch_optional(self.reader())
        .await
        .op("read delivery")?;
        row.map(|row| {
            Ok(DeliveryRecord {
                delivery_id: delivery.clone(),
                event: row.try_get("event").op("read delivery")?,
                action: row.try_get("action").op("read delivery")?,
                received_at: row.try_get("received_at").op("read delivery")?,
                processed_at: row.try_get("processed_at").op("read delivery")?,
                outcome: row.try_get("outcome").op("read delivery")?,
            })
        })
        .transpose()
    }

    async fn job(&self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM jobs WHERE job_id = ?")
            .bind(job.0)
            .fetch_optional(self.reader())
            .await
            .op("read job")?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM jobs ORDER BY first_seen_at, job_id")
            .fetch_all(self.reader())
            .await
            .op("list jobs")?;
        rows.iter().map(job_from_row).collect()
    }

    async fn installations(&self) -> Result<Vec<InstallationRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT installation_id, account, state FROM installations ORDER BY installation_id",
        )
        .fetch_all(self.reader())
        .await
        .op("list installations")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("installation_id").op("read installation")?;
            let repos: Vec<String> = sqlx::query_scalar(
                "SELECT repo FROM installation_repos WHERE installation_id = ? ORDER BY repo",
            )
            .bind(id)
            .fetch_all(self.reader())
            .await
            .op("list installation repos")?;
            out.push(InstallationRecord {
                installation_id: InstallationId(id),
                account: row.try_get("account").op("read installation")?,
                state: row.try_get("state").op("read installation")?,
                repos: repos
                    .iter()
                    .map(|r| parse::<RepoFullName>(r, "installation repository"))
                    .collect::<Result<_, _>>()?,
            });
        }
        Ok(out)
    }

    async fn insert_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        bind_vm(sqlx::query(crate::shared::INSERT_VM), vm)
            .execute(&self.pool)
            .await
            .op("insert vm")?;
        Ok(())
    }

    async fn update_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        bind_vm(sqlx::query(crate::shared::UPDATE_VM), vm)
            .execute(&self.pool)
            .await
            .op("update vm")?;
        Ok(())
    }

    async fn vms(&self, live_only: bool) -> Result<Vec<VmRow>, StoreError> {
        let sql = if live_only {
            "SELECT * FROM vms WHERE state NOT IN ('destroyed') ORDER BY requested_at, start_id"
        } else {
            "SELECT * FROM vms ORDER BY requested_at, start_id"
        };
        let rows = sqlx::query(sql)
            .fetch_all(self.reader())
            .await
            .op("list vms")?;
        rows.iter().map(vm_from_row).collect()
    }

    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        deliveries_before: DateTime<Utc>,
    ) -> Result<crate::Purged, StoreError> {
        let mut tx = self.begin_write().await?;
        // Only jobs that are over: completed, or never ours to run.
        let finished = "(status = 'completed' OR disposition IN ('ignored', 'failed', 'skipped'))";
        let vms = sqlx::query(&format!(
            "DELETE FROM vms WHERE state = 'destroyed' AND for_job_id IN
               (SELECT job_id FROM jobs WHERE updated_at < ? AND {finished})"
        ))
        .bind(jobs_before)
        .execute(&mut *tx)
        .await
        .op("purge vms")?
        .rows_affected();
        let jobs = sqlx::query(&format!(
            "DELETE FROM jobs WHERE updated_at < ? AND {finished}"
        ))
        .bind(jobs_before)
        .execute(&mut *tx)
        .await
        .op("purge jobs")?
        .rows_affected();
        let deliveries = sqlx::query(
            "DELETE FROM deliveries WHERE received_at < ? AND processed_at IS NOT NULL",
        )
        .bind(deliveries_before)
        .execute(&mut *tx)
        .await
        .op("purge deliveries")?
        .rows_affected();
        tx.commit().await.op("commit purge")?;
        Ok(crate::Purged {
            jobs,
            vms,
            deliveries,
        })
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: u32,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let rows = sqlx::query(
            "UPDATE deliveries SET claimed_by = ?1, claimed_at = ?2
             WHERE seq IN (SELECT seq FROM deliveries
               WHERE processed_at IS NULL
                 AND (claimed_at IS NULL OR claimed_by = ?1 OR claimed_at < ?3)
               ORDER BY seq LIMIT ?4)
             RETURNING seq, delivery_id, event, intake",
        )
        .bind(owner)
        .bind(now)
        .bind(stale_before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .op("claim deliveries")?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq").op("read delivery")?;
                Ok((seq, pending_from_row(row)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, d)| d).collect())
    }

    async fn append_audit(&self, event: &NewAudit) -> Result<AuditRow, StoreError> {
        use chrono::DurationRound;
        let mut event = event.clone();
        // Stored (and hashed) at the microsecond, the precision both backends keep.
        event.at = event
            .at
            .duration_trunc(chrono::Duration::microseconds(1))
            .unwrap_or(event.at);
        let mut tx = self.begin_write().await?;
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .op("read audit tail")?;
        let (seq, prev_hash) = match last {
            Some(row) => (
                row.try_get::<i64, _>("seq").op("read audit tail")? + 1,
                row.try_get::<String, _>("hash").op("read audit tail")?,
            ),
            None => (1, crate::GENESIS.to_owned()),
        };
        let hash = crate::row_hash(seq, &event, &prev_hash);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, source, action, target, outcome, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(seq)
        .bind(event.at)
        .bind(&event.actor)
        .bind(&event.source)
        .bind(&event.action)
        .bind(&event.target)
        .bind(&event.outcome)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *tx)
        .await
        .op("append audit row")?;
        tx.commit().await.op("commit audit row")?;
        Ok(AuditRow {
            seq,
            at: event.at,
            actor: event.actor,
            source: event.source,
            action: event.action,
            target: event.target,
            outcome: event.outcome,
            prev_hash,
            hash,
        })
    }

    async fn pass_query_plans(&self) -> Result<Vec<String>, StoreError> {
        let mut lines = Vec::new();
        for sql in crate::shared::pass_queries() {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain);
            if sql.contains("$1") {
                query = query.bind(Utc::now());
            }
            for row in query.fetch_all(self.reader()).await.op("explain a query")? {
                lines.push(row.try_get::<String, _>("detail").op("read a query plan")?);
            }
        }
        Ok(lines)
    }

    async fn refresh_statistics(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.op("refresh statistics")?;
        // Sampled: a bounded cost however long the history.
        sqlx::query("PRAGMA analysis_limit = 1000")
            .execute(&mut *conn)
            .await
            .op("refresh statistics")?;
        sqlx::query("ANALYZE")
            .execute(&mut *conn)
            .await
            .op("refresh statistics")?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .op("ping")?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds every column of a VM row in the order both VM statements use (start_id last).
fn bind_vm<'q>(query: SqliteQuery<'q>, vm: &'q VmRow) -> SqliteQuery<'q> {
    query
        .bind(&vm.vm_id)
        .bind(&vm.host)
        .bind(&vm.profile)
        .bind(vm.installation_id)
        .bind(&vm.repo)
        .bind(&vm.runner_name)
        .bind(vm.runner_id)
        .bind(vm.for_job_id)
        .bind(vm.ran_job_id)
        .bind(&vm.state)
        .bind(vm.requested_at)
        .bind(vm.started_at)
        .bind(vm.booted_at)
        .bind(vm.exited_at)
        .bind(vm.destroyed_at)
        .bind(vm.exit_code)
        .bind(vm.destroy_requested)
        .bind(vm.runner_deleted)
        .bind(&vm.destruction)
        .bind(&vm.failure)
        .bind(vm.runner_started_at)
        .bind(&vm.start_id)
        .bind(&vm.start_steps)
        .bind(vm.pool)
        .bind(&vm.image)
        .bind(vm.warm_at)
        .bind(vm.assigned_at)
}

crate::shared::shared_rows!(sqlx::sqlite::SqliteRow);
/// How this backend's generated statements write their binds.
const BINDS: crate::shared::Binds = crate::shared::Binds::Anonymous;

crate::shared::shared_job_events!(sqlx::SqliteConnection, "");
crate::shared::shared_methods!(SqliteStore);
