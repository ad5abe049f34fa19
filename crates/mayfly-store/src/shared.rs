//! Store methods whose SQL is the same on both backends (sqlx binds `$N` on SQLite too),
//! written once and expanded into each `impl Store`. Methods whose SQL differs (row locking,
//! upserts with backend types, the audit log's lock) stay in `sqlite.rs` and `postgres.rs`.

/// Row mappers for the shared methods, for a backend's row type.
macro_rules! shared_rows {
    ($row:ty) => {
        fn vm_from_row(row: &$row) -> Result<VmRow, StoreError> {
            let op = "read vm";
            Ok(VmRow {
                start_id: row.try_get("start_id").op(op)?,
                vm_id: row.try_get("vm_id").op(op)?,
                host: row.try_get("host").op(op)?,
                profile: row.try_get("profile").op(op)?,
                installation_id: row.try_get("installation_id").op(op)?,
                repo: row.try_get("repo").op(op)?,
                runner_name: row.try_get("runner_name").op(op)?,
                runner_id: row.try_get("runner_id").op(op)?,
                for_job_id: row.try_get("for_job_id").op(op)?,
                ran_job_id: row.try_get("ran_job_id").op(op)?,
                state: row.try_get("state").op(op)?,
                requested_at: row.try_get("requested_at").op(op)?,
                started_at: row.try_get("started_at").op(op)?,
                booted_at: row.try_get("booted_at").op(op)?,
                runner_started_at: row.try_get("runner_started_at").op(op)?,
                exited_at: row.try_get("exited_at").op(op)?,
                destroyed_at: row.try_get("destroyed_at").op(op)?,
                exit_code: row.try_get("exit_code").op(op)?,
                destroy_requested: row.try_get("destroy_requested").op(op)?,
                runner_deleted: row.try_get("runner_deleted").op(op)?,
                destruction: row.try_get("destruction").op(op)?,
                start_steps: row.try_get("start_steps").op(op)?,
                failure: row.try_get("failure").op(op)?,
                pool: row.try_get("pool").op(op)?,
                image: row.try_get("image").op(op)?,
                warm_at: row.try_get("warm_at").op(op)?,
                assigned_at: row.try_get("assigned_at").op(op)?,
            })
        }

        fn token_from_row(row: &$row) -> Result<TokenRow, StoreError> {
            let op = "read token";
            Ok(TokenRow {
                id: row.try_get("id").op(op)?,
                name: row.try_get("name").op(op)?,
                scope: row.try_get("scope").op(op)?,
                installation_id: row.try_get("installation_id").op(op)?,
                token_hash: row.try_get("token_hash").op(op)?,
                created_at: row.try_get("created_at").op(op)?,
                revoked_at: row.try_get("revoked_at").op(op)?,
            })
        }
        fn agent_from_row(row: &$row) -> Result<AgentRow, StoreError> {
            let op = "read agent";
            Ok(AgentRow {
                name: row.try_get("name").op(op)?,
                cert_sha256: row.try_get("cert_sha256").op(op)?,
                enrolled_at: row.try_get("enrolled_at").op(op)?,
                revoked_at: row.try_get("revoked_at").op(op)?,
            })
        }
    };
}

/// Replaces a VM row by its start id; binds in `bind_vm`'s order (`$N` on both backends).
pub(crate) const UPDATE_VM: &str = "UPDATE vms SET vm_id = $1, host = $2, profile = $3,
    installation_id = $4, repo = $5, runner_name = $6, runner_id = $7, for_job_id = $8,
    ran_job_id = $9, state = $10, requested_at = $11, started_at = $12, booted_at = $13,
    exited_at = $14, destroyed_at = $15, exit_code = $16, destroy_requested = $17,
    runner_deleted = $18, destruction = $19, failure = $20, runner_started_at = $21,
    start_steps = $23, pool = $24, image = $25, warm_at = $26, assigned_at = $27
  WHERE start_id = $22";

/// Binds as [`UPDATE_VM`] does.
pub(crate) const INSERT_VM: &str = "INSERT INTO vms (vm_id, host, profile, installation_id, repo,
    runner_name, runner_id, for_job_id, ran_job_id, state, requested_at, started_at, booted_at,
    exited_at, destroyed_at, exit_code, destroy_requested, runner_deleted, destruction, failure,
    runner_started_at, start_id, start_steps, pool, image, warm_at, assigned_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, $22, $23, $24, $25, $26, $27)";

/// A VM that can still change a scheduling decision: not gone, or gone with an idle runner still
/// to delete at GitHub. Repeated verbatim in queries so the `vms_open` partial index applies.
pub(crate) const OPEN_VM: &str =
    "(state NOT IN ('destroyed', 'failed', 'lost') OR (ran_job_id IS NULL AND NOT runner_deleted))";

/// The jobs a scheduling pass reads (see `CommonStore::open_jobs`); `$1` is `unbound_since`.
/// Without `undecided`, the jobs not yet decided are left out (the scheduler keeps those).
/// (`ran_job_id` may be NULL in the last part, which matches nothing: a `ran_job_id IS NOT NULL`
/// there lets SQLite without statistics walk `vms_by_ran_job`, every VM that ever ran a job.)
pub(crate) fn open_jobs_sql(undecided: bool) -> String {
    let first = if undecided {
        "disposition IN ('new', 'placing') OR (disposition = 'placed' AND status <> 'completed')"
    } else {
        "disposition = 'placed' AND status <> 'completed'"
    };
    format!(
        "SELECT * FROM jobs WHERE job_id IN (
           SELECT job_id FROM jobs WHERE {first}
           UNION SELECT job_id FROM jobs
             WHERE vm_start_id IS NULL AND runner_name IS NOT NULL AND updated_at >= $1
           UNION SELECT for_job_id FROM vms WHERE {OPEN_VM}
           UNION SELECT ran_job_id FROM vms WHERE {OPEN_VM})"
    )
}

/// Jobs not yet decided whose row changed at or after `$1` (a range of the
/// `jobs_undecided_by_updated` partial index).
pub(crate) const UNDECIDED_CHANGED_SINCE: &str =
    "SELECT * FROM jobs WHERE disposition IN ('new', 'placing') AND updated_at >= $1";

/// The VMs a scheduling pass reads.
pub(crate) fn open_vms_sql() -> String {
    format!("SELECT * FROM vms WHERE {OPEN_VM}")
}

/// The id and stamp of every job not yet decided (through the `jobs_undecided_by_updated`
/// partial index).
pub(crate) const UNDECIDED_STAMPS: &str =
    "SELECT job_id, updated_at FROM jobs WHERE disposition IN ('new', 'placing')";

/// The SELECTs every scheduling pass makes, for query-plan checks; each binds one timestamp as
/// `$1` (a query that has no `$1` ignores it).
pub(crate) fn pass_queries() -> Vec<String> {
    vec![
        open_jobs_sql(true),
        open_jobs_sql(false),
        UNDECIDED_CHANGED_SINCE.to_owned(),
        UNDECIDED_STAMPS.to_owned(),
        open_vms_sql(),
        SILENT_AGENTS_VMS.to_owned(),
    ]
}

/// VMs neither gone nor given up on, requested before `$1`, whose agent no server heard from
/// since `$1`.
pub(crate) const SILENT_AGENTS_VMS: &str =
    "SELECT vms.* FROM vms LEFT JOIN agent_journals ON agent_journals.agent = vms.host
     WHERE state NOT IN ('destroyed', 'failed', 'lost') AND requested_at < $1
       AND (agent_journals.seen_at IS NULL OR agent_journals.seen_at < $1)";

/// Oldest first. The queries that read through partial indexes sort here, not in SQL: an
/// `ORDER BY` that an index of all rows matches tempts SQLite's planner into walking that whole
/// index instead (it did, with a million finished jobs: 0.9 ms became 1.9 s).
pub(crate) fn jobs_oldest_first(mut jobs: Vec<crate::JobRecord>) -> Vec<crate::JobRecord> {
    jobs.sort_unstable_by_key(|j| (j.first_seen_at, j.job_id.0));
    jobs
}

/// Oldest first (see [`jobs_oldest_first`]).
pub(crate) fn vms_oldest_first(mut vms: Vec<crate::VmRow>) -> Vec<crate::VmRow> {
    vms.sort_by(|a, b| (a.requested_at, &a.start_id).cmp(&(b.requested_at, &b.start_id)));
    vms
}

/// `$first, …`, `n` of them.
pub(crate) fn placeholders_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a backend numbers the binds of statements generated for a list.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binds {
    /// `$1, $2, …` (PostgreSQL).
    Numbered,
    /// `?, ?, …`, bound in the order they appear (SQLite). SQLite finds a numbered bind by
    /// walking the statement's list of names, when parsing and again when binding, so a
    /// statement of n numbered binds costs n²: a 25-row insert of jobs (500 binds) spent most
    /// of its time there.
    Anonymous,
}

impl Binds {
    /// Binds `first ..= first + n - 1`, comma-separated. With `Anonymous`, the statement's
    /// binds must all be written by this, in the order they are bound.
    pub(crate) fn list(self, first: usize, n: usize) -> String {
        match self {
            Binds::Numbered => placeholders_from(first, n),
            Binds::Anonymous => vec!["?"; n].join(", "),
        }
    }

    /// `n`-bind rows of `rows`, `(…), (…)`, numbered from `first`.
    pub(crate) fn rows(self, first: usize, rows: usize, n: usize) -> String {
        (0..rows)
            .map(|r| format!("({})", self.list(first + r * n, n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Lookups by a list of keys go in chunks of this many binds. Statements whose text depends on
/// how many keys there are run unprepared-and-uncached (`persistent(false)`): cached, each
/// length would keep a compiled statement of hundreds of parameters in every connection.
pub(crate) const IN_CHUNK: usize = 500;

/// Seeds history for benchmarks and tests: `$1` jobs, ids from `$2`, completed at `$3`, each
/// run by its own destroyed VM.
pub(crate) const SEED_JOBS: &str =
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1)
    INSERT INTO jobs (job_id, run_id, installation_id, repo, repo_id, org, sender, status,
      conclusion, labels, job_name, workflow_name, runner_id, runner_name, created_at, started_at,
      completed_at, first_seen_at, updated_at, profile, disposition, attempts, vm_start_id)
    SELECT $2 + i, $2 + i, 1, 'history/seeded', 1, 'history', 'seeder', 'completed', 'success',
      '[\"self-hosted\"]', 'seeded', 'seeded', $2 + i, 'seeded-' || ($2 + i), $3, $3, $3, $3, $3,
      'seeded', 'placed', 1, 'seeded-' || ($2 + i)
    FROM n";
pub(crate) const SEED_VMS: &str =
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1)
    INSERT INTO vms (start_id, vm_id, host, profile, installation_id, repo, runner_name,
      runner_id, for_job_id, ran_job_id, state, requested_at, started_at, booted_at, exited_at,
      destroyed_at, exit_code, destroy_requested, runner_deleted, runner_started_at)
    SELECT 'seeded-' || ($2 + i), 'seeded-' || ($2 + i), 'history-host', 'seeded', 1,
      'history/seeded', 'seeded-' || ($2 + i), $2 + i, $2 + i, $2 + i, 'destroyed', $3, $3, $3, $3,
      $3, 0, TRUE, TRUE, $3
    FROM n";

/// Job events applied inside `conn`'s transaction (see `Store::apply_job_events`), and the
/// delivery bookkeeping every apply shares. The backend module's `roll_up_usage` is used; `$lock`
/// is the row lock clause (`FOR UPDATE` where rows lock, empty on SQLite, whose writers are
/// serialised).
macro_rules! shared_job_events {
    ($conn:ty, $lock:literal) => {
        /// Marks a delivery processed if it is not yet; `false` when it already was (by another
        /// server). In a transaction, the row stays locked until commit, so of two racing
        /// writers exactly one gets `true`.
        async fn claim_unprocessed(
            conn: &mut $conn,
            delivery: &DeliveryId,
            now: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            Ok(claim_all_unprocessed(conn, &[delivery.as_str()], now)
                .await?
                .contains(delivery.as_str()))
        }

        /// Marks each of `deliveries` processed that was not yet, one statement a chunk;
        /// returns those it marked.
        async fn claim_all_unprocessed(
            conn: &mut $conn,
            deliveries: &[&str],
            now: DateTime<Utc>,
        ) -> Result<std::collections::HashSet<String>, StoreError> {
            let mut claimed = std::collections::HashSet::new();
            for chunk in deliveries.chunks(crate::shared::IN_CHUNK) {
                let sql = format!(
                    "UPDATE deliveries SET processed_at = {}
                     WHERE processed_at IS NULL AND delivery_id IN ({})
                     RETURNING delivery_id",
                    BINDS.list(1, 1),
                    BINDS.list(2, chunk.len())
                );
                let mut query = sqlx::query_scalar::<_, String>(&sql)
                    .persistent(false)
                    .bind(now);
                for id in chunk {
                    query = query.bind(*id);
                }
                claimed.extend(
                    query
                        .fetch_all(&mut *conn)
                        .await
                        .op("mark deliveries processed")?,
                );
            }
            Ok(claimed)
        }

        /// Inserts the deliveries not recorded before, a statement a chunk, and says for each
        /// whether it was new; of a batch's copies of one id, the first is the one recorded.
        /// With `processed_at`, job events are inserted processed at that time (their
        /// transaction applies them); other events are left for the processor.
        async fn insert_deliveries(
            conn: &mut $conn,
            batch: &[NewDelivery],
            processed_at: Option<DateTime<Utc>>,
        ) -> Result<Vec<Recorded>, StoreError> {
            let mut new = std::collections::HashSet::new();
            for chunk in batch.chunks(crate::shared::IN_CHUNK / 6) {
                let sql = format!(
                    "INSERT INTO deliveries (delivery_id, event, action, received_at, intake,
                       processed_at)
                     VALUES {} ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id",
                    BINDS.rows(1, chunk.len(), 6)
                );
                let mut query = sqlx::query_scalar::<_, String>(&sql).persistent(false);
                for d in chunk {
                    query = query
                        .bind(d.delivery_id.as_str())
                        .bind(&d.event)
                        .bind(&d.action)
                        .bind(d.received_at)
                        .bind(crate::codec::to_json(&d.intake, "intake event")?)
                        .bind(processed_at.filter(|_| {
                            matches!(d.intake, mayfly_core::IntakeEvent::Job(_))
                        }));
                }
                new.extend(
                    query
                        .fetch_all(&mut *conn)
                        .await
                        .op("record deliveries")?,
                );
            }
            Ok(batch
                .iter()
                .map(|d| {
                    if new.remove(d.delivery_id.as_str()) {
                        Recorded::New
                    } else {
                        Recorded::Duplicate
                    }
                })
                .collect())
        }

        async fn set_outcome(
            conn: &mut $conn,
            delivery: &DeliveryId,
            outcome: &str,
        ) -> Result<(), StoreError> {
            set_outcomes(conn, &[(delivery.as_str(), outcome.to_owned())]).await
        }

        /// Records each delivery's outcome, one statement a chunk.
        async fn set_outcomes(
            conn: &mut $conn,
            outcomes: &[(&str, String)],
        ) -> Result<(), StoreError> {
            for chunk in outcomes.chunks(crate::shared::IN_CHUNK / 2) {
                let sql = format!(
                    "WITH v (id, outcome) AS (VALUES {})
                     UPDATE deliveries SET outcome = v.outcome FROM v
                     WHERE deliveries.delivery_id = v.id",
                    BINDS.rows(1, chunk.len(), 2)
                );
                let mut query = sqlx::query(&sql).persistent(false);
                for (id, outcome) in chunk {
                    query = query.bind(*id).bind(outcome);
                }
                query
                    .execute(&mut *conn)
                    .await
                    .op("record delivery outcomes")?;
            }
            Ok(())
        }

        /// Inserts the job of each event unless the store has it, one statement a chunk, in the
        /// events' order; returns the ids inserted. Of two writers racing on a new job, one
        /// inserts and the other waits for it to commit, then finds the job there.
        async fn insert_new_jobs(
            conn: &mut $conn,
            events: &[&JobEvent],
            now: DateTime<Utc>,
            ignored: &std::collections::HashSet<i64>,
        ) -> Result<std::collections::HashSet<i64>, StoreError> {
            const COLUMNS: usize = 20;
            let mut inserted = std::collections::HashSet::new();
            for chunk in events.chunks(crate::shared::IN_CHUNK / COLUMNS) {
                let sql = format!(
                    "INSERT INTO jobs (job_id, run_id, installation_id, repo, repo_id, org, sender,
                       status, conclusion, labels, job_name, workflow_name, runner_id,
                       runner_name, created_at, started_at, completed_at, first_seen_at,
                       updated_at, disposition)
                     VALUES {} ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
                    BINDS.rows(1, chunk.len(), COLUMNS)
                );
                let mut query = sqlx::query_scalar::<_, i64>(&sql).persistent(false);
                for e in chunk {
                    query = query
                        .bind(e.job_id.0)
                        .bind(e.run_id.0)
                        .bind(e.installation_id.map(|i| i.0))
                        .bind(e.repo.to_string())
                        .bind(e.repo_id)
                        .bind(&e.org)
                        .bind(&e.sender)
                        .bind(e.status.as_str())
                        .bind(&e.conclusion)
                        .bind(crate::codec::to_json(&e.labels, "job labels")?)
                        .bind(&e.job_name)
                        .bind(&e.workflow_name)
                        .bind(e.runner_id)
                        .bind(&e.runner_name)
                        .bind(e.created_at)
                        .bind(e.started_at)
                        .bind(e.completed_at)
                        .bind(now)
                        .bind(now)
                        .bind(if e.status == JobStatus::Queued && ignored.contains(&e.job_id.0) {
                            "ignored"
                        } else {
                            "new"
                        });
                }
                inserted.extend(query.fetch_all(&mut *conn).await.op("insert jobs")?);
            }
            Ok(inserted)
        }

        /// Applies `e` to its job, which the store already has, under the job's row lock.
        async fn update_job(
            conn: &mut $conn,
            e: &JobEvent,
            now: DateTime<Utc>,
        ) -> Result<Transition, StoreError> {
            let raw: String = sqlx::query_scalar(concat!(
                "SELECT status FROM jobs WHERE job_id = $1 ",
                $lock
            ))
            .bind(e.job_id.0)
            .fetch_one(&mut *conn)
            .await
            .op("read job status")?;
            let current = JobStatus::parse(&raw).ok_or(StoreError::Corrupt { what: "job status" })?;
            let transition = current.transition(e.status);
            let new_status = match transition {
                Transition::Advance(next) => next,
                Transition::Unchanged | Transition::Stale => current,
            };
            // A stale delivery may still carry facts not yet known (say, the runner's name from
            // an `in_progress` that arrived after `completed`): fill gaps, never overwrite.
            let advance = matches!(transition, Transition::Advance(_));
            sqlx::query(
                "UPDATE jobs SET status = $1,
                   conclusion = CASE WHEN $2 THEN COALESCE($3, conclusion)
                                ELSE COALESCE(conclusion, $3) END,
                   runner_id = COALESCE(runner_id, $4), runner_name = COALESCE(runner_name, $5),
                   installation_id = COALESCE(installation_id, $6),
                   started_at = COALESCE(started_at, $7), completed_at = COALESCE(completed_at, $8),
                   created_at = COALESCE(created_at, $9), updated_at = $10
                 WHERE job_id = $11",
            )
            .bind(new_status.as_str())
            .bind(advance)
            .bind(&e.conclusion)
            .bind(e.runner_id)
            .bind(&e.runner_name)
            .bind(e.installation_id.map(|i| i.0))
            .bind(e.started_at)
            .bind(e.completed_at)
            .bind(e.created_at)
            .bind(now)
            .bind(e.job_id.0)
            .execute(&mut *conn)
            .await
            .op("update job")?;
            Ok(transition)
        }

        /// A batch of job events in one transaction, a handful of statements for the batch
        /// where it brings new jobs: its deliveries claimed at once, every new job inserted at
        /// once (from its first event), the outcomes recorded at once; only an event for a job
        /// already in the store takes a statement pair of its own. Rows are locked in job id
        /// order, so two servers' batches never deadlock; a job's own events keep their order.
        /// A job of `ignored` that comes new and queued is inserted decided: `ignored`.
        async fn apply_job_events_in(
            conn: &mut $conn,
            batch: &[(DeliveryId, JobEvent)],
            now: DateTime<Utc>,
            ignored: &std::collections::HashSet<i64>,
        ) -> Result<Vec<Option<Transition>>, StoreError> {
            let mut order: Vec<usize> = (0..batch.len()).collect();
            order.sort_by_key(|&i| batch[i].1.job_id.0);
            let ids: Vec<&str> = order.iter().map(|&i| batch[i].0.as_str()).collect();
            let mut claimed = claim_all_unprocessed(&mut *conn, &ids, now).await?;
            // A delivery already processed (or twice in the batch) is applied once at most.
            let mine: Vec<usize> = order
                .into_iter()
                .filter(|&i| claimed.remove(batch[i].0.as_str()))
                .collect();
            apply_claimed_in(conn, batch, mine, now, ignored).await
        }

        /// Applies the events at `mine` (indexes into `batch`, in job id order), whose
        /// deliveries this transaction has marked processed; the rest are left `None`.
        async fn apply_claimed_in(
            conn: &mut $conn,
            batch: &[(DeliveryId, JobEvent)],
            mine: Vec<usize>,
            now: DateTime<Utc>,
            ignored: &std::collections::HashSet<i64>,
        ) -> Result<Vec<Option<Transition>>, StoreError> {
            let mut seen = std::collections::HashSet::new();
            let firsts: Vec<&JobEvent> = mine
                .iter()
                .map(|&i| &batch[i].1)
                .filter(|e| seen.insert(e.job_id.0))
                .collect();
            let mut fresh = insert_new_jobs(&mut *conn, &firsts, now, ignored).await?;
            let mut out = vec![None; batch.len()];
            let mut outcomes = Vec::with_capacity(mine.len());
            for i in mine {
                let (delivery, e) = &batch[i];
                // The first event of a job just inserted is its insertion.
                let transition = if fresh.remove(&e.job_id.0) {
                    Transition::Advance(e.status)
                } else {
                    update_job(&mut *conn, e, now).await?
                };
                if transition == Transition::Advance(JobStatus::Completed) {
                    roll_up_usage(&mut *conn, e.job_id).await?;
                }
                let outcome = match transition {
                    Transition::Advance(s) => format!("job {} → {}", e.job_id, s.as_str()),
                    Transition::Unchanged => format!("job {} unchanged", e.job_id),
                    Transition::Stale => format!("job {} stale event ignored", e.job_id),
                };
                outcomes.push((delivery.as_str(), outcome));
                out[i] = Some(transition);
            }
            set_outcomes(&mut *conn, &outcomes).await?;
            Ok(out)
        }
    };
}

/// `CommonStore` for a backend whose `self.pool` and `self.begin_write()` exist.
macro_rules! shared_methods {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl crate::CommonStore for $store {
            async fn jobs_seen_between(
                &self,
                from: DateTime<Utc>,
                to: DateTime<Utc>,
            ) -> Result<(Vec<JobRecord>, Vec<VmRow>), StoreError> {
                let jobs = sqlx::query(
                    "SELECT * FROM jobs WHERE first_seen_at >= $1 AND first_seen_at < $2
                     ORDER BY first_seen_at, job_id",
                )
                .bind(from)
                .bind(to)
                .fetch_all(self.reader())
                .await
                .op("list jobs in range")?;
                let vms = sqlx::query(
                    "SELECT * FROM vms WHERE for_job_id IN
                       (SELECT job_id FROM jobs WHERE first_seen_at >= $1 AND first_seen_at < $2)
                     ORDER BY requested_at, start_id",
                )
                .bind(from)
                .bind(to)
                .fetch_all(self.reader())
                .await
                .op("list vms in range")?;
                Ok((
                    jobs.iter().map(job_from_row).collect::<Result<_, _>>()?,
                    vms.iter().map(vm_from_row).collect::<Result<_, _>>()?,
                ))
            }
            async fn claim_job(
                &self,
                job: JobId,
                owner: &str,
                profile: &str,
                now: DateTime<Utc>,
                stale_before: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let updated = sqlx::query(
                    "UPDATE jobs SET disposition = 'placing', claimed_by = $1, claimed_at = $2,
                       profile = $5
                     WHERE job_id = $3
                       AND (disposition = 'new' OR (disposition = 'placing' AND claimed_at < $4))",
                )
                .bind(owner)
                .bind(now)
                .bind(job.0)
                .bind(stale_before)
                .bind(profile)
                .execute(&self.pool)
                .await
                .op("claim job")?
                .rows_affected();
                Ok(updated == 1)
            }
            async fn try_lease(
                &self,
                name: &str,
                holder: &str,
                now: DateTime<Utc>,
                until: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let updated = sqlx::query(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                       expires_at = excluded.expires_at
                     WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await
                .op("take lease")?
                .rows_affected();
                Ok(updated == 1)
            }
            async fn vm(&self, start_id: &str) -> Result<Option<VmRow>, StoreError> {
                let row = sqlx::query("SELECT * FROM vms WHERE start_id = $1")
                    .bind(start_id)
                    .fetch_optional(self.reader())
                    .await
                    .op("read vm")?;
                row.as_ref().map(vm_from_row).transpose()
            }
            async fn agent_heard(
                &self,
                agent: &str,
                epoch: &str,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO agent_journals (agent, epoch, applied_seq, seen_at)
                     VALUES ($1, $2, 0, $3)
                     ON CONFLICT (agent) DO UPDATE SET
                       applied_seq = CASE WHEN agent_journals.epoch = excluded.epoch
                                     THEN agent_journals.applied_seq ELSE 0 END,
                       epoch = excluded.epoch,
                       seen_at = CASE WHEN agent_journals.seen_at > excluded.seen_at
                                 THEN agent_journals.seen_at ELSE excluded.seen_at END",
                )
                .bind(agent)
                .bind(epoch)
                .bind(at)
                .execute(&self.pool)
                .await
                .op("record an agent heard from")?;
                Ok(())
            }
            async fn apply_agent_event(
                &self,
                agent: &str,
                epoch: &str,
                seq: i64,
                vm: Option<&VmRow>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.begin_write().await?;
                let moved = sqlx::query(
                    "UPDATE agent_journals SET applied_seq = $3
                     WHERE agent = $1 AND epoch = $2 AND applied_seq < $3",
                )
                .bind(agent)
                .bind(epoch)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .op("advance an agent's journal")?
                .rows_affected();
                if moved != 1 {
                    return Ok(false);
                }
                if let Some(vm) = vm {
                    bind_vm(sqlx::query(crate::shared::UPDATE_VM), vm)
                        .execute(&mut *tx)
                        .await
                        .op("update vm")?;
                }
                tx.commit().await.op("commit an agent event")?;
                Ok(true)
            }
            async fn agent_journal(&self, agent: &str) -> Result<Option<AgentJournal>, StoreError> {
                let row = sqlx::query(
                    "SELECT agent, epoch, applied_seq, seen_at FROM agent_journals WHERE agent = $1",
                )
                .bind(agent)
                .fetch_optional(self.reader())
                .await
                .op("read an agent's journal position")?;
                let op = "read an agent's journal position";
                row.map(|row| {
                    Ok(AgentJournal {
                        agent: row.try_get("agent").op(op)?,
                        epoch: row.try_get("epoch").op(op)?,
                        applied_seq: row.try_get("applied_seq").op(op)?,
                        seen_at: row.try_get("seen_at").op(op)?,
                    })
                })
                .transpose()
            }
            async fn record_deliveries(
                &self,
                batch: &[NewDelivery],
            ) -> Result<Vec<Recorded>, StoreError> {
                let mut tx = self.begin_write().await?;
                let recorded = insert_deliveries(&mut tx, batch, None).await?;
                tx.commit().await.op("commit recorded deliveries")?;
                Ok(recorded)
            }
            async fn record_and_apply(
                &self,
                batch: &[NewDelivery],
                now: DateTime<Utc>,
                ignored: &std::collections::HashSet<i64>,
            ) -> Result<crate::Intake, StoreError> {
                // Job events are inserted processed, and so are this transaction's alone (a
                // row another server inserts at the same time conflicts and is a duplicate):
                // no claim is needed before applying them.
                let mut tx = self.begin_write().await?;
                let recorded = insert_deliveries(&mut tx, batch, Some(now)).await?;
                let (at, events): (Vec<usize>, Vec<(DeliveryId, JobEvent)>) = batch
                    .iter()
                    .zip(&recorded)
                    .enumerate()
                    .filter_map(|(i, (d, r))| match (r, &d.intake) {
                        (Recorded::New, mayfly_core::IntakeEvent::Job(job)) => {
                            Some((i, (d.delivery_id.clone(), job.clone())))
                        }
                        _ => None,
                    })
                    .unzip();
                let mut order: Vec<usize> = (0..events.len()).collect();
                order.sort_by_key(|&i| events[i].1.job_id.0);
                match apply_claimed_in(&mut tx, &events, order, now, ignored).await {
                    Ok(transitions) => {
                        tx.commit().await.op("commit recorded deliveries")?;
                        let mut applied = vec![None; batch.len()];
                        for (i, transition) in at.into_iter().zip(transitions) {
                            applied[i] = transition;
                        }
                        Ok(crate::Intake {
                            recorded,
                            applied,
                            apply_error: None,
                        })
                    }
                    Err(e) => {
                        // Rare: recorded again without applying, for the processor.
                        tx.rollback().await.op("roll back applying deliveries")?;
                        let recorded = self.record_deliveries(batch).await?;
                        Ok(crate::Intake {
                            applied: vec![None; recorded.len()],
                            recorded,
                            apply_error: Some(e),
                        })
                    }
                }
            }
            async fn apply_job_events(
                &self,
                batch: &[(DeliveryId, JobEvent)],
                now: DateTime<Utc>,
            ) -> Result<Vec<Option<Transition>>, StoreError> {
                let mut tx = self.begin_write().await?;
                let out = apply_job_events_in(&mut tx, batch, now, &Default::default()).await?;
                tx.commit().await.op("commit job events")?;
                Ok(out)
            }
            async fn undecided_changed_since(
                &self,
                since: DateTime<Utc>,
            ) -> Result<Vec<JobRecord>, StoreError> {
                let mut rows = sqlx::query(crate::shared::UNDECIDED_CHANGED_SINCE)
                    .bind(since)
                    .fetch(self.reader());
                let mut jobs = Vec::new();
                while let Some(row) = futures::TryStreamExt::try_next(&mut rows)
                    .await
                    .op("list changed jobs")?
                {
                    jobs.push(job_from_row(&row)?);
                }
                Ok(jobs)
            }
            async fn undecided_stamps(&self) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError> {
                sqlx::query_as(crate::shared::UNDECIDED_STAMPS)
                    .fetch_all(self.reader())
                    .await
                    .op("list undecided jobs' stamps")
            }
            async fn open_jobs(
                &self,
                unbound_since: DateTime<Utc>,
                undecided: bool,
            ) -> Result<Vec<JobRecord>, StoreError> {
                // Streamed: each row becomes a job as it arrives, so a backlog of thousands of
                // queued jobs is never held twice (as rows and as jobs).
                let sql = crate::shared::open_jobs_sql(undecided);
                let mut rows = sqlx::query(&sql).bind(unbound_since).fetch(self.reader());
                let mut jobs = Vec::new();
                while let Some(row) = futures::TryStreamExt::try_next(&mut rows)
                    .await
                    .op("list open jobs")?
                {
                    jobs.push(job_from_row(&row)?);
                }
                Ok(crate::shared::jobs_oldest_first(jobs))
            }
            async fn queued_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM jobs WHERE status = 'queued'",
                )
                .fetch_all(self.reader())
                .await
                .op("list queued jobs")?;
                rows.iter()
                    .map(job_from_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map(crate::shared::jobs_oldest_first)
            }
            async fn open_vms(&self) -> Result<Vec<VmRow>, StoreError> {
                let rows = sqlx::query(&crate::shared::open_vms_sql())
                    .fetch_all(self.reader())
                    .await
                    .op("list open vms")?;
                rows.iter()
                    .map(vm_from_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map(crate::shared::vms_oldest_first)
            }
            async fn jobs_page(
                &self,
                installation: Option<i64>,
                after: Option<i64>,
                limit: u32,
            ) -> Result<Vec<JobRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM jobs
                     WHERE (CAST($1 AS BIGINT) IS NULL OR installation_id = $1) AND job_id > $2
                     ORDER BY job_id LIMIT $3",
                )
                .bind(installation)
                .bind(after.unwrap_or(i64::MIN))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await
                .op("list a page of jobs")?;
                rows.iter().map(job_from_row).collect()
            }
            async fn vms_page(
                &self,
                installation: Option<i64>,
                after: Option<(DateTime<Utc>, String)>,
                limit: u32,
            ) -> Result<Vec<VmRow>, StoreError> {
                let (at, start_id) = after.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, String::new()));
                let rows = sqlx::query(
                    "SELECT * FROM vms
                     WHERE (CAST($1 AS BIGINT) IS NULL OR installation_id = $1)
                       AND (requested_at > $2 OR (requested_at = $2 AND start_id > $3))
                     ORDER BY requested_at, start_id LIMIT $4",
                )
                .bind(installation)
                .bind(at)
                .bind(start_id)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await
                .op("list a page of vms")?;
                rows.iter().map(vm_from_row).collect()
            }
            async fn vms_by_key(
                &self,
                key: crate::VmKey,
                values: &[String],
            ) -> Result<Vec<VmRow>, StoreError> {
                let column = match key {
                    crate::VmKey::StartId => "start_id",
                    crate::VmKey::RunnerName => "runner_name",
                };
                let mut out = Vec::new();
                for chunk in values.chunks(crate::shared::IN_CHUNK) {
                    let sql = format!(
                        "SELECT * FROM vms WHERE {column} IN ({})",
                        BINDS.list(1, chunk.len())
                    );
                    let mut query = sqlx::query(&sql).persistent(false);
                    for value in chunk {
                        query = query.bind(value);
                    }
                    let rows = query.fetch_all(self.reader()).await.op("look up vms")?;
                    for row in &rows {
                        out.push(vm_from_row(row)?);
                    }
                }
                Ok(out)
            }
            async fn jobs_by_id(&self, ids: &[i64]) -> Result<Vec<JobRecord>, StoreError> {
                let mut out = Vec::new();
                for chunk in ids.chunks(crate::shared::IN_CHUNK) {
                    let sql = format!(
                        "SELECT * FROM jobs WHERE job_id IN ({})",
                        BINDS.list(1, chunk.len())
                    );
                    let mut query = sqlx::query(&sql).persistent(false);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    let rows = query.fetch_all(self.reader()).await.op("look up jobs")?;
                    for row in &rows {
                        out.push(job_from_row(row)?);
                    }
                }
                Ok(out)
            }
            async fn vms_for_job(&self, job: JobId) -> Result<Vec<VmRow>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM vms WHERE for_job_id = $1",
                )
                .bind(job.0)
                .fetch_all(self.reader())
                .await
                .op("list a job's vms")?;
                rows.iter()
                    .map(vm_from_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map(crate::shared::vms_oldest_first)
            }
            async fn vms_on_host(&self, host: &str) -> Result<Vec<VmRow>, StoreError> {
                let rows = sqlx::query(
                    "SELECT * FROM vms WHERE host = $1 AND state NOT IN ('destroyed')",
                )
                .bind(host)
                .fetch_all(self.reader())
                .await
                .op("list a host's vms")?;
                rows.iter()
                    .map(vm_from_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map(crate::shared::vms_oldest_first)
            }
            async fn set_job_dispatches(
                &self,
                rows: &[(JobId, JobDispatch)],
            ) -> Result<(), StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write().await?;
                for (job, d) in rows {
                    sqlx::query(
                        "UPDATE jobs SET profile = $1, disposition = $2, failure = $3, attempts = $4,
                           vm_start_id = $5
                         WHERE job_id = $6",
                    )
                    .bind(&d.profile)
                    .bind(&d.disposition)
                    .bind(&d.failure)
                    .bind(i64::from(d.attempts))
                    .bind(&d.vm_start_id)
                    .bind(job.0)
                    .execute(&mut *tx)
                    .await
                    .op("set job dispatch")?;
                }
                tx.commit().await.op("commit job dispatches")?;
                Ok(())
            }
            async fn seed_history(
                &self,
                jobs: u32,
                first_id: i64,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                for sql in [crate::shared::SEED_JOBS, crate::shared::SEED_VMS] {
                    sqlx::query(sql)
                        .bind(i64::from(jobs))
                        .bind(first_id)
                        .bind(at)
                        .execute(&mut *tx)
                        .await
                        .op("seed history")?;
                }
                tx.commit().await.op("commit seeded history")?;
                // A bulk load: let the planner know the tables' new shape.
                sqlx::query("ANALYZE")
                    .execute(&self.pool)
                    .await
                    .op("analyze seeded history")?;
                Ok(())
            }
            async fn vms_of_silent_agents(
                &self,
                before: DateTime<Utc>,
            ) -> Result<Vec<VmRow>, StoreError> {
                let rows = sqlx::query(crate::shared::SILENT_AGENTS_VMS)
                .bind(before)
                .fetch_all(self.reader())
                .await
                .op("list VMs of silent agents")?;
                rows.iter()
                    .map(vm_from_row)
                    .collect::<Result<Vec<_>, _>>()
                    .map(crate::shared::vms_oldest_first)
            }
            async fn usage(&self, installation: Option<i64>) -> Result<Vec<UsageRow>, StoreError> {
                let rows = sqlx::query(
                    "SELECT installation_id, day, profile, jobs, run_seconds FROM usage_daily
                     WHERE COALESCE($1, installation_id) = installation_id ORDER BY day, installation_id, profile",
                )
                .bind(installation)
                .fetch_all(self.reader())
                .await
                .op("read usage")?;
                let op = "read usage";
                rows.iter()
                    .map(|row| {
                        Ok(UsageRow {
                            installation_id: row.try_get("installation_id").op(op)?,
                            day: row.try_get("day").op(op)?,
                            profile: row.try_get("profile").op(op)?,
                            jobs: row.try_get("jobs").op(op)?,
                            run_seconds: row.try_get("run_seconds").op(op)?,
                        })
                    })
                    .collect()
            }
            async fn data_keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, master_key_id, wrapped, created_at FROM data_keys ORDER BY created_at, id",
                )
                .fetch_all(self.reader())
                .await
                .op("read data keys")?;
                let op = "read data keys";
                rows.iter()
                    .map(|row| {
                        Ok(WrappedKey {
                            id: row.try_get("id").op(op)?,
                            master_key_id: row.try_get("master_key_id").op(op)?,
                            wrapped: row.try_get("wrapped").op(op)?,
                            created_at: row.try_get("created_at").op(op)?,
                        })
                    })
                    .collect()
            }
            async fn insert_data_key(&self, key: &WrappedKey) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO data_keys (id, master_key_id, wrapped, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&key.id)
                .bind(&key.master_key_id)
                .bind(&key.wrapped)
                .bind(key.created_at)
                .execute(&self.pool)
                .await
                .op("insert data key")?;
                Ok(())
            }
            async fn rewrap_data_keys(&self, keys: &[WrappedKey]) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                for key in keys {
                    sqlx::query("UPDATE data_keys SET master_key_id = $1, wrapped = $2 WHERE id = $3")
                        .bind(&key.master_key_id)
                        .bind(&key.wrapped)
                        .bind(&key.id)
                        .execute(&mut *tx)
                        .await
                        .op("re-wrap data key")?;
                }
                tx.commit().await.op("commit re-wrap")?;
                Ok(())
            }
            async fn put_secret(&self, row: &SealedRow, now: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO secrets (kind, name, data_key_id, sealed, updated_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (kind, name) DO UPDATE SET data_key_id = excluded.data_key_id,
                       sealed = excluded.sealed, updated_at = excluded.updated_at",
                )
                .bind(&row.kind)
                .bind(&row.name)
                .bind(&row.data_key_id)
                .bind(&row.sealed)
                .bind(now)
                .execute(&self.pool)
                .await
                .op("store sealed value")?;
                Ok(())
            }
            async fn secret(&self, kind: &str, name: &str) -> Result<Option<SealedRow>, StoreError> {
                let row = sqlx::query(
                    "SELECT kind, name, data_key_id, sealed FROM secrets WHERE kind = $1 AND name = $2",
                )
                .bind(kind)
                .bind(name)
                .fetch_optional(self.reader())
                .await
                .op("read sealed value")?;
                let op = "read sealed value";
                row.map(|row| {
                    Ok(SealedRow {
                        kind: row.try_get("kind").op(op)?,
                        name: row.try_get("name").op(op)?,
                        data_key_id: row.try_get("data_key_id").op(op)?,
                        sealed: row.try_get("sealed").op(op)?,
                    })
                })
                .transpose()
            }
            async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO api_tokens (id, name, scope, installation_id, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.scope)
                .bind(t.installation_id)
                .bind(&t.token_hash)
                .bind(t.created_at)
                .execute(&self.pool)
                .await
                .op("insert token")?;
                Ok(())
            }
            async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError> {
                let row = sqlx::query("SELECT * FROM api_tokens WHERE token_hash = $1")
                    .bind(hash)
                    .fetch_optional(self.reader())
                    .await
                    .op("read token")?;
                row.as_ref().map(token_from_row).transpose()
            }
            async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
                let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY created_at, id")
                    .fetch_all(self.reader())
                    .await
                    .op("list tokens")?;
                rows.iter().map(token_from_row).collect()
            }
            async fn revoke_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let updated = sqlx::query(
                    "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .op("revoke token")?
                .rows_affected();
                Ok(updated == 1)
            }
            async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
                let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await
                    .op("read audit log")?;
                let op = "read audit log";
                rows.iter()
                    .map(|row| {
                        Ok(AuditRow {
                            seq: row.try_get("seq").op(op)?,
                            at: row.try_get("at").op(op)?,
                            actor: row.try_get("actor").op(op)?,
                            source: row.try_get("source").op(op)?,
                            action: row.try_get("action").op(op)?,
                            target: row.try_get("target").op(op)?,
                            outcome: row.try_get("outcome").op(op)?,
                            prev_hash: row.try_get("prev_hash").op(op)?,
                            hash: row.try_get("hash").op(op)?,
                        })
                    })
                    .collect()
            }
            async fn insert_bootstrap(&self, b: &BootstrapRow) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO agent_bootstraps (id, agent_name, secret_hash, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&b.id)
                .bind(&b.agent_name)
                .bind(&b.secret_hash)
                .bind(b.created_at)
                .bind(b.expires_at)
                .execute(&self.pool)
                .await
                .op("insert bootstrap token")?;
                Ok(())
            }
            async fn consume_bootstrap(
                &self,
                id: &str,
                secret_hash: &str,
                now: DateTime<Utc>,
            ) -> Result<BootstrapUse, StoreError> {
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(
                    "SELECT agent_name, secret_hash, expires_at, used_at FROM agent_bootstraps WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .op("read bootstrap token")?;
                let op = "read bootstrap token";
                let Some(row) = row else {
                    return Ok(BootstrapUse::Unknown);
                };
                let stored: String = row.try_get("secret_hash").op(op)?;
                if stored != secret_hash {
                    return Ok(BootstrapUse::Unknown);
                }
                if row
                    .try_get::<Option<DateTime<Utc>>, _>("used_at")
                    .op(op)?
                    .is_some()
                {
                    return Ok(BootstrapUse::AlreadyUsed);
                }
                if row.try_get::<DateTime<Utc>, _>("expires_at").op(op)? <= now {
                    return Ok(BootstrapUse::Expired);
                }
                let agent_name: String = row.try_get("agent_name").op(op)?;
                let used = sqlx::query(
                    "UPDATE agent_bootstraps SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .op("use bootstrap token")?
                .rows_affected();
                tx.commit().await.op("commit bootstrap use")?;
                Ok(if used == 1 {
                    BootstrapUse::Accepted { agent_name }
                } else {
                    BootstrapUse::AlreadyUsed
                })
            }
            async fn enrol_agent(
                &self,
                name: &str,
                cert_sha256: &str,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO agents (name, cert_sha256, enrolled_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET cert_sha256 = excluded.cert_sha256,
                       enrolled_at = excluded.enrolled_at, revoked_at = NULL",
                )
                .bind(name)
                .bind(cert_sha256)
                .bind(now)
                .execute(&self.pool)
                .await
                .op("enrol agent")?;
                Ok(())
            }
            async fn agent_by_cert(&self, cert_sha256: &str) -> Result<Option<AgentRow>, StoreError> {
                let row = sqlx::query("SELECT * FROM agents WHERE cert_sha256 = $1")
                    .bind(cert_sha256)
                    .fetch_optional(self.reader())
                    .await
                    .op("read agent")?;
                row.as_ref().map(agent_from_row).transpose()
            }
            async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
                let rows = sqlx::query("SELECT * FROM agents ORDER BY name")
                    .fetch_all(self.reader())
                    .await
                    .op("list agents")?;
                rows.iter().map(agent_from_row).collect()
            }
            async fn revoke_agent(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let updated =
                    sqlx::query("UPDATE agents SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
                        .bind(now)
                        .bind(name)
                        .execute(&self.pool)
                        .await
                        .op("revoke agent")?
                        .rows_affected();
                Ok(updated == 1)
            }
        }
    };
}

pub(crate) use {shared_job_events, shared_methods, shared_rows};
