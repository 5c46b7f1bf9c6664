-- The same schema as migrations/sqlite/0011 (times are Unix seconds in BIGINT).
-- Login sessions of the management page (POST /ui/api/session). Only digests are stored: the
-- SHA-256 of the session id (the cookie) and of its CSRF token, never either of them.
CREATE TABLE sessions (
    id_digest   TEXT PRIMARY KEY NOT NULL,  -- hex SHA-256 of the cookie value
    csrf_digest TEXT NOT NULL,              -- hex SHA-256 of the CSRF token
    kind        TEXT NOT NULL,              -- 'admin_key' or 'key' (a management key)
    actor       TEXT NOT NULL,              -- the admin key's or management key's id
    source      TEXT,                       -- the client address of the login
    created_at  BIGINT NOT NULL,            -- Unix seconds
    expires_at  BIGINT NOT NULL             -- Unix seconds
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
