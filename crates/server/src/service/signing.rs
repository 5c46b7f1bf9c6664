//! The keys the service signs JWT API keys with: one active key per algorithm, stored
//! encrypted at rest, published as a JWKS while tokens they signed live.
//!
//! **Published before use.** A filter that meets an unknown `kid` refetches the JWKS at most
//! once per `min_refetch_seconds` (counted from its last fetch, which may have started just
//! before a new key was stored and answered up to its `timeout_ms` later). So a key signs only
//! once it has been in the JWKS for [`JwtSettings::publish_delay_s`], set above
//! `min_refetch_seconds` + `timeout_ms` of every filter: by then any filter that has not
//! seen the key yet may refetch, and its refetch finds it. Hence:
//! - at start the service creates a key for every algorithm that has none, so the first token
//!   of an algorithm never waits on a fresh key (except right after the very first start);
//! - a rotation publishes the new key at once, while the previous key goes on signing (and
//!   stays published) until the new one has been published long enough;
//! - a token that needs a key younger than the delay (only the first tokens after a database's
//!   first start) waits for the rest of the delay before it is signed.
//!
//! Private keys are stored as `nonce || AES-256-GCM(PKCS#8 DER)` under
//! `KEYGATE_SIGNING_KEY_SECRET`, with the `kid` as associated data so a ciphertext cannot be
//! moved to another row. Without the secret the service runs with opaque keys only.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keygate_core::base32;
use keygate_core::jwt::{Algorithm, SigningKey};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::model::SigningKeyRow;
use crate::store::{KeyStore, StoreError};

/// Environment variable holding the key-encryption secret (64 hex digits).
pub const SIGNING_SECRET_ENV: &str = "KEYGATE_SIGNING_KEY_SECRET";
/// The JOSE header `typ` of JWT API keys (RFC 9068 access tokens).
pub const JWT_TYP: &str = "at+jwt";
/// How long after the last token it signed has expired a retired key stays in the JWKS.
pub const JWKS_LEEWAY_S: i64 = 60;
/// Default of [`JwtSettings::publish_delay_s`]: above the filter's default
/// `min_refetch_seconds` (5) + `timeout_ms` (2000), with room for clock skew between replicas.
pub const DEFAULT_PUBLISH_DELAY_S: i64 = 10;
/// Largest [`JwtSettings::publish_delay_s`]: the filter's largest `min_refetch_seconds` (3600)
/// + `timeout_ms` (60000).
pub const MAX_PUBLISH_DELAY_S: i64 = 3660;
/// `Cache-Control` of the JWKS.
pub const JWKS_CACHE_CONTROL: &str = "public, max-age=60";
/// The algorithm of JWT keys when the request names none.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::ES256;
/// Default `iss` and `aud` of JWT keys.
pub const DEFAULT_ISSUER: &str = "keygate";
pub const DEFAULT_AUDIENCE: &str = "keygate";

const NONCE_LEN: usize = 12;
const KID_RANDOM_BYTES: usize = 5; // 8 base32 characters

/// Why signing failed. Messages name the setting or the kid, never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    #[error("JWT signing is not configured: set {SIGNING_SECRET_ENV}")]
    NotConfigured,
    #[error("signing key {kid} cannot be decrypted with {SIGNING_SECRET_ENV}: the secret is wrong or the row is corrupt")]
    Undecryptable { kid: String },
    #[error("signing key {kid} is corrupt: {reason}")]
    Corrupt { kid: String, reason: String },
    #[error("cannot generate a {algorithm} signing key: {reason}")]
    Generate {
        algorithm: &'static str,
        reason: String,
    },
    #[error("cannot sign a token: {0}")]
    Sign(String),
    #[error("cannot encrypt a signing key")]
    Encrypt,
    #[error("the OS random number generator failed: {0}")]
    Random(rand_core::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The secret that encrypts signing keys at rest (AES-256-GCM).
#[derive(Clone)]
pub struct SigningSecret([u8; 32]);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl SigningSecret {
    /// Parses exactly 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim().as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16);
            *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }

    /// Encrypts `plaintext` for the row `kid`: `nonce (12 random bytes) || ciphertext+tag`.
    pub fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, SigningError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(SigningError::Random)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| SigningError::Encrypt)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts what [`seal`](Self::seal) made for the row `kid`; the plaintext is wiped
    /// when dropped.
    pub fn open(&self, kid: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SigningError> {
        if sealed.len() <= NONCE_LEN {
            return Err(SigningError::Undecryptable { kid: kid.into() });
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: kid.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SigningError::Undecryptable { kid: kid.into() })
    }
}

/// How the service mints JWT API keys.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// The `iss` claim.
    pub issuer: String,
    /// The `aud` claim.
    pub audience: String,
    /// Whether a JWT key may be created without expiry (a token that is valid for good,
    /// unless revoked — and revocation needs the filter to consult the key service).
    pub allow_without_expiry: bool,
    /// The key-encryption secret; `None` disables JWT keys.
    pub secret: Option<SigningSecret>,
    /// How long a signing key is published in the JWKS before it signs (see the module doc).
    pub publish_delay_s: i64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            allow_without_expiry: false,
            secret: None,
            publish_delay_s: DEFAULT_PUBLISH_DELAY_S,
        }
    }
}

/// A decrypted signing key, ready to sign.
pub struct ActiveSigningKey {
    pub kid: String,
    pub key: SigningKey,
}

/// Signs JWT API keys with the signing key of each algorithm that is ready (published long
/// enough). Cloning is cheap.
#[derive(Clone)]
pub struct JwtIssuer {
    settings: Arc<JwtSettings>,
    /// The decrypted key that signs, by algorithm name.
    cache: Arc<Mutex<HashMap<&'static str, Arc<ActiveSigningKey>>>>,
    /// Serializes the creation of a first key per algorithm.
    generation: Arc<Mutex<()>>,
}

impl fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JwtIssuer {
    pub fn new(settings: JwtSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            cache: Arc::default(),
            generation: Arc::default(),
        }
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    pub fn is_configured(&self) -> bool {
        self.settings.secret.is_some()
    }

    fn secret(&self) -> Result<&SigningSecret, SigningError> {
        self.settings
            .secret
            .as_ref()
            .ok_or(SigningError::NotConfigured)
    }

    /// Every stored key of `algorithm`, oldest first; creates the first one if there is none.
    async fn keys_of(
        &self,
        store: &KeyStore,
        algorithm: Algorithm,
        now: i64,
    ) -> Result<Vec<SigningKeyRow>, SigningError> {
        let secret = self.secret()?;
        let name = algorithm.as_str();
        let _generating = self.generation.lock().await;
        let of_algorithm = |rows: Vec<SigningKeyRow>| -> Vec<SigningKeyRow> {
            rows.into_iter()
                .filter(|row| row.algorithm == name)
                .collect()
        };
        let rows = of_algorithm(store.list_signing_keys().await?);
        if rows.iter().any(|row| row.retired_at.is_none()) {
            return Ok(rows);
        }
        let (row, _) = new_signing_key(secret, algorithm, now).await?;
        if store.insert_first_signing_key(&row).await? {
            tracing::info!(kid = %row.kid, algorithm = name, "signing key generated");
        }
        // Re-read: another replica may have stored its key first.
        let rows = of_algorithm(store.list_signing_keys().await?);
        if rows.iter().any(|row| row.retired_at.is_none()) {
            Ok(rows)
        } else {
            Err(SigningError::Corrupt {
                kid: row.kid,
                reason: "the new signing key was not stored".into(),
            })
        }
    }

    /// The key of `algorithm` that signs at `now`: the newest one published for at least
    /// the publish delay. If none is yet (a first key, just created), waits until the oldest
    /// one is.
    pub async fn signing_key(
        &self,
        store: &KeyStore,
        algorithm: Algorithm,
        now: i64,
    ) -> Result<Arc<ActiveSigningKey>, SigningError> {
        let secret = self.secret()?;
        let delay = self.settings.publish_delay_s;
        let rows = self.keys_of(store, algorithm, now).await?;
        let Some((row, ready_at)) = key_to_sign_with(&rows, now, delay) else {
            return Err(SigningError::Corrupt {
                kid: String::new(),
                reason: format!("no stored {} signing key", algorithm.as_str()),
            });
        };
        if ready_at > now {
            let wait = u64::try_from(ready_at - now).unwrap_or(0);
            tracing::info!(kid = %row.kid, wait_s = wait, "waiting until a new signing key has been published long enough to sign");
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        let name = algorithm.as_str();
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.get(name).filter(|cached| cached.kid == row.kid) {
            return Ok(cached.clone());
        }
        let active = Arc::new(decrypt(secret, row)?);
        cache.insert(name, active.clone());
        Ok(active)
    }

    /// Adds a new signing key for `algorithm` and retires the previous one. Answers the new
    /// key's row and the retired kid.
    pub async fn rotate(
        &self,
        store: &KeyStore,
        algorithm: Algorithm,
        now: i64,
    ) -> Result<(SigningKeyRow, Option<String>), SigningError> {
        let secret = self.secret()?;
        let name = algorithm.as_str();
        let _generating = self.generation.lock().await;
        let (row, _) = new_signing_key(secret, algorithm, now).await?;
        let retired = store.rotate_signing_key(&row, now).await?;
        tracing::info!(
            kid = %row.kid,
            retired = ?retired,
            algorithm = name,
            signs_in_s = self.settings.publish_delay_s,
            "signing key rotated: published now, signs once the publish delay has passed"
        );
        Ok((row, retired))
    }

    /// At start: checks that the secret decrypts every active signing key, and makes sure a
    /// key of every algorithm exists, so that each is published before its first token.
    /// Does nothing when signing is not configured.
    pub async fn prepare(&self, store: &KeyStore, now: i64) -> Result<(), SigningError> {
        let Some(secret) = self.settings.secret.as_ref() else {
            return Ok(());
        };
        for row in store.list_signing_keys().await? {
            if row.retired_at.is_none() {
                decrypt(secret, &row)?;
            }
        }
        for algorithm in Algorithm::ALL {
            self.keys_of(store, algorithm, now).await?;
        }
        Ok(())
    }

    /// Signs `claims` with the active key of `algorithm`; answers the token and the kid.
    pub async fn sign(
        &self,
        store: &KeyStore,
        algorithm: Algorithm,
        claims: &Value,
        now: i64,
    ) -> Result<(String, String), SigningError> {
        let active = self.signing_key(store, algorithm, now).await?;
        let token = active
            .key
            .sign(&active.kid, JWT_TYP, claims)
            .map_err(|error| SigningError::Sign(error.to_string()))?;
        Ok((token, active.kid.clone()))
    }
}

/// The key to sign with at `now` among the keys of one algorithm (oldest first), and the time
/// it may sign from: the newest key published at least `delay` seconds ago; when none is, the
/// oldest key, which is the first to be ready.
pub fn key_to_sign_with(
    rows: &[SigningKeyRow],
    now: i64,
    delay: i64,
) -> Option<(&SigningKeyRow, i64)> {
    let ready_at = |row: &SigningKeyRow| row.created_at.saturating_add(delay);
    rows.iter()
        .rev()
        .find(|row| ready_at(row) <= now)
        .or_else(|| rows.first())
        .map(|row| (row, ready_at(row)))
}

/// Whether the JWKS lists `row` at `now`: while it is active, while a token it signed lives,
/// and after its retirement for as long as it may still sign (until its successor is ready).
pub fn is_published(row: &SigningKeyRow, now: i64, delay: i64) -> bool {
    row.is_published(now, JWKS_LEEWAY_S)
        || row.retired_at.is_some_and(|retired| {
            now <= retired.saturating_add(delay).saturating_add(JWKS_LEEWAY_S)
        })
}

/// The public JWKS at `now`: every signing key that is active or still needed.
pub fn published_jwks(rows: &[SigningKeyRow], now: i64, delay: i64) -> Value {
    let keys: Vec<Value> = rows
        .iter()
        .filter(|row| is_published(row, now, delay))
        .filter_map(|row| match serde_json::from_str::<Value>(&row.public_jwk) {
            Ok(jwk) => Some(jwk),
            Err(_) => {
                tracing::error!(kid = %row.kid, "stored public JWK is not JSON; not published");
                None
            }
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

/// A fresh kid: `kg-<alg lowercase>-<8 base32 characters>`.
fn new_kid(algorithm: Algorithm) -> Result<String, SigningError> {
    let mut random = [0u8; KID_RANDOM_BYTES];
    OsRng
        .try_fill_bytes(&mut random)
        .map_err(SigningError::Random)?;
    Ok(format!(
        "kg-{}-{}",
        algorithm.as_str().to_ascii_lowercase(),
        base32::encode(&random)
    ))
}

/// Generates a key (off the async threads: RSA generation takes a while) and seals it.
async fn new_signing_key(
    secret: &SigningSecret,
    algorithm: Algorithm,
    now: i64,
) -> Result<(SigningKeyRow, SigningKey), SigningError> {
    let name = algorithm.as_str();
    let generate_error = |reason: String| SigningError::Generate {
        algorithm: name,
        reason,
    };
    let key = tokio::task::spawn_blocking(move || SigningKey::generate(algorithm, &mut OsRng))
        .await
        .map_err(|error| generate_error(error.to_string()))?
        .map_err(|error| generate_error(error.to_string()))?;
    let kid = new_kid(algorithm)?;
    let der = Zeroizing::new(
        key.to_pkcs8_der()
            .map_err(|error| generate_error(error.to_string()))?,
    );
    let public_jwk = serde_json::to_string(&key.public_jwk(&kid))
        .map_err(|error| generate_error(error.to_string()))?;
    let row = SigningKeyRow {
        private_key_enc: secret.seal(&kid, &der)?,
        kid,
        algorithm: name.into(),
        public_jwk,
        created_at: now,
        retired_at: None,
        not_after: None,
        signs_forever: false,
    };
    Ok((row, key))
}

/// Decrypts a stored signing key.
pub fn decrypt(
    secret: &SigningSecret,
    row: &SigningKeyRow,
) -> Result<ActiveSigningKey, SigningError> {
    let corrupt = |reason: String| SigningError::Corrupt {
        kid: row.kid.clone(),
        reason,
    };
    let algorithm = Algorithm::parse(&row.algorithm)
        .ok_or_else(|| corrupt(format!("unknown algorithm {:?}", row.algorithm)))?;
    let der = secret.open(&row.kid, &row.private_key_enc)?;
    let key = SigningKey::from_pkcs8_der(algorithm, &der).map_err(|e| corrupt(e.to_string()))?;
    Ok(ActiveSigningKey {
        kid: row.kid.clone(),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn secrets_are_exactly_64_hex_digits() {
        assert!(SigningSecret::from_hex(SECRET).is_some());
        assert!(SigningSecret::from_hex(&SECRET.to_uppercase()).is_some());
        assert!(SigningSecret::from_hex(&format!(" {SECRET}\n")).is_some());
        for bad in [
            "",
            "abcd",
            &SECRET[..63],
            &format!("{SECRET}00"),
            &"zz".repeat(32),
        ] {
            assert!(SigningSecret::from_hex(bad).is_none(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", SigningSecret::from_hex(SECRET).unwrap()),
            "SigningSecret(<redacted>)"
        );
    }

    #[test]
    fn sealing_round_trips_and_binds_the_kid() {
        let secret = SigningSecret::from_hex(SECRET).unwrap();
        let sealed = secret.seal("kg-es256-aaaaaaaa", b"private key").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + b"private key".len() + 16);
        assert!(!sealed.windows(11).any(|w| w == b"private key"));
        assert_eq!(
            secret
                .open("kg-es256-aaaaaaaa", &sealed)
                .unwrap()
                .as_slice(),
            b"private key"
        );
        // Another row's kid, another secret, a flipped bit or a stub: refused, no panic.
        assert!(secret.open("kg-es256-bbbbbbbb", &sealed).is_err());
        let other = SigningSecret::from_bytes([7; 32]);
        assert!(other.open("kg-es256-aaaaaaaa", &sealed).is_err());
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(secret.open("kg-es256-aaaaaaaa", &flipped).is_err());
        assert!(secret.open("kg-es256-aaaaaaaa", &sealed[..5]).is_err());
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            secret.seal("kg-es256-aaaaaaaa", b"private key").unwrap()
        );
    }

    #[test]
    fn kids_name_the_algorithm() {
        let kid = new_kid(Algorithm::EdDSA).unwrap();
        assert!(kid.starts_with("kg-eddsa-"), "{kid}");
        assert_eq!(kid.len(), "kg-eddsa-".len() + 8);
        assert!(new_kid(Algorithm::RS256).unwrap().starts_with("kg-rs256-"));
    }

    fn row(retired_at: Option<i64>, not_after: Option<i64>, signs_forever: bool) -> SigningKeyRow {
        SigningKeyRow {
            kid: "k".into(),
            algorithm: "ES256".into(),
            public_jwk: "{\"kty\":\"EC\"}".into(),
            private_key_enc: vec![],
            created_at: 0,
            retired_at,
            not_after,
            signs_forever,
        }
    }

    #[test]
    fn retired_keys_stay_published_until_their_last_token_expires() {
        assert!(row(None, None, false).is_published(i64::MAX, JWKS_LEEWAY_S));
        assert!(!row(Some(10), None, false).is_published(11, JWKS_LEEWAY_S));
        let retired = row(Some(10), Some(1000), false);
        assert!(retired.is_published(1000 + JWKS_LEEWAY_S, JWKS_LEEWAY_S));
        assert!(!retired.is_published(1001 + JWKS_LEEWAY_S, JWKS_LEEWAY_S));
        assert!(row(Some(10), Some(1000), true).is_published(i64::MAX, JWKS_LEEWAY_S));
        let rows = [retired, row(None, None, false)];
        assert_eq!(
            published_jwks(&rows, 5000, 0)["keys"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            published_jwks(&rows, 500, 0)["keys"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
