//! JSON Web Tokens: issuing (the key service) and verifying (the filter, per request).
//!
//! Only asymmetric JWS in compact form, with three algorithms: `ES256` (ECDSA P-256, SHA-256),
//! `EdDSA` (Ed25519) and `RS256` (RSASSA-PKCS1-v1_5, SHA-256, keys of 2048 bits or more).
//! There is deliberately no `none`, no HMAC (`HS*`), no JWE and no header-supplied keys:
//!
//! * `alg` must be in [`Validation::algorithms`] and equal the algorithm the selected key is
//!   pinned to (from its JWK `alg`, or its key type). A public key can therefore never be used
//!   as an HMAC secret, nor an RSA key to check an ECDSA signature.
//! * `kid` is required and is only ever a lookup key in a [`KeySet`]. `jku`, `x5u`, `jwk` and
//!   `x5c` are ignored, so a token cannot bring its own key. `crit` is refused (RFC 7515 §4.1.11:
//!   we understand no extension).
//! * The size limit is checked before any decoding; base64url is strict (no padding, no `+` or
//!   `/`, canonical trailing bits); the header and claims must be JSON objects without duplicate
//!   members; claims are only parsed once the signature has been verified.
//!
//! Time comes in as `now_s` (seconds since the Unix epoch) and randomness, for key generation
//! only, through a [`rand_core::CryptoRngCore`].

mod jwk;
mod sign;
mod verify;

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub mod cache;

pub use jwk::{Jwk, Jwks, KeySet, SkippedKey, VerifyingKey, MAX_KEYS};
pub use sign::SigningKey;
pub use verify::{
    verify_jwt, verify_jwt_with, NativeVerifier, Validation, VerifiedToken, MAX_SCOPES,
};

/// A JWS algorithm Keygate signs and verifies with. The serde names are the JOSE names.
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA on P-256 with SHA-256; the signature is `r ‖ s`, 64 bytes (not DER).
    ES256,
    /// Ed25519 (RFC 8037), verified strictly.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256; keys shorter than 2048 bits are refused.
    RS256,
}

impl Algorithm {
    /// Every algorithm, in the order [`Validation::new`] allows them.
    pub const ALL: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256];

    /// Parses a JOSE `alg` name: exact and case-sensitive, so `none`, `NONE`, `HS256`, `es256`
    /// are all `None`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }

    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a token could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedPart {
    /// Not exactly three dot-separated segments (a JWE has five).
    SegmentCount,
    /// A segment is not strict unpadded base64url.
    Base64,
    /// The header is not a JSON object (or has a duplicate or mistyped member).
    HeaderJson,
    /// The claims are not a JSON object (or have a duplicate member).
    ClaimsJson,
    /// The header has `crit`: it names extensions we do not understand.
    CriticalHeader,
}

impl fmt::Display for MalformedPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SegmentCount => "not three segments",
            Self::Base64 => "bad base64url",
            Self::HeaderJson => "header is not a JSON object",
            Self::ClaimsJson => "claims are not a JSON object",
            Self::CriticalHeader => "unsupported critical header",
        })
    }
}

/// Why a token is refused. Say little of this to the client; log and count all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error("the token is larger than the configured limit")]
    TooLarge,
    #[error("the token is malformed: {0}")]
    Malformed(MalformedPart),
    #[error("the token's algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("no key with the token's key id")]
    UnknownKeyId,
    #[error("the token has no key id")]
    MissingKeyId,
    #[error("the token's algorithm is not the one its key is pinned to")]
    AlgorithmMismatch,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token has no expiry")]
    MissingExpiry,
    #[error("the token's lifetime is longer than allowed")]
    LifetimeTooLong,
    #[error("the token's issuer is not the expected one")]
    WrongIssuer,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token's type is not the expected one")]
    WrongType,
    #[error("the token has no subject")]
    MissingSubject,
    #[error("the token's `{0}` claim is invalid")]
    BadClaim(&'static str),
}

impl JwtError {
    /// Every name [`JwtError::metric_name`] can return.
    pub const METRIC_NAMES: [&'static str; 17] = [
        "jwt_too_large",
        "jwt_malformed",
        "jwt_algorithm_not_allowed",
        "jwt_unknown_kid",
        "jwt_missing_kid",
        "jwt_algorithm_mismatch",
        "jwt_bad_signature",
        "jwt_expired",
        "jwt_not_yet_valid",
        "jwt_issued_in_future",
        "jwt_missing_exp",
        "jwt_lifetime_too_long",
        "jwt_wrong_issuer",
        "jwt_wrong_audience",
        "jwt_wrong_type",
        "jwt_missing_subject",
        "jwt_bad_claim",
    ];

    /// A short stable name for metrics and logs.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Self::TooLarge => "jwt_too_large",
            Self::Malformed(_) => "jwt_malformed",
            Self::AlgorithmNotAllowed => "jwt_algorithm_not_allowed",
            Self::UnknownKeyId => "jwt_unknown_kid",
            Self::MissingKeyId => "jwt_missing_kid",
            Self::AlgorithmMismatch => "jwt_algorithm_mismatch",
            Self::BadSignature => "jwt_bad_signature",
            Self::Expired => "jwt_expired",
            Self::NotYetValid => "jwt_not_yet_valid",
            Self::IssuedInFuture => "jwt_issued_in_future",
            Self::MissingExpiry => "jwt_missing_exp",
            Self::LifetimeTooLong => "jwt_lifetime_too_long",
            Self::WrongIssuer => "jwt_wrong_issuer",
            Self::WrongAudience => "jwt_wrong_audience",
            Self::WrongType => "jwt_wrong_type",
            Self::MissingSubject => "jwt_missing_subject",
            Self::BadClaim(_) => "jwt_bad_claim",
        }
    }
}

/// Why a key could not be made, encoded, decoded or used to sign, or a JWKS not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeyError {
    #[error("key generation failed")]
    Generation,
    #[error("the private key could not be encoded as PKCS#8")]
    Encoding,
    #[error("the bytes are not a PKCS#8 private key for {0}")]
    BadPrivateKey(Algorithm),
    #[error("the RSA key is shorter than 2048 bits")]
    WeakKey,
    #[error("the claims must be a JSON object")]
    ClaimsNotObject,
    #[error("signing failed")]
    Signing,
    #[error("the JWKS is not a JSON object with a `keys` array")]
    BadJwks,
    #[error("the JWKS has {0} keys, more than the limit of 64")]
    TooManyKeys(usize),
}

/// True when `token` looks like a compact JWS: three non-empty dot-separated segments of
/// base64url characters. A cheap classifier (no decoding); [`verify_jwt`] checks everything.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segments > 3 || segment.is_empty() || !segment.bytes().all(is_base64url_byte) {
            return false;
        }
    }
    segments == 3
}

/// The `iss` claim of a token, read WITHOUT verifying anything: only to choose which issuer's
/// keys and rules verify it. `None` when the token is not even well-formed enough to say.
pub fn peek_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
    }
    let claims_b64 = token.split('.').nth(1)?;
    if !is_strict_base64url(claims_b64.as_bytes()) {
        return None;
    }
    let claims = b64_decode(claims_b64.as_bytes())?;
    serde_json::from_slice::<Claims>(&claims)
        .ok()
        .map(|c| c.iss)
}

fn is_base64url_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// Strict base64url: the alphabet, no padding, a possible length. (Trailing bits are checked
/// when decoding.)
fn is_strict_base64url(segment: &[u8]) -> bool {
    segment.len() % 4 != 1 && segment.iter().copied().all(is_base64url_byte)
}

fn b64_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes strict base64url (the engine refuses padding and non-canonical trailing bits).
fn b64_decode(text: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_are_exact() {
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::parse(alg.as_str()), Some(alg));
            assert_eq!(
                serde_json::to_string(&alg).unwrap(),
                format!("\"{}\"", alg.as_str())
            );
            assert_eq!(
                serde_json::from_str::<Algorithm>(&format!("\"{alg}\"")).unwrap(),
                alg
            );
        }
        for bad in [
            "none", "None", "NONE", "HS256", "es256", "EDDSA", "Ed25519", "PS256", "",
        ] {
            assert_eq!(Algorithm::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn classifier_wants_three_base64url_segments() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("a-_b.c.d"));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "a.b.c.d.e",
            "a..c",
            ".b.c",
            "a.b.",
            "a.b+.c",
            "a.b/.c",
            "a.b.c=",
            "kg_live_abc",
            "a b.c.d",
        ] {
            assert!(!looks_like_jwt(bad), "{bad}");
        }
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64_decode(b"AQID").as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(b64_decode(b"AQ").as_deref(), Some(&[1u8][..]));
        // Padding, the standard alphabet, and non-canonical trailing bits are refused.
        assert!(b64_decode(b"AQ==").is_none());
        assert!(b64_decode(b"+/+/").is_none());
        assert!(b64_decode(b"AR").is_none());
        assert!(!is_strict_base64url(b"AQ=="));
        assert!(!is_strict_base64url(b"A"));
        assert!(is_strict_base64url(b"AQ"));
    }
}

/// Keys for unit tests, from fixed seeds (the RSA one generated once per test binary).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::OnceLock;

    use rand_core::SeedableRng as _;

    use super::{Algorithm, SigningKey};

    pub fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(seed)
    }

    pub fn key(alg: Algorithm) -> &'static SigningKey {
        static KEYS: OnceLock<[SigningKey; 3]> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            Algorithm::ALL.map(|alg| SigningKey::generate(alg, &mut rng(alg as u64)).unwrap())
        });
        &keys[alg as usize]
    }
}
