-- The same schema as migrations/sqlite/0012 (times are Unix seconds in BIGINT).
-- Usage analytics for the dashboard: where and from where a key was last used, usage per
-- route and upstream latency per minute, and the gateways (Envoys) that report.

-- The client address of the key's last allowed use (as the filter saw it; NULL: unknown).
ALTER TABLE keys ADD COLUMN last_used_address TEXT;

-- Breakdowns of usage_counts, per key and minute: `kind` 'route' (name = route, count =
-- allowed requests on it) or 'latency' (name = bucket upper bound in ms or 'inf', count =
-- upstream responses). Pruned with usage_counts (--usage-retention-days).
CREATE TABLE usage_breakdown (
    key_id TEXT NOT NULL,
    minute BIGINT NOT NULL,          -- Unix seconds, a multiple of 60
    kind   TEXT NOT NULL CHECK (kind IN ('route', 'latency')),
    name   TEXT NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (key_id, minute, kind, name)
);
CREATE INDEX usage_breakdown_by_minute ON usage_breakdown (minute);

-- The gateways that follow the revocation feed or report usage, by Envoy node id; bounded
-- (the least recently seen go first) and aged out.
CREATE TABLE gateways (
    gateway             TEXT PRIMARY KEY NOT NULL,
    last_seen_at        BIGINT NOT NULL,   -- Unix seconds
    last_feed_sequence  BIGINT,            -- the `since` of its last feed request
    last_feed_at        BIGINT,
    last_usage_batch_at BIGINT,
    last_usage_rows     BIGINT
);
CREATE INDEX gateways_by_seen ON gateways (last_seen_at);
