-- Agents and their enrolment. A bootstrap token is used once, before it expires; only a hash of
-- its secret is kept. An enrolled agent is known by its client certificate's SHA-256.
-- The same schema as migrations/postgres/0004_agents.sql, in SQLite's types.

CREATE TABLE agent_bootstraps (
    id          TEXT PRIMARY KEY,
    agent_name  TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT
);

CREATE TABLE agents (
    name         TEXT PRIMARY KEY,
    cert_sha256  TEXT NOT NULL UNIQUE,
    enrolled_at  TEXT NOT NULL,
    revoked_at   TEXT
);
