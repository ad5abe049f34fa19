-- A scheduling pass keeps the jobs not yet decided in memory and reads only the job rows
-- changed since its last pass (issue 13: a backlog of queued jobs must not cost every pass):
-- jobs by `updated_at` (a range read of recent changes), and the placed jobs still open apart
-- from the undecided ones.

CREATE INDEX jobs_by_updated ON jobs (updated_at);
CREATE INDEX jobs_placed_open ON jobs (job_id) WHERE disposition = 'placed' AND status <> 'completed';
