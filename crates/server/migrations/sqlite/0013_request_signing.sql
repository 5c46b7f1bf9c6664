-- Request signatures (RFC 9421): a key's signing material. ed25519 / ecdsa-p256-sha256: the
-- public key (base64url of the raw key). hmac-sha256: only the generation: the secret is
-- derived from the gateway key, the key id and the generation (by the filter too), never
-- stored. The row stays when the material is removed (alg NULL), so that a later HMAC
-- registration gets a new generation, never a secret handed out before.
CREATE TABLE key_signing_material (
    key_id     TEXT PRIMARY KEY NOT NULL,
    alg        TEXT,                   -- NULL: none (removed)
    public_key TEXT,                   -- NULL for hmac-sha256
    generation INTEGER NOT NULL,       -- grows with each registration
    updated_at INTEGER NOT NULL        -- Unix seconds
);
