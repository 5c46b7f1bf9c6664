//! The public keys that may sign leaked-key reports (GitHub's secret-scanning key set), and
//! the check of a report's signature. Used by [`crate::service::secret_scanning`].

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

/// Longest header value considered (identifier, signature).
const MAX_HEADER_CHARS: usize = 1024;

/// Why a key set file is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportKeysError {
    #[error("the secret-scanning key set is not JSON of the shape {{\"public_keys\": [{{\"key_identifier\": ..., \"key\": PEM}}]}}")]
    Shape,
    #[error("the secret-scanning key set has no key")]
    Empty,
    #[error("secret-scanning key {0:?} is not an ECDSA P-256 public key in PEM")]
    BadKey(String),
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum KeySetFile {
    GitHub { public_keys: Vec<KeyEntry> },
    List(Vec<KeyEntry>),
}

/// The public keys that may sign reports, by identifier.
#[derive(Clone, Debug)]
pub struct ReportKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl ReportKeys {
    /// Reads GitHub's answer (`{"public_keys": [{"key_identifier", "key", "is_current"}]}`)
    /// or a bare array of `{key_identifier, key}`; each key a PEM `PUBLIC KEY` of P-256.
    pub fn from_json(text: &str) -> Result<Self, ReportKeysError> {
        let entries = match serde_json::from_str::<KeySetFile>(text) {
            Ok(KeySetFile::GitHub { public_keys }) => public_keys,
            Ok(KeySetFile::List(list)) => list,
            Err(_) => return Err(ReportKeysError::Shape),
        };
        if entries.is_empty() {
            return Err(ReportKeysError::Empty);
        }
        let keys = entries
            .into_iter()
            .map(|entry| {
                VerifyingKey::from_public_key_pem(entry.key.trim())
                    .map(|key| (entry.key_identifier.clone(), key))
                    .map_err(|_| ReportKeysError::BadKey(entry.key_identifier))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// Whether `signature` (base64 DER) is a valid signature of `body` by the key
    /// `identifier` names.
    pub fn verify(&self, identifier: &str, signature: &str, body: &[u8]) -> bool {
        if identifier.len() > MAX_HEADER_CHARS || signature.len() > MAX_HEADER_CHARS {
            return false;
        }
        let Some((_, key)) = self.keys.iter().find(|(id, _)| id == identifier) else {
            return false;
        };
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::from_der(&der) else {
            return false;
        };
        key.verify(body, &signature).is_ok()
    }
}
