//! Issuing tokens: the key service's signing keys.

use std::fmt;

use p256::ecdsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rand_core::SeedableRng as _;
use rsa::traits::PublicKeyParts as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::jwk::{PublicKey, VerifyingKey, MIN_RSA_BITS};
use super::{b64_encode, Algorithm, Jwk, JwtKeyError};

/// Bits of a generated RSA key.
pub const RSA_BITS: usize = 2048;
const BLINDING_CONTEXT: &[u8] = b"keygate/jwt/rsa-blinding/v1";

/// A private key that signs tokens. `Debug` never prints key material; the inner keys are
/// zeroized on drop.
pub struct SigningKey {
    inner: Inner,
}

enum Inner {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
    Rs256 {
        key: rsa::pkcs1v15::SigningKey<Sha256>,
        /// Secret seed for the RSA blinding factor (see [`SigningKey::sign`]).
        blinding_seed: zeroize::Zeroizing<[u8; 32]>,
    },
}

#[derive(Serialize)]
struct Header<'a> {
    alg: Algorithm,
    typ: &'a str,
    kid: &'a str,
}

impl SigningKey {
    /// A fresh key from `rng` (the key service passes the OS CSPRNG). RS256 keys have 2048
    /// bits and take a noticeable time to generate (tens to hundreds of milliseconds).
    pub fn generate(
        alg: Algorithm,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, JwtKeyError> {
        let inner = match alg {
            Algorithm::ES256 => Inner::Es256(p256::ecdsa::SigningKey::random(rng)),
            Algorithm::EdDSA => Inner::EdDsa(ed25519_dalek::SigningKey::generate(rng)),
            Algorithm::RS256 => {
                let key =
                    rsa::RsaPrivateKey::new(rng, RSA_BITS).map_err(|_| JwtKeyError::Generation)?;
                rsa_inner(key)?
            }
        };
        Ok(Self { inner })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            Inner::Es256(_) => Algorithm::ES256,
            Inner::EdDsa(_) => Algorithm::EdDSA,
            Inner::Rs256 { .. } => Algorithm::RS256,
        }
    }

    /// The private key as PKCS#8 DER, for storage. This is the secret: encrypt it at rest and
    /// zeroize the returned buffer when done.
    pub fn to_pkcs8_der(&self) -> Result<Vec<u8>, JwtKeyError> {
        let document = match &self.inner {
            Inner::Es256(key) => key.to_pkcs8_der(),
            Inner::EdDsa(key) => key.to_pkcs8_der(),
            Inner::Rs256 { key, .. } => key.to_pkcs8_der(),
        }
        .map_err(|_| JwtKeyError::Encoding)?;
        Ok(document.as_bytes().to_vec())
    }

    /// Reads a PKCS#8 DER private key of algorithm `alg` (as written by
    /// [`SigningKey::to_pkcs8_der`]). A key of another type, or an RSA key shorter than 2048
    /// bits, is refused.
    pub fn from_pkcs8_der(alg: Algorithm, der: &[u8]) -> Result<Self, JwtKeyError> {
        let bad = |_| JwtKeyError::BadPrivateKey(alg);
        let inner = match alg {
            Algorithm::ES256 => {
                Inner::Es256(p256::ecdsa::SigningKey::from_pkcs8_der(der).map_err(bad)?)
            }
            Algorithm::EdDSA => {
                Inner::EdDsa(ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(bad)?)
            }
            Algorithm::RS256 => rsa_inner(rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(bad)?)?,
        };
        Ok(Self { inner })
    }

    /// The public half, with its `kid`, pinned to this key's algorithm.
    pub fn verifying_key(&self, kid: &str) -> VerifyingKey {
        let key = match &self.inner {
            Inner::Es256(key) => PublicKey::Es256(*key.verifying_key()),
            Inner::EdDsa(key) => PublicKey::EdDsa(key.verifying_key()),
            Inner::Rs256 { key, .. } => PublicKey::Rs256(rsa::pkcs1v15::VerifyingKey::new(
                AsRef::<rsa::RsaPrivateKey>::as_ref(key).to_public_key(),
            )),
        };
        VerifyingKey::new(kid, key)
    }

    /// The public key as a JWK with `kid`, `alg` and `use: "sig"`, for the JWKS.
    pub fn public_jwk(&self, kid: &str) -> Jwk {
        self.verifying_key(kid).to_jwk()
    }

    /// Signs a compact JWS: header `{"alg","typ","kid"}` and `claims`, which must be a JSON
    /// object. The claims are taken as given: set `iss`, `sub`, `exp`, `iat` (and `aud`,
    /// `scope`, `jti`) yourself.
    ///
    /// ES256 and EdDSA signatures are deterministic (RFC 6979, RFC 8032). RS256 uses RSA
    /// blinding with a factor derived from a per-key secret and the message; the `rsa` crate's
    /// arithmetic is not constant-time (RUSTSEC-2023-0071), so prefer ES256 or EdDSA for keys
    /// whose signing latency an attacker can measure.
    pub fn sign(
        &self,
        kid: &str,
        typ: &str,
        claims: &serde_json::Value,
    ) -> Result<String, JwtKeyError> {
        if !claims.is_object() {
            return Err(JwtKeyError::ClaimsNotObject);
        }
        let header = Header {
            alg: self.algorithm(),
            typ,
            kid,
        };
        let header = serde_json::to_vec(&header).map_err(|_| JwtKeyError::Signing)?;
        let claims = serde_json::to_vec(claims).map_err(|_| JwtKeyError::Signing)?;
        self.sign_parts(&header, &claims)
    }

    /// Signs any header and claims bytes (tests use it to forge odd headers).
    pub(super) fn sign_parts(&self, header: &[u8], claims: &[u8]) -> Result<String, JwtKeyError> {
        let mut token = b64_encode(header);
        token.push('.');
        token.push_str(&b64_encode(claims));
        let signature = match &self.inner {
            Inner::Es256(key) => {
                let signature: p256::ecdsa::Signature = key
                    .try_sign(token.as_bytes())
                    .map_err(|_| JwtKeyError::Signing)?;
                signature.to_bytes().to_vec()
            }
            Inner::EdDsa(key) => key.sign(token.as_bytes()).to_bytes().to_vec(),
            Inner::Rs256 { key, blinding_seed } => {
                let mut seed = Sha256::new();
                seed.update(blinding_seed.as_slice());
                seed.update(token.as_bytes());
                let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed.finalize().into());
                key.try_sign_with_rng(&mut rng, token.as_bytes())
                    .map_err(|_| JwtKeyError::Signing)?
                    .to_vec()
            }
        };
        token.push('.');
        token.push_str(&b64_encode(&signature));
        Ok(token)
    }
}

fn rsa_inner(key: rsa::RsaPrivateKey) -> Result<Inner, JwtKeyError> {
    if key.n().bits() < MIN_RSA_BITS {
        return Err(JwtKeyError::WeakKey);
    }
    let der = key.to_pkcs8_der().map_err(|_| JwtKeyError::Encoding)?;
    let mut seed = Sha256::new();
    seed.update(BLINDING_CONTEXT);
    seed.update(der.as_bytes());
    Ok(Inner::Rs256 {
        key: rsa::pkcs1v15::SigningKey::new(key),
        blinding_seed: zeroize::Zeroizing::new(seed.finalize().into()),
    })
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.algorithm())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::testing::{key, rng};
    use crate::jwt::{verify_jwt, KeySet, Validation};

    #[test]
    fn generation_is_deterministic_under_a_seeded_rng() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let a = SigningKey::generate(alg, &mut rng(1)).unwrap();
            let b = SigningKey::generate(alg, &mut rng(1)).unwrap();
            let c = SigningKey::generate(alg, &mut rng(2)).unwrap();
            assert_eq!(a.public_jwk("k"), b.public_jwk("k"));
            assert_ne!(a.public_jwk("k"), c.public_jwk("k"));
        }
    }

    #[test]
    fn pkcs8_round_trips_and_is_typed() {
        for alg in Algorithm::ALL {
            let original = key(alg);
            assert_eq!(original.algorithm(), alg);
            let der = original.to_pkcs8_der().unwrap();
            let restored = SigningKey::from_pkcs8_der(alg, &der).unwrap();
            assert_eq!(restored.public_jwk("k"), original.public_jwk("k"));
            for other in Algorithm::ALL.into_iter().filter(|a| *a != alg) {
                assert_eq!(
                    SigningKey::from_pkcs8_der(other, &der).err(),
                    Some(JwtKeyError::BadPrivateKey(other)),
                    "{alg} key read as {other}"
                );
            }
        }
        assert!(SigningKey::from_pkcs8_der(Algorithm::ES256, b"junk").is_err());
    }

    #[test]
    fn public_jwk_has_kid_alg_use_and_only_public_members() {
        let es = key(Algorithm::ES256).public_jwk("es");
        assert_eq!(
            (es.kty.as_str(), es.crv.as_deref(), es.alg.as_deref()),
            ("EC", Some("P-256"), Some("ES256"))
        );
        assert_eq!(es.x.as_deref().map(str::len), Some(43));
        assert_eq!(es.y.as_deref().map(str::len), Some(43));
        let ed = key(Algorithm::EdDSA).public_jwk("ed");
        assert_eq!(
            (ed.kty.as_str(), ed.crv.as_deref(), ed.alg.as_deref()),
            ("OKP", Some("Ed25519"), Some("EdDSA"))
        );
        let rs = key(Algorithm::RS256).public_jwk("rs");
        assert_eq!((rs.kty.as_str(), rs.e.as_deref()), ("RSA", Some("AQAB")));
        assert_eq!(rs.n.as_deref().map(str::len), Some(342)); // 256 bytes
        for jwk in [&es, &ed, &rs] {
            assert_eq!(jwk.use_.as_deref(), Some("sig"));
            let json = serde_json::to_value(jwk).unwrap();
            assert_eq!(json["use"], "sig");
            assert!(json.get("d").is_none() && json.get("p").is_none());
        }
        assert_eq!(es.kid.as_deref(), Some("es"));
    }

    #[test]
    fn signs_a_compact_jws_with_the_documented_header() {
        let token = key(Algorithm::EdDSA)
            .sign("k1", "at+jwt", &serde_json::json!({"sub": "a"}))
            .unwrap();
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&crate::jwt::b64_decode(header.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"})
        );
        assert_eq!(
            key(Algorithm::EdDSA).sign("k1", "JWT", &serde_json::json!([1])),
            Err(JwtKeyError::ClaimsNotObject)
        );
    }

    #[test]
    fn every_algorithm_verifies_its_own_tokens() {
        let claims = serde_json::json!({"iss": "i", "sub": "s", "exp": 2000});
        for alg in Algorithm::ALL {
            let signer = key(alg);
            let (keys, skipped) = KeySet::from_jwks(&crate::jwt::Jwks {
                keys: vec![signer.public_jwk("k")],
            });
            assert!(skipped.is_empty());
            let token = signer.sign("k", "JWT", &claims).unwrap();
            let verified = verify_jwt(&token, &keys, &Validation::new("i"), 1000).unwrap();
            assert_eq!(verified.subject, "s", "{alg}");
        }
    }

    #[test]
    fn rsa_signatures_are_deterministic_despite_blinding() {
        let claims = serde_json::json!({"sub": "s"});
        let signer = key(Algorithm::RS256);
        assert_eq!(
            signer.sign("k", "JWT", &claims).unwrap(),
            signer.sign("k", "JWT", &claims).unwrap()
        );
    }

    #[test]
    fn debug_redacts_the_key() {
        for alg in Algorithm::ALL {
            assert_eq!(
                format!("{:?}", key(alg)),
                format!("SigningKey({alg}, <redacted>)")
            );
        }
    }
}
