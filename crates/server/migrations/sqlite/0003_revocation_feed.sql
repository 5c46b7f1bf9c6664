-- The revocation feed: one event per revoke, rotation and forced expiry, in commit order.
-- `seq` is AUTOINCREMENT so a number is never reused, even after its event was compacted.
CREATE TABLE revocation_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id         TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('revoked', 'rotated', 'expired')),
    effective_at   INTEGER NOT NULL,   -- Unix seconds from which the id must be refused
    key_expires_at INTEGER,            -- the key's own expiry: the event is dropped after it
    created_at     INTEGER NOT NULL
);

CREATE INDEX revocation_events_by_key ON revocation_events (key_id, seq);
CREATE INDEX revocation_events_by_expiry ON revocation_events (key_expires_at);

-- One row: the highest committed seq (never goes down) and the highest seq compaction deleted.
-- Every transaction that adds an event writes this row first, which serializes them.
CREATE TABLE feed_state (
    id                INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq          INTEGER NOT NULL,
    compacted_through INTEGER NOT NULL
);

-- Keys revoked or rotated before the feed existed enter it, oldest first.
INSERT INTO revocation_events (key_id, kind, effective_at, key_expires_at, created_at)
SELECT id, kind, effective_at, expires_at, effective_at FROM (
    SELECT id, 'revoked' AS kind, revoked_at AS effective_at, expires_at
    FROM keys WHERE revoked_at IS NOT NULL
    UNION ALL
    SELECT id, 'rotated', grace_until, expires_at
    FROM keys WHERE revoked_at IS NULL AND rotated_to IS NOT NULL AND grace_until IS NOT NULL
) ORDER BY effective_at, id;

INSERT INTO feed_state (id, last_seq, compacted_through)
SELECT 1, COALESCE(MAX(seq), 0), 0 FROM revocation_events;
