-- The same schema as migrations/sqlite/0004 (times are Unix seconds in BIGINT).
-- Per-key limits, enforced by the filter: a token bucket, a client address allow-list and a
-- validity window beside expiry. NULL / '[]': no limit.
ALTER TABLE keys ADD COLUMN rate_limit_rps DOUBLE PRECISION;  -- requests per second
ALTER TABLE keys ADD COLUMN rate_limit_burst BIGINT;          -- bucket size
ALTER TABLE keys ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '[]';  -- JSON array of CIDRs
ALTER TABLE keys ADD COLUMN not_before BIGINT;               -- Unix seconds
ALTER TABLE keys ADD COLUMN not_after BIGINT;                -- Unix seconds

-- Usage batches already applied (POST /v1/usage is idempotent by batch id); pruned after 24 h.
CREATE TABLE usage_batches (
    batch_id   TEXT PRIMARY KEY NOT NULL,
    applied_at BIGINT NOT NULL
);
CREATE INDEX usage_batches_by_time ON usage_batches (applied_at);

-- Usage counts per key and minute. `kind` is 'allowed' (name ''), 'denied' (name = reason)
-- or 'status' (name = '2xx' ...). No foreign key: legacy and deleted keys may report too.
CREATE TABLE usage_counts (
    key_id TEXT NOT NULL,
    minute BIGINT NOT NULL,           -- Unix seconds, a multiple of 60
    kind   TEXT NOT NULL CHECK (kind IN ('allowed', 'denied', 'status')),
    name   TEXT NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (key_id, minute, kind, name)
);
