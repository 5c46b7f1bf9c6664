#![allow(clippy::unwrap_used, clippy::panic)]
//! Known attacks on JWT verification, each refused with its specific error, through the public
//! API only. Keys come from fixed seeds; tokens with odd headers are forged with the raw
//! RustCrypto keys the attacker (or, for header tricks, the issuer) holds.

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use keygate_core::jwt::{
    verify_jwt, Algorithm, JwtError, KeySet, MalformedPart, SigningKey, Validation, VerifiedToken,
};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use rand_core::SeedableRng as _;
use serde_json::{json, Value};
use sha2::Sha256;

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://keys.example";
const AUDIENCE: &str = "https://api.example";

fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(seed)
}

/// The issuer's keys: a raw P-256 key (to forge odd headers with) and the same key, the Ed25519
/// key and the RSA key as Keygate signing keys. Generated once.
struct Issuer {
    es_raw: p256::ecdsa::SigningKey,
    es: SigningKey,
    ed: SigningKey,
    rs: SigningKey,
}

fn issuer() -> &'static Issuer {
    static ISSUER_KEYS: OnceLock<Issuer> = OnceLock::new();
    ISSUER_KEYS.get_or_init(|| {
        let es_raw = p256::ecdsa::SigningKey::random(&mut rng(1));
        let der = es_raw.to_pkcs8_der().unwrap();
        Issuer {
            es: SigningKey::from_pkcs8_der(Algorithm::ES256, der.as_bytes()).unwrap(),
            es_raw,
            ed: SigningKey::generate(Algorithm::EdDSA, &mut rng(2)).unwrap(),
            rs: SigningKey::generate(Algorithm::RS256, &mut rng(3)).unwrap(),
        }
    })
}

fn jwks() -> Value {
    let issuer = issuer();
    json!({ "keys": [
        issuer.es.public_jwk("es-1"),
        issuer.ed.public_jwk("ed-1"),
        issuer.rs.public_jwk("rs-1"),
    ]})
}

fn keys() -> KeySet {
    let (keys, skipped) = KeySet::from_jwks_json(jwks().to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    keys
}

fn validation() -> Validation {
    let mut validation = Validation::new(ISSUER);
    validation.audiences = vec![AUDIENCE.to_owned()];
    validation
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "client-42",
        "aud": AUDIENCE,
        "iat": NOW - 10,
        "exp": NOW + 600,
        "jti": "token-1",
        "scope": "demo:read demo:write",
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn es256(claims: &Value) -> String {
    issuer().es.sign("es-1", "JWT", claims).unwrap()
}

fn verify(token: &str) -> Result<VerifiedToken, JwtError> {
    verify_jwt(token, &keys(), &validation(), NOW)
}

/// A token with any header and claims, ES256-signed by `key`.
fn forge_es256(key: &p256::ecdsa::SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.to_bytes()))
}

/// A token HMAC-SHA256-signed with `secret`, the classic key-confusion forgery.
fn forge_hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(&mac.finalize().into_bytes()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

// ---- algorithm attacks ----------------------------------------------------------------------

#[test]
fn alg_none_in_every_casing_is_refused() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT", "kid": "es-1"})
            .to_string()
            .as_bytes());
        let payload = b64(claims().to_string().as_bytes());
        // The unsecured form (empty signature) and one with a junk signature.
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            assert_eq!(
                verify(&token),
                Err(JwtError::AlgorithmNotAllowed),
                "{alg}: {token}"
            );
        }
    }
}

#[test]
fn hs256_with_the_public_key_as_hmac_secret_is_refused() {
    let issuer = issuer();
    let es_public = issuer.es_raw.verifying_key();
    let es_der = es_public.to_public_key_der().unwrap();
    let rs_jwk = serde_json::to_string(&issuer.rs.public_jwk("rs-1")).unwrap();
    let es_jwk = serde_json::to_string(&issuer.es.public_jwk("es-1")).unwrap();
    let jwks_text = jwks().to_string();
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("es-1", es_jwk.into_bytes()),
        ("rs-1", rs_jwk.into_bytes()),
        ("es-1", es_der.as_bytes().to_vec()),
        ("es-1", pem("PUBLIC KEY", es_der.as_bytes()).into_bytes()),
        (
            "es-1",
            es_public.to_encoded_point(false).as_bytes().to_vec(),
        ),
        ("rs-1", jwks_text.into_bytes()),
    ];
    // Even with every algorithm we support allowed.
    let mut all = validation();
    all.algorithms = Algorithm::ALL.to_vec();
    for (kid, secret) in secrets {
        let token = forge_hs256(&secret, kid, &claims());
        assert_eq!(
            verify_jwt(&token, &keys(), &all, NOW),
            Err(JwtError::AlgorithmNotAllowed),
            "{kid}"
        );
    }
}

#[test]
fn hs256_with_the_rsa_public_key_der_and_pem_is_refused() {
    let jwk = issuer().rs.public_jwk("rs-1");
    let n = URL_SAFE_NO_PAD.decode(jwk.n.unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(jwk.e.unwrap()).unwrap();
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
    )
    .unwrap();
    let der = public.to_public_key_der().unwrap();
    for secret in [
        der.as_bytes().to_vec(),
        pem("PUBLIC KEY", der.as_bytes()).into_bytes(),
    ] {
        let token = forge_hs256(&secret, "rs-1", &claims());
        assert_eq!(verify(&token), Err(JwtError::AlgorithmNotAllowed));
    }
}

#[test]
fn alg_outside_the_allow_list_is_refused() {
    let mut only_es = validation();
    only_es.algorithms = vec![Algorithm::ES256];
    let rs_token = issuer().rs.sign("rs-1", "JWT", &claims()).unwrap();
    let ed_token = issuer().ed.sign("ed-1", "JWT", &claims()).unwrap();
    for token in [rs_token, ed_token] {
        assert_eq!(
            verify_jwt(&token, &keys(), &only_es, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
    }
    assert!(verify_jwt(&es256(&claims()), &keys(), &only_es, NOW).is_ok());
}

#[test]
fn es256_token_against_an_rs256_pinned_key_with_the_same_kid_is_refused() {
    // The ES256 signature is genuine, but the kid names the RSA key.
    let token = issuer().es.sign("rs-1", "JWT", &claims()).unwrap();
    assert_eq!(verify(&token), Err(JwtError::AlgorithmMismatch));
    // And the other way round, for every pair.
    let issuer = issuer();
    for (signer, kid) in [
        (&issuer.rs, "es-1"),
        (&issuer.ed, "rs-1"),
        (&issuer.es, "ed-1"),
    ] {
        let token = signer.sign(kid, "JWT", &claims()).unwrap();
        assert_eq!(verify(&token), Err(JwtError::AlgorithmMismatch), "{kid}");
    }
}

// ---- key selection attacks ------------------------------------------------------------------

#[test]
fn unknown_kid_is_refused() {
    let token = issuer().es.sign("es-2", "JWT", &claims()).unwrap();
    assert_eq!(verify(&token), Err(JwtError::UnknownKeyId));
}

#[test]
fn missing_kid_is_refused() {
    let header = json!({"alg": "ES256", "typ": "JWT"});
    let token = forge_es256(&issuer().es_raw, &header, &claims());
    assert_eq!(verify(&token), Err(JwtError::MissingKeyId));
}

#[test]
fn kid_with_path_or_sql_characters_is_only_looked_up() {
    for kid in [
        "../../etc/passwd",
        "/dev/null",
        "' OR 1=1 --",
        "es-1' --",
        "es-1\u{0}",
        "es-1/../es-1",
        "%2e%2e%2f",
    ] {
        let token = issuer().es.sign(kid, "JWT", &claims()).unwrap();
        assert_eq!(verify(&token), Err(JwtError::UnknownKeyId), "{kid:?}");
    }
}

#[test]
fn embedded_jwk_jku_and_x5u_are_ignored() {
    let attacker = p256::ecdsa::SigningKey::random(&mut rng(666));
    let attacker_keygate = SigningKey::from_pkcs8_der(
        Algorithm::ES256,
        attacker.to_pkcs8_der().unwrap().as_bytes(),
    )
    .unwrap();
    for kid in ["attacker", "es-1"] {
        let header = json!({
            "alg": "ES256",
            "typ": "JWT",
            "kid": kid,
            "jwk": attacker_keygate.public_jwk(kid),
            "jku": "https://evil.example/jwks.json",
            "x5u": "https://evil.example/cert.pem",
            "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
        });
        let token = forge_es256(&attacker, &header, &claims());
        let expected = if kid == "attacker" {
            JwtError::UnknownKeyId
        } else {
            JwtError::BadSignature
        };
        assert_eq!(verify(&token), Err(expected), "{kid}");
    }
}

#[test]
fn crit_header_is_refused_even_when_signed_by_the_issuer() {
    let header = json!({"alg": "ES256", "kid": "es-1", "crit": ["b64"], "b64": false});
    let token = forge_es256(&issuer().es_raw, &header, &claims());
    assert_eq!(
        verify(&token),
        Err(JwtError::Malformed(MalformedPart::CriticalHeader))
    );
}

#[test]
fn rsa_key_shorter_than_2048_bits_is_skipped_from_the_jwks() {
    use rsa::traits::PublicKeyParts as _;
    let weak = rsa::RsaPrivateKey::new(&mut rng(4), 1024).unwrap();
    let weak_jwk = json!({
        "kty": "RSA",
        "kid": "weak",
        "alg": "RS256",
        "use": "sig",
        "n": b64(&weak.n().to_bytes_be()),
        "e": b64(&weak.e().to_bytes_be()),
    });
    let mut set = jwks();
    set["keys"].as_array_mut().unwrap().push(weak_jwk);
    let (keys, skipped) = KeySet::from_jwks_json(set.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.get("weak").is_none());
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].kid.as_deref(), Some("weak"));
    assert_eq!(skipped[0].reason, "RSA key shorter than 2048 bits");
    // A token signed by it names a key the verifier does not have.
    let der = weak.to_pkcs8_der().unwrap();
    assert!(SigningKey::from_pkcs8_der(Algorithm::RS256, der.as_bytes()).is_err());
    let header = b64(json!({"alg": "RS256", "kid": "weak"})
        .to_string()
        .as_bytes());
    let input = format!("{header}.{}", b64(claims().to_string().as_bytes()));
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(weak);
    let signature = rsa::signature::Signer::sign(&signer, input.as_bytes());
    let token = format!(
        "{input}.{}",
        b64(&rsa::signature::SignatureEncoding::to_vec(&signature))
    );
    assert_eq!(
        verify_jwt(&token, &keys, &validation(), NOW),
        Err(JwtError::UnknownKeyId)
    );
}

// ---- claims ---------------------------------------------------------------------------------

#[test]
fn expired_token_is_refused() {
    let token = es256(&with(claims(), "exp", json!(NOW - 61)));
    assert_eq!(verify(&token), Err(JwtError::Expired));
}

#[test]
fn token_not_yet_valid_is_refused() {
    let token = es256(&with(claims(), "nbf", json!(NOW + 3600)));
    assert_eq!(verify(&token), Err(JwtError::NotYetValid));
}

#[test]
fn token_issued_in_the_future_is_refused() {
    let token = es256(&with(claims(), "iat", json!(NOW + 3600)));
    assert_eq!(verify(&token), Err(JwtError::IssuedInFuture));
}

#[test]
fn missing_exp_is_refused_when_required() {
    let token = es256(&without(claims(), "exp"));
    assert_eq!(verify(&token), Err(JwtError::MissingExpiry));
}

#[test]
fn lifetime_too_long_is_refused() {
    let mut capped = validation();
    capped.max_lifetime_s = Some(3600);
    let token = es256(&with(claims(), "exp", json!(NOW + 10 * 365 * 86400)));
    assert_eq!(
        verify_jwt(&token, &keys(), &capped, NOW),
        Err(JwtError::LifetimeTooLong)
    );
}

#[test]
fn wrong_issuer_is_refused() {
    let token = es256(&with(claims(), "iss", json!("https://evil.example")));
    assert_eq!(verify(&token), Err(JwtError::WrongIssuer));
}

#[test]
fn missing_audience_is_refused() {
    let token = es256(&without(claims(), "aud"));
    assert_eq!(verify(&token), Err(JwtError::WrongAudience));
}

#[test]
fn foreign_audience_is_refused() {
    for aud in [
        json!("https://other.example"),
        json!(["https://other.example", "x"]),
    ] {
        let token = es256(&with(claims(), "aud", aud));
        assert_eq!(verify(&token), Err(JwtError::WrongAudience));
    }
}

#[test]
fn wrong_typ_is_refused() {
    let mut at_jwt = validation();
    at_jwt.typ = Some("at+jwt".to_owned());
    // An ID token (typ JWT) offered as an access token.
    let token = es256(&claims());
    assert_eq!(
        verify_jwt(&token, &keys(), &at_jwt, NOW),
        Err(JwtError::WrongType)
    );
    let token = issuer()
        .es
        .sign("es-1", "application/at+jwt", &claims())
        .unwrap();
    assert!(verify_jwt(&token, &keys(), &at_jwt, NOW).is_ok());
}

#[test]
fn missing_subject_is_refused() {
    let token = es256(&without(claims(), "sub"));
    assert_eq!(verify(&token), Err(JwtError::MissingSubject));
}

// ---- tampering and encoding -----------------------------------------------------------------

#[test]
fn tampered_payload_is_refused() {
    let token = es256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let escalated = with(claims(), "scope", json!("admin"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(escalated.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(verify(&tampered), Err(JwtError::BadSignature));
}

#[test]
fn tampered_signature_is_refused() {
    let issuer = issuer();
    for token in [
        es256(&claims()),
        issuer.ed.sign("ed-1", "JWT", &claims()).unwrap(),
        issuer.rs.sign("rs-1", "JWT", &claims()).unwrap(),
    ] {
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[0] ^= 0x80;
        let tampered = format!("{input}.{}", b64(&bytes));
        assert_eq!(verify(&tampered), Err(JwtError::BadSignature));
        // A signature moved from another token.
        let other = es256(&with(claims(), "jti", json!("token-2")));
        let moved = format!("{input}.{}", other.rsplit_once('.').unwrap().1);
        assert!(matches!(verify(&moved), Err(JwtError::BadSignature)));
    }
}

#[test]
fn bad_base64url_is_refused() {
    let token = es256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let bad = [
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        format!("{}.{}+.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}/", parts[0], parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1].replace('_', "/").replace('-', "+"),
            parts[2]
        ) + "+/",
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
    ];
    for token in bad {
        assert_eq!(
            verify(&token),
            Err(JwtError::Malformed(MalformedPart::Base64)),
            "{token}"
        );
    }
}

#[test]
fn wrong_segment_count_is_refused() {
    let token = es256(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let jwe = format!(
        "{}.{}.{}.{}.{}",
        b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM","kid":"rs-1"}"#),
        "ZW5jcnlwdGVkLWtleQ",
        "aXY",
        "Y2lwaGVydGV4dA",
        "dGFn"
    );
    for token in [
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        jwe,
        String::new(),
    ] {
        assert_eq!(
            verify(&token),
            Err(JwtError::Malformed(MalformedPart::SegmentCount)),
            "{token}"
        );
    }
}

#[test]
fn oversized_token_is_refused_before_decoding() {
    let padding = "x".repeat(9000);
    let token = es256(&with(claims(), "pad", json!(padding)));
    assert_eq!(verify(&token), Err(JwtError::TooLarge));
    // Garbage of the same size gets the same answer: nothing was decoded.
    assert_eq!(verify(&"!".repeat(9000)), Err(JwtError::TooLarge));
}

#[test]
fn non_json_header_is_refused() {
    let token = format!(
        "{}.{}.c2ln",
        b64(b"alg=ES256;kid=es-1"),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(
        verify(&token),
        Err(JwtError::Malformed(MalformedPart::HeaderJson))
    );
}

#[test]
fn header_json_array_is_refused() {
    // serde would happily read a struct from ["ES256","es-1"]; the verifier must not.
    let header = json!(["ES256", "es-1", "JWT"]);
    let token = forge_es256(&issuer().es_raw, &header, &claims());
    assert_eq!(
        verify(&token),
        Err(JwtError::Malformed(MalformedPart::HeaderJson))
    );
}

// ---- the good path ----------------------------------------------------------------------------

#[test]
fn every_algorithm_round_trips_with_scopes_from_scope_and_scp() {
    let issuer = issuer();
    let expected = vec!["demo:read".to_owned(), "demo:write".to_owned()];
    let scope_claims = [
        with(claims(), "scope", json!("demo:read demo:write")),
        with(
            without(claims(), "scope"),
            "scp",
            json!("demo:read demo:write"),
        ),
        with(
            without(claims(), "scope"),
            "scp",
            json!(["demo:read", "demo:write"]),
        ),
    ];
    for (signer, kid) in [
        (&issuer.es, "es-1"),
        (&issuer.ed, "ed-1"),
        (&issuer.rs, "rs-1"),
    ] {
        for claims in &scope_claims {
            let token = signer.sign(kid, "at+jwt", claims).unwrap();
            let verified = verify(&token).unwrap_or_else(|e| panic!("{kid}: {e:?}"));
            assert_eq!(
                verified,
                VerifiedToken {
                    subject: "client-42".to_owned(),
                    jti: Some("token-1".to_owned()),
                    issuer: ISSUER.to_owned(),
                    kid: kid.to_owned(),
                    expires_at: Some(NOW + 600),
                    issued_at: Some(NOW - 10),
                    scopes: expected.clone(),
                    claims: Default::default(),
                },
                "{kid}: {claims}"
            );
        }
    }
}

#[test]
fn stored_keys_sign_tokens_the_published_jwks_verifies() {
    // The key service's cycle: generate, store as PKCS#8, reload, publish the JWK, sign.
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let key = SigningKey::generate(alg, &mut rng(99)).unwrap();
        let reloaded = SigningKey::from_pkcs8_der(alg, &key.to_pkcs8_der().unwrap()).unwrap();
        let jwks = json!({"keys": [key.public_jwk("k")]}).to_string();
        let (keys, _) = KeySet::from_jwks_json(jwks.as_bytes()).unwrap();
        let token = reloaded.sign("k", "JWT", &claims()).unwrap();
        assert!(
            verify_jwt(&token, &keys, &validation(), NOW).is_ok(),
            "{alg}"
        );
    }
}

// ---- robustness -------------------------------------------------------------------------------

#[test]
fn every_single_character_change_is_refused_without_panic() {
    const ALPHABET: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
    let token = issuer().ed.sign("ed-1", "JWT", &claims()).unwrap();
    assert!(verify(&token).is_ok());
    let keys = keys();
    let validation = validation();
    let bytes = token.as_bytes();
    for at in 0..bytes.len() {
        // Two replacements per position, chosen from the position so the run is deterministic.
        for step in [1, 37] {
            let index = ALPHABET.iter().position(|c| *c == bytes[at]).unwrap_or(0);
            let mut changed = bytes.to_vec();
            changed[at] = ALPHABET[(index + step) % ALPHABET.len()];
            let changed = String::from_utf8(changed).unwrap();
            assert!(
                verify_jwt(&changed, &keys, &validation, NOW).is_err(),
                "position {at}: {changed}"
            );
        }
    }
}

#[test]
fn random_bytes_never_panic_the_parsers() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let keys = keys();
    let validation = validation();
    let pieces: [&[u8]; 8] = [b".", b"eyJ", b"{", b"\"keys\":[", b"}", b"]", b"A", b"\xff"];
    for _ in 0..2000 {
        let len = (next() % 64) as usize;
        let mut input = Vec::new();
        for _ in 0..len {
            let roll = next();
            if roll % 3 == 0 {
                input.extend_from_slice(pieces[(roll >> 8) as usize % pieces.len()]);
            } else {
                input.push((roll >> 16) as u8);
            }
        }
        let _ = KeySet::from_jwks_json(&input);
        let text = String::from_utf8_lossy(&input);
        assert!(verify_jwt(&text, &keys, &validation, NOW).is_err());
        let _ = keygate_core::jwt::looks_like_jwt(&text);
    }
}
