-- Several servers, sealed secrets, usage rollups, API tokens and the audit log.
-- The same schema as migrations/postgres/0003_servers_secrets_usage.sql, in SQLite's types.

-- A delivery or job being worked on by one server (claims go stale so a crashed server's work
-- is taken over).
ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE deliveries ADD COLUMN claimed_at TEXT;
ALTER TABLE jobs ADD COLUMN claimed_by TEXT;
ALTER TABLE jobs ADD COLUMN claimed_at TEXT;

-- Loops only one server runs at a time (reconciler, purge): held until `expires_at`.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

-- Envelope encryption: data keys wrapped by the master key (AEAD), named by the master key's id.
CREATE TABLE data_keys (
    id            TEXT PRIMARY KEY,
    master_key_id TEXT NOT NULL,
    wrapped       BLOB NOT NULL,
    created_at    TEXT NOT NULL
);

-- Sealed values: AEAD under a data key, the row identity (kind, name) as associated data.
CREATE TABLE secrets (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    data_key_id TEXT NOT NULL REFERENCES data_keys (id),
    sealed      BLOB NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Usage per tenant, day and profile: kept when job rows expire.
CREATE TABLE usage_daily (
    installation_id INTEGER NOT NULL,
    day             TEXT    NOT NULL,
    profile         TEXT    NOT NULL,
    jobs            INTEGER NOT NULL,
    run_seconds     INTEGER NOT NULL,
    PRIMARY KEY (installation_id, day, profile)
);

-- API bearer tokens: only a hash of the token is kept.
CREATE TABLE api_tokens (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    -- admin | read | tenant
    scope           TEXT NOT NULL,
    installation_id INTEGER,
    token_hash      TEXT NOT NULL UNIQUE,
    created_at      TEXT NOT NULL,
    revoked_at      TEXT,
    last_used_at    TEXT
);

-- Append-only; each row carries the hash of the one before it.
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    source    TEXT,
    action    TEXT NOT NULL,
    target    TEXT,
    outcome   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
