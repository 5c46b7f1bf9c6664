-- Blocked client addresses: operator blocks (API, CLI) and the automatic ones the filters
-- report. Operator blocks reach every filter through the revocation feed; both end by
-- themselves at `expires_at`.
CREATE TABLE address_blocks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cidr        TEXT NOT NULL,               -- normalised: 203.0.113.0/24, 198.51.100.7/32
    source      TEXT NOT NULL CHECK (source IN ('operator', 'automatic')),
    reason      TEXT NOT NULL DEFAULT '',
    created_by  TEXT,                        -- operator: the admin key's id; automatic: the gateway
    failures    INTEGER,                     -- automatic: the failures that blocked it
    created_at  INTEGER NOT NULL,            -- Unix seconds
    expires_at  INTEGER NOT NULL             -- Unix seconds
);

CREATE INDEX address_blocks_by_expiry ON address_blocks (expires_at);
