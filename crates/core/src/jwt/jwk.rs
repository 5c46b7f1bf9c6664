//! Public keys: the JWK / JWKS wire types (RFC 7517) and the verifier's [`KeySet`].

use std::fmt;

use p256::ecdsa::signature::Verifier as _;
use p256::elliptic_curve::sec1::FromEncodedPoint as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{b64_decode, b64_encode, Algorithm, JwtKeyError};

/// The most keys a [`KeySet`] holds; a JWKS with more is refused whole.
pub const MAX_KEYS: usize = 64;
/// The shortest RSA modulus accepted, in bits (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// One JSON Web Key (RFC 7517), public members only. Members Keygate does not use (`d`,
/// `x5c`, `key_ops`, ...) are ignored when read and never written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
}

/// A JSON Web Key Set: what the key service publishes and the filter reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A key left out of a [`KeySet`], and why. Worth a log line: a typo in a JWKS should not
/// silently disable a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedKey {
    pub kid: Option<String>,
    pub reason: &'static str,
}

/// One public key, its `kid`, and the one algorithm it may verify.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: Box<str>,
    key: PublicKey,
    /// SubjectPublicKeyInfo DER, for a host that verifies natively (ES256, RS256).
    spki: Option<Box<[u8]>>,
}

#[derive(Clone)]
pub(super) enum PublicKey {
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_dalek::VerifyingKey),
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
}

impl PublicKey {
    pub(super) fn algorithm(&self) -> Algorithm {
        match self {
            Self::Es256(_) => Algorithm::ES256,
            Self::EdDsa(_) => Algorithm::EdDSA,
            Self::Rs256(_) => Algorithm::RS256,
        }
    }

    fn spki_der(&self) -> Option<Vec<u8>> {
        use p256::pkcs8::EncodePublicKey as _;
        match self {
            Self::Es256(key) => key.to_public_key_der().ok().map(|der| der.into_vec()),
            Self::Rs256(key) => {
                let key: &RsaPublicKey = key.as_ref();
                rsa::pkcs8::EncodePublicKey::to_public_key_der(key)
                    .ok()
                    .map(|der| der.into_vec())
            }
            Self::EdDsa(_) => None,
        }
    }

    /// Checks `signature` over `message`, in the key's own algorithm only.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            Self::EdDsa(key) => <&[u8; 64]>::try_from(signature).is_ok_and(|bytes| {
                let sig = ed25519_dalek::Signature::from_bytes(bytes);
                key.verify_strict(message, &sig).is_ok()
            }),
            Self::Rs256(key) => {
                // PKCS#1 v1.5 signatures are exactly the modulus length.
                let modulus_len = AsRef::<RsaPublicKey>::as_ref(key).size();
                signature.len() == modulus_len
                    && rsa::pkcs1v15::Signature::try_from(signature)
                        .is_ok_and(|sig| key.verify(message, &sig).is_ok())
            }
        }
    }

    pub(super) fn to_jwk(&self) -> Jwk {
        match self {
            Self::Es256(key) => {
                let point = key.to_encoded_point(false);
                Jwk {
                    kty: "EC".to_owned(),
                    crv: Some("P-256".to_owned()),
                    x: point.x().map(|x| b64_encode(x)),
                    y: point.y().map(|y| b64_encode(y)),
                    ..Jwk::default()
                }
            }
            Self::EdDsa(key) => Jwk {
                kty: "OKP".to_owned(),
                crv: Some("Ed25519".to_owned()),
                x: Some(b64_encode(key.as_bytes())),
                ..Jwk::default()
            },
            Self::Rs256(key) => {
                let key: &RsaPublicKey = key.as_ref();
                Jwk {
                    kty: "RSA".to_owned(),
                    n: Some(b64_encode(&key.n().to_bytes_be())),
                    e: Some(b64_encode(&key.e().to_bytes_be())),
                    ..Jwk::default()
                }
            }
        }
    }

    /// Reads the public key of a JWK, pinned to the algorithm its type implies.
    fn from_jwk(jwk: &Jwk) -> Result<Self, &'static str> {
        let (key, alg) = match jwk.kty.as_str() {
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Err("unsupported EC curve (only P-256)");
                }
                let x = coordinate(jwk.x.as_deref())?;
                let y = coordinate(jwk.y.as_deref())?;
                let point =
                    p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                let key: Option<p256::PublicKey> =
                    p256::PublicKey::from_encoded_point(&point).into();
                let key = key.ok_or("EC point is not on P-256")?;
                (Self::Es256(key.into()), Algorithm::ES256)
            }
            "OKP" => {
                if jwk.crv.as_deref() != Some("Ed25519") {
                    return Err("unsupported OKP curve (only Ed25519)");
                }
                let x = coordinate(jwk.x.as_deref())?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| "Ed25519 key is not a valid point")?;
                if key.is_weak() {
                    return Err("Ed25519 key has small order");
                }
                (Self::EdDsa(key), Algorithm::EdDSA)
            }
            "RSA" => {
                let n = jwk.n.as_deref().and_then(|n| b64_decode(n.as_bytes()));
                let e = jwk.e.as_deref().and_then(|e| b64_decode(e.as_bytes()));
                let (Some(n), Some(e)) = (n, e) else {
                    return Err("RSA key without valid base64url n and e");
                };
                let n = BigUint::from_bytes_be(&n);
                if n.bits() < MIN_RSA_BITS {
                    return Err("RSA key shorter than 2048 bits");
                }
                let key = RsaPublicKey::new(n, BigUint::from_bytes_be(&e))
                    .map_err(|_| "RSA key is invalid (exponent, or longer than 4096 bits)")?;
                (
                    Self::Rs256(rsa::pkcs1v15::VerifyingKey::new(key)),
                    Algorithm::RS256,
                )
            }
            "oct" => return Err("symmetric keys are never used"),
            _ => return Err("unsupported key type"),
        };
        match jwk.alg.as_deref() {
            None => Ok(key),
            Some(name) if Algorithm::parse(name) == Some(alg) => Ok(key),
            Some(_) => Err("alg does not match the key type"),
        }
    }
}

fn coordinate(text: Option<&str>) -> Result<[u8; 32], &'static str> {
    text.and_then(|text| b64_decode(text.as_bytes()))
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or("key coordinate is not 32 bytes of base64url")
}

impl VerifyingKey {
    /// Reads one JWK. It needs a `kid`, `use` absent or `"sig"`, a supported key type and
    /// curve, an RSA modulus of at least 2048 bits, and `alg` absent or matching the key type.
    /// Without `alg` the key is pinned by its type: EC P-256 → ES256, OKP Ed25519 → EdDSA,
    /// RSA → RS256.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, SkippedKey> {
        let skip = |reason| SkippedKey {
            kid: jwk.kid.clone(),
            reason,
        };
        let kid = jwk.kid.as_deref().ok_or_else(|| skip("missing kid"))?;
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(skip("use is not \"sig\""));
        }
        let key = PublicKey::from_jwk(jwk).map_err(skip)?;
        Ok(Self::new(kid, key))
    }

    pub(super) fn new(kid: &str, key: PublicKey) -> Self {
        let spki = key.spki_der().map(Vec::into_boxed_slice);
        Self {
            kid: kid.into(),
            key,
            spki,
        }
    }

    /// The key as SubjectPublicKeyInfo DER (ES256 and RS256 keys), as a host's native
    /// crypto takes it.
    pub fn spki_der(&self) -> Option<&[u8]> {
        self.spki.as_deref()
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The only algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    pub(super) fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// The key as a JWK with `kid`, `alg` and `use: "sig"`.
    pub fn to_jwk(&self) -> Jwk {
        Jwk {
            kid: Some(self.kid.to_string()),
            alg: Some(self.algorithm().as_str().to_owned()),
            use_: Some("sig".to_owned()),
            ..self.key.to_jwk()
        }
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// The keys a verifier trusts, by `kid` (at most [`MAX_KEYS`]). Built once when a JWKS is
/// configured or fetched; looked up per request.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    /// Sorted by kid, unique.
    keys: Vec<VerifyingKey>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS. Unusable keys are skipped and reported (see [`VerifyingKey::from_jwk`];
    /// also a JWK that is not an object of strings, and a repeated kid — the first wins). The
    /// whole set is refused only when it is not a JSON object with a `keys` array, or has more
    /// than [`MAX_KEYS`] keys.
    pub fn from_jwks_json(json: &[u8]) -> Result<(KeySet, Vec<SkippedKey>), JwtKeyError> {
        let raw: RawJwks = serde_json::from_slice(json).map_err(|_| JwtKeyError::BadJwks)?;
        if raw.keys.len() > MAX_KEYS {
            return Err(JwtKeyError::TooManyKeys(raw.keys.len()));
        }
        let mut skipped = Vec::new();
        let mut keys = Vec::with_capacity(raw.keys.len());
        for value in raw.keys {
            let kid = value
                .get("kid")
                .and_then(|kid| kid.as_str())
                .map(str::to_owned);
            match Jwk::deserialize(value) {
                Ok(jwk) => keys.push(jwk),
                Err(_) => skipped.push(SkippedKey {
                    kid,
                    reason: "not a JWK (a member has the wrong type)",
                }),
            }
        }
        let (set, mut more) = Self::from_jwks(&Jwks { keys });
        skipped.append(&mut more);
        Ok((set, skipped))
    }

    /// Builds a set from parsed JWKs, skipping (and reporting) unusable ones. Keys past the
    /// first [`MAX_KEYS`] are skipped too.
    pub fn from_jwks(jwks: &Jwks) -> (KeySet, Vec<SkippedKey>) {
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => {
                    if let Err(reason) = set.insert(key) {
                        skipped.push(SkippedKey {
                            kid: jwk.kid.clone(),
                            reason,
                        });
                    }
                }
                Err(skip) => skipped.push(skip),
            }
        }
        (set, skipped)
    }

    /// Adds a key; refuses a repeated kid or a full set.
    pub fn insert(&mut self, key: VerifyingKey) -> Result<(), &'static str> {
        match self.keys.binary_search_by(|k| k.kid.cmp(&key.kid)) {
            Ok(_) => Err("repeated kid (the first one is kept)"),
            Err(_) if self.keys.len() >= MAX_KEYS => Err("more than 64 keys"),
            Err(at) => {
                self.keys.insert(at, key);
                Ok(())
            }
        }
    }

    /// The key with this kid. The kid is only compared, never interpreted.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys
            .binary_search_by(|k| (*k.kid).cmp(kid))
            .ok()
            .and_then(|at| self.keys.get(at))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter()
    }

    /// The set as a JWKS (each key with kid, alg and use).
    pub fn to_jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys.iter().map(VerifyingKey::to_jwk).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::testing::key;

    fn jwks_json(keys: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn jwk_json(alg: Algorithm, kid: &str) -> serde_json::Value {
        serde_json::to_value(key(alg).public_jwk(kid)).unwrap()
    }

    fn reasons(skipped: &[SkippedKey]) -> Vec<&'static str> {
        skipped.iter().map(|s| s.reason).collect()
    }

    #[test]
    fn reads_every_supported_key_and_pins_its_algorithm() {
        let json = jwks_json(&[
            jwk_json(Algorithm::ES256, "es"),
            jwk_json(Algorithm::EdDSA, "ed"),
            jwk_json(Algorithm::RS256, "rs"),
        ]);
        let (set, skipped) = KeySet::from_jwks_json(&json).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.get("es").map(VerifyingKey::algorithm),
            Some(Algorithm::ES256)
        );
        assert_eq!(
            set.get("ed").map(VerifyingKey::algorithm),
            Some(Algorithm::EdDSA)
        );
        assert_eq!(
            set.get("rs").map(VerifyingKey::algorithm),
            Some(Algorithm::RS256)
        );
        assert!(set.get("ES").is_none() && set.get("").is_none());
        // Round trip through the set's own JWKS.
        let again = KeySet::from_jwks(&set.to_jwks()).0;
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn a_key_without_alg_is_pinned_by_its_type() {
        let mut jwk = key(Algorithm::RS256).public_jwk("rs");
        jwk.alg = None;
        jwk.use_ = None;
        let (set, skipped) = KeySet::from_jwks(&Jwks { keys: vec![jwk] });
        assert!(skipped.is_empty());
        assert_eq!(
            set.get("rs").map(VerifyingKey::algorithm),
            Some(Algorithm::RS256)
        );
    }

    #[test]
    fn unusable_keys_are_skipped_and_reported() {
        let es = key(Algorithm::ES256).public_jwk("es");
        let mut no_kid = es.clone();
        no_kid.kid = None;
        let mut enc = es.clone();
        enc.use_ = Some("enc".into());
        let mut wrong_alg = es.clone();
        wrong_alg.alg = Some("RS256".into());
        let mut hs = es.clone();
        hs.alg = Some("HS256".into());
        let mut p384 = es.clone();
        p384.crv = Some("P-384".into());
        let mut off_curve = es.clone();
        off_curve.y = off_curve.x.clone();
        let oct = Jwk {
            kty: "oct".into(),
            kid: Some("oct".into()),
            ..Jwk::default()
        };
        let short_rsa = Jwk {
            kty: "RSA".into(),
            kid: Some("short".into()),
            n: Some(crate::jwt::b64_encode(&[0xff; 128])),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        let mut ed_as_es = key(Algorithm::EdDSA).public_jwk("ed");
        ed_as_es.alg = Some("ES256".into());
        let (set, skipped) = KeySet::from_jwks(&Jwks {
            keys: vec![
                no_kid, enc, wrong_alg, hs, p384, off_curve, oct, short_rsa, ed_as_es, es,
            ],
        });
        assert_eq!(set.len(), 1);
        assert_eq!(
            reasons(&skipped),
            [
                "missing kid",
                "use is not \"sig\"",
                "alg does not match the key type",
                "alg does not match the key type",
                "unsupported EC curve (only P-256)",
                "EC point is not on P-256",
                "symmetric keys are never used",
                "RSA key shorter than 2048 bits",
                "alg does not match the key type",
            ]
        );
        assert_eq!(skipped[7].kid.as_deref(), Some("short"));
    }

    #[test]
    fn malformed_members_skip_one_key_not_the_set() {
        let json = jwks_json(&[
            serde_json::json!({"kty": "EC", "kid": 7}),
            serde_json::json!("not an object"),
            jwk_json(Algorithm::EdDSA, "ed"),
        ]);
        let (set, skipped) = KeySet::from_jwks_json(&json).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn repeated_kid_keeps_the_first() {
        let (set, skipped) = KeySet::from_jwks(&Jwks {
            keys: vec![
                key(Algorithm::ES256).public_jwk("same"),
                key(Algorithm::EdDSA).public_jwk("same"),
            ],
        });
        assert_eq!(
            set.get("same").map(VerifyingKey::algorithm),
            Some(Algorithm::ES256)
        );
        assert_eq!(reasons(&skipped), ["repeated kid (the first one is kept)"]);
    }

    #[test]
    fn the_set_is_refused_only_when_unreadable_or_too_big() {
        assert_eq!(
            KeySet::from_jwks_json(b"not json").err(),
            Some(JwtKeyError::BadJwks)
        );
        assert_eq!(
            KeySet::from_jwks_json(b"[]").err(),
            Some(JwtKeyError::BadJwks)
        );
        let many: Vec<_> = (0..=MAX_KEYS)
            .map(|i| jwk_json(Algorithm::EdDSA, &format!("k{i}")))
            .collect();
        assert_eq!(
            KeySet::from_jwks_json(&jwks_json(&many)).err(),
            Some(JwtKeyError::TooManyKeys(65))
        );
        let (set, skipped) = KeySet::from_jwks_json(&jwks_json(&many[..MAX_KEYS])).unwrap();
        assert_eq!((set.len(), skipped.len()), (MAX_KEYS, 0));
        let (empty, _) = KeySet::from_jwks_json(b"{\"keys\":[]}").unwrap();
        assert!(empty.is_empty());
    }
}
