-- The same schema as migrations/sqlite/0010 (times are Unix seconds in BIGINT).
-- Fleet-wide limits, enforced by the filters through leases (POST /v1/leases): a global token
-- bucket and a quota per key, and one pooled token bucket per owner. NULL: no limit.
ALTER TABLE keys ADD COLUMN global_rps DOUBLE PRECISION;      -- requests per second, fleet-wide
ALTER TABLE keys ADD COLUMN global_burst BIGINT;              -- bucket size, fleet-wide
ALTER TABLE keys ADD COLUMN quota_limit BIGINT;               -- units per window
ALTER TABLE keys ADD COLUMN quota_period BIGINT;              -- window length, seconds
ALTER TABLE keys ADD COLUMN quota_anchor BIGINT;              -- start of the first window, Unix seconds

-- One rate limit shared by all keys of an owner.
CREATE TABLE pools (
    owner      TEXT PRIMARY KEY NOT NULL,
    rps        DOUBLE PRECISION NOT NULL,
    burst      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
