-- The warm pool: a VM started ahead of any job (`pool`), holding nothing; `warm_at` its guest
-- was ready and waiting, `assigned_at` a job's runner config was sent to it (once). `image` is
-- the image the VM was started from (a pool VM of an image no longer current is replaced).

ALTER TABLE vms ADD COLUMN pool BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE vms ADD COLUMN image TEXT;
ALTER TABLE vms ADD COLUMN warm_at TIMESTAMPTZ;
ALTER TABLE vms ADD COLUMN assigned_at TIMESTAMPTZ;
