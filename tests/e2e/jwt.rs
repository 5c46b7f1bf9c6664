//! JWT credentials end to end: JWT API keys minted by the key service and verified by the
//! filter against the service's JWKS (fetched over the `keygate_service` cluster), an
//! IdP-style issuer with an inline JWKS whose private key the test holds, and an attack suite.
//! Every denial is checked for its status, its `WWW-Authenticate` error and the counter
//! `wasmcustom.keygate.denied.<reason>`, and every attack is followed by a valid request (the
//! VM survived).

use std::fs;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use keygate_core::jwt::{verify_jwt, Algorithm, KeySet, SigningKey, Validation};
use serde_json::{json, Value};
use sha2::Sha256;

use keygate_testkit::{assert_denied, assert_forwarded_with_identity, poll_status};
use keygate_testkit::{
    bearer, default_plugin_config, random_hex, wait_until, IssuedKey, Reply, Stack,
};

/// The external issuer of these tests (an "IdP"), trusted through an inline JWKS.
const IDP_ISSUER: &str = "https://idp.example.com/";
const IDP_AUDIENCE: &str = "api://keygate-demo";
const IDP_KID: &str = "idp-key-1";
/// What the key service puts in `iss` / `aud` by default.
const SERVICE_ISSUER: &str = "keygate";

// ── token crafting ───────────────────────────────────────────────────────────────────────────

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {segment}"))
}

fn segments(token: &str) -> (String, String, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    (parts[0].into(), parts[1].into(), parts[2].into())
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(&segments(token).0)).expect("header JSON")
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&unb64(&segments(token).1)).expect("claims JSON")
}

fn hs256(secret: &[u8], signing_input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any HMAC key length");
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// A fresh ES256 key from the OS CSPRNG.
fn es256_key() -> SigningKey {
    SigningKey::generate(Algorithm::ES256, &mut rand_core::OsRng).expect("generating an ES256 key")
}

/// Signs a compact JWS with an ARBITRARY header (`SigningKey::sign` only writes alg/typ/kid):
/// the key goes to `openssl dgst` as PKCS#8 DER, and the DER ECDSA signature is turned into
/// JOSE's `r ‖ s`.
fn es256_sign_with_header(key: &SigningKey, header: &Value, claims: &Value, dir: &Path) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key_path = dir.join("attacker-key.der");
    let input_path = dir.join("attacker-input");
    let sig_path = dir.join("attacker-sig.der");
    fs::write(&key_path, key.to_pkcs8_der().expect("PKCS#8")).expect("writing the key");
    fs::write(&input_path, &signing_input).expect("writing the signing input");
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-keyform", "DER", "-sign"])
        .arg(&key_path)
        .arg("-out")
        .arg(&sig_path)
        .arg(&input_path)
        .output()
        .expect("running openssl (needed to sign tokens with custom headers)");
    assert!(
        output.status.success(),
        "openssl dgst -sign failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let der = fs::read(&sig_path).expect("reading the signature");
    format!("{signing_input}.{}", b64(&ecdsa_der_to_raw(&der)))
}

/// `SEQUENCE { INTEGER r, INTEGER s }` → 32-byte big-endian `r ‖ s`.
fn ecdsa_der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der.first(), Some(&0x30), "not a DER sequence: {der:02x?}");
    let mut at = 2;
    let mut raw = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "not a DER integer: {der:02x?}");
        let len = usize::from(der[at + 1]);
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.iter().take_while(|b| **b == 0).count()..];
        assert!(int.len() <= 32, "integer too long: {der:02x?}");
        raw.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        raw.extend_from_slice(int);
        at += 2 + len;
    }
    raw
}

// ── the IdP-style issuer: an inline JWKS, private key held by the test ───────────────────────

struct Idp {
    key: SigningKey,
}

impl Idp {
    fn new() -> Self {
        Idp { key: es256_key() }
    }

    /// The issuer entry for the plugin config: inline JWKS, no revocation lookups.
    fn issuer_config(&self) -> Value {
        let jwk = serde_json::to_value(self.key.public_jwk(IDP_KID)).expect("JWK JSON");
        json!({
            "issuer": IDP_ISSUER,
            "audiences": [IDP_AUDIENCE],
            "algorithms": ["ES256"],
            "jwks": {"inline": {"keys": [jwk]}},
            "leeway_seconds": 60,
            "require_exp": true,
            "max_lifetime_seconds": 86400,
            "typ": "at+jwt",
            "revocation": "none"
        })
    }

    /// Good claims: valid for 10 minutes, for our audience.
    fn claims(&self, sub: &str, scope: &str) -> Value {
        let now = now_s();
        json!({
            "iss": IDP_ISSUER,
            "aud": IDP_AUDIENCE,
            "sub": sub,
            "scope": scope,
            "iat": now,
            "exp": now + 600,
            "jti": format!("idp-{}", random_hex(8)),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_typ("at+jwt", claims)
    }

    fn sign_typ(&self, typ: &str, claims: &Value) -> String {
        self.key.sign(IDP_KID, typ, claims).expect("signing")
    }
}

fn with_idp_issuer(idp: &Idp) -> impl FnOnce(&mut Value) + '_ {
    move |cfg: &mut Value| {
        let issuers = cfg["jwt"]["issuers"]
            .as_array_mut()
            .expect("envoy/envoy.yaml has jwt.issuers");
        issuers.push(idp.issuer_config());
    }
}

/// Sets a field of the key service's issuer (the first one, from envoy/envoy.yaml).
fn service_issuer(cfg: &mut Value) -> &mut Value {
    let issuer = &mut cfg["jwt"]["issuers"][0];
    assert_eq!(
        issuer["issuer"], SERVICE_ISSUER,
        "envoy/envoy.yaml issuer 0"
    );
    issuer
}

// ── assertions ───────────────────────────────────────────────────────────────────────────────

/// GET /v1/hello with `token` as the bearer credential must be refused with `status`,
/// `WWW-Authenticate: Bearer realm="keygate", error="<error>"`, a problem+json body without
/// the token, and exactly one more `wasmcustom.keygate.denied.<counter>`.
fn refused(stack: &Stack, what: &str, token: &str, status: u16, error: &str, counter: &str) {
    let name = format!("denied.{counter}");
    let before = stack.envoy.keygate_counter(&name);
    let reply = stack.get_with_key("/v1/hello", token);
    assert_eq!(
        reply.status, status,
        "{what}: expected {status}: {reply:#?}"
    );
    let www = reply.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Bearer realm=\"keygate\"") && www.contains(&format!("error=\"{error}\"")),
        "{what}: WWW-Authenticate is {www:?}, expected error=\"{error}\""
    );
    assert_denied(
        &reply,
        status,
        Some(&format!("error=\"{error}\"")),
        (token.len() >= 16).then_some(token),
    );
    let after = stack.envoy.keygate_counter(&name);
    assert_eq!(
        after,
        before + 1,
        "{what}: wasmcustom.keygate.{name} went {before} → {after} ({www}); keygate stats:\n{}",
        stack.envoy.keygate_stats()
    );
}

/// A valid token still passes (on a fresh connection): the VM survived whatever came before.
fn still_serving(stack: &Stack, good: &IssuedKey, after: &str) {
    let reply = stack.get_with_key("/v1/hello", &good.key);
    assert_eq!(
        reply.status, 200,
        "after {after}: a valid JWT no longer passes: {reply:#?}"
    );
    assert_forwarded_with_identity(&reply, &good.id);
}

/// A valid outside token still passes: the VM survived whatever came before.
fn idp_still_serving(stack: &Stack, good: &IssuedKey, after: &str) {
    let reply = stack.get_with_key("/v1/hello", &good.key);
    assert_eq!(
        reply.status, 200,
        "after {after}: a valid IdP token no longer passes: {reply:#?}"
    );
    assert_forwarded_with_outside_identity(&reply, IDP_ISSUER);
}

/// Asserts a 200 carrying the identity of an outside issuer's token: subject, scopes and
/// the issuer, and no key id (an outside `jti` is not a Keygate key id); no credential.
fn assert_forwarded_with_outside_identity(
    reply: &Reply,
    issuer: &str,
) -> serde_json::Map<String, Value> {
    assert_eq!(reply.status, 200, "expected 200 through Envoy: {reply:#?}");
    let upstream = reply.upstream_headers();
    for name in ["x-keygate-subject", "x-keygate-scopes"] {
        assert!(
            !upstream_str(&upstream, name).is_empty(),
            "upstream did not get {name}: {upstream:#?}"
        );
    }
    assert_eq!(
        upstream_str(&upstream, "x-keygate-issuer"),
        issuer,
        "x-keygate-issuer: {upstream:#?}"
    );
    assert!(
        !upstream.contains_key("x-keygate-key-id"),
        "an outside token's jti was forwarded as a Keygate key id: {upstream:#?}"
    );
    assert!(
        !upstream.contains_key("authorization"),
        "authorization reached upstream: {upstream:#?}"
    );
    upstream
}

fn upstream_str(upstream: &serde_json::Map<String, Value>, name: &str) -> String {
    upstream
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// JWKS fetches so far (good or bad) by this Envoy.
fn jwks_fetches(stack: &Stack) -> u64 {
    stack.envoy.keygate_counter("jwks_refreshed")
        + stack.envoy.keygate_counter("jwks_fetch_failure")
}

/// Waits until Envoy's first JWKS fetch (at start) has landed; returns when it was seen.
fn wait_first_jwks_fetch(stack: &Stack) -> Instant {
    let ok = wait_until(Duration::from_secs(10), || {
        stack.envoy.keygate_counter("jwks_refreshed") >= 1
    });
    assert!(
        ok,
        "Envoy never fetched the key service's JWKS; keygate stats:\n{}",
        stack.envoy.keygate_stats()
    );
    Instant::now()
}

/// Waits until the filter holds the key service's JWKS on every worker: Envoy's start-up
/// fetch has landed in shared data, and each worker's next tick (10 ms while the revocation
/// feed runs) has loaded it. Until then a worker refuses tokens with 401 jwt_unknown_kid
/// instead of waiting for the fetch under way (see
/// `first_jwt_requests_right_after_start_wait_for_the_jwks`).
fn wait_jwt_ready(stack: &Stack) -> Instant {
    let fetched = wait_first_jwks_fetch(stack);
    sleep(Duration::from_millis(150));
    fetched
}

// ── configuration ────────────────────────────────────────────────────────────────────────────

#[test]
fn envoy_yaml_trusts_jwt_keys_of_the_local_key_service() {
    let cfg = default_plugin_config();
    let jwt = &cfg["jwt"];
    assert_eq!(jwt["max_token_bytes"], 8192, "{jwt:#}");
    let issuers = jwt["issuers"].as_array().expect("jwt.issuers");
    assert_eq!(issuers.len(), 1, "{jwt:#}");
    let issuer = &issuers[0];
    assert_eq!(issuer["issuer"], SERVICE_ISSUER);
    assert_eq!(issuer["audiences"], json!([SERVICE_ISSUER]));
    assert_eq!(issuer["typ"], "at+jwt");
    assert_eq!(issuer["revocation"], "key_service");
    let remote = &issuer["jwks"]["remote"];
    assert_eq!(
        remote["cluster"], cfg["key_service"]["cluster"],
        "{issuer:#}"
    );
    assert_eq!(remote["path"], "/.well-known/jwks.json", "{issuer:#}");
}

// ── allow path ───────────────────────────────────────────────────────────────────────────────

#[test]
fn service_minted_jwts_of_every_algorithm_reach_upstream_with_their_identity() {
    // Minted before Envoy starts (the service creates a signing key of every algorithm at
    // start, and signs with each once it has been published for the publish delay).
    let mut minted: Vec<(&str, IssuedKey)> = Vec::new();
    let stack = Stack::start_prepared(
        "jwt-allow",
        |_| {},
        |service| {
            for alg in ["ES256", "EdDSA", "RS256"] {
                let name = format!("jwt-{}", alg.to_ascii_lowercase());
                minted.push((
                    alg,
                    service.create_jwt_key(&name, &["demo:read"], alg, 3600),
                ));
            }
        },
    );
    wait_jwt_ready(&stack);
    let jwks = stack.service.jwks();

    for (alg, issued) in &minted {
        let header = header_of(&issued.key);
        let claims = claims_of(&issued.key);
        let kid = header["kid"].as_str().unwrap_or_default();
        assert_eq!(header["alg"], *alg, "{alg}: header {header}");
        assert_eq!(header["typ"], "at+jwt", "{alg}: header {header}");
        assert!(
            kid.starts_with(&format!("kg-{}-", alg.to_ascii_lowercase())),
            "{alg}: kid {kid:?}"
        );
        assert!(
            jwks["keys"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid)),
            "{alg}: kid {kid} not in the JWKS {jwks}"
        );
        assert_eq!(claims["iss"], SERVICE_ISSUER, "{alg}: {claims}");
        assert_eq!(claims["aud"], SERVICE_ISSUER, "{alg}: {claims}");
        assert_eq!(claims["jti"], issued.id.as_str(), "{alg}: {claims}");
        let owner = issued.raw["owner"].as_str().unwrap_or_default().to_string();
        assert_eq!(claims["sub"], owner.as_str(), "{alg}: {claims}");
        if *alg == "RS256" {
            // Longer than max_credential_bytes (512): that limit is for opaque keys only.
            assert!(
                issued.key.len() > 512,
                "RS256 token of {} bytes",
                issued.key.len()
            );
        }

        // Bearer, with spoofed identity headers that must not survive.
        let auth = bearer(&issued.key);
        let reply = stack.get(
            "/v1/hello",
            &[
                ("authorization", auth.as_str()),
                ("x-keygate-subject", "evil"),
                ("x-keygate-scopes", "demo:write"),
            ],
        );
        let upstream = assert_forwarded_with_identity(&reply, &issued.id);
        assert_eq!(upstream_str(&upstream, "x-keygate-subject"), owner, "{alg}");
        assert_eq!(
            upstream_str(&upstream, "x-keygate-scopes"),
            "demo:read",
            "{alg}"
        );

        // Further requests (fresh connections, both workers): verified-token cache hits. At
        // most one of them can be the other worker's first sight of the token.
        // The allowed path's counters reach Envoy on the workers' tick (at most a second
        // later): earlier counts are let in first, then the new ones are waited for.
        sleep(Duration::from_millis(1_500));
        let hits_before = stack.envoy.keygate_counter("token_cache_hit");
        for _ in 0..4 {
            let reply = stack.get_with_key("/v1/hello", &issued.key);
            assert_forwarded_with_identity(&reply, &issued.id);
        }
        keygate_testkit::wait_until(Duration::from_secs(5), || {
            stack.envoy.keygate_counter("token_cache_hit") >= hits_before + 3
        });
        let hits = stack.envoy.keygate_counter("token_cache_hit") - hits_before;
        assert!(
            hits >= 3,
            "{alg}: 4 repeated requests but {hits} token cache hits; keygate stats:\n{}",
            stack.envoy.keygate_stats()
        );

        // The same token in x-api-key.
        let reply = stack.get("/v1/hello", &[("x-api-key", issued.key.as_str())]);
        assert_forwarded_with_identity(&reply, &issued.id);

        // demo:read only: POST needs demo:write.
        let scope_denials = stack.envoy.keygate_counter("denied.insufficient_scope");
        let reply = stack.post("/v1/hello", &[("authorization", auth.as_str())]);
        assert_denied(
            &reply,
            403,
            Some("error=\"insufficient_scope\""),
            Some(&issued.key),
        );
        let www = reply.header("www-authenticate").unwrap_or_default();
        assert!(www.contains("scope=\"demo:write\""), "{alg}: {www:?}");
        assert_eq!(
            stack.envoy.keygate_counter("denied.insufficient_scope"),
            scope_denials + 1,
            "{alg}: insufficient_scope counter"
        );
    }
    // revocation: key_service → each token's jti was looked up as a key record.
    assert!(
        stack.service.lookups() >= 3,
        "JWT keys with revocation=key_service made no key-record lookups"
    );
}

/// Right after Envoy is ready, before (or while) its first JWKS fetch lands, valid JWTs must
/// wait for that fetch, not be refused: a gateway that has just started, or a pod that was
/// just rescheduled, must not answer 401 to valid keys.
///
#[test]
fn first_jwt_requests_right_after_start_wait_for_the_jwks() {
    let mut minted = None;
    let stack = Stack::start_prepared(
        "jwt-cold",
        |_| {},
        |service| minted = Some(service.create_jwt_key("cold", &["demo:read"], "ES256", 3600)),
    );
    let issued = minted.expect("minted before Envoy started");
    // Eight requests at once on fresh connections, so both workers see one at once.
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| stack.get_with_key("/v1/hello", &issued.key)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    let refused: Vec<String> = replies
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| format!("{} {:?}", r.status, r.header("www-authenticate")))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 8 requests with a valid JWT right after start were refused: {refused:#?}\nkeygate stats:\n{}",
        refused.len(),
        stack.envoy.keygate_stats()
    );
    for reply in &replies {
        assert_forwarded_with_identity(reply, &issued.id);
    }
}

// ── attacks on the key service's issuer ──────────────────────────────────────────────────────

#[test]
fn jwt_attacks_are_refused_and_the_vm_survives() {
    let stack = Stack::start("jwt-attacks");
    wait_jwt_ready(&stack);
    let good = stack
        .service
        .create_jwt_key("victim", &["demo:read"], "ES256", 3600);
    still_serving(&stack, &good, "nothing");
    let (good_h, good_p, good_s) = segments(&good.key);
    let kid = header_of(&good.key)["kid"]
        .as_str()
        .expect("kid")
        .to_string();
    let jwk = stack.service.jwk(&kid);
    let lookups_before = stack.service.lookups();
    let fetches_before = jwks_fetches(&stack);

    // A token with `header` over the victim's claims and signature.
    let reheader =
        |header: &Value| format!("{}.{good_p}.{good_s}", b64(header.to_string().as_bytes()));

    // alg "none" in every casing, with an empty signature (not even JWT-shaped: refused as a
    // malformed credential) and with the real signature kept (alg refused).
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt", "kid": kid});
        let unsigned = format!("{}.{good_p}.", b64(header.to_string().as_bytes()));
        refused(
            &stack,
            &format!("alg {alg}, empty signature"),
            &unsigned,
            401,
            "invalid_token",
            "malformed_key",
        );
        still_serving(&stack, &good, &format!("alg {alg}"));
        refused(
            &stack,
            &format!("alg {alg}, real signature"),
            &reheader(&header),
            401,
            "invalid_token",
            "jwt_algorithm_not_allowed",
        );
        let no_kid = format!(
            "{}.{good_p}.",
            b64(json!({"alg": alg}).to_string().as_bytes())
        );
        refused(
            &stack,
            &format!("alg {alg}, no kid"),
            &no_kid,
            401,
            "invalid_token",
            "malformed_key",
        );
    }
    still_serving(&stack, &good, "alg none");

    // HS256 "signed" with the service's public key as the HMAC secret, under the real kid:
    // the JWK JSON, the raw coordinates x ‖ y, and the SEC1 point 04 ‖ x ‖ y.
    let x = unb64(jwk["x"].as_str().expect("EC jwk x"));
    let y = unb64(jwk["y"].as_str().expect("EC jwk y"));
    let coordinates = [x.clone(), y.clone()].concat();
    let sec1 = [vec![4u8], x, y].concat();
    let jwk_json = jwk.to_string();
    for (label, secret) in [
        ("the JWK JSON", jwk_json.as_bytes()),
        ("x ‖ y", coordinates.as_slice()),
        ("04 ‖ x ‖ y", sec1.as_slice()),
    ] {
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
        let input = format!("{}.{good_p}", b64(header.to_string().as_bytes()));
        let token = format!("{input}.{}", b64(&hs256(secret, &input)));
        refused(
            &stack,
            &format!("HS256 keyed with {label}"),
            &token,
            401,
            "invalid_token",
            "jwt_algorithm_not_allowed",
        );
        still_serving(&stack, &good, &format!("HS256 keyed with {label}"));
    }

    // kid: unknown, or carrying path / SQL / control characters; missing or not a string.
    for bad_kid in [
        random_hex(8).as_str(),
        "../../etc/passwd",
        "' OR 1=1 --",
        "kg-es256-x\u{0}\r\nx-injected: 1",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ] {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": bad_kid});
        refused(
            &stack,
            &format!("kid {bad_kid:?}"),
            &reheader(&header),
            401,
            "invalid_token",
            "jwt_unknown_kid",
        );
        still_serving(&stack, &good, &format!("kid {bad_kid:?}"));
    }
    for header in [
        json!({"alg": "ES256", "typ": "at+jwt"}),
        json!({"alg": "ES256", "typ": "at+jwt", "kid": 7}),
    ] {
        refused(
            &stack,
            &format!("header {header}"),
            &reheader(&header),
            401,
            "invalid_token",
            "jwt_missing_kid",
        );
    }
    // The real kid with another algorithm: the key is pinned to ES256.
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid});
    refused(
        &stack,
        "EdDSA under an ES256 kid",
        &reheader(&header),
        401,
        "invalid_token",
        "jwt_algorithm_mismatch",
    );
    still_serving(&stack, &good, "kid attacks");

    // A token that brings its own key: `jwk` with the attacker's public key, `jku` and `x5u`
    // at an attacker URL, signed by the attacker, under the real kid (and under its own).
    let attacker = es256_key();
    let attacker_url_listener = TcpListener::bind("127.0.0.1:0").expect("attacker listener");
    attacker_url_listener
        .set_nonblocking(true)
        .expect("nonblocking");
    let attacker_url = format!(
        "http://{}/jwks.json",
        attacker_url_listener.local_addr().expect("addr")
    );
    let mut claims = claims_of(&good.key);
    claims["sub"] = json!("attacker");
    claims["scope"] = json!("demo:read demo:write");
    for attacker_kid in [kid.as_str(), "attacker-key"] {
        let header = json!({
            "alg": "ES256",
            "typ": "at+jwt",
            "kid": attacker_kid,
            "jwk": attacker.public_jwk(attacker_kid),
            "jku": attacker_url,
            "x5u": attacker_url,
        });
        let forged = es256_sign_with_header(&attacker, &header, &claims, stack.dir.path());
        // Sanity: the forgery IS valid under the embedded key, so only ignoring it saves us.
        let embedded = json!({"keys": [attacker.public_jwk(attacker_kid)]}).to_string();
        let (embedded, _) = KeySet::from_jwks_json(embedded.as_bytes()).expect("attacker JWKS");
        verify_jwt(
            &forged,
            &embedded,
            &Validation::new(SERVICE_ISSUER),
            now_s(),
        )
        .expect("the forged token verifies under the attacker's own key");
        let counter = if attacker_kid == kid {
            "jwt_bad_signature"
        } else {
            "jwt_unknown_kid"
        };
        refused(
            &stack,
            &format!("embedded jwk/jku/x5u, kid {attacker_kid}"),
            &forged,
            401,
            "invalid_token",
            counter,
        );
        still_serving(&stack, &good, "embedded jwk");
    }
    match attacker_url_listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("something fetched the token's jku/x5u URL: {other:?}"),
    }

    // Bad base64url: padding, the standard alphabet, an impossible length.
    let std_alphabet = format!("{good_h}.{good_p}.+/{}", &good_s[2..]);
    // 64 signature bytes are 86 characters: the last one carries 2 bits and 4 zero bits.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = good_s.as_bytes()[good_s.len() - 1];
    let value = ALPHABET.iter().position(|c| *c == last).expect("base64url");
    assert_eq!(good_s.len() % 4, 2, "ES256 signature length");
    let non_canonical = format!(
        "{good_h}.{good_p}.{}{}",
        &good_s[..good_s.len() - 1],
        char::from(ALPHABET[value | 1])
    );
    for (label, token, counter) in [
        (
            "padded signature",
            format!("{}=", good.key),
            "malformed_key",
        ),
        (
            "padded header",
            format!("{good_h}==.{good_p}.{good_s}"),
            "malformed_key",
        ),
        ("+ and / in the signature", std_alphabet, "malformed_key"),
        (
            "a signature of 4n+1 characters",
            format!("{}AAA", good.key),
            "jwt_malformed",
        ),
        (
            "non-canonical trailing bits in the signature",
            non_canonical,
            "jwt_malformed",
        ),
    ] {
        refused(&stack, label, &token, 401, "invalid_token", counter);
        still_serving(&stack, &good, label);
    }

    // Wrong segment counts: 2, 4, a 5-segment JWE, an empty middle segment.
    let jwe_header = b64(json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": kid})
        .to_string()
        .as_bytes());
    for (label, token) in [
        ("2 segments", format!("{good_h}.{good_p}")),
        ("4 segments", format!("{}.{good_s}", good.key)),
        (
            "5-segment JWE",
            format!(
                "{jwe_header}.{}.{}.{}.{}",
                b64(&[7; 256]),
                b64(&[1; 12]),
                b64(b"ciphertext"),
                b64(&[2; 16])
            ),
        ),
        ("empty claims segment", format!("{good_h}..{good_s}")),
    ] {
        refused(&stack, label, &token, 401, "invalid_token", "malformed_key");
        still_serving(&stack, &good, label);
    }

    // Larger than jwt.max_token_bytes (8192): 400 before any decoding.
    let mut big_claims = claims_of(&good.key);
    big_claims["pad"] = json!("x".repeat(9000));
    let big = format!(
        "{good_h}.{}.{good_s}",
        b64(big_claims.to_string().as_bytes())
    );
    assert!(big.len() > 8192);
    refused(
        &stack,
        "oversized token",
        &big,
        400,
        "invalid_request",
        "malformed_credential",
    );
    still_serving(&stack, &good, "oversized token");

    // Headers that are not a JSON object, or are ambiguous.
    for (label, header) in [
        ("non-JSON header", b"not json at all".to_vec()),
        (
            "JSON array header",
            json!(["alg", "ES256", "kid", kid]).to_string().into_bytes(),
        ),
        ("JSON string header", b"\"ES256\"".to_vec()),
        (
            "duplicate alg member",
            format!(r#"{{"alg":"none","alg":"ES256","typ":"at+jwt","kid":"{kid}"}}"#).into_bytes(),
        ),
        (
            "crit header",
            json!({"alg": "ES256", "typ": "at+jwt", "kid": kid, "crit": ["exp"], "exp": 1})
                .to_string()
                .into_bytes(),
        ),
    ] {
        let token = format!("{}.{good_p}.{good_s}", b64(&header));
        refused(&stack, label, &token, 401, "invalid_token", "jwt_malformed");
        still_serving(&stack, &good, label);
    }

    // Nothing of this reached the key service, and at most one JWKS refetch happened (the
    // unknown kids; min_refetch_seconds is 30 and Envoy fetched at start).
    assert_eq!(
        stack.service.lookups(),
        lookups_before,
        "refused tokens caused key-record lookups"
    );
    let fetches = jwks_fetches(&stack) - fetches_before;
    assert!(
        fetches <= 1,
        "{fetches} JWKS fetches during the attack suite"
    );
    for _ in 0..4 {
        still_serving(&stack, &good, "the whole attack suite");
    }
}

#[test]
fn jwt_with_an_algorithm_outside_the_allow_list_is_refused() {
    let mut minted = Vec::new();
    let stack = Stack::start_prepared(
        "jwt-alg-allow-list",
        |cfg| service_issuer(cfg)["algorithms"] = json!(["ES256"]),
        |service| {
            for alg in ["ES256", "EdDSA", "RS256"] {
                minted.push(service.create_jwt_key(&format!("k-{alg}"), &["demo:read"], alg, 3600));
            }
        },
    );
    wait_jwt_ready(&stack);
    let es256 = &minted[0];
    still_serving(&stack, es256, "nothing");
    for (issued, alg) in minted[1..].iter().zip(["EdDSA", "RS256"]) {
        assert_eq!(header_of(&issued.key)["alg"], alg);
        refused(
            &stack,
            &format!("{alg} with algorithms [ES256]"),
            &issued.key,
            401,
            "invalid_token",
            "jwt_algorithm_not_allowed",
        );
        still_serving(&stack, es256, alg);
    }
}

#[test]
fn unknown_kids_cause_at_most_one_jwks_refetch_per_interval() {
    const MIN_REFETCH: Duration = Duration::from_secs(2);
    let stack = Stack::start_with("jwt-unknown-kid", |cfg| {
        service_issuer(cfg)["jwks"]["remote"]["min_refetch_seconds"] = json!(MIN_REFETCH.as_secs())
    });
    let good = stack
        .service
        .create_jwt_key("good", &["demo:read"], "ES256", 3600);
    let fetched = wait_jwt_ready(&stack);
    still_serving(&stack, &good, "nothing");
    let (_, good_p, good_s) = segments(&good.key);
    let with_kid = |kid: &str| {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        format!("{}.{good_p}.{good_s}", b64(header.to_string().as_bytes()))
    };

    // Past min_refetch_seconds since the start-up fetch, a burst of unknown kids (random,
    // path- and SQL-like) costs exactly one refetch; every one of them is refused.
    sleep((MIN_REFETCH + Duration::from_millis(300)).saturating_sub(fetched.elapsed()));
    for round in 0..2 {
        let before = jwks_fetches(&stack);
        let burst = Instant::now();
        for kid in [
            random_hex(8),
            "../../etc/passwd".to_string(),
            "' OR 1=1 --".to_string(),
            random_hex(8),
            random_hex(8),
            random_hex(8),
        ] {
            refused(
                &stack,
                &format!("round {round}: unknown kid {kid:?}"),
                &with_kid(&kid),
                401,
                "invalid_token",
                "jwt_unknown_kid",
            );
        }
        assert!(
            burst.elapsed() < MIN_REFETCH,
            "the burst took {:?}, longer than min_refetch_seconds: inconclusive",
            burst.elapsed()
        );
        let fetches = jwks_fetches(&stack) - before;
        assert_eq!(
            fetches, 1,
            "round {round}: 6 unknown kids within min_refetch_seconds caused {fetches} JWKS fetches (expected exactly one refetch); keygate stats:\n{}",
            stack.envoy.keygate_stats()
        );
        still_serving(&stack, &good, "unknown kids");
        // The next interval may refetch again.
        sleep((MIN_REFETCH + Duration::from_millis(300)).saturating_sub(burst.elapsed()));
    }
}

// ── an IdP-style issuer: inline JWKS, no revocation lookups ───────────────────────────────────

#[test]
fn idp_issuer_with_inline_jwks_enforces_every_claim_without_lookups() {
    let idp = Idp::new();
    let stack = Stack::start_with("jwt-idp", with_idp_issuer(&idp));
    wait_jwt_ready(&stack);
    let lookups_before = stack.service.lookups();

    // Valid: forwarded with the IdP's identity, without any key-service lookup.
    let claims = idp.claims("alice@idp", "demo:read profile");
    let token = idp.sign(&claims);
    let jti = claims["jti"].as_str().unwrap_or_default().to_string();
    let good = IssuedKey {
        id: jti.clone(),
        key: token.clone(),
        raw: claims.clone(),
    };
    let reply = stack.get_with_key("/v1/hello", &token);
    let upstream = assert_forwarded_with_outside_identity(&reply, IDP_ISSUER);
    assert_eq!(upstream_str(&upstream, "x-keygate-subject"), "alice@idp");
    assert_eq!(
        upstream_str(&upstream, "x-keygate-scopes"),
        "demo:read profile"
    );
    for _ in 0..3 {
        let reply = stack.get_with_key("/v1/hello", &good.key);
        assert_forwarded_with_outside_identity(&reply, IDP_ISSUER);
    }
    // `aud` as an array containing ours; a big token (between 512 and 8192 bytes) is fine.
    let mut multi = idp.claims("bob@idp", "demo:read");
    multi["aud"] = json!(["https://other.example", IDP_AUDIENCE]);
    multi["groups"] = json!(vec!["engineering"; 200]);
    let multi_token = idp.sign(&multi);
    assert!(multi_token.len() > 1024 && multi_token.len() < 8192);
    let reply = stack.get_with_key("/v1/hello", &multi_token);
    assert_eq!(reply.status, 200, "aud array / big token: {reply:#?}");

    // Scopes: demo:read cannot POST; demo:write can.
    let auth = bearer(&token);
    let reply = stack.post("/v1/hello", &[("authorization", auth.as_str())]);
    assert_denied(
        &reply,
        403,
        Some("error=\"insufficient_scope\""),
        Some(&token),
    );
    let writer = idp.sign(&idp.claims("carol@idp", "demo:write"));
    let auth = bearer(&writer);
    let reply = stack.post("/v1/hello", &[("authorization", auth.as_str())]);
    assert_eq!(reply.status, 200, "demo:write IdP token POST: {reply:#?}");
    assert_eq!(reply.json()["method"], "POST");

    // Claim attacks, each signed with the IdP's real key.
    let now = now_s();
    let variant = |edit: &dyn Fn(&mut Value)| {
        let mut claims = idp.claims("mallory@idp", "demo:read");
        edit(&mut claims);
        idp.sign(&claims)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired (beyond the 60 s leeway)",
            variant(&|c| {
                c["iat"] = json!(now - 7200);
                c["exp"] = json!(now - 3600)
            }),
            "jwt_expired",
        ),
        (
            "nbf in the future",
            variant(&|c| c["nbf"] = json!(now + 3600)),
            "jwt_not_yet_valid",
        ),
        (
            "iat in the future",
            variant(&|c| c["iat"] = json!(now + 3600)),
            "jwt_issued_in_future",
        ),
        (
            "no exp",
            variant(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
            "jwt_missing_exp",
        ),
        (
            "lifetime beyond max_lifetime_seconds",
            variant(&|c| c["exp"] = json!(now + 7 * 86400)),
            "jwt_lifetime_too_long",
        ),
        (
            "unconfigured iss",
            variant(&|c| c["iss"] = json!("https://evil.example.com/")),
            "jwt_wrong_issuer",
        ),
        (
            "iss without the trailing slash",
            variant(&|c| c["iss"] = json!("https://idp.example.com")),
            "jwt_wrong_issuer",
        ),
        (
            "no iss",
            variant(&|c| {
                c.as_object_mut().map(|o| o.remove("iss"));
            }),
            "jwt_wrong_issuer",
        ),
        // iss names the key service's issuer, but the IdP's kid is not in its JWKS.
        (
            "iss of the other issuer",
            variant(&|c| c["iss"] = json!(SERVICE_ISSUER)),
            "jwt_unknown_kid",
        ),
        (
            "no aud",
            variant(&|c| {
                c.as_object_mut().map(|o| o.remove("aud"));
            }),
            "jwt_wrong_audience",
        ),
        (
            "foreign aud",
            variant(&|c| c["aud"] = json!("api://someone-else")),
            "jwt_wrong_audience",
        ),
        (
            "no sub",
            variant(&|c| {
                c.as_object_mut().map(|o| o.remove("sub"));
            }),
            "jwt_missing_subject",
        ),
        (
            "typ JWT (an ID token, say)",
            idp.sign_typ("JWT", &idp.claims("mallory@idp", "demo:read")),
            "jwt_wrong_type",
        ),
        (
            "exp as a string",
            variant(&|c| c["exp"] = json!((now + 600).to_string())),
            "jwt_bad_claim",
        ),
    ];
    for (label, token, counter) in &cases {
        refused(&stack, label, token, 401, "invalid_token", counter);
        idp_still_serving(&stack, &good, label);
    }
    // Tampering with a good token.
    let (h, p, s) = segments(&token);
    let mut upgraded = claims.clone();
    upgraded["scope"] = json!("demo:read demo:write");
    let tampered_payload = format!("{h}.{}.{s}", b64(upgraded.to_string().as_bytes()));
    let mut sig = unb64(&s);
    sig[10] ^= 0x01;
    let tampered_signature = format!("{h}.{p}.{}", b64(&sig));
    let header_no_typ = format!(
        "{}.{p}.{s}",
        b64(json!({"alg": "ES256", "kid": IDP_KID})
            .to_string()
            .as_bytes())
    );
    for (label, token) in [
        ("tampered payload", tampered_payload),
        ("tampered signature", tampered_signature),
        ("re-encoded header", header_no_typ),
    ] {
        refused(
            &stack,
            label,
            &token,
            401,
            "invalid_token",
            "jwt_bad_signature",
        );
        idp_still_serving(&stack, &good, label);
    }

    // revocation "none": none of the IdP's tokens cost a key-service lookup.
    assert_eq!(
        stack.service.lookups(),
        lookups_before,
        "an issuer with revocation=none caused key-service lookups"
    );
    // Both issuers side by side: a service-minted JWT key still works (and is looked up).
    let service_key = stack
        .service
        .create_jwt_key("svc", &["demo:read"], "ES256", 3600);
    still_serving(&stack, &service_key, "the IdP's tokens");
    assert!(stack.service.lookups() > lookups_before);
}

// ── revocation and rotation ──────────────────────────────────────────────────────────────────

#[test]
fn revoked_jwt_key_is_refused_after_the_cache_ttl() {
    let stack = Stack::start_with("jwt-revoke", |cfg| cfg["cache"]["ttl_seconds"] = json!(1));
    wait_jwt_ready(&stack);
    let issued = stack
        .service
        .create_jwt_key("soon-revoked", &["demo:read"], "ES256", 3600);
    let keep = stack
        .service
        .create_jwt_key("kept", &["demo:read"], "ES256", 3600);
    still_serving(&stack, &issued, "nothing");
    still_serving(&stack, &keep, "nothing");
    let revoked_before = stack.envoy.keygate_counter("denied.revoked");
    stack.service.revoke(&issued.id);
    let reply = poll_status(
        &stack,
        "/v1/hello",
        &issued.key,
        401,
        Duration::from_secs(6),
    );
    assert_denied(
        &reply,
        401,
        Some("error=\"invalid_token\""),
        Some(&issued.key),
    );
    assert!(
        stack.envoy.keygate_counter("denied.revoked") > revoked_before,
        "revoked JWT refused, but not counted as revoked; keygate stats:\n{}",
        stack.envoy.keygate_stats()
    );
    // It stays refused on both workers (the verified-token cache does not bypass revocation),
    // and other keys are unaffected. The worker that follows the feed refuses first; the
    // other picks the revoked set up on its next tick (10 ms), so give it a few.
    sleep(Duration::from_millis(100));
    for _ in 0..4 {
        let reply = stack.get_with_key("/v1/hello", &issued.key);
        assert_denied(
            &reply,
            401,
            Some("error=\"invalid_token\""),
            Some(&issued.key),
        );
        still_serving(&stack, &keep, "a revocation");
    }
}

#[test]
fn signing_key_rotation_keeps_old_tokens_and_new_kids_work_on_first_use() {
    let stack = Stack::start_with("jwt-rotate", |cfg| {
        service_issuer(cfg)["jwks"]["remote"]["min_refetch_seconds"] = json!(1)
    });
    let first_fetch = wait_jwt_ready(&stack);
    let token_a = stack
        .service
        .create_jwt_key("a", &["demo:read"], "ES256", 3600);
    // Minted before the rotation, first presented after it.
    let token_a2 = stack
        .service
        .create_jwt_key("a2", &["demo:read"], "ES256", 3600);
    let old_kid = header_of(&token_a.key)["kid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    still_serving(&stack, &token_a, "nothing");

    let new_kid = stack.service.rotate_signing_key("ES256");
    assert_ne!(new_kid, old_kid);
    let published: Vec<String> = stack.service.jwks()["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        published.contains(&old_kid) && published.contains(&new_kid),
        "after rotation the JWKS must list the old and the new kid: {published:?}"
    );
    // The new key is published at once but signs only after the publish delay (10 s): until
    // then the old key goes on signing, so no filter meets the new kid before it may refetch.
    let token_old_kid = stack
        .service
        .create_jwt_key("b0", &["demo:read"], "ES256", 3600);
    assert_eq!(header_of(&token_old_kid.key)["kid"], old_kid.as_str());
    still_serving(
        &stack,
        &token_old_kid,
        "the rotation, before the new key signs",
    );
    let mut token_b = None;
    let signs = wait_until(Duration::from_secs(30), || {
        let token = stack
            .service
            .create_jwt_key("b", &["demo:read"], "ES256", 3600);
        let new = header_of(&token.key)["kid"] == new_kid.as_str();
        token_b = Some(token);
        new || {
            sleep(Duration::from_millis(500));
            false
        }
    });
    assert!(signs, "the rotated signing key never started signing");
    let token_b = token_b.expect("minted");

    // First use of the new kid: the filter refetches the JWKS while the request waits
    // (min_refetch_seconds must have passed since the start-up fetch).
    sleep(Duration::from_millis(1200).saturating_sub(first_fetch.elapsed()));
    let refreshed = stack.envoy.keygate_counter("jwks_refreshed");
    let reply = stack.get_with_key("/v1/hello", &token_b.key);
    assert_eq!(
        reply.status,
        200,
        "a token under the new kid was refused on first use: {reply:#?}\nkeygate stats:\n{}",
        stack.envoy.keygate_stats()
    );
    assert_forwarded_with_identity(&reply, &token_b.id);
    assert_eq!(
        stack.envoy.keygate_counter("jwks_refreshed"),
        refreshed + 1,
        "the new kid should have caused exactly one refetch"
    );
    for token in [&token_b, &token_a, &token_a2, &token_a] {
        still_serving(&stack, token, "the signing-key rotation");
    }

    // The first EdDSA token works on first use too (its key was published at start).
    let eddsa = stack
        .service
        .create_jwt_key("ed", &["demo:read"], "EdDSA", 3600);
    let reply = stack.get_with_key("/v1/hello", &eddsa.key);
    assert_eq!(
        reply.status, 200,
        "a token of a newly created EdDSA signing key was refused on first use: {reply:#?}"
    );
    for token in [&token_a, &token_a2, &token_b, &eddsa] {
        still_serving(&stack, token, "the EdDSA key");
    }
}

// ── limits and namespaces of outside issuers ─────────────────────────────────────────────────

/// Gives every route with scopes the default limit `{rps, burst}`.
fn with_route_default(cfg: &mut Value, rps: f64, burst: u32) {
    for route in cfg["routes"].as_array_mut().expect("routes") {
        if route.get("scopes").is_some() {
            route["rate_limit"] = json!({"requests_per_second": rps, "burst": burst});
        }
    }
}

/// Tokens without a Keygate key id (an outside issuer's, with or without `jti`) draw from
/// the route's default limit, one bucket per issuer and subject.
#[test]
fn route_default_limits_tokens_without_a_key_id() {
    let idp = Idp::new();
    let stack = Stack::start_with("jwt-route-limit", |cfg| {
        with_idp_issuer(&idp)(cfg);
        with_route_default(cfg, 1.0, 3);
    });
    wait_jwt_ready(&stack);
    let started = Instant::now();
    // Eight different tokens of one subject: half without jti, half with their own.
    let replies: Vec<Reply> = (0..8)
        .map(|n| {
            let mut claims = idp.claims("dave@idp", "demo:read");
            claims["nonce"] = json!(n);
            if n % 2 == 0 {
                claims.as_object_mut().map(|c| c.remove("jti"));
            }
            stack.get_with_key("/v1/hello", &idp.sign(&claims))
        })
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        allowed + limited.len(),
        8,
        "statuses besides 200/429: {replies:#?}"
    );
    let bound = 3 + elapsed.floor() as usize;
    assert!(
        (3..=bound).contains(&allowed),
        "{allowed} of 8 tokens of one subject allowed in {elapsed:.2} s (burst 3, 1/s): \
         the route default does not hold for tokens without a key id\n{}",
        stack.envoy.keygate_stats()
    );
    for reply in limited {
        assert_denied(reply, 429, None, None);
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"keygate\";q=3;w=3"),
            "{reply:#?}"
        );
    }
    // Another subject of the same issuer has its own bucket.
    let other = idp.sign(&idp.claims("erin@idp", "demo:read"));
    assert_forwarded_with_outside_identity(&stack.get_with_key("/v1/hello", &other), IDP_ISSUER);
}

/// An outside token whose `sub` and `jti` spell a Keygate key's owner and id is not that key:
/// not in the identity headers, not in its rate-limit bucket.
#[test]
fn outside_tokens_never_pass_for_keygate_keys() {
    let idp = Idp::new();
    let stack = Stack::start_with("jwt-namespaces", |cfg| {
        with_idp_issuer(&idp)(cfg);
        with_route_default(cfg, 1.0, 3);
    });
    wait_jwt_ready(&stack);
    let key = stack.service.create_key_from(&json!({
        "name": "victim", "scopes": ["demo:read"], "owner": "team-x",
        "rate_limit": {"requests_per_second": 0.1, "burst": 2},
    }));
    // The Keygate key: its identity says so, whatever the client sent.
    let auth = bearer(&key.key);
    let reply = stack.get(
        "/v1/hello",
        &[
            ("authorization", auth.as_str()),
            ("x-keygate-issuer", "https://idp.example.com/"),
        ],
    );
    let upstream = assert_forwarded_with_identity(&reply, &key.id);
    assert_eq!(upstream_str(&upstream, "x-keygate-issuer"), "keygate");
    // Its bucket (burst 2) is now empty.
    assert_eq!(stack.get_with_key("/v1/hello", &key.key).status, 200);
    let reply = stack.get_with_key("/v1/hello", &key.key);
    assert_denied(&reply, 429, None, Some(&key.key));

    for sub in [key.id.as_str(), "team-x"] {
        let mut claims = idp.claims(sub, "demo:read");
        claims["jti"] = json!(key.id);
        let token = idp.sign(&claims);
        let reply = stack.get_with_key("/v1/hello", &token);
        assert_eq!(
            reply.status, 200,
            "an IdP token with sub {sub:?} and the key's id as jti shares the key's bucket: \
             {reply:#?}"
        );
        let upstream = assert_forwarded_with_outside_identity(&reply, IDP_ISSUER);
        assert_eq!(upstream_str(&upstream, "x-keygate-subject"), sub);
    }
    // The key itself is still limited.
    let reply = stack.get_with_key("/v1/hello", &key.key);
    assert_denied(&reply, 429, None, Some(&key.key));
}

/// A JWKS served by the test, changed at will: the Envoy cluster `test_jwks` points at it.
struct JwksServer {
    port: u16,
    body: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the JWKS server");
        let port = listener.local_addr().expect("JWKS server address").port();
        let body = Arc::new(Mutex::new(body));
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopped) = (Arc::clone(&body), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                // Read the request head (a GET without a body), then answer and close.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let body = served.lock().map(|b| b.clone()).unwrap_or_default();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer { port, body, stop }
    }

    fn serve(&self, body: String) {
        *self.body.lock().expect("JWKS body lock") = body;
    }

    /// The Envoy cluster for this server, as a YAML list item under `clusters:`.
    fn cluster_yaml(&self) -> String {
        format!(
            "  - name: test_jwks\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: test_jwks\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {} }}\n",
            self.port
        )
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A verified token cached by every worker is refused once its signing key leaves the
/// issuer's JWKS (not only when the token expires).
#[test]
fn cached_tokens_die_with_their_signing_key() {
    const ISSUER: &str = "https://rotating-idp.example/";
    let (old_key, new_key) = (es256_key(), es256_key());
    let jwks = |key: &SigningKey, kid: &str| json!({"keys": [key.public_jwk(kid)]}).to_string();
    let server = JwksServer::start(jwks(&old_key, "old"));
    let stack = Stack::start_with_yaml(
        "jwt-removed-kid",
        |cfg| {
            cfg["jwt"]["issuers"]
                .as_array_mut()
                .expect("jwt.issuers")
                .push(json!({
                    "issuer": ISSUER,
                    "algorithms": ["ES256"],
                    "jwks": {"remote": {
                        "cluster": "test_jwks", "path": "/jwks.json",
                        "refresh_seconds": 3600, "min_refetch_seconds": 1, "timeout_ms": 2000,
                    }},
                }));
        },
        |yaml| {
            assert_eq!(
                yaml.matches("\n  clusters:\n").count(),
                1,
                "envoy.yaml clusters"
            );
            yaml.replacen(
                "\n  clusters:\n",
                &format!("\n  clusters:\n{}", server.cluster_yaml()),
                1,
            )
        },
    );
    let token = |key: &SigningKey, kid: &str| {
        let now = now_s();
        let claims = json!({
            "iss": ISSUER, "sub": "frank", "scope": "demo:read",
            "iat": now, "exp": now + 600,
        });
        key.sign(kid, "at+jwt", &claims).expect("signing")
    };
    let old_token = token(&old_key, "old");
    let reply = poll_status(
        &stack,
        "/v1/hello",
        &old_token,
        200,
        Duration::from_secs(15),
    );
    assert_eq!(reply.status, 200, "the first key's token: {reply:#?}");
    // Both workers verify and cache it.
    for _ in 0..20 {
        assert_eq!(stack.get_with_key("/v1/hello", &old_token).status, 200);
    }

    // The issuer drops the old key; the first token of the new one makes the filter refetch.
    server.serve(jwks(&new_key, "new"));
    let new_token = token(&new_key, "new");
    let reply = poll_status(
        &stack,
        "/v1/hello",
        &new_token,
        200,
        Duration::from_secs(15),
    );
    assert_eq!(reply.status, 200, "the new key's token: {reply:#?}");

    // Every worker picks the new JWKS up on its next tick and forgets the old key's tokens.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused_in_a_row = 0;
    let mut last = None;
    while refused_in_a_row < 12 {
        assert!(
            Instant::now() < deadline,
            "the token of a removed signing key still passes: {last:#?}\n{}",
            stack.envoy.keygate_stats()
        );
        let reply = stack.get_with_key("/v1/hello", &old_token);
        if reply.status == 401 {
            assert_denied(
                &reply,
                401,
                Some("error=\"invalid_token\""),
                Some(&old_token),
            );
            refused_in_a_row += 1;
        } else {
            refused_in_a_row = 0;
            sleep(Duration::from_millis(100));
        }
        last = Some(reply);
    }
    assert_eq!(stack.get_with_key("/v1/hello", &new_token).status, 200);
}

/// A token of an algorithm the service has not signed with yet, minted right after another
/// algorithm's first use, is accepted at once: every algorithm's key is published from the
/// service's start, before its first token, so the filter never meets an unknown kid.
#[test]
fn each_algorithms_first_token_is_accepted_at_once() {
    let stack = Stack::start("jwt-first-use");
    wait_jwt_ready(&stack);
    let fetches = jwks_fetches(&stack);
    for alg in ["ES256", "RS256", "EdDSA"] {
        let name = format!("first-{}", alg.to_ascii_lowercase());
        let issued = stack
            .service
            .create_jwt_key(&name, &["demo:read"], alg, 3600);
        let reply = stack.get_with_key("/v1/hello", &issued.key);
        assert_eq!(
            reply.status,
            200,
            "the first {alg} token was refused: {reply:#?}\nkeygate stats:\n{}",
            stack.envoy.keygate_stats()
        );
        assert_forwarded_with_identity(&reply, &issued.id);
    }
    assert_eq!(stack.envoy.keygate_counter("denied.jwt_unknown_kid"), 0);
    assert_eq!(
        jwks_fetches(&stack),
        fetches,
        "no refetch was needed: the JWKS of the start held every kid"
    );
}
