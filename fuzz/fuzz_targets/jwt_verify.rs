//! JWT verification: the token is the client's bytes.
//!
//! Calls `keygate_core::jwt::{verify_jwt_with, looks_like_jwt, peek_issuer}` (and
//! `SigningKey::{generate, sign, verifying_key}`, `KeySet::{from_jwks_json, insert}` to set
//! up). Keys: ES256, EdDSA and an RS256 public key to verify against; ES256 and EdDSA to sign
//! with (RS256 signing is covered by the core's tests).
//! Input: one mode byte (validation options in the low bits; in the top two bits what to do),
//! then a token, or claims JSON to sign:
//!   0, 1  verify the token for real: no token the fuzzer makes may verify;
//!   2     verify with a host "verifier" that accepts every signature, so the fuzzer reaches
//!         the header and claims checks behind it;
//!   3     sign the claims with each key, then verify: what verifies must say what was signed.
#![no_main]

use std::sync::OnceLock;

use keygate_core::jwt::{
    looks_like_jwt, peek_issuer, verify_jwt_with, Algorithm, KeySet, NativeVerifier, SigningKey,
    Validation, MAX_SCOPES,
};
use libfuzzer_sys::fuzz_target;
use rand_core::SeedableRng as _;

const ISSUER: &str = "https://keys.example";
const NOW_S: u64 = 1_800_000_000;

/// A 2048-bit RSA public key whose private half was thrown away: generating an RSA key inside
/// the instrumented fuzzer takes longer than a whole CI pass of this target.
const RS256_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"k-RS256","alg":"RS256","use":"sig","e":"AQAB","n":"rDDTCEg8vxC6_JkgAHfeDHTLl3jpCyVgQFqw6qzw48_PsZi6ad4qL3Fdy7hPnnNJJ_q_2b9Qw3r_j5L6wtaGk6-Ek4vwEs2KhqmVgNMB_dwGBGP9io3KNuLAfG8EEXJX653GCNUvpiPiEv9whG8ydazT9akBCxKQtoNVCx-DToVXlu9Ytl-V_09AlniWtTY5GWG0Ff_YTyUaoBTEs6WIe2JIkrzC5piL_0FMJduhPmy4HfWBe4k8gHtpAT1oJUQeG6J3dcUYmgjiMUzlx1bCGWq-mpp5NXV26Uy22a5fQjN1NuIyahEyxeAuOYOiEssQxX2bzEIdqtsVr9YrCyi6xw"}]}"#;

/// ES256 and EdDSA keys from fixed seeds, with kids `<prefix>-<alg>`.
fn generated(seed: u64, kid_prefix: &str) -> Vec<(SigningKey, String)> {
    [Algorithm::ES256, Algorithm::EdDSA]
        .into_iter()
        .filter_map(|alg| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed + alg as u64);
            let key = SigningKey::generate(alg, &mut rng).ok()?;
            Some((key, format!("{kid_prefix}-{}", alg.as_str())))
        })
        .collect()
}

fn key_set(keys: &[(SigningKey, String)], base: KeySet) -> KeySet {
    let mut set = base;
    for (key, kid) in keys {
        let _ = set.insert(key.verifying_key(kid));
    }
    set
}

/// The keys tokens from the fuzzer are checked against: nothing is ever signed with them.
fn trusted() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = KeySet::from_jwks_json(RS256_JWKS.as_bytes()).map(|(set, _)| set);
        let set = key_set(&generated(0, "k"), rsa.unwrap_or_default());
        assert_eq!(set.len(), 3, "a key of the fuzz set did not load");
        set
    })
}

/// Other keys, for mode 3, which signs: a token it made (which the fuzzer may pick up from
/// the comparisons it watches) verifies only against these.
fn signing() -> &'static (Vec<(SigningKey, String)>, KeySet) {
    static KEYS: OnceLock<(Vec<(SigningKey, String)>, KeySet)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = generated(100, "s");
        let set = key_set(&keys, KeySet::default());
        (keys, set)
    })
}

/// Says yes to every signature.
struct AcceptAll;

impl NativeVerifier for AcceptAll {
    fn verify(&self, _: Algorithm, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
        Some(true)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut validation = Validation::new(ISSUER);
    if mode & 1 != 0 {
        validation.audiences = vec!["api".to_owned()];
    }
    if mode & 2 != 0 {
        validation.typ = Some("at+jwt".to_owned());
    }
    if mode & 4 != 0 {
        validation.max_lifetime_s = Some(3600);
    }
    validation.require_exp = mode & 8 == 0;
    let text = String::from_utf8_lossy(rest);

    match mode >> 6 {
        0 | 1 => {
            let _ = looks_like_jwt(&text);
            let _ = peek_issuer(&text);
            let verified = verify_jwt_with(&text, trusted(), &validation, NOW_S, None);
            assert!(verified.is_err(), "a token nobody signed verified: {text}");
        }
        2 => {
            let host = Some(&AcceptAll as &dyn NativeVerifier);
            if let Ok(token) = verify_jwt_with(&text, trusted(), &validation, NOW_S, host) {
                assert_eq!(token.issuer, ISSUER);
                assert!(!token.subject.is_empty());
                assert!(!token.subject.chars().any(char::is_control));
                assert!(token.scopes.len() <= MAX_SCOPES);
            }
        }
        _ => {
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
                return;
            };
            let typ = if mode & 16 != 0 { "at+jwt" } else { "JWT" };
            let (signers, set) = signing();
            for (signer, kid) in signers {
                let Ok(token) = signer.sign(kid, typ, &claims) else {
                    continue;
                };
                if let Ok(verified) = verify_jwt_with(&token, set, &validation, NOW_S, None) {
                    assert_eq!(
                        claims.get("sub").and_then(|s| s.as_str()),
                        Some(verified.subject.as_str())
                    );
                    assert_eq!(claims.get("iss").and_then(|s| s.as_str()), Some(ISSUER));
                    assert_eq!(
                        claims.get("jti").and_then(|s| s.as_str()),
                        verified.jti.as_deref()
                    );
                }
            }
        }
    }
});
