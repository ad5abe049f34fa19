-- Webhook intake: deliveries (for deduplication and asynchronous processing), jobs, installations.
-- Only metadata is stored: no payload bodies, no logs, no tokens, no JIT configs.

CREATE TABLE deliveries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT    NOT NULL UNIQUE,
    event         TEXT    NOT NULL,
    action        TEXT,
    received_at   TEXT    NOT NULL,
    -- the normalised event (mayfly_core::IntakeEvent as JSON): metadata only
    intake        TEXT    NOT NULL,
    processed_at  TEXT,
    outcome       TEXT
);
CREATE INDEX deliveries_pending ON deliveries (seq) WHERE processed_at IS NULL;

CREATE TABLE installations (
    installation_id INTEGER PRIMARY KEY,
    account         TEXT,
    state           TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);

CREATE TABLE installation_repos (
    installation_id INTEGER NOT NULL,
    repo            TEXT    NOT NULL,
    PRIMARY KEY (installation_id, repo)
);

CREATE TABLE jobs (
    job_id           INTEGER PRIMARY KEY,
    run_id           INTEGER NOT NULL,
    installation_id  INTEGER,
    repo             TEXT    NOT NULL,
    repo_id          INTEGER NOT NULL,
    org              TEXT,
    sender           TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    conclusion       TEXT,
    labels           TEXT    NOT NULL,
    job_name         TEXT    NOT NULL,
    workflow_name    TEXT,
    runner_id        INTEGER,
    runner_name      TEXT,
    created_at       TEXT,
    started_at       TEXT,
    completed_at     TEXT,
    first_seen_at    TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status);
