//! Types that cross the wire between the filter and the key service.

use serde::{Deserialize, Serialize};

/// Path prefix of the lookup endpoint on the key service: `GET /v1/keys/{id}`.
pub const LOOKUP_PATH_PREFIX: &str = "/v1/keys/";

/// Status of a key record as the key service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// The answer to `GET /v1/keys/{id}` (200). A 404 means no such key.
///
/// `expires_at` is the effective end of validity in Unix seconds: the key's own expiry,
/// or the end of its rotation grace period, whichever comes first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLookup {
    pub id: String,
    /// Hex SHA-256 of the whole key text.
    pub digest: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub status: KeyStatus,
    #[serde(default)]
    pub expires_at: Option<u64>,
}
