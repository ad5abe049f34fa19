-- Agents and their enrolment. A bootstrap token is used once, before it expires; only a hash of
-- its secret is kept. An enrolled agent is known by its client certificate's SHA-256.
-- The same schema as migrations/sqlite/0004_agents.sql, in PostgreSQL's types.

CREATE TABLE agent_bootstraps (
    id          TEXT PRIMARY KEY,
    agent_name  TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ
);

CREATE TABLE agents (
    name         TEXT PRIMARY KEY,
    cert_sha256  TEXT NOT NULL UNIQUE,
    enrolled_at  TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
