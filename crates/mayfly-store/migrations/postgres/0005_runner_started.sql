-- When the guest said the runner process started (the agent's RUNNER_STARTED), between the
-- config hand-over (booted_at) and the job. The same as migrations/sqlite/0005_runner_started.sql.

ALTER TABLE vms ADD COLUMN runner_started_at TIMESTAMPTZ;
