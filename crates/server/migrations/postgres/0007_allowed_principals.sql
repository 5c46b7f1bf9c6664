-- Keys bound to workloads: the request's verified peer principal (mTLS/SPIFFE URI SAN) must
-- match one of these principals or `.../*` patterns. '[]': any request.
ALTER TABLE keys ADD COLUMN allowed_principals TEXT NOT NULL DEFAULT '[]';  -- JSON array
