-- Roles: named scope sets that keys hold. `version` is the feed sequence number of the role's
-- latest change, so it only grows, even across a delete and a re-create of the name.
CREATE TABLE roles (
    name        TEXT PRIMARY KEY NOT NULL,
    scopes      TEXT NOT NULL,               -- JSON array of strings
    description TEXT NOT NULL DEFAULT '',
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,             -- Unix seconds
    updated_at  BIGINT NOT NULL
);

-- The roles a key holds: a JSON array of role names.
ALTER TABLE keys ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';

-- A role change is a feed event (kind 'role_changed', key_id holding the role's name, its
-- seq the role's new version).
ALTER TABLE revocation_events DROP CONSTRAINT revocation_events_kind_check;
ALTER TABLE revocation_events ADD CONSTRAINT revocation_events_kind_check
    CHECK (kind IN ('revoked', 'rotated', 'expired', 'role_changed'));
