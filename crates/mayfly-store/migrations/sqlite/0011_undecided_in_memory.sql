-- A scheduling pass keeps the jobs not yet decided in memory and reads only those whose row
-- changed since its last pass (issue 13: a backlog of queued jobs must not cost every pass),
-- and the placed jobs still open apart from them. Both partial: neither matches another
-- query's WHERE, so no planner picks them over `jobs_unbound` (an index of every job by
-- `updated_at` made SQLite walk all the jobs of the last hour there).

CREATE INDEX jobs_undecided_by_updated ON jobs (updated_at) WHERE disposition IN ('new', 'placing');
CREATE INDEX jobs_placed_open ON jobs (job_id) WHERE disposition = 'placed' AND status <> 'completed';
