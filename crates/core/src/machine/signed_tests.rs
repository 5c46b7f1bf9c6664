//! Signed routes through the worker: a key's signature checked once its record is known,
//! nonces refused twice, bodies against their `Content-Digest`, and the 401 that tells the
//! client what to sign.

use std::rc::Rc;

use serde_json::json;

use crate::host::fake::{Effect, FakeHost};
use crate::key::{GatewayKey, MintedKey};
use crate::machine::state::Shared;
use crate::machine::test_support::{minted, start_with, GATEWAY_HEX, NOW_MS};
use crate::machine::worker;
use crate::signature::{
    content_digest, derive_hmac_secret, sign_request, Request, SignOptions, SigningKey,
};
use crate::wire::{KeyLookup, SigningMaterial};

fn start(host: &FakeHost) -> Rc<Shared> {
    start_with(
        host,
        &json!({"routes": [
            {"name": "pay", "prefix": "/pay", "scopes": ["a"], "signature": "required",
             "signature_components": ["x-tenant"]},
            {"name": "open", "prefix": "/", "scopes": ["a"]}
        ]}),
    )
}

fn record(key: &MintedKey, signing: Option<SigningMaterial>) -> KeyLookup {
    KeyLookup {
        signing: signing.map(Box::new),
        ..crate::machine::test_support::record_of(key)
    }
}

fn ed25519() -> (SigningKey, SigningMaterial) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let public = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        key.verifying_key().as_bytes(),
    );
    let wire = SigningMaterial {
        alg: "ed25519".into(),
        public_key: Some(public),
        generation: 0,
    };
    (SigningKey::Ed25519(key), wire)
}

/// A signed request's headers: the key, the covered fields, the signature.
fn signed(
    key: &MintedKey,
    signer: &SigningKey,
    nonce: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Vec<(String, Vec<u8>)> {
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), method.into()),
        (":scheme".into(), b"https".to_vec()),
        (":authority".into(), b"api.example.com".to_vec()),
        (":path".into(), path.into()),
        ("x-api-key".into(), key.plaintext.clone().into_bytes()),
        ("x-tenant".into(), b"acme".to_vec()),
    ];
    if let Some(body) = body {
        headers.push(("content-digest".into(), content_digest(body).into_bytes()));
    }
    let pairs = pairs(&headers);
    let request = Request {
        method,
        scheme: "https",
        authority: "api.example.com",
        target: path,
        headers: &pairs,
    };
    let options = SignOptions {
        extra_components: vec!["x-tenant".into()],
        key_id: key.id.as_str().into(),
        created_s: NOW_MS / 1000,
        nonce: Some(nonce.into()),
        include_alg: true,
        label: "sig1".into(),
        ..SignOptions::default()
    };
    let (input, signature) = sign_request(&request, signer, &options).unwrap();
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

/// The first request looks the record up; the callout is answered with `record`. Returns
/// whether the request was resumed.
fn first(host: &FakeHost, shared: &Shared, headers: &[(&str, &[u8])], record: &KeyLookup) -> bool {
    assert!(!worker::on_request_headers(host, shared, 1, headers));
    answer(host, shared, record)
}

fn answer(host: &FakeHost, shared: &Shared, record: &KeyLookup) -> bool {
    let token = host
        .dispatched()
        .iter()
        .find_map(|e| match e {
            Effect::Dispatch { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap();
    let body = serde_json::to_vec(record).unwrap();
    host.answer(Some(200), Some(&body));
    worker::on_call_response(host, shared, token, body.len());
    worker::on_log(shared, 1);
    host.take_effects().contains(&Effect::ResumeRequest)
}

/// The local reply sent, if any: status, `accept-signature`, problem body.
fn reply(effects: &[Effect]) -> Option<(u32, Option<String>, String)> {
    effects.iter().find_map(|e| match e {
        Effect::LocalReply {
            status,
            headers,
            body,
        } => Some((
            *status,
            headers
                .iter()
                .find(|(n, _)| n == "accept-signature")
                .map(|(_, v)| v.clone()),
            String::from_utf8_lossy(body).into_owned(),
        )),
        _ => None,
    })
}

#[test]
fn a_good_signature_passes_once_and_its_replay_is_refused() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    let (signer, wire) = ed25519();
    let record = record(&key, Some(wire));
    let headers = signed(&key, &signer, "n-1", "/pay?to=bob", None);
    assert!(first(&host, &shared, &pairs(&headers), &record), "allowed");

    // The same signed request again, from the cache: its nonce was seen.
    assert!(!worker::on_request_headers(
        &host,
        &shared,
        2,
        &pairs(&headers)
    ));
    let (status, accept, body) = reply(&host.take_effects()).unwrap();
    assert_eq!(status, 401);
    assert_eq!(
        accept.unwrap(),
        format!(
            r#"sig1=("@method" "@authority" "@path" "@query" "x-tenant");created;nonce;keyid="{}";alg="ed25519""#,
            key.id.as_str()
        )
    );
    assert!(body.contains("urn:keygate:problem:bad-signature"), "{body}");
    assert!(body.contains("nonce was used before"), "{body}");
    worker::on_log(&shared, 2);

    // A new nonce passes on the cached path.
    let again = signed(&key, &signer, "n-2", "/pay?to=bob", None);
    assert!(worker::on_request_headers(
        &host,
        &shared,
        3,
        &pairs(&again)
    ));
    worker::on_log(&shared, 3);
    worker::on_tick(&host, &shared);
    assert_eq!(host.counted(crate::host::Event::Allowed), 2);
}

#[test]
fn tampered_unsigned_and_materialless_requests_are_refused() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    let (signer, wire) = ed25519();
    let good = record(&key, Some(wire));
    let headers = signed(&key, &signer, "n-1", "/pay?to=bob", None);
    assert!(first(&host, &shared, &pairs(&headers), &good));

    let mut tampered = signed(&key, &signer, "n-3", "/pay?to=bob", None);
    tampered[3].1 = b"/pay?to=eve".to_vec();
    let mut unsigned = signed(&key, &signer, "n-4", "/pay?to=bob", None);
    unsigned.retain(|(n, _)| !n.starts_with("signature"));
    let mut other_tenant = signed(&key, &signer, "n-5", "/pay?to=bob", None);
    other_tenant[5].1 = b"evil".to_vec();
    for (context, headers, detail) in [
        (2, tampered, "does not verify"),
        (3, unsigned, "has no Signature"),
        (4, other_tenant, "does not verify"),
    ] {
        assert!(!worker::on_request_headers(
            &host,
            &shared,
            context,
            &pairs(&headers)
        ));
        let (status, accept, body) = reply(&host.take_effects()).unwrap();
        assert_eq!(status, 401, "{detail}");
        assert!(accept.is_some());
        assert!(body.contains(detail), "{body}");
        worker::on_log(&shared, context);
    }
    // The route without a signature is unchanged: the same key passes unsigned.
    let plain: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", b"/other"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    assert!(worker::on_request_headers(&host, &shared, 5, &plain));

    // A key without signing material cannot use the signed route.
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let headers = signed(&key, &signer, "n-1", "/pay?to=bob", None);
    assert!(!first(
        &host,
        &shared,
        &pairs(&headers),
        &record(&key, None)
    ));
}

#[test]
fn hmac_keys_sign_with_the_secret_derived_for_them() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    let gateway = GatewayKey::from_hex(GATEWAY_HEX).unwrap();
    let secret = derive_hmac_secret(&gateway, key.id.as_str(), 2);
    let wire = SigningMaterial {
        alg: "hmac-sha256".into(),
        public_key: None,
        generation: 2,
    };
    let headers = signed(&key, &SigningKey::Hmac(secret), "n-1", "/pay", None);
    assert!(first(
        &host,
        &shared,
        &pairs(&headers),
        &record(&key, Some(wire.clone()))
    ));
    // A secret of another generation does not verify.
    let old = derive_hmac_secret(&gateway, key.id.as_str(), 1);
    let headers = signed(&key, &SigningKey::Hmac(old), "n-2", "/pay", None);
    assert!(!worker::on_request_headers(
        &host,
        &shared,
        2,
        &pairs(&headers)
    ));
    assert_eq!(reply(&host.take_effects()).unwrap().0, 401);
}

#[test]
fn a_body_is_read_first_and_checked_against_its_digest() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    let (signer, wire) = ed25519();
    let record = record(&key, Some(wire));
    let body = br#"{"amount": 10}"#;
    let headers = signed(&key, &signer, "n-1", "/pay", Some(body));
    assert!(worker::wants_body(&host, &shared, &pairs(&headers)));
    assert!(!worker::on_request_body(
        &host,
        &shared,
        1,
        &pairs(&headers),
        body
    ));
    assert!(answer(&host, &shared, &record), "allowed");

    // Another body under the same digest: refused.
    let headers = signed(&key, &signer, "n-2", "/pay", Some(body));
    assert!(!worker::on_request_body(
        &host,
        &shared,
        2,
        &pairs(&headers),
        b"{\"amount\": 1000}"
    ));
    let (status, accept, detail) = reply(&host.take_effects()).unwrap();
    assert_eq!(status, 401);
    assert!(accept.unwrap().contains("\"content-digest\""));
    assert!(detail.contains("does not match the body"), "{detail}");
    worker::on_log(&shared, 2);

    // A body whose signature does not cover the digest: refused.
    let mut uncovered = signed(&key, &signer, "n-3", "/pay", None);
    uncovered[0].1 = b"POST".to_vec();
    assert!(!worker::on_request_body(
        &host,
        &shared,
        3,
        &pairs(&uncovered),
        b"x"
    ));
    assert!(reply(&host.take_effects())
        .unwrap()
        .2
        .contains("content-digest"));
    worker::on_log(&shared, 3);

    // Other routes' bodies are not read; too large a body is refused.
    let plain: Vec<(&str, &[u8])> = vec![(":method", b"POST"), (":path", b"/other")];
    assert!(!worker::wants_body(&host, &shared, &plain));
    worker::on_body_too_large(&host, &shared);
    assert_eq!(reply(&host.take_effects()).unwrap().0, 413);
}

#[test]
fn without_signed_routes_bodies_cost_no_host_call() {
    let host = FakeHost::at(NOW_MS);
    let shared = start_with(
        &host,
        &json!({"routes": [{"name": "n", "route_name": "r", "scopes": ["a"]}]}),
    );
    host.take_calls();
    let plain: Vec<(&str, &[u8])> = vec![(":method", b"POST"), (":path", b"/other")];
    assert!(!worker::wants_body(&host, &shared, &plain));
    assert!(host.take_calls().is_empty());
}

#[test]
fn route_options_are_checked() {
    use crate::config::FilterConfig;
    for (route, ok) in [
        (
            json!({"prefix": "/", "scopes": ["a"], "signature": "required"}),
            true,
        ),
        (
            json!({"prefix": "/", "scopes": ["a"], "signature": "none"}),
            true,
        ),
        (
            json!({"prefix": "/", "scopes": ["a"], "signature": "maybe"}),
            false,
        ),
        (
            json!({"prefix": "/", "scopes": ["a"], "signature_components": ["date"]}),
            false,
        ),
        (
            json!({"prefix": "/", "scopes": ["a"], "signature": "required", "signature_components": ["Date"]}),
            false,
        ),
        (
            json!({"prefix": "/", "scopes": ["a"], "signature": "required", "signature_components": ["@status"]}),
            false,
        ),
        (
            json!({"prefix": "/", "public": true, "signature": "required"}),
            false,
        ),
    ] {
        let config = json!({ "routes": [route] });
        assert_eq!(
            FilterConfig::parse(config.to_string().as_bytes()).is_ok(),
            ok,
            "{config}"
        );
    }
}

#[test]
fn route_metadata_may_require_signatures_when_enabled() {
    let key = minted();
    let (signer, wire) = ed25519();
    let record = record(&key, Some(wire));
    let unsigned: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":authority", b"api.example.com"),
        (":path", b"/pay"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    let meta = |host: &FakeHost| {
        let leaf = |name| ["xds", "route_metadata", "filter_metadata", "keygate", name];
        host.set_property(&leaf("scopes"), b"a");
        host.set_property(&leaf("signature"), b"required");
    };
    // Off (the default): the metadata's signature is not read.
    let host = FakeHost::at(NOW_MS);
    meta(&host);
    let shared = start_with(&host, &json!({"route_metadata": true, "routes": []}));
    assert!(first(&host, &shared, &unsigned, &record));
    // On: required.
    let host = FakeHost::at(NOW_MS);
    meta(&host);
    let shared = start_with(
        &host,
        &json!({"route_metadata": true, "routes": [], "signatures": {"route_metadata": true}}),
    );
    assert!(!first(&host, &shared, &unsigned, &record));
    let host = FakeHost::at(NOW_MS);
    meta(&host);
    let shared = start_with(
        &host,
        &json!({"route_metadata": true, "routes": [], "signatures": {"route_metadata": true}}),
    );
    let mut headers = signed(&key, &signer, "n", "/pay", None);
    headers.retain(|(n, _)| n != "x-tenant");
    // Signed without x-tenant (the metadata route requires only the minimum).
    let pairs_ = pairs(&headers);
    let request = Request {
        method: "GET",
        scheme: "https",
        authority: "api.example.com",
        target: "/pay",
        headers: &pairs_,
    };
    let options = SignOptions {
        key_id: key.id.as_str().into(),
        created_s: NOW_MS / 1000,
        nonce: Some("m".into()),
        label: "sig1".into(),
        ..SignOptions::default()
    };
    let (input, signature) = sign_request(&request, &signer, &options).unwrap();
    headers.retain(|(n, _)| !n.starts_with("signature"));
    headers.push(("signature-input".into(), input.into_bytes()));
    headers.push(("signature".into(), signature.into_bytes()));
    assert!(first(&host, &shared, &pairs(&headers), &record));
}
