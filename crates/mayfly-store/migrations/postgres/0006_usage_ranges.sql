-- Usage reports read the jobs mayfly received within a range of days and the VMs of those jobs,
-- without scanning every retained row. The same as migrations/sqlite/0006_usage_ranges.sql.

CREATE INDEX jobs_by_first_seen ON jobs (first_seen_at);
CREATE INDEX vms_by_for_job ON vms (for_job_id);
