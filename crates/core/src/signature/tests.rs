use std::cell::Cell;

use super::*;

// RFC 9421 Appendix B.1 keys and the B.2 test request.
const ED25519_PUBLIC: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";
const ED25519_SEED: &str = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU";
const P256_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==";
const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
const BODY: &[u8] = br#"{"hello": "world"}"#;

fn rfc_headers<'a>(extra: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":authority", b"example.com"),
        (":path", b"/foo?param=Value&Pet=dog"),
        ("date", b"Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", b"application/json"),
        (
            "content-digest",
            b"sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("content-length", b"18"),
    ];
    headers.extend_from_slice(extra);
    headers
}

fn rfc_request<'a>(headers: &'a [(&'a str, &'a [u8])]) -> Request<'a> {
    Request {
        method: "POST",
        scheme: "https",
        authority: "example.com",
        target: "/foo?param=Value&Pet=dog",
        headers,
    }
}

/// Checks one RFC example at the level of the base: the base built from the input, then the
/// printed signature over it.
fn rfc_example(
    request: &Request<'_>,
    input: &str,
    signature_b64: &str,
    material: &Material,
) -> (Vec<u8>, bool) {
    let dict = sf::parse_dictionary(input).unwrap();
    let Member::Inner(items, params) = &dict[0].1 else {
        panic!("inner list")
    };
    let names: Vec<&str> = items
        .iter()
        .map(|i| match &i.bare {
            Bare::Str(s) => s.as_str(),
            _ => panic!("string"),
        })
        .collect();
    let base = signature_base(request, &names, items, params).unwrap();
    let signature = STANDARD.decode(signature_b64).unwrap();
    let ok = material.verify(&base, &signature, None);
    (base, ok)
}

#[test]
fn rfc9421_b26_ed25519() {
    let headers = rfc_headers(&[]);
    let request = rfc_request(&headers);
    let material = Material::public(SigningAlgorithm::Ed25519, ED25519_PUBLIC).unwrap();
    let (base, ok) = rfc_example(
        &request,
        r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==",
        &material,
    );
    assert_eq!(
        String::from_utf8(base).unwrap(),
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
         \"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\
         \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \
         \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    assert!(ok);
    // Ed25519 is deterministic: signing the same base gives the RFC's signature.
    let seed = URL_SAFE_NO_PAD.decode(ED25519_SEED).unwrap();
    let key = SigningKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
        &<[u8; 32]>::try_from(seed.as_slice()).unwrap(),
    ));
    let options = SignOptions {
        key_id: "test-key-ed25519".into(),
        created_s: 1618884473,
        label: "sig-b26".into(),
        ..SignOptions::default()
    };
    // (Keygate's own component order differs from the RFC's: only check it verifies.)
    let (input, signature) = sign_request(&request, &key, &options).unwrap();
    let signed = rfc_headers(&[
        ("signature-input", input.as_bytes()),
        ("signature", signature.as_bytes()),
    ]);
    let policy = Policy {
        require_nonce: false,
        ..policy()
    };
    verify_request(
        &rfc_request(&signed),
        "test-key-ed25519",
        &material,
        &policy,
        1618884473,
        None,
    )
    .unwrap();
}

#[test]
fn rfc9421_b25_hmac_sha256() {
    let headers = rfc_headers(&[]);
    let request = rfc_request(&headers);
    let material = Material::hmac(&STANDARD.decode(SHARED_SECRET).unwrap()).unwrap();
    let (base, ok) = rfc_example(
        &request,
        r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=",
        &material,
    );
    assert!(base.ends_with(b"\"@signature-params\": (\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""));
    assert!(ok);
    let wrong = Material::hmac(&[7u8; 64]).unwrap();
    assert!(!wrong.verify(&base, &[0u8; 32], None));
}

#[test]
fn rfc9421_b24_ecdsa_p256() {
    // B.2.4 signs a response (`@status`), which a request never covers: its base is
    // written out here and checked with the B.1.3 key.
    let spki = STANDARD.decode(P256_SPKI).unwrap();
    let material = Material::p256(&spki[spki.len() - 65..]).unwrap();
    let Material::P256 { spki: ours, .. } = &material else {
        panic!("p256")
    };
    assert_eq!(ours.as_ref(), spki.as_slice(), "SPKI for the host");
    let base = "\"@status\": 200\n\"content-type\": application/json\n\
        \"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\
        \"content-length\": 23\n\
        \"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
    let signature = STANDARD
        .decode("wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==")
        .unwrap();
    assert!(material.verify(base.as_bytes(), &signature, None));
    assert!(!material.verify(&base.as_bytes()[1..], &signature, None));
    // The response's digest is of its body.
    let digest: &[u8] = b"sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:";
    check_content_digest(&[("content-digest", digest)], br#"{"message": "good dog"}"#).unwrap();
}

#[test]
fn rfc9530_content_digest() {
    let headers = rfc_headers(&[]);
    check_content_digest(&headers, BODY).unwrap();
    assert_eq!(
        check_content_digest(&headers, b"{\"hello\": \"world!\"}"),
        Err(SignatureError::DigestMismatch)
    );
    let ours = content_digest(BODY);
    let ours = [("content-digest", ours.as_bytes())];
    check_content_digest(&ours, BODY).unwrap();
    for bad in [
        &b""[..],
        b"md5=:AQI=:",
        b"sha-256=AQI",
        b"sha-256=:AQI",
        b"sha-256=\"x\"",
    ] {
        assert_eq!(
            check_content_digest(&[("content-digest", bad)], BODY),
            Err(SignatureError::BadDigest),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        check_content_digest(&[], BODY),
        Err(SignatureError::BadDigest)
    );
    // An unknown algorithm beside a good one is ignored; a bad one beside it is not.
    let both = format!("md5=:AQI=:, {}", content_digest(BODY));
    check_content_digest(&[("content-digest", both.as_bytes())], BODY).unwrap();
    let wrong = format!("{}, sha-512=:AQI=:", content_digest(BODY));
    assert_eq!(
        check_content_digest(&[("content-digest", wrong.as_bytes())], BODY),
        Err(SignatureError::DigestMismatch)
    );
}

// Keygate's own requests: signed with `sign_request`, verified with `verify_request`.

const NOW: u64 = 1_800_000_000;
const KEY_ID: &str = "kid0123456789abcdef";

fn policy() -> Policy<'static> {
    Policy {
        max_age_s: 300,
        skew_s: 30,
        require_nonce: true,
        extra_components: &[],
        has_body: false,
    }
}

fn keys() -> Vec<(SigningKey, Material)> {
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let ed_material = Material::ed25519(ed.verifying_key().as_bytes()).unwrap();
    let p = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let point = p.verifying_key().to_encoded_point(false);
    let p_material = Material::p256(point.as_bytes()).unwrap();
    let gateway = crate::key::GatewayKey::from_bytes(&[1u8; 32]).unwrap();
    let secret = derive_hmac_secret(&gateway, KEY_ID, 1);
    let h_material = Material::hmac(&secret).unwrap();
    vec![
        (SigningKey::Ed25519(ed), ed_material),
        (SigningKey::P256(p), p_material),
        (SigningKey::Hmac(secret), h_material),
    ]
}

fn options() -> SignOptions {
    SignOptions {
        extra_components: Vec::new(),
        key_id: KEY_ID.into(),
        created_s: NOW,
        expires_s: None,
        nonce: Some("n-1".into()),
        include_alg: true,
        label: "sig1".into(),
    }
}

/// Signs a GET (or, with a body, a POST carrying its digest) and returns the header pairs.
fn signed(key: &SigningKey, options: &SignOptions, body: Option<&[u8]>) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":authority".into(), b"api.example.com".to_vec()),
        ("x-tenant".into(), b"acme".to_vec()),
    ];
    let method = if body.is_some() { "POST" } else { "GET" };
    if let Some(body) = body {
        headers.push(("content-digest".into(), content_digest(body).into_bytes()));
    }
    let (input, signature) = {
        let pairs = pairs(&headers);
        let request = Request {
            method,
            scheme: "https",
            authority: "api.example.com",
            target: "/v1/orders?page=2",
            headers: &pairs,
        };
        sign_request(&request, key, options).unwrap()
    };
    headers.push(("signature-input".into(), input.into_bytes()));
    headers.push(("signature".into(), signature.into_bytes()));
    headers
}

fn pairs(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect()
}

fn check(
    headers: &[(String, Vec<u8>)],
    method: &str,
    target: &str,
    material: &Material,
    policy: &Policy<'_>,
    now: u64,
) -> Result<Verified, SignatureError> {
    let pairs = pairs(headers);
    let request = Request {
        method,
        scheme: "https",
        authority: "API.example.com",
        target,
        headers: &pairs,
    };
    verify_request(&request, KEY_ID, material, policy, now, None)
}

#[test]
fn each_algorithm_signs_and_verifies() {
    for (key, material) in keys() {
        let headers = signed(&key, &options(), None);
        let verified = check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            &material,
            &policy(),
            NOW + 5,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", material.algorithm()));
        assert_eq!(verified.nonce.as_deref(), Some("n-1"));
        assert_eq!(verified.until_s, NOW + 300 + 30);
        assert!(!verified.covers_digest);
        // Tampered method, path, query: the base differs.
        for (method, target) in [
            ("POST", "/v1/orders?page=2"),
            ("GET", "/v1/orders/1?page=2"),
            ("GET", "/v1/orders?page=3"),
            ("GET", "/v1/orders"),
        ] {
            assert_eq!(
                check(&headers, method, target, &material, &policy(), NOW),
                Err(SignatureError::Invalid),
                "{} {method} {target}",
                material.algorithm()
            );
        }
    }
}

#[test]
fn a_body_must_be_covered_by_its_digest() {
    let (key, material) = keys().remove(0);
    let with_body = Policy {
        has_body: true,
        ..policy()
    };
    let headers = signed(&key, &options(), Some(BODY));
    let verified = check(
        &headers,
        "POST",
        "/v1/orders?page=2",
        &material,
        &with_body,
        NOW,
    )
    .unwrap();
    assert!(verified.covers_digest);
    let pairs = pairs(&headers);
    check_content_digest(&pairs, BODY).unwrap();
    assert_eq!(
        check_content_digest(&pairs, b"tampered"),
        Err(SignatureError::DigestMismatch)
    );
    // Signed without the digest, sent with a body.
    let headers = signed(&key, &options(), None);
    assert_eq!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            &material,
            &with_body,
            NOW
        ),
        Err(SignatureError::NotCovered("content-digest".into()))
    );
}

#[test]
fn the_route_may_require_more() {
    let (key, material) = keys().remove(0);
    let extra = vec!["x-tenant".to_owned()];
    let strict = Policy {
        extra_components: &extra,
        ..policy()
    };
    let headers = signed(&key, &options(), None);
    assert_eq!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            &material,
            &strict,
            NOW
        ),
        Err(SignatureError::NotCovered("x-tenant".into()))
    );
    let covering = SignOptions {
        extra_components: extra.clone(),
        ..options()
    };
    let headers = signed(&key, &covering, None);
    check(
        &headers,
        "GET",
        "/v1/orders?page=2",
        &material,
        &strict,
        NOW,
    )
    .unwrap();
    // A covered field the request lacks.
    let missing = SignOptions {
        extra_components: vec!["x-absent".into()],
        ..options()
    };
    let pairs: Vec<(&str, &[u8])> = vec![];
    let request = Request {
        method: "GET",
        scheme: "https",
        authority: "a",
        target: "/",
        headers: &pairs,
    };
    assert_eq!(
        sign_request(&request, &key, &missing),
        Err(SignatureError::FieldAbsent("x-absent".into()))
    );
}

#[test]
fn times_are_bounded() {
    let (key, material) = keys().remove(0);
    let headers = signed(&key, &options(), None);
    let at = |now| {
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            &material,
            &policy(),
            now,
        )
    };
    at(NOW - 30).unwrap();
    assert_eq!(at(NOW - 31), Err(SignatureError::CreatedInFuture));
    at(NOW + 330).unwrap();
    assert_eq!(at(NOW + 331), Err(SignatureError::TooOld));
    let expiring = SignOptions {
        expires_s: Some(NOW + 10),
        ..options()
    };
    let headers = signed(&key, &expiring, None);
    let at = |now| {
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            &material,
            &policy(),
            now,
        )
    };
    assert_eq!(at(NOW + 40).unwrap().until_s, NOW + 10 + 30);
    assert_eq!(at(NOW + 41), Err(SignatureError::Expired));
    let backwards = SignOptions {
        expires_s: Some(NOW - 1),
        ..options()
    };
    let headers = signed(&key, &backwards, None);
    assert!(matches!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            &material,
            &policy(),
            NOW
        ),
        Err(SignatureError::Malformed(_))
    ));
}

#[test]
fn parameters_are_checked() {
    let keys = keys();
    let (ed, ed_material) = &keys[0];
    let (_, p_material) = &keys[1];
    let headers = signed(ed, &options(), None);
    let get = |material, policy: &Policy<'_>| {
        check(&headers, "GET", "/v1/orders?page=2", material, policy, NOW)
    };
    assert_eq!(get(p_material, &policy()), Err(SignatureError::Algorithm));
    // Without `alg`, the material decides: another key's signature does not verify.
    let no_alg = SignOptions {
        include_alg: false,
        ..options()
    };
    let headers = signed(ed, &no_alg, None);
    assert_eq!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            p_material,
            &policy(),
            NOW
        ),
        Err(SignatureError::Invalid)
    );
    check(
        &headers,
        "GET",
        "/v1/orders?page=2",
        ed_material,
        &policy(),
        NOW,
    )
    .unwrap();
    let no_nonce = SignOptions {
        nonce: None,
        ..options()
    };
    let headers = signed(ed, &no_nonce, None);
    assert_eq!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            ed_material,
            &policy(),
            NOW
        ),
        Err(SignatureError::NoNonce)
    );
    let other_key = SignOptions {
        key_id: "someone-else".into(),
        ..options()
    };
    let headers = signed(ed, &other_key, None);
    assert_eq!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            ed_material,
            &policy(),
            NOW
        ),
        Err(SignatureError::KeyId)
    );
    let long_nonce = SignOptions {
        nonce: Some("n".repeat(MAX_NONCE_BYTES + 1)),
        ..options()
    };
    let headers = signed(ed, &long_nonce, None);
    assert!(matches!(
        check(
            &headers,
            "GET",
            "/v1/orders?page=2",
            ed_material,
            &policy(),
            NOW
        ),
        Err(SignatureError::Malformed(_))
    ));
}

/// Replaces the signature fields of otherwise good headers.
fn with_fields(input: &str, signature: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (":authority".into(), b"api.example.com".to_vec()),
        ("signature-input".into(), input.as_bytes().to_vec()),
        ("signature".into(), signature.as_bytes().to_vec()),
    ]
}

#[test]
fn bad_fields_are_refused_before_any_crypto() {
    let (_, material) = keys().remove(0);
    let sig = format!(":{}:", STANDARD.encode([0u8; 64]));
    let min = r#""@method" "@authority" "@path" "@query""#;
    let cases: Vec<(String, String, SignatureError)> = vec![
        (
            format!("sig1=({min});created={NOW};keyid=\"{KEY_ID}\";nonce=\"n\""),
            String::new(),
            SignatureError::Missing,
        ),
        (
            "sig1=(".into(),
            format!("sig1={sig}"),
            SignatureError::Malformed("unsupported or missing value"),
        ),
        (
            format!("sig1=\"x\";keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::Malformed("a Signature-Input member is not a list"),
        ),
        (
            format!("sig1=({min});created={NOW};keyid=\"{KEY_ID}\";nonce=\"n\""),
            format!("sig2={sig}"),
            SignatureError::Malformed("no Signature for the label"),
        ),
        (
            format!("sig1=({min});created={NOW};keyid=\"{KEY_ID}\";nonce=\"n\""),
            "sig1=\"abc\"".into(),
            SignatureError::Malformed("a Signature member is not bytes"),
        ),
        (
            format!("sig1=({min} \"@status\");created={NOW};keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::UnsupportedComponent("@status".into()),
        ),
        (
            format!("sig1=({min} \"x\";sf);created={NOW};keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::UnsupportedComponent("x".into()),
        ),
        (
            format!("sig1=({min} \"X-Up\");created={NOW};keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::UnsupportedComponent("X-Up".into()),
        ),
        (
            format!("sig1=({min} tok);created={NOW};keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::Malformed("a component is not a string"),
        ),
        (
            format!("sig1=({min} \"@path\");created={NOW};keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::Malformed("a component is covered twice"),
        ),
        (
            format!("sig1=(\"@method\" \"@authority\" \"@path\");created={NOW};keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::NotCovered("@query".into()),
        ),
        (
            format!("sig1=({min});keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::NoCreated,
        ),
        (
            format!("sig1=({min});created=\"{NOW}\";keyid=\"{KEY_ID}\""),
            format!("sig1={sig}"),
            SignatureError::Malformed("created is not a time"),
        ),
        (
            format!("sig1=({min});created={NOW};keyid=\"{KEY_ID}\";alg=\"rsa-pss-sha512\""),
            format!("sig1={sig}"),
            SignatureError::Algorithm,
        ),
        (
            format!("sig1=({min});created={NOW};keyid=\"{KEY_ID}\";nonce=\"n\""),
            format!("sig1={sig}"),
            SignatureError::Invalid,
        ),
    ];
    for (input, signature, expected) in cases {
        let headers = if signature.is_empty() {
            vec![("signature-input".to_owned(), input.as_bytes().to_vec())]
        } else {
            with_fields(&input, &signature)
        };
        assert_eq!(
            check(
                &headers,
                "GET",
                "/v1/orders?page=2",
                &material,
                &policy(),
                NOW
            ),
            Err(expected),
            "{input} / {signature}"
        );
    }
    // A field too long is refused before it is parsed.
    let long = format!("sig1=:{}:", "A".repeat(MAX_FIELD_BYTES));
    let headers = with_fields("sig1=()", &long);
    assert!(matches!(
        check(&headers, "GET", "/", &material, &policy(), NOW),
        Err(SignatureError::Malformed("a signature field is too long"))
    ));
    let headers = vec![
        ("signature-input".to_owned(), vec![0xff]),
        ("signature".to_owned(), b"s=:AA==:".to_vec()),
    ];
    assert!(matches!(
        check(&headers, "GET", "/", &material, &policy(), NOW),
        Err(SignatureError::Malformed("a signature field is not ASCII"))
    ));
}

#[test]
fn another_members_signature_is_ignored() {
    let (key, material) = keys().remove(0);
    let mut headers = signed(&key, &options(), None);
    // A proxy's signature first, by another key, in both fields.
    for (name, value) in headers.iter_mut() {
        if name == "signature-input" {
            let mut v = b"proxy=(\"@method\");created=1;keyid=\"proxy\", ".to_vec();
            v.extend_from_slice(value);
            *value = v;
        } else if name == "signature" {
            let mut v = b"proxy=:AA==:, ".to_vec();
            v.extend_from_slice(value);
            *value = v;
        }
    }
    let verified = check(
        &headers,
        "GET",
        "/v1/orders?page=2",
        &material,
        &policy(),
        NOW,
    )
    .unwrap();
    assert_eq!(verified.label, "sig1");
}

struct Native {
    answer: Option<bool>,
    asked: Cell<u32>,
}

impl NativeVerifier for Native {
    fn verify(&self, alg: Algorithm, spki: &[u8], _: &[u8], signature: &[u8]) -> Option<bool> {
        assert_eq!(alg, Algorithm::ES256);
        assert_eq!(spki[0], 0x30, "SPKI DER");
        assert_eq!(signature[0], 0x30, "DER signature");
        self.asked.set(self.asked.get() + 1);
        self.answer
    }
}

#[test]
fn ecdsa_is_checked_by_the_host_when_it_can() {
    let (key, material) = keys().remove(1);
    let headers = signed(&key, &options(), None);
    let first = pairs(&headers);
    let request = Request {
        method: "GET",
        scheme: "https",
        authority: "api.example.com",
        target: "/v1/orders?page=2",
        headers: &first,
    };
    for (answer, expected) in [(Some(true), true), (Some(false), false), (None, true)] {
        let native = Native {
            answer,
            asked: Cell::new(0),
        };
        let result = verify_request(&request, KEY_ID, &material, &policy(), NOW, Some(&native));
        assert_eq!(result.is_ok(), expected, "{answer:?}");
        assert_eq!(native.asked.get(), 1);
    }
    // Ed25519 and HMAC never ask.
    for (key, material) in keys()
        .into_iter()
        .filter(|(k, _)| k.algorithm() != SigningAlgorithm::EcdsaP256Sha256)
    {
        let headers = signed(&key, &options(), None);
        let these = pairs(&headers);
        let request = Request {
            headers: &these,
            ..request
        };
        let native = Native {
            answer: Some(false),
            asked: Cell::new(0),
        };
        verify_request(&request, KEY_ID, &material, &policy(), NOW, Some(&native)).unwrap();
        assert_eq!(native.asked.get(), 0);
    }
}

#[test]
fn material_is_checked() {
    assert_eq!(
        Material::public(SigningAlgorithm::Ed25519, "AAAA").unwrap_err(),
        MaterialError::BadPublicKey
    );
    assert_eq!(
        Material::public(
            SigningAlgorithm::EcdsaP256Sha256,
            &URL_SAFE_NO_PAD.encode([4u8; 65])
        )
        .unwrap_err(),
        MaterialError::BadPublicKey
    );
    assert_eq!(
        Material::public(SigningAlgorithm::HmacSha256, "AAAA").unwrap_err(),
        MaterialError::UnknownAlgorithm
    );
    assert_eq!(
        Material::hmac(&[1; 31]).unwrap_err(),
        MaterialError::BadSecret
    );
    assert_eq!(
        Material::hmac(&[1; 65]).unwrap_err(),
        MaterialError::BadSecret
    );
    for alg in SigningAlgorithm::ALL {
        assert_eq!(SigningAlgorithm::from_name(alg.name()), Some(alg));
    }
    assert_eq!(SigningAlgorithm::from_name("rsa-pss-sha512"), None);
    // Derivation: per key and generation.
    let one = crate::key::GatewayKey::from_bytes(&[1; 32]).unwrap();
    let two = crate::key::GatewayKey::from_bytes(&[2; 32]).unwrap();
    let a = derive_hmac_secret(&one, "k1", 1);
    assert_eq!(a.len(), 32);
    assert_eq!(*a, *derive_hmac_secret(&one, "k1", 1));
    assert_ne!(*a, *derive_hmac_secret(&one, "k2", 1));
    assert_ne!(*a, *derive_hmac_secret(&one, "k1", 2));
    assert_ne!(*a, *derive_hmac_secret(&two, "k1", 1));
    // Read from key records.
    let wire = |alg: &str, key: Option<&str>, generation| crate::wire::SigningMaterial {
        alg: alg.into(),
        public_key: key.map(str::to_owned),
        generation,
    };
    assert_eq!(
        KeySigning::of(&wire("hmac-sha256", None, 4)),
        KeySigning::Hmac { generation: 4 }
    );
    assert_eq!(
        KeySigning::of(&wire("ed25519", Some(ED25519_PUBLIC), 0)).algorithm(),
        Some(SigningAlgorithm::Ed25519)
    );
    for bad in [
        wire("ed25519", None, 0),
        wire("ed25519", Some("AAAA"), 0),
        wire("hmac-sha256", Some(ED25519_PUBLIC), 0),
        wire("rsa-pss-sha512", Some(ED25519_PUBLIC), 0),
    ] {
        assert_eq!(KeySigning::of(&bad), KeySigning::Invalid, "{bad:?}");
    }
    assert_eq!(
        format!("{:?}", Material::hmac(&a).unwrap()),
        "Material(hmac-sha256)"
    );
}

#[test]
fn accept_signature_tells_what_to_sign() {
    assert_eq!(
        accept_signature(&[], false, None, None),
        r#"sig1=("@method" "@authority" "@path" "@query");created;nonce"#
    );
    assert_eq!(
        accept_signature(
            &["x-tenant".into(), "@path".into()],
            true,
            Some("k1"),
            Some(SigningAlgorithm::Ed25519)
        ),
        r#"sig1=("@method" "@authority" "@path" "@query" "x-tenant" "content-digest");created;nonce;keyid="k1";alg="ed25519""#
    );
    let parsed = sf::parse_dictionary(&accept_signature(&[], true, Some("k"), None)).unwrap();
    assert_eq!(parsed.len(), 1);
}

#[test]
fn private_keys_load_from_pkcs8_pem() {
    // RFC 9421 B.1.4's private key.
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
    let key = SigningKey::from_pkcs8_pem(pem).unwrap();
    assert_eq!(key.algorithm(), SigningAlgorithm::Ed25519);
    assert_eq!(key.public_key().unwrap(), ED25519_PUBLIC);
    let p256 = {
        use p256::pkcs8::EncodePrivateKey as _;
        let key = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        key.to_pkcs8_pem(Default::default()).unwrap().to_string()
    };
    let key = SigningKey::from_pkcs8_pem(&p256).unwrap();
    assert_eq!(key.algorithm(), SigningAlgorithm::EcdsaP256Sha256);
    Material::public(
        SigningAlgorithm::EcdsaP256Sha256,
        &key.public_key().unwrap(),
    )
    .unwrap();
    for bad in [
        "",
        "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
    ] {
        assert!(SigningKey::from_pkcs8_pem(bad).is_err());
    }
}

#[test]
fn public_keys_read_from_pem_jwk_and_raw() {
    let ed = SigningKey::from_pkcs8_pem(
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let raw = ed.public_key().unwrap();
    let SigningKey::Ed25519(ref key) = ed else {
        unreachable!()
    };
    use p256::pkcs8::EncodePublicKey as _;
    let pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    assert_eq!(
        public_key_from_text(None, &pem).unwrap(),
        (SigningAlgorithm::Ed25519, raw.clone())
    );
    let jwk = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{raw}"}}"#);
    assert_eq!(
        public_key_from_text(Some(SigningAlgorithm::Ed25519), &jwk)
            .unwrap()
            .1,
        raw
    );
    assert_eq!(
        public_key_from_text(Some(SigningAlgorithm::Ed25519), &raw)
            .unwrap()
            .1,
        raw
    );
    // Wrong algorithm, no algorithm for raw text, private JWKs, garbage: refused.
    assert!(public_key_from_text(Some(SigningAlgorithm::EcdsaP256Sha256), &pem).is_err());
    assert!(public_key_from_text(None, &raw).is_err());
    let private = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{raw}","d":"{raw}"}}"#);
    assert!(public_key_from_text(None, &private).is_err());
    assert!(public_key_from_text(None, "-----BEGIN PUBLIC KEY-----\n!!\n").is_err());
    assert!(public_key_from_text(None, &"a".repeat(MAX_PUBLIC_KEY_TEXT + 1)).is_err());

    let p = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let point = p.verifying_key().to_encoded_point(false);
    let raw = URL_SAFE_NO_PAD.encode(point.as_bytes());
    let pem = p
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    assert_eq!(
        public_key_from_text(None, &pem).unwrap(),
        (SigningAlgorithm::EcdsaP256Sha256, raw.clone())
    );
    let jwk = format!(
        r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(point.x().unwrap()),
        URL_SAFE_NO_PAD.encode(point.y().unwrap())
    );
    assert_eq!(public_key_from_text(None, &jwk).unwrap().1, raw);
}
