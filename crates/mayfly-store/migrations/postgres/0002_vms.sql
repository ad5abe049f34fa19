-- Scheduling: what mayfly decided for each job, and one row per VM it asked an agent for.
-- The same schema as migrations/sqlite/0002_vms.sql, in PostgreSQL's types.

ALTER TABLE jobs ADD COLUMN profile TEXT;
-- new | ignored (no profile) | placed (a VM was asked for) | failed (gave up; see failure)
ALTER TABLE jobs ADD COLUMN disposition TEXT NOT NULL DEFAULT 'new';
ALTER TABLE jobs ADD COLUMN failure TEXT;
ALTER TABLE jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
-- the VM whose runner actually ran this job (from in_progress.runner_name)
ALTER TABLE jobs ADD COLUMN vm_start_id TEXT;

CREATE TABLE vms (
    start_id          TEXT        PRIMARY KEY,
    vm_id             TEXT,
    host              TEXT        NOT NULL,
    profile           TEXT        NOT NULL,
    installation_id   BIGINT      NOT NULL,
    repo              TEXT        NOT NULL,
    runner_name       TEXT        NOT NULL UNIQUE,
    runner_id         BIGINT,
    for_job_id        BIGINT      NOT NULL,
    ran_job_id        BIGINT,
    -- requested | started | booted | exited | destroyed | failed
    state             TEXT        NOT NULL,
    requested_at      TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ,
    booted_at         TIMESTAMPTZ,
    exited_at         TIMESTAMPTZ,
    destroyed_at      TIMESTAMPTZ,
    exit_code         INTEGER,
    destroy_requested BOOLEAN     NOT NULL DEFAULT FALSE,
    runner_deleted    BOOLEAN     NOT NULL DEFAULT FALSE,
    -- mayfly_core::DestructionRecord as JSON
    destruction       TEXT,
    failure           TEXT
);
CREATE INDEX vms_live ON vms (state) WHERE state NOT IN ('destroyed');
