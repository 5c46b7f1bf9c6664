-- Keys issued by the key service. Only the SHA-256 digest of a key is stored, never the key.
-- The same schema as migrations/sqlite (times are Unix seconds in BIGINT).
CREATE TABLE keys (
    id           TEXT PRIMARY KEY NOT NULL,   -- the 16-character key id embedded in the key
    prefix       TEXT NOT NULL,
    name         TEXT NOT NULL,
    owner        TEXT NOT NULL DEFAULT '',
    scopes       TEXT NOT NULL,               -- JSON array of strings
    metadata     TEXT NOT NULL DEFAULT '{}',  -- JSON object
    digest       TEXT NOT NULL UNIQUE,        -- hex SHA-256 of the whole key text
    format       TEXT NOT NULL DEFAULT 'opaque',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,                      -- the key's own expiry
    grace_until  BIGINT,                      -- end of the rotation grace period
    revoked_at   BIGINT,
    last_used_at BIGINT,
    rotated_from TEXT,
    rotated_to   TEXT
);

CREATE INDEX keys_by_creation ON keys (created_at, id);

-- Credentials of the management API. Only digests are stored.
CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    digest     TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
