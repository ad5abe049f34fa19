-- Where each agent's journal stands: the events of epoch `epoch` up to `applied_seq` were
-- applied (each exactly once), and when a server last heard from the agent (its lease).
-- The same as migrations/postgres/0007_agent_journals.sql, in SQLite's types.

CREATE TABLE agent_journals (
    agent        TEXT PRIMARY KEY,
    epoch        TEXT NOT NULL,
    applied_seq  INTEGER NOT NULL,
    seen_at      TEXT NOT NULL
);

CREATE INDEX vms_live_host ON vms (host) WHERE state NOT IN ('destroyed', 'lost');
