-- Scheduling: what mayfly decided for each job, and one row per VM it asked an agent for.

ALTER TABLE jobs ADD COLUMN profile TEXT;
-- new | ignored (no profile) | placed (a VM was asked for) | failed (gave up; see failure)
ALTER TABLE jobs ADD COLUMN disposition TEXT NOT NULL DEFAULT 'new';
ALTER TABLE jobs ADD COLUMN failure TEXT;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- the VM whose runner actually ran this job (from in_progress.runner_name)
ALTER TABLE jobs ADD COLUMN vm_start_id TEXT;

CREATE TABLE vms (
    start_id          TEXT    PRIMARY KEY,
    vm_id             TEXT,
    host              TEXT    NOT NULL,
    profile           TEXT    NOT NULL,
    installation_id   INTEGER NOT NULL,
    repo              TEXT    NOT NULL,
    runner_name       TEXT    NOT NULL UNIQUE,
    runner_id         INTEGER,
    for_job_id        INTEGER NOT NULL,
    ran_job_id        INTEGER,
    -- requested | started | booted | exited | destroyed | failed
    state             TEXT    NOT NULL,
    requested_at      TEXT    NOT NULL,
    started_at        TEXT,
    booted_at         TEXT,
    exited_at         TEXT,
    destroyed_at      TEXT,
    exit_code         INTEGER,
    destroy_requested INTEGER NOT NULL DEFAULT 0,
    runner_deleted    INTEGER NOT NULL DEFAULT 0,
    -- mayfly_core::DestructionRecord as JSON
    destruction       TEXT,
    failure           TEXT
);
CREATE INDEX vms_live ON vms (state) WHERE state NOT IN ('destroyed');
