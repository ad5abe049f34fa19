-- A scheduling pass reads only what can still change a decision, through these partial indexes,
-- so its cost follows the jobs in flight, not the retained history (issue 13): jobs not yet
-- decided, or placed and not completed (ignored, failed and skipped are final); jobs that named a runner but are bound to no VM yet; VMs not
-- gone, or gone with an idle runner still to delete at GitHub. The queries repeat each WHERE
-- term exactly (shared.rs), which is what lets SQLite's planner use a partial index.

CREATE INDEX jobs_open ON jobs (job_id)
    WHERE disposition IN ('new', 'placing') OR (disposition = 'placed' AND status <> 'completed');
CREATE INDEX jobs_unbound ON jobs (updated_at)
    WHERE vm_start_id IS NULL AND runner_name IS NOT NULL;
CREATE INDEX vms_open ON vms (requested_at)
    WHERE state NOT IN ('destroyed', 'failed', 'lost') OR (ran_job_id IS NULL AND NOT runner_deleted);
CREATE INDEX vms_by_ran_job ON vms (ran_job_id) WHERE ran_job_id IS NOT NULL;
CREATE INDEX vms_by_host ON vms (host) WHERE state NOT IN ('destroyed');
-- VMs whose agent may have gone silent (neither gone nor already given up on).
CREATE INDEX vms_unsettled ON vms (requested_at) WHERE state NOT IN ('destroyed', 'failed', 'lost');
-- The API lists VMs a page at a time in this order (jobs page by their primary key).
CREATE INDEX vms_by_requested ON vms (requested_at, start_id);
