-- Roles: named scope sets that keys hold. `version` is the feed sequence number of the role's
-- latest change, so it only grows, even across a delete and a re-create of the name.
CREATE TABLE roles (
    name        TEXT PRIMARY KEY NOT NULL,
    scopes      TEXT NOT NULL,               -- JSON array of strings
    description TEXT NOT NULL DEFAULT '',
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,            -- Unix seconds
    updated_at  INTEGER NOT NULL
);

-- The roles a key holds: a JSON array of role names.
ALTER TABLE keys ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';

-- A role change is a feed event (kind 'role_changed', key_id holding the role's name, its
-- seq the role's new version). SQLite cannot change a CHECK constraint: the table is rebuilt,
-- and its sequence carried over so that no number is ever reused.
CREATE TABLE revocation_events_rebuilt (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id         TEXT NOT NULL,     -- the key id; for a role change, the role's name
    kind           TEXT NOT NULL
                   CHECK (kind IN ('revoked', 'rotated', 'expired', 'role_changed')),
    effective_at   INTEGER NOT NULL,  -- Unix seconds from which the id must be refused
    key_expires_at INTEGER,           -- the key's own expiry: the event is dropped after it
    created_at     INTEGER NOT NULL
);

INSERT INTO revocation_events_rebuilt (seq, key_id, kind, effective_at, key_expires_at, created_at)
SELECT seq, key_id, kind, effective_at, key_expires_at, created_at FROM revocation_events;

DROP TABLE revocation_events;
ALTER TABLE revocation_events_rebuilt RENAME TO revocation_events;

CREATE INDEX revocation_events_by_key ON revocation_events (key_id, seq);
CREATE INDEX revocation_events_by_expiry ON revocation_events (key_expires_at);

DELETE FROM sqlite_sequence WHERE name IN ('revocation_events', 'revocation_events_rebuilt');
INSERT INTO sqlite_sequence (name, seq)
SELECT 'revocation_events', MAX(last_seq, (SELECT COALESCE(MAX(seq), 0) FROM revocation_events))
FROM feed_state WHERE id = 1;
