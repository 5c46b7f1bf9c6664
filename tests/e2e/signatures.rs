//! Signed requests (RFC 9421) end to end: PyPI's `http-message-signatures` (pinned in
//! `scripts/prereqs.sh`) signs requests with Ed25519, ECDSA P-256 and HMAC-SHA256 material
//! registered through the key service (CLI, create, API); they pass a route with
//! `"signature": "required"` through a real Envoy, while tampered, replayed, expired and
//! wrongly attributed ones get 401 with `Accept-Signature`. Signed requests with a body pass
//! (Envoy hands the body over because the filter config sets
//! `allow_on_headers_stop_iteration`); a tampered body is 401 and one over the limit 413. A POST
//! with a body on an unsigned route whose key needs a lookup is decided before anything goes
//! upstream. One request is signed by `keygate sign`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use keygate_core::key::{mint_opaque_key, GatewayKey, KeyPrefix, ID_LEN};
use keygate_testkit::{bearer, keygate_bin, send, Reply, Stack, KEY_PREFIX};
use serde_json::{json, Value};

/// Makes keys (`keys DIR`) or signs the cases read on stdin (`sign`), printing their headers.
const SIGNER: &str = r#"
import base64, datetime, json, sys
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

if sys.argv[1] == "keys":
    for name, key in (("ed25519", ed25519.Ed25519PrivateKey.generate()),
                      ("p256", ec.generate_private_key(ec.SECP256R1()))):
        with open(f"{sys.argv[2]}/{name}.pem", "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        with open(f"{sys.argv[2]}/{name}.pub.pem", "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    sys.exit(0)

out = []
for case in json.load(sys.stdin):
    if case["alg"] == "hmac-sha256":
        key, alg = base64.b64decode(case["secret"]), algorithms.HMAC_SHA256
    else:
        with open(case["pem"], "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        alg = algorithms.ED25519 if case["alg"] == "ed25519" else algorithms.ECDSA_P256_SHA256

    class Keys(HTTPSignatureKeyResolver):
        def resolve_private_key(self, key_id):
            return key
        def resolve_public_key(self, key_id):
            raise NotImplementedError

    body = case.get("body")
    request = requests.Request(case["method"], case["url"],
                               data=body.encode() if body else None).prepare()
    covered = ["@method", "@authority", "@path", "@query"]
    if body:
        covered.append("content-digest")  # the library computes it from `body`
    at = lambda t: datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    HTTPMessageSigner(signature_algorithm=alg, key_resolver=Keys()).sign(
        request, key_id=case["key_id"], created=at(case["created"]),
        expires=at(case["expires"]) if case.get("expires") else None,
        nonce=case["nonce"], label="sig1", covered_component_ids=covered,
        body=body.encode() if body else None)
    out.append({name: request.headers[name] for name in ("Signature-Input", "Signature", "Content-Digest")
                if name in request.headers})
print(json.dumps(out))
"#;

/// The virtualenv Python with `http-message-signatures` (`KEYGATE_PYTHON` overrides).
fn python() -> PathBuf {
    keygate_testkit::python_with("http_message_signatures")
}

fn run_signer(python: &PathBuf, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SIGNER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the Python signer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing the cases");
    let output = child.wait_with_output().expect("the Python signer");
    assert!(
        output.status.success(),
        "the Python signer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

struct Signed<'a> {
    key: &'a str,
    headers: Value,
}

fn call(stack: &Stack, method: &str, path: &str, body: Option<&str>, signed: &Signed) -> Reply {
    let auth = bearer(signed.key);
    let mut headers = vec![("authorization", auth)];
    if let Some(map) = signed.headers.as_object() {
        for (name, value) in map {
            let name: &'static str = match name.as_str() {
                "Signature-Input" => "signature-input",
                "Signature" => "signature",
                _ => "content-digest",
            };
            headers.push((name, value.as_str().unwrap_or_default().to_owned()));
        }
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    send(method, &stack.url(path), &headers, body)
}

fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert!(
        reply
            .header("accept-signature")
            .is_some_and(|v| v.contains("sig1=")),
        "{what}: no Accept-Signature: {reply:?}"
    );
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:bad-signature",
        "{what}"
    );
}

/// `signatures.max_body_bytes` on the test's stack.
const MAX_BODY: usize = 1024;

/// The body of the signed POSTs.
const PAY_BODY: &str = r#"{"amount": 10, "currency": "EUR"}"#;

/// Requests Envoy sent to the echo upstream so far.
fn upstream_requests(stack: &Stack) -> u64 {
    stack
        .envoy
        .counter("cluster.echo.upstream_rq_total")
        .unwrap_or(0)
}

/// On an unsigned route, a POST with a body whose key is not cached pauses on its headers for
/// the lookup; with `allow_on_headers_stop_iteration` its body arrives meanwhile and must stay
/// paused: a known key's request then goes on whole, an unknown key's never reaches upstream.
fn unsigned_posts_with_a_body_are_decided_before_going_upstream(stack: &Stack) {
    let body = r#"{"order": 1}"#;
    // A key no request has used yet: its record is looked up while the body waits.
    let fresh = stack.service.create_key("fresh", &["pay:write"]);
    let reply = send(
        "POST",
        &stack.url("/orders/new"),
        &[("authorization", &bearer(&fresh.key))],
        Some(body),
    );
    assert_eq!(
        reply.status, 200,
        "first use of a key, with a body: {reply:?}"
    );
    assert_eq!(reply.json()["method"], "POST", "{reply:?}");
    assert_eq!(
        reply
            .upstream_headers()
            .get("content-length")
            .and_then(Value::as_str),
        Some(body.len().to_string().as_str()),
        "{reply:?}"
    );

    // A well-formed key with an authentic tag (made with the gateway key) that the key service
    // does not know: only the lookup can refuse it.
    let gateway_key = GatewayKey::from_hex(stack.gateway_key().trim()).expect("gateway key");
    let prefix = KeyPrefix::parse(KEY_PREFIX).expect("prefix");
    let unknown = mint_opaque_key(&prefix, &gateway_key, [0x5a; ID_LEN], [0x17; 32]);
    let before = upstream_requests(stack);
    let lookups_before = stack.envoy.keygate_counter("cache_miss");
    for _ in 0..3 {
        let reply = send(
            "POST",
            &stack.url("/orders/new"),
            &[("authorization", &bearer(&unknown.plaintext))],
            Some(body),
        );
        assert_eq!(reply.status, 401, "unknown key with a body: {reply:?}");
    }
    assert_eq!(
        upstream_requests(stack),
        before,
        "a request with an unknown key reached the upstream"
    );
    assert!(
        stack.envoy.keygate_counter("cache_miss") > lookups_before,
        "the unknown key was not looked up: {}",
        stack.envoy.keygate_stats()
    );
}

#[test]
fn signed_requests_from_a_pypi_client_pass_and_tampered_ones_fail() {
    let python = python();
    let stack = Stack::start_with("signatures", |cfg| {
        let routes = cfg["routes"].as_array_mut().expect("routes");
        routes.insert(
            0,
            json!({"prefix": "/signed/", "scopes": ["pay:write"], "signature": "required"}),
        );
        routes.insert(
            1,
            json!({"methods": ["POST"], "prefix": "/orders/", "scopes": ["pay:write"]}),
        );
        cfg["signatures"] = json!({"max_body_bytes": MAX_BODY});
    });
    let dir = stack.dir.path().to_path_buf();
    let dir_text = dir.to_str().expect("UTF-8 path");
    run_signer(&python, &["keys", dir_text], "");
    let service = &stack.service;

    // Ed25519 registered by the CLI; P-256 on create; HMAC through the CLI (its secret once).
    let ed = service.create_key("ed", &["pay:write"]);
    let ed_pub = dir.join("ed25519.pub.pem");
    service.cli(&[
        "keys",
        "signing-material",
        "set",
        &ed.id,
        "--ed25519-public-key",
        ed_pub.to_str().expect("path"),
    ]);
    let p256_pub = std::fs::read_to_string(dir.join("p256.pub.pem")).expect("p256.pub.pem");
    let p256 = service.create_key_from(&json!({"name": "p256", "scopes": ["pay:write"],
        "signing_material": {"public_key": p256_pub}}));
    assert_eq!(p256.raw["signing_material"]["alg"], "ecdsa-p256-sha256");
    let hmac = service.create_key("hmac", &["pay:write"]);
    let answer: Value = serde_json::from_str(&service.cli(&[
        "keys",
        "signing-material",
        "set",
        &hmac.id,
        "--hmac",
        "--json",
    ]))
    .expect("JSON answer");
    let secret = answer["secret"]
        .as_str()
        .expect("the HMAC secret")
        .to_owned();

    let url = |path: &str| stack.url(path);
    let t = now();
    let ed_pem = dir.join("ed25519.pem").to_str().expect("path").to_owned();
    let p_pem = dir.join("p256.pem").to_str().expect("path").to_owned();
    let mut cases = Vec::new();
    for (alg, id, pem) in [
        ("ed25519", &ed.id, &ed_pem),
        ("ecdsa-p256-sha256", &p256.id, &p_pem),
        ("hmac-sha256", &hmac.id, &p_pem),
    ] {
        let base = json!({"alg": alg, "key_id": id, "pem": pem, "secret": secret, "created": t});
        let mut get = base;
        get["method"] = json!("GET");
        get["url"] = json!(url("/signed/orders?page=2"));
        get["nonce"] = json!(format!("{alg}-get"));
        cases.push(get);
    }
    // Ed25519 cases to tamper with: 3 path, 4 method, 5 body, 6 expired, 7 another key's id.
    let ed_case = |method: &str, path: &str, body: Option<&str>, nonce: &str| {
        json!({"alg": "ed25519", "key_id": ed.id, "pem": ed_pem, "created": t, "method": method,
               "url": url(path), "body": body, "nonce": nonce})
    };
    cases.push(ed_case("GET", "/signed/a", None, "t-path"));
    cases.push(ed_case("GET", "/signed/a", None, "t-method"));
    cases.push(ed_case(
        "POST",
        "/signed/pay",
        Some(r#"{"amount": 10}"#),
        "t-body",
    ));
    let mut expired = ed_case("GET", "/signed/a", None, "t-expired");
    expired["created"] = json!(t - 1000);
    expired["expires"] = json!(t - 900);
    cases.push(expired);
    let mut wrong_id = ed_case("GET", "/signed/a", None, "t-keyid");
    wrong_id["key_id"] = json!(p256.id);
    cases.push(wrong_id);
    // 8, 9, 10: POSTs with a body (and a Content-Digest covered by the signature), one per
    // algorithm.
    for (alg, id, pem) in [
        ("ed25519", &ed.id, &ed_pem),
        ("ecdsa-p256-sha256", &p256.id, &p_pem),
        ("hmac-sha256", &hmac.id, &p_pem),
    ] {
        cases.push(
            json!({"alg": alg, "key_id": id, "pem": pem, "secret": secret,
            "created": t, "method": "POST", "url": url("/signed/pay"), "body": PAY_BODY,
            "nonce": format!("{alg}-post")}),
        );
    }
    let signed: Vec<Value> = serde_json::from_str(&run_signer(
        &python,
        &["sign"],
        &Value::Array(cases.clone()).to_string(),
    ))
    .expect("signer output");

    for (i, key) in [&ed, &p256, &hmac].iter().enumerate() {
        let s = Signed {
            key: &key.key,
            headers: signed[i].clone(),
        };
        let reply = call(&stack, "GET", "/signed/orders?page=2", None, &s);
        assert_eq!(
            reply.status, 200,
            "case {i} ({}): {reply:?}",
            cases[i]["alg"]
        );
        // The same request again: its nonce was seen.
        assert_refused(
            &call(&stack, "GET", "/signed/orders?page=2", None, &s),
            "replayed nonce",
        );
    }
    let ed_signed = |i: usize| Signed {
        key: &ed.key,
        headers: signed[i].clone(),
    };
    assert_refused(
        &call(&stack, "GET", "/signed/b", None, &ed_signed(3)),
        "tampered path",
    );
    assert_refused(
        &call(&stack, "DELETE", "/signed/a", None, &ed_signed(4)),
        "tampered method",
    );
    assert_refused(
        &call(
            &stack,
            "POST",
            "/signed/pay",
            Some(r#"{"amount": 99}"#),
            &ed_signed(5),
        ),
        "tampered body",
    );
    assert_refused(
        &call(&stack, "GET", "/signed/a", None, &ed_signed(6)),
        "expired",
    );
    assert_refused(
        &call(&stack, "GET", "/signed/a", None, &ed_signed(7)),
        "wrong keyid",
    );

    // Signed POSTs with a body: read whole, checked against Content-Digest, forwarded whole.
    for (i, key) in [(8, &ed), (9, &p256), (10, &hmac)] {
        let s = Signed {
            key: &key.key,
            headers: signed[i].clone(),
        };
        let reply = call(&stack, "POST", "/signed/pay", Some(PAY_BODY), &s);
        assert_eq!(
            reply.status, 200,
            "signed POST {}: {reply:?}",
            cases[i]["alg"]
        );
        assert_eq!(reply.json()["method"], "POST", "{reply:?}");
        let upstream = reply.upstream_headers();
        assert_eq!(
            upstream.get("content-length").and_then(Value::as_str),
            Some(PAY_BODY.len().to_string().as_str()),
            "the body went upstream whole: {reply:?}"
        );
        assert!(upstream.contains_key("content-digest"), "{reply:?}");
    }
    // The body itself changed after signing (headers as signed, digest of the old body).
    assert_refused(
        &call(
            &stack,
            "POST",
            "/signed/pay",
            Some(r#"{"amount": 10000}"#),
            &ed_signed(8),
        ),
        "tampered body, digest as signed",
    );
    // A body over `signatures.max_body_bytes`: refused before any check.
    let big = "x".repeat(MAX_BODY + 1);
    let reply = call(&stack, "POST", "/signed/pay", Some(&big), &ed_signed(8));
    assert_eq!(reply.status, 413, "over max_body_bytes: {reply:?}");
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:body-too-large",
        "{reply:?}"
    );

    unsigned_posts_with_a_body_are_decided_before_going_upstream(&stack);
    // Without a signature at all.
    assert_refused(&stack.get_with_key("/signed/a", &ed.key), "unsigned");

    // `keygate sign`: its header lines, for curl.
    let output = Command::new(keygate_bin())
        .args([
            "sign",
            &url("/signed/orders?page=3"),
            "--key-id",
            &ed.id,
            "--private-key",
            &ed_pem,
        ])
        .output()
        .expect("keygate sign");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let mut headers = serde_json::Map::new();
    for line in text.lines() {
        let (name, value) = line.split_once(": ").expect("Name: value");
        let name = match name.to_ascii_lowercase().as_str() {
            "signature-input" => "Signature-Input",
            "signature" => "Signature",
            _ => "Content-Digest",
        };
        headers.insert(name.to_owned(), json!(value));
    }
    let reply = call(
        &stack,
        "GET",
        "/signed/orders?page=3",
        None,
        &Signed {
            key: &ed.key,
            headers: Value::Object(headers),
        },
    );
    assert_eq!(reply.status, 200, "keygate sign: {reply:?}");
}
