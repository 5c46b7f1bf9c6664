-- Audit log of management actions (issue 5): who did what to which key, from where, and how it
-- ended. Never a secret: no key plaintext, no admin key, no token in any column.
-- The same schema as migrations/sqlite (times are Unix seconds in BIGINT).
CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- newest first = highest id first
    at      BIGINT NOT NULL,
    action  TEXT NOT NULL,                      -- create, rotate, revoke, expire, update, ...
    actor   TEXT,                               -- the admin key's id, never the key
    source  TEXT,                               -- the client's address
    target  TEXT,                               -- the key id acted on
    outcome TEXT NOT NULL,                      -- ok | denied | error: ...
    detail  TEXT                                -- JSON, never secrets
);

CREATE INDEX audit_log_by_action ON audit_log (action, id);
CREATE INDEX audit_log_by_target ON audit_log (target, id);
CREATE INDEX audit_log_by_at ON audit_log (at, id);

-- Legacy keys (issue 7) are ordinary key rows with format = 'legacy' and prefix = '', found by
-- their digest (already UNIQUE on keys); the filter looks them up by digest and format.
CREATE INDEX keys_by_format_digest ON keys (format, digest);
