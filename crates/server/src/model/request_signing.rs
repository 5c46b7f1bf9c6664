//! A key's request-signing material (RFC 9421 signatures on signed routes).

/// The signing material registered for a key, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSigningRow {
    pub key_id: String,
    /// `ed25519`, `ecdsa-p256-sha256` or `hmac-sha256`; `None`: removed.
    pub alg: Option<String>,
    /// Base64url (unpadded) of the raw public key; `None` for HMAC.
    pub public_key: Option<String>,
    /// Grows with each registration: an HMAC secret is derived for one generation.
    pub generation: u32,
    pub updated_at: i64,
}
