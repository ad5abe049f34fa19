-- How long each step of starting a VM took (JSON of a list of `mayfly_core::StartStep`): the
-- server's (its JIT config from GitHub) first, the agent's after. The same for both stores.

ALTER TABLE vms ADD COLUMN start_steps TEXT;
