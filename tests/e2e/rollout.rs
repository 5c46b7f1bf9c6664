//! Rolling out through a real Envoy (2 workers): shadow mode (global and per route), legacy keys
//! imported through the REST API, and policy from Envoy route metadata and route names.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use keygate_testkit::{admin_send, unix_now, with_routes_before_catch_all};
use keygate_testkit::{assert_denied, assert_forwarded_with_identity};
use keygate_testkit::{bearer, poll, random_hex, KeyService, Reply, Stack};

const DECISION: &str = "x-keygate-decision";

fn decision(reply: &Reply) -> String {
    reply
        .upstream_headers()
        .get(DECISION)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {DECISION} upstream: {reply:#?}"))
        .to_string()
}

/// Sum of every `wasmcustom.keygate.denied.*` counter.
fn enforced_denials(stack: &Stack) -> u64 {
    stack
        .envoy
        .stats()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.trim().starts_with("wasmcustom.keygate.denied."))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

// ── 6. shadow mode ───────────────────────────────────────────────────────────────────────────

#[test]
fn shadow_mode() {
    let stack = Stack::start_with("shadow", |cfg| cfg["mode"] = json!("shadow"));
    let valid = stack.service.create_key("shadow-valid", &["demo:read"]);
    let revoked = stack.service.create_key("shadow-revoked", &["demo:read"]);
    stack.service.revoke(&revoked.id);
    // A correctly shaped key from another deployment: its HMAC tag is wrong for this gateway.
    let mut other = KeyService::start(
        &stack.dir.path().join("other-service"),
        &random_hex(32),
        &random_hex(32),
    );
    other.wait_ready();
    let forged = other.create_key("forged", &["demo:read"]).key;
    other.stop();

    let missing_before = stack
        .envoy
        .keygate_counter("shadow.denied.missing_credential");
    let revoked_before = stack.envoy.keygate_counter("shadow.denied.revoked");
    let forged_before = stack.envoy.keygate_counter("shadow.denied.forged_key");
    let allowed_before = stack.envoy.keygate_counter("shadow.allowed");
    let denials_before = enforced_denials(&stack);

    // No key (and a client-sent decision header that must not survive).
    let reply = stack.get("/v1/s", &[(DECISION, "allow")]);
    assert_eq!(
        reply.status, 200,
        "shadow mode denied a request: {reply:#?}"
    );
    assert_eq!(
        decision(&reply),
        "deny; status=401; reason=missing_credential"
    );

    let reply = stack.get_with_key("/v1/s", &revoked.key);
    assert_eq!(
        reply.status, 200,
        "shadow mode denied a revoked key: {reply:#?}"
    );
    assert_eq!(decision(&reply), "deny; status=401; reason=revoked");

    let reply = stack.get_with_key("/v1/s", &forged);
    assert_eq!(
        reply.status, 200,
        "shadow mode denied a forged key: {reply:#?}"
    );
    assert_eq!(decision(&reply), "deny; status=401; reason=forged_key");

    // A valid key: allowed, identity added, and the credential left for the upstream.
    let auth = bearer(&valid.key);
    let reply = stack.get("/v1/s", &[("authorization", auth.as_str())]);
    assert_eq!(decision(&reply), "allow");
    let upstream = reply.upstream_headers();
    assert_eq!(
        upstream.get("x-keygate-key-id").and_then(Value::as_str),
        Some(valid.id.as_str()),
        "{upstream:#?}"
    );
    for name in ["x-keygate-subject", "x-keygate-scopes"] {
        assert!(
            upstream.contains_key(name),
            "no {name} upstream: {upstream:#?}"
        );
    }
    assert_eq!(
        upstream.get("authorization").and_then(Value::as_str),
        Some(auth.as_str()),
        "shadow mode must leave the credential in place: {upstream:#?}"
    );

    // Would-be denial of a POST without demo:write: 403 insufficient_scope reported.
    let reply = stack.post("/v1/s", &[("authorization", auth.as_str())]);
    assert_eq!(
        decision(&reply),
        "deny; status=403; reason=insufficient_scope"
    );

    let counters = [
        ("shadow.denied.missing_credential", missing_before),
        ("shadow.denied.revoked", revoked_before),
        ("shadow.denied.forged_key", forged_before),
        ("shadow.allowed", allowed_before),
    ];
    for (name, before) in counters {
        assert!(
            stack.envoy.keygate_counter(name) > before,
            "{name} did not increase\n{}",
            stack.envoy.keygate_stats()
        );
    }
    assert_eq!(
        enforced_denials(&stack),
        denials_before,
        "shadow mode counted enforced denials (denied.*)\n{}",
        stack.envoy.keygate_stats()
    );
    let log = std::fs::read_to_string(&stack.envoy.proc.log).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("shadow: would deny") && l.contains("reason=revoked")),
        "no `shadow: would deny ... reason=revoked` line in the Envoy log"
    );
}

#[test]
fn shadow_mode_per_route() {
    let stack = Stack::start_with("shadow-route", |cfg| {
        let routes = cfg["routes"].as_array_mut().expect("routes");
        routes.insert(
            0,
            json!({"prefix": "/shadow/", "scopes": ["demo:read"], "mode": "shadow"}),
        );
    });
    let before = stack.envoy.keygate_counter("denied.missing_credential");
    let reply = stack.get("/shadow/x", &[]);
    assert_eq!(reply.status, 200, "the shadow route denied: {reply:#?}");
    assert_eq!(
        decision(&reply),
        "deny; status=401; reason=missing_credential"
    );
    let reply = stack.get("/v1/x", &[]);
    assert_denied(&reply, 401, Some("Bearer realm="), None);
    assert_eq!(
        stack.envoy.keygate_counter("denied.missing_credential"),
        before + 1,
        "only the enforced route counts denied.missing_credential\n{}",
        stack.envoy.keygate_stats()
    );
    // An enforced route never carries a decision header upstream.
    let key = stack.service.create_key("per-route", &["demo:read"]);
    let upstream = assert_forwarded_with_identity(&stack.get_with_key("/v1/x", &key.key), &key.id);
    assert!(!upstream.contains_key(DECISION), "{upstream:#?}");
}

// ── 7. legacy keys ───────────────────────────────────────────────────────────────────────────

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn import(service: &KeyService, file: &str) -> Value {
    let reply = admin_send(
        service,
        "POST",
        "/api/v1/auth/keys/import?format=json",
        Some(file),
        "application/json",
    );
    assert_eq!(reply.status, 200, "import: {reply:?}");
    reply.json()
}

#[test]
fn legacy_keys() {
    let stack = Stack::start_with("legacy", |cfg| {
        cfg["legacy_keys"] = json!({"header": "x-legacy-key", "prefixes": ["sk_old_"]});
        cfg["usage"] = json!({"enabled": true, "flush_seconds": 1});
    });
    let from = unix_now() - 120;
    let plain = format!("legacy-{}", random_hex(20));
    let hashed_plain = format!("sk_old_{}", random_hex(20));
    let file = json!([
        {"name": "old-plain", "owner": "old-owner", "scopes": ["demo:read"], "key": plain},
        {"name": "old-hashed", "owner": "old-owner", "scopes": ["demo:read"], "sha256": sha256_hex(&hashed_plain)},
    ])
    .to_string();
    let report = import(&stack.service, &file);
    assert_eq!(report["created"], 2, "{report}");
    assert_eq!(report["errors"], json!([]), "{report}");
    assert!(
        !report.to_string().contains(&plain),
        "the import answer echoes a key"
    );
    let id_of = |row: u64| -> String {
        report["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["row"] == row))
            .and_then(|k| k["id"].as_str())
            .unwrap_or_else(|| panic!("no key for row {row}: {report}"))
            .to_string()
    };
    let (plain_id, hashed_id) = (id_of(1), id_of(2));

    // In the legacy header: accepted, decided as the imported key, header removed upstream.
    let reply = stack.get("/v1/legacy", &[("x-legacy-key", plain.as_str())]);
    let upstream = assert_forwarded_with_identity(&reply, &plain_id);
    assert!(
        !upstream.contains_key("x-legacy-key"),
        "the legacy header reached upstream: {upstream:#?}"
    );
    // By prefix, as a bearer token.
    let reply = stack.get_with_key("/v1/legacy", &hashed_plain);
    assert_forwarded_with_identity(&reply, &hashed_id);
    // A write needs demo:write: the legacy key is decided like any key.
    let auth = bearer(&hashed_plain);
    let reply = stack.post("/v1/legacy", &[("authorization", auth.as_str())]);
    assert_denied(&reply, 403, Some("insufficient_scope"), Some(&hashed_plain));

    // Unknown legacy keys: by prefix and in the header.
    let unknown = format!("sk_old_{}", random_hex(20));
    let reply = stack.get_with_key("/v1/legacy", &unknown);
    assert_denied(&reply, 401, Some("error=\"invalid_token\""), Some(&unknown));
    let stranger = format!("whatever-{}", random_hex(10));
    let reply = stack.get("/v1/legacy", &[("x-legacy-key", stranger.as_str())]);
    assert_denied(
        &reply,
        401,
        Some("error=\"invalid_token\""),
        Some(&stranger),
    );

    // Usage shows the legacy keys in use.
    for (id, want) in [(&plain_id, 1), (&hashed_id, 1)] {
        let mut last = Value::Null;
        poll(Duration::from_secs(8), Duration::from_millis(200), || {
            let reply = stack.service.usage_reply(id, from);
            assert_eq!(reply.status, 200, "usage of {id}: {reply:?}");
            last = reply.json()["totals"].clone();
            (last["allowed"].as_u64().unwrap_or(0) >= want).then_some(())
        });
        assert_eq!(last["allowed"], want, "usage of legacy key {id}: {last}");
    }

    // Idempotent: the same file again changes nothing.
    let again = import(&stack.service, &file);
    assert_eq!(
        (&again["created"], &again["updated"], &again["unchanged"]),
        (&json!(0), &json!(0), &json!(2)),
        "re-import: {again}"
    );
    assert_eq!(id_of(1), again["keys"][0]["id"], "{again}");
}

// ── 8. route metadata and route names ────────────────────────────────────────────────────────

/// Two named Envoy routes before the catch-all: `/meta/` with `filter_metadata.keygate`, and
/// `/named/` named `orders-read` (policy from the filter's table by `route_name`).
const EXTRA_ROUTES: &str = r#"- name: meta-both
  match: { prefix: "/meta/" }
  metadata:
    filter_metadata:
      keygate: { scopes: "demo:write" }
  route: { cluster: echo, timeout: 15s }
- name: orders-read
  match: { prefix: "/named/" }
  route: { cluster: echo, timeout: 15s }
"#;

#[test]
fn route_metadata_and_route_names() {
    let stack = Stack::start_with_yaml(
        "routemeta",
        |cfg| {
            cfg["route_metadata"] = json!(true);
            let routes = cfg["routes"].as_array_mut().expect("routes");
            // Table entries that ALSO match /meta/ (by route name and by prefix) with a weaker
            // scope: route metadata must win over both (precedence: metadata > table).
            routes.insert(
                0,
                json!({"route_name": "meta-both", "scopes": ["demo:read"]}),
            );
            routes.insert(1, json!({"prefix": "/meta/", "scopes": ["demo:read"]}));
            routes.insert(
                2,
                json!({"route_name": "orders-read", "scopes": ["orders:read"]}),
            );
        },
        |yaml| with_routes_before_catch_all(yaml, EXTRA_ROUTES),
    );
    let reader = stack.service.create_key("reader", &["demo:read"]);
    let writer = stack.service.create_key("writer", &["demo:write"]);
    let orders = stack.service.create_key("orders", &["orders:read"]);

    // Metadata (demo:write) wins over the table's demo:read entries for this route.
    let reply = stack.get_with_key("/meta/x", &reader.key);
    assert_denied(
        &reply,
        403,
        Some("error=\"insufficient_scope\""),
        Some(&reader.key),
    );
    let www = reply.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("demo:write"), "challenge scope: {www:?}");
    assert_forwarded_with_identity(&stack.get_with_key("/meta/x", &writer.key), &writer.id);
    assert_denied(&stack.get("/meta/x", &[]), 401, Some("Bearer realm="), None);

    // The route name picks the table entry; path-based entries do not match /named/.
    assert_forwarded_with_identity(&stack.get_with_key("/named/x", &orders.key), &orders.id);
    let reply = stack.get_with_key("/named/x", &reader.key);
    assert_denied(
        &reply,
        403,
        Some("error=\"insufficient_scope\""),
        Some(&reader.key),
    );
    let www = reply.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("orders:read"), "challenge scope: {www:?}");

    // The catch-all still follows the table.
    assert_forwarded_with_identity(&stack.get_with_key("/v1/x", &reader.key), &reader.id);
}
