//! The keys the service signs JWT API keys with.

/// A key the service signs JWT API keys with, as stored: the private key only encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRow {
    pub kid: String,
    pub algorithm: String,
    /// The public JWK (RFC 7517) as JSON text.
    pub public_jwk: String,
    /// `nonce (12 bytes) || AES-256-GCM ciphertext` of the PKCS#8 DER private key.
    pub private_key_enc: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    /// The latest `exp` of a token this key signed (`None`: it signed no expiring token).
    pub not_after: Option<i64>,
    /// True once this key signed a token without `exp`: it stays published for good.
    pub signs_forever: bool,
}

impl SigningKeyRow {
    /// Whether the JWKS publishes this key at `now`: while it is active, and after it is retired
    /// until the last token it signed has expired (plus `leeway` seconds of clock skew).
    pub fn is_published(&self, now: i64, leeway: i64) -> bool {
        self.retired_at.is_none()
            || self.signs_forever
            || self
                .not_after
                .is_some_and(|end| now <= end.saturating_add(leeway))
    }
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .field("not_after", &self.not_after)
            .field("signs_forever", &self.signs_forever)
            .finish_non_exhaustive()
    }
}
