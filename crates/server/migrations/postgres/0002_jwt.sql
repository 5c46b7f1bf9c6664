-- JWT API keys: which algorithm and which signing key minted a key (NULL for opaque keys).
ALTER TABLE keys ADD COLUMN algorithm TEXT;
ALTER TABLE keys ADD COLUMN signing_kid TEXT;

-- Keys the service signs JWT API keys with. The private key is stored only encrypted
-- (AES-256-GCM under KEYGATE_SIGNING_KEY_SECRET, AAD = kid): nonce (12 bytes) || ciphertext.
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY NOT NULL,
    algorithm       TEXT NOT NULL,              -- ES256, EdDSA or RS256
    public_jwk      TEXT NOT NULL,              -- JSON object (RFC 7517), public members only
    private_key_enc BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    retired_at      BIGINT,                     -- set when a newer key took over its algorithm
    not_after       BIGINT,                     -- the latest exp of a token it signed
    signs_forever   BOOLEAN NOT NULL DEFAULT FALSE  -- true once it signed a token without exp
);

-- One active (not retired) signing key per algorithm.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (algorithm) WHERE retired_at IS NULL;
