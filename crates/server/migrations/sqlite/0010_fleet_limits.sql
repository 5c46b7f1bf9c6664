-- Fleet-wide limits, enforced by the filters through leases (POST /v1/leases): a global token
-- bucket and a quota per key, and one pooled token bucket per owner. NULL: no limit.
ALTER TABLE keys ADD COLUMN global_rps REAL;                  -- requests per second, fleet-wide
ALTER TABLE keys ADD COLUMN global_burst INTEGER;             -- bucket size, fleet-wide
ALTER TABLE keys ADD COLUMN quota_limit INTEGER;              -- units per window
ALTER TABLE keys ADD COLUMN quota_period INTEGER;             -- window length, seconds
ALTER TABLE keys ADD COLUMN quota_anchor INTEGER;             -- start of the first window, Unix seconds

-- One rate limit shared by all keys of an owner.
CREATE TABLE pools (
    owner      TEXT PRIMARY KEY NOT NULL,
    rps        REAL NOT NULL,
    burst      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
