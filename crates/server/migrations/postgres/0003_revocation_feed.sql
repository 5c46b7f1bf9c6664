-- The revocation feed: one event per revoke, rotation and forced expiry.
-- `seq` comes from an identity column, shared by every replica on this database. Every
-- transaction that adds an event locks the feed_state row first, so events commit in `seq`
-- order and a follower never skips a number that commits late.
CREATE TABLE revocation_events (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id         TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('revoked', 'rotated', 'expired')),
    effective_at   BIGINT NOT NULL,   -- Unix seconds from which the id must be refused
    key_expires_at BIGINT,            -- the key's own expiry: the event is dropped after it
    created_at     BIGINT NOT NULL
);

CREATE INDEX revocation_events_by_key ON revocation_events (key_id, seq);
CREATE INDEX revocation_events_by_expiry ON revocation_events (key_expires_at);

-- One row: the highest committed seq (never goes down) and the highest seq compaction deleted.
CREATE TABLE feed_state (
    id                INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq          BIGINT NOT NULL,
    compacted_through BIGINT NOT NULL
);

INSERT INTO feed_state (id, last_seq, compacted_through) VALUES (1, 0, 0);
