-- Webhook intake: deliveries (for deduplication and asynchronous processing), jobs, installations.
-- Only metadata is stored: no payload bodies, no logs, no tokens, no JIT configs.
-- The same schema as migrations/sqlite/0001_intake.sql, in PostgreSQL's types.

CREATE TABLE deliveries (
    seq           BIGSERIAL   PRIMARY KEY,
    delivery_id   TEXT        NOT NULL UNIQUE,
    event         TEXT        NOT NULL,
    action        TEXT,
    received_at   TIMESTAMPTZ NOT NULL,
    -- the normalised event (mayfly_core::IntakeEvent as JSON): metadata only
    intake        TEXT        NOT NULL,
    processed_at  TIMESTAMPTZ,
    outcome       TEXT
);
CREATE INDEX deliveries_pending ON deliveries (seq) WHERE processed_at IS NULL;

CREATE TABLE installations (
    installation_id BIGINT      PRIMARY KEY,
    account         TEXT,
    state           TEXT        NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE installation_repos (
    installation_id BIGINT NOT NULL,
    repo            TEXT   NOT NULL,
    PRIMARY KEY (installation_id, repo)
);

CREATE TABLE jobs (
    job_id           BIGINT      PRIMARY KEY,
    run_id           BIGINT      NOT NULL,
    installation_id  BIGINT,
    repo             TEXT        NOT NULL,
    repo_id          BIGINT      NOT NULL,
    org              TEXT,
    sender           TEXT        NOT NULL,
    status           TEXT        NOT NULL,
    conclusion       TEXT,
    -- JSON array of strings
    labels           TEXT        NOT NULL,
    job_name         TEXT        NOT NULL,
    workflow_name    TEXT,
    runner_id        BIGINT,
    runner_name      TEXT,
    created_at       TIMESTAMPTZ,
    started_at       TIMESTAMPTZ,
    completed_at     TIMESTAMPTZ,
    first_seen_at    TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status);
