-- The same schema as migrations/sqlite/0015 (times are Unix seconds in BIGINT).
-- Webhooks on security events, their persisted outbox, and the record of keys already
-- announced as expiring.

-- An endpoint registered by an admin: where to POST, which event kinds it wants (a JSON
-- array of names), and the HMAC secret that signs each delivery (shown once at creation; it
-- must be stored, for the service signs with it).
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL     -- Unix seconds
);

-- The outbox: one row per event and webhook. `id` is the idempotency id sent in every
-- attempt. status: 'pending' (due at next_attempt_at), 'sending' (claimed by a worker until
-- lease_until; back to due when that passes), 'delivered', 'failed' (attempts exhausted).
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    webhook_id      TEXT NOT NULL,
    event           TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_token     TEXT,
    lease_until     BIGINT,
    last_status     BIGINT,          -- the HTTP status of the last attempt (NULL: none)
    last_error      TEXT,             -- why the last attempt failed (never a secret)
    finished_at     BIGINT           -- delivered or failed
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at);
CREATE INDEX webhook_deliveries_by_finish ON webhook_deliveries (finished_at);

-- Keys announced as `key.expiring`, once per expiry (a new expiry is announced again).
CREATE TABLE key_expiry_notices (
    key_id     TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, expires_at)
);
