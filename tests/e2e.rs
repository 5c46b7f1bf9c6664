//! End-to-end tests: requests through a real Envoy running `keygate.wasm`, a real key service
//! and an echo upstream. Each test starts its own stack on free ports (see `support`).
//!
//! Needs the built binaries: `make test` builds them and passes their paths in `KEYGATE_WASM`,
//! `KEYGATE_BIN` and `ENVOY_BIN`. JWT credentials are tested in `e2e/jwt.rs` (same binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Child modules of this crate root resolve next to it (`tests/`), where cargo would also take
// `jwt.rs` for a test binary of its own: hence the explicit path.
#[path = "e2e/alerts.rs"]
mod alerts;
#[path = "e2e/binding.rs"]
mod binding;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/dashboard.rs"]
mod dashboard;
#[path = "e2e/docs.rs"]
mod docs;
#[path = "e2e/edge.rs"]
mod edge;
#[path = "e2e/feed.rs"]
mod feed;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/geo.rs"]
mod geo;
#[path = "e2e/jwt.rs"]
mod jwt;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/principals.rs"]
mod principals;
#[path = "e2e/readme.rs"]
mod readme;
#[path = "e2e/roles.rs"]
mod roles;
#[path = "e2e/rollout.rs"]
mod rollout;
#[path = "e2e/signatures.rs"]
mod signatures;
#[path = "e2e/threat.rs"]
mod threat;
#[path = "e2e/tls.rs"]
mod tls;
#[path = "e2e/usage.rs"]
mod usage;

use std::fs;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_testkit::{
    assert_denied, assert_forwarded_with_identity, bearer, envoy_bin, parse_counter, poll_status,
    project_root, random_hex, send_raw, wasm_path, KeyService, Stack, TempDir, KEY_PREFIX,
};
use serde_json::{json, Value};

/// The key with one base32 character in its secret changed: the checksum no longer matches.
fn mistyped(key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let at = KEY_PREFIX.len() + 40;
    assert!(chars.len() > at, "key too short to mistype: {key}");
    chars[at] = if chars[at] == 'a' { 'b' } else { 'a' };
    chars.into_iter().collect()
}

// ── configuration ────────────────────────────────────────────────────────────────────────────

#[test]
fn envoy_yaml_passes_envoy_validate() {
    let wasm = wasm_path();
    let default_wasm = project_root().join("target/wasm32-wasip1/release/keygate.wasm");
    assert!(
        default_wasm.is_file(),
        "envoy/envoy.yaml refers to {} (relative to the project root), which is missing; run `make wasm` (KEYGATE_WASM={})",
        default_wasm.display(),
        wasm.display()
    );
    let output = Command::new(envoy_bin())
        .current_dir(project_root())
        .args([
            "--mode",
            "validate",
            "-c",
            "envoy/envoy.yaml",
            "--disable-hot-restart",
            "-l",
            "info",
        ])
        .env("KEYGATE_GATEWAY_KEY", random_hex(32))
        .env("KEYGATE_SERVICE_TOKEN", random_hex(32))
        .output()
        .expect("running envoy --mode validate");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "envoy --mode validate envoy/envoy.yaml failed:\n{log}"
    );
    assert!(
        log.contains("configuration 'envoy/envoy.yaml' OK"),
        "validate did not say OK:\n{log}"
    );
}

#[test]
fn envoy_refuses_a_bad_plugin_config() {
    // An unknown route field type: the filter must refuse the configuration at load, and with
    // failure_policy FAIL_CLOSED Envoy refuses to start with it.
    let dir = TempDir::new("badconfig");
    let mut plugin = keygate_testkit::default_plugin_config();
    plugin["routes"] = json!("not a list");
    let ports = keygate_testkit::Ports {
        listener: 1,
        admin: 2,
        service: 3,
        echo: 4,
    };
    let config = keygate_testkit::render_envoy_config(ports, &wasm_path(), &plugin);
    let path = dir.path().join("envoy.yaml");
    fs::write(&path, config).unwrap();
    let output = Command::new(envoy_bin())
        .current_dir(project_root())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "info",
            "-c",
        ])
        .arg(&path)
        .env("KEYGATE_GATEWAY_KEY", random_hex(32))
        .env("KEYGATE_SERVICE_TOKEN", random_hex(32))
        .output()
        .expect("running envoy --mode validate");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "Envoy accepted a plugin config with `routes: \"not a list\"`:\n{log}"
    );
    // DESIGN: "Bad configuration is refused at load ... with a log line that names the field."
    let filter_lines: Vec<&str> = log.lines().filter(|l| l.contains("wasm log")).collect();
    let refusal = filter_lines.join("\n");
    assert!(
        filter_lines.iter().any(|l| l.contains("routes")),
        "the refusal does not name the field `routes`; filter said:\n{refusal}"
    );
}

// ── allow path ───────────────────────────────────────────────────────────────────────────────

#[test]
fn valid_key_is_forwarded_with_identity_and_without_credentials() {
    let stack = Stack::start("allow");
    let issued = stack.service.create_key("reader", &["demo:read"]);
    assert!(
        issued.key.starts_with(KEY_PREFIX),
        "unexpected key shape: {}",
        issued.key
    );
    assert_eq!(
        issued.raw["scopes"],
        json!(["demo:read"]),
        "create response: {}",
        issued.raw
    );
    assert!(
        issued.raw["status"].is_string(),
        "create response: {}",
        issued.raw
    );

    // Authorization: Bearer, plus a spoofed identity header that must not survive.
    let auth = bearer(&issued.key);
    let reply = stack.get(
        "/v1/hello?x=1",
        &[
            ("authorization", auth.as_str()),
            ("x-keygate-subject", "evil"),
            ("x-keygate-scopes", "admin:all"),
        ],
    );
    let upstream = assert_forwarded_with_identity(&reply, &issued.id);
    assert_ne!(
        upstream["x-keygate-subject"].as_str(),
        Some("evil"),
        "client-sent subject survived: {upstream:#?}"
    );
    let scopes = upstream["x-keygate-scopes"].as_str().unwrap_or_default();
    assert_eq!(
        scopes.split(' ').collect::<Vec<_>>(),
        ["demo:read"],
        "x-keygate-scopes: {scopes:?}"
    );
    assert_eq!(reply.upstream_path(), "/v1/hello?x=1");
    for (name, value) in &upstream {
        assert!(
            !(name.starts_with("x-keygate-")
                && value
                    .as_str()
                    .is_some_and(|v| v.contains("evil") || v.contains("admin:all"))),
            "client-sent {name} reached upstream: {upstream:#?}"
        );
    }

    // x-api-key, on fresh connections (both workers), several times (cache hits).
    for _ in 0..4 {
        let reply = stack.get("/v1/hello", &[("x-api-key", issued.key.as_str())]);
        assert_forwarded_with_identity(&reply, &issued.id);
    }
}

#[test]
fn public_route_needs_no_key_and_unlisted_route_is_denied() {
    let stack = Stack::start("routes");
    let reply = stack.get("/public/hello", &[("x-keygate-subject", "evil")]);
    assert_eq!(reply.status, 200, "public route: {reply:#?}");
    let upstream = reply.upstream_headers();
    assert_ne!(
        upstream.get("x-keygate-subject").and_then(Value::as_str),
        Some("evil"),
        "a client-sent x-keygate-subject reached upstream on a public route: {upstream:#?}"
    );

    // Not in the route table: denied, with or without a key.
    assert_denied(&stack.get("/admin", &[]), 403, None, None);
    let issued = stack
        .service
        .create_key("everything", &["demo:read", "demo:write"]);
    let reply = stack.get_with_key("/admin", &issued.key);
    assert_denied(&reply, 403, None, Some(&issued.key));
}

// ── deny path ────────────────────────────────────────────────────────────────────────────────

#[test]
fn no_key_is_401_with_bearer_challenge() {
    let stack = Stack::start("nokey");
    let reply = stack.get("/v1/hello", &[]);
    assert_denied(&reply, 401, Some("Bearer realm="), None);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap_or_default()
            .contains("realm=\"keygate\""),
        "realm: {reply:#?}"
    );
}

#[test]
fn forged_and_mistyped_keys_are_refused_without_a_callout() {
    let stack = Stack::start("forged");
    let real = stack.service.create_key("real", &["demo:read"]);

    // A second key service with ANOTHER gateway key mints a correctly shaped key (same prefix,
    // valid checksum) whose HMAC tag is wrong for our gateway.
    let other_dir = stack.dir.path().join("other-service");
    let mut other = KeyService::start(&other_dir, &random_hex(32), &random_hex(32));
    other.wait_ready();
    let forged = other.create_key("forged", &["demo:read"]).key;
    other.stop();
    assert!(
        forged.starts_with(KEY_PREFIX) && forged.len() == real.key.len(),
        "forgery shape: {forged}"
    );

    let typo = mistyped(&real.key);
    let lookups_before = stack.service.lookups();
    for _ in 0..3 {
        for bad in [&forged, &typo] {
            let reply = stack.get_with_key("/v1/hello", bad);
            assert_denied(&reply, 401, Some("error=\"invalid_token\""), Some(bad));
            let reply = stack.get("/v1/hello", &[("x-api-key", bad.as_str())]);
            assert_denied(&reply, 401, Some("error=\"invalid_token\""), Some(bad));
        }
    }
    let lookups_after = stack.service.lookups();
    assert_eq!(
        lookups_before, lookups_after,
        "forged/mistyped keys caused key-service lookups ({lookups_before} → {lookups_after})"
    );

    // Control: the real key's first use does cost a lookup (so the counter above is live).
    assert_eq!(stack.get_with_key("/v1/hello", &real.key).status, 200);
    assert!(
        stack.service.lookups() > lookups_after,
        "the real key's first use made no lookup: /v1/stats does not count lookups"
    );
}

#[test]
fn unknown_key_with_a_valid_tag_is_looked_up_once_and_refused() {
    let stack = Stack::start("unknown");
    // Another key service with the SAME gateway key mints a key our service never issued:
    // it passes the offline checks, so only a lookup can refuse it.
    let mut twin = KeyService::start(
        &stack.dir.path().join("twin-service"),
        &fs::read_to_string(stack.dir.path().join("gateway.key")).unwrap(),
        &random_hex(32),
    );
    twin.wait_ready();
    let stranger = twin.create_key("stranger", &["demo:read"]);
    twin.stop();

    let before = stack.service.lookups();
    let reply = stack.get_with_key("/v1/hello", &stranger.key);
    assert_denied(
        &reply,
        401,
        Some("error=\"invalid_token\""),
        Some(&stranger.key),
    );
    let after_first = stack.service.lookups();
    assert!(
        after_first > before,
        "an unknown key was refused without asking the key service"
    );
    // Within negative_ttl_seconds (5 s) the "unknown" answer comes from the cache.
    for _ in 0..4 {
        let reply = stack.get_with_key("/v1/hello", &stranger.key);
        assert_denied(
            &reply,
            401,
            Some("error=\"invalid_token\""),
            Some(&stranger.key),
        );
    }
    assert_eq!(
        stack.service.lookups(),
        after_first,
        "unknown-key answers were not cached (negative TTL): each retry cost a lookup"
    );
}

#[test]
fn missing_scope_is_403_insufficient_scope() {
    let stack = Stack::start("scope");
    let reader = stack.service.create_key("reader", &["demo:read"]);
    assert_eq!(stack.get_with_key("/v1/x", &reader.key).status, 200);
    let auth = bearer(&reader.key);
    let reply = stack.post("/v1/x", &[("authorization", auth.as_str())]);
    assert_denied(
        &reply,
        403,
        Some("error=\"insufficient_scope\""),
        Some(&reader.key),
    );

    let writer = stack.service.create_key("writer", &["demo:write"]);
    let auth = bearer(&writer.key);
    let reply = stack.post("/v1/x", &[("authorization", auth.as_str())]);
    assert_eq!(reply.status, 200, "demo:write key POST /v1/x: {reply:#?}");
    assert_eq!(reply.json()["method"], "POST");
}

#[test]
fn revoked_key_is_refused_after_the_cache_ttl() {
    let stack = Stack::start_with("revoke", |cfg| cfg["cache"]["ttl_seconds"] = json!(1));
    let issued = stack.service.create_key("soon-revoked", &["demo:read"]);
    assert_eq!(stack.get_with_key("/v1/hello", &issued.key).status, 200);
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
    // And it stays refused on both workers, once the other worker has had time to learn it
    // too (its next tick, or at the latest its own copy's 1 s ttl).
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..4 {
        assert_eq!(stack.get_with_key("/v1/hello", &issued.key).status, 401);
    }
}

#[test]
fn expired_key_is_refused() {
    let stack = Stack::start_with("expiry", |cfg| cfg["cache"]["ttl_seconds"] = json!(1));
    let issued = stack.service.create_key_from(&json!({
        "name": "short-lived",
        "scopes": ["demo:read"],
        "expires_in": 2,
    }));
    let reply = stack.get_with_key("/v1/hello", &issued.key);
    assert_forwarded_with_identity(&reply, &issued.id);
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
}

#[test]
fn rotated_key_works_during_grace_and_old_key_stops_after() {
    let stack = Stack::start_with("rotate", |cfg| cfg["cache"]["ttl_seconds"] = json!(1));
    let old = stack.service.create_key("rotating", &["demo:read"]);
    assert_eq!(stack.get_with_key("/v1/hello", &old.key).status, 200);
    let rotated_at = Instant::now();
    let new = stack.service.rotate(&old.id, 3);
    assert_ne!(new.id, old.id, "rotation kept the key id");
    assert_ne!(new.key, old.key);

    // During the grace period, both keys work (past the 1 s cache TTL: answers come from the
    // key service, not only from the cache).
    sleep(Duration::from_millis(1300));
    assert!(
        rotated_at.elapsed() < Duration::from_millis(2500),
        "test too slow to check the grace period"
    );
    let reply = stack.get_with_key("/v1/hello", &old.key);
    assert_forwarded_with_identity(&reply, &old.id);
    let reply = stack.get_with_key("/v1/hello", &new.key);
    assert_forwarded_with_identity(&reply, &new.id);

    // After the grace period (3 s) plus the cache TTL, only the new key works.
    sleep(Duration::from_secs(3).saturating_sub(rotated_at.elapsed()));
    let reply = poll_status(&stack, "/v1/hello", &old.key, 401, Duration::from_secs(5));
    assert_denied(&reply, 401, Some("error=\"invalid_token\""), Some(&old.key));
    let reply = stack.get_with_key("/v1/hello", &new.key);
    assert_forwarded_with_identity(&reply, &new.id);
}

#[test]
fn key_service_down_cached_key_works_unknown_key_is_503() {
    let mut stack = Stack::start("down");
    let known = stack.service.create_key("known", &["demo:read"]);
    let unknown = stack.service.create_key("never-seen", &["demo:read"]);
    assert_eq!(stack.get_with_key("/v1/hello", &known.key).status, 200);
    stack.service.stop();

    for _ in 0..4 {
        let reply = stack.get_with_key("/v1/hello", &known.key);
        assert_forwarded_with_identity(&reply, &known.id);
    }
    let reply = stack.get_with_key("/v1/hello", &unknown.key);
    assert_denied(&reply, 503, None, Some(&unknown.key));
    let retry_after = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {reply:#?}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok_and(|s| s > 0),
        "Retry-After: {retry_after:?}"
    );
    let failures = stack.envoy.counter("wasmcustom.keygate.callout_failure");
    assert!(
        failures.is_some_and(|n| n >= 1),
        "callout_failure counter is {failures:?}; keygate stats:\n{}",
        stack
            .envoy
            .stats()
            .lines()
            .filter(|l| l.contains("keygate"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn malformed_credentials_are_4xx_and_the_vm_survives() {
    let stack = Stack::start("malformed");
    let issued = stack.service.create_key("ok", &["demo:read"]);
    let other = stack.service.create_key("other", &["demo:read"]);

    // Longer than max_credential_bytes (512): 10 KB.
    let huge = format!("{KEY_PREFIX}{}", "a".repeat(10 * 1024));
    let reply = stack.get_with_key("/v1/hello", &huge);
    assert_denied(&reply, 400, Some("error=\"invalid_request\""), None);

    // Two different credentials.
    let auth = bearer(&issued.key);
    let reply = stack.get(
        "/v1/hello",
        &[
            ("authorization", auth.as_str()),
            ("x-api-key", other.key.as_str()),
        ],
    );
    assert_denied(
        &reply,
        400,
        Some("error=\"invalid_request\""),
        Some(&issued.key),
    );

    // Non-ASCII / non-UTF-8 bytes in the credential (raw socket: HTTP clients refuse these).
    for credential in [&b"kg_test_\xff\xfe\x80abc"[..], "kg_test_ключ".as_bytes()] {
        for header in [&b"Authorization: Bearer "[..], b"x-api-key: "] {
            let mut request =
                b"GET /v1/hello HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n".to_vec();
            request.extend_from_slice(header);
            request.extend_from_slice(credential);
            request.extend_from_slice(b"\r\n\r\n");
            let reply = send_raw(stack.listener(), &request);
            assert!(
                (400..500).contains(&reply.status),
                "non-ASCII credential {:?} in {:?}: {reply:#?}",
                String::from_utf8_lossy(credential),
                String::from_utf8_lossy(header)
            );
        }
    }

    // The VM is alive on both workers: valid requests still pass.
    for _ in 0..4 {
        assert_forwarded_with_identity(&stack.get_with_key("/v1/hello", &issued.key), &issued.id);
    }
}

#[test]
fn query_param_credential_only_when_opted_in() {
    let stack = Stack::start("query-default");
    let issued = stack.service.create_key("q", &["demo:read"]);
    let reply = stack.get(&format!("/v1/hello?api_key={}", issued.key), &[]);
    assert_denied(&reply, 401, Some("Bearer realm="), Some(&issued.key));
    drop(stack);

    let stack = Stack::start_with("query-optin", |cfg| {
        cfg["credential_sources"]["query_param"] = json!("api_key")
    });
    let issued = stack.service.create_key("q", &["demo:read"]);
    let reply = stack.get(&format!("/v1/hello?a=1&api_key={}&b=2", issued.key), &[]);
    assert_forwarded_with_identity(&reply, &issued.id);
    let path = reply.upstream_path();
    assert!(
        !path.contains("api_key") && !path.contains(&issued.key),
        "query credential reached upstream: {path}"
    );
    assert!(
        path.starts_with("/v1/hello") && path.contains("a=1") && path.contains("b=2"),
        "other params lost: {path}"
    );
}

#[test]
fn counters_are_visible_on_the_admin_stats() {
    let stack = Stack::start("stats");
    let issued = stack.service.create_key("counted", &["demo:read"]);
    for _ in 0..3 {
        assert_eq!(stack.get_with_key("/v1/hello", &issued.key).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(stack.get("/v1/hello", &[]).status, 401);
    }
    // The allowed path's counters reach Envoy on the workers' tick (at most a second later).
    keygate_testkit::wait_until(Duration::from_secs(5), || {
        stack.envoy.keygate_counter("allowed") >= 3
    });
    let stats = stack.envoy.stats();
    let keygate: Vec<&str> = stats.lines().filter(|l| l.contains("keygate")).collect();
    let shown = keygate.join("\n");
    let counter = |name: &str| parse_counter(&stats, name);
    assert_eq!(
        counter("wasmcustom.keygate.allowed"),
        Some(3),
        "allowed:\n{shown}"
    );
    let denied: u64 = keygate
        .iter()
        .filter_map(|l| l.strip_prefix("wasmcustom.keygate.denied."))
        .filter_map(|l| {
            l.split_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum();
    assert_eq!(denied, 2, "sum of wasmcustom.keygate.denied.*:\n{shown}");
    assert!(
        counter("wasmcustom.keygate.cache_miss").is_some_and(|n| n >= 1),
        "cache_miss:\n{shown}"
    );
    assert!(
        counter("wasmcustom.keygate.cache_hit").is_some_and(|n| n >= 1),
        "cache_hit:\n{shown}"
    );
    let hits_and_misses = counter("wasmcustom.keygate.cache_miss").unwrap_or(0)
        + counter("wasmcustom.keygate.cache_hit").unwrap_or(0);
    assert!(
        hits_and_misses >= 3,
        "3 keyed requests but {hits_and_misses} cache hits+misses:\n{shown}"
    );
}

#[test]
fn cli_minted_key_works_through_envoy() {
    let stack = Stack::start("cli");
    let out = stack.service.cli(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scope",
        "demo:read",
        "--json",
    ]);
    let created: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("CLI --json output is not JSON ({e}): {out}"));
    let key = created["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no `key` in CLI output: {created}"));
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no `id` in CLI output: {created}"));
    let reply = stack.get_with_key("/v1/hello", key);
    assert_forwarded_with_identity(&reply, id);
    let reply = stack.post("/v1/hello", &[("authorization", bearer(key).as_str())]);
    assert_denied(&reply, 403, Some("insufficient_scope"), Some(key));
}
