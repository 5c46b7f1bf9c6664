//! Geo-restrictions through a real Envoy: `envoy/geoip.yaml` (Keygate in the strip role, then
//! Envoy's own geoip filter with a MaxMind database written by the test) in front of Keygate.
//! A key restricted to countries passes from them, is refused elsewhere, and is refused when
//! the country is unknown even if the client sends the country header itself. Usage rows
//! carry the countries: a key used from Germany, then the United States produces one
//! `key.new_country` webhook delivery (for the United States; Germany is its baseline).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use keygate_testkit::{
    admin_json, assert_denied, assert_forwarded_with_identity, bearer, must, python_with,
    wasm_path, with_geoip, Reply, Stack, TempDir, WebhookReceiver,
};

/// A MaxMind-format country database: 198.51.100.0/24 is Germany, 203.0.113.0/24 the United
/// States, nothing else is in it.
fn write_country_db(path: &Path) {
    let script = r#"
import sys
from mmdb_writer import MMDBWriter
from netaddr import IPSet
writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country",
                    languages=["en"], description={"en": "Keygate test countries"})
for network, code in [("198.51.100.0/24", "DE"), ("203.0.113.0/24", "US")]:
    writer.insert_network(IPSet([network]), {"country": {"iso_code": code}})
writer.to_db_file(sys.argv[1])
"#;
    let out = Command::new(python_with("mmdb_writer"))
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "writing the test database failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A request from `address` (as the trusted proxy in front of Envoy reports it), with extra
/// headers.
fn from(stack: &Stack, key: &str, address: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = bearer(key);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("x-forwarded-for", address),
    ];
    headers.extend_from_slice(extra);
    stack.get("/v1/geo", &headers)
}

fn country_seen_upstream(upstream: &serde_json::Map<String, Value>) -> Option<&str> {
    upstream.get("x-geo-country").and_then(Value::as_str)
}

#[test]
fn keys_restricted_to_countries_pass_only_from_them() {
    let dir = TempDir::new("geo");
    let db = dir.path().join("countries.mmdb");
    write_country_db(&db);
    let wasm = wasm_path();
    let stack = Stack::start_with_yaml(
        "geo",
        |cfg| {
            cfg["geo"] = json!({"country_header": "x-geo-country"});
            // Envoy and Keygate both take the address the trusted proxy (one hop) saw.
            cfg["client_address"] = json!({"trusted_hops": 1});
            cfg["usage"] = json!({"enabled": true, "flush_seconds": 1});
        },
        |yaml| with_geoip(yaml, &wasm, &db, 1),
    );
    let hooks = WebhookReceiver::start();
    let registered = admin_json(
        &stack.service,
        "POST",
        "/api/v1/webhooks",
        Some(&json!({"url": hooks.url(), "events": ["key.new_country"]})),
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    let restricted = stack.service.create_key_from(&json!({
        "name": "dach-only",
        "scopes": ["demo:read"],
        "owner": "geo-owner",
        "allowed_countries": ["de", "AT", "CH"],
    }));
    let anywhere = stack.service.create_key_from(&json!({
        "name": "anywhere",
        "scopes": ["demo:read"],
        "owner": "geo-owner",
    }));
    // Stored upper case, shown by the API and the CLI.
    let shown = admin_json(
        &stack.service,
        "GET",
        &format!("/api/v1/auth/keys/{}", restricted.id),
        None,
    );
    assert_eq!(shown.json()["allowed_countries"], json!(["DE", "AT", "CH"]));
    let printed = stack.service.cli(&["keys", "show", &restricted.id]);
    assert!(printed.contains("countries:    DE AT CH"), "{printed}");

    // From Germany: allowed, and the upstream sees the country geoip wrote.
    let reply = from(&stack, &restricted.key, "198.51.100.7", &[]);
    let upstream = assert_forwarded_with_identity(&reply, &restricted.id);
    assert_eq!(
        country_seen_upstream(&upstream),
        Some("DE"),
        "{upstream:#?}"
    );
    // A client claiming Germany from Germany changes nothing (geoip overwrites it anyway).
    let reply = from(
        &stack,
        &restricted.key,
        "198.51.100.7",
        &[("x-geo-country", "DE")],
    );
    assert_forwarded_with_identity(&reply, &restricted.id);

    // From the United States, even claiming Germany: refused.
    for extra in [&[][..], &[("x-geo-country", "DE")]] {
        let reply = from(&stack, &restricted.key, "203.0.113.9", extra);
        assert_denied(&reply, 403, None, Some(&restricted.key));
        assert_eq!(
            reply.json()["type"],
            "urn:keygate:problem:country-not-allowed"
        );
    }

    // From an address the database does not know, claiming Germany: geoip writes nothing, and
    // the strip role removed the client's copy, so the country is unknown and the key refused.
    let reply = from(
        &stack,
        &restricted.key,
        "192.0.2.1",
        &[("x-geo-country", "DE")],
    );
    assert_denied(&reply, 403, None, Some(&restricted.key));
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:country-not-allowed"
    );
    assert!(
        stack.envoy.keygate_counter("denied.country_not_allowed") >= 3,
        "the refusals were not counted\n{}",
        stack.envoy.keygate_stats()
    );

    // An unrestricted key passes from anywhere, and the upstream never sees a client-sent
    // country.
    let reply = from(
        &stack,
        &anywhere.key,
        "192.0.2.1",
        &[("x-geo-country", "DE")],
    );
    let upstream = assert_forwarded_with_identity(&reply, &anywhere.id);
    assert_eq!(country_seen_upstream(&upstream), None, "{upstream:#?}");
    let reply = from(&stack, &anywhere.key, "203.0.113.9", &[]);
    let upstream = assert_forwarded_with_identity(&reply, &anywhere.id);
    assert_eq!(
        country_seen_upstream(&upstream),
        Some("US"),
        "{upstream:#?}"
    );

    // A key used from Germany (its baseline), then from the United States: one
    // `key.new_country` delivery, for the United States. The keys above were used from one
    // country each (their baselines): no delivery for them.
    let roaming = stack.service.create_key_from(&json!({
        "name": "roaming",
        "scopes": ["demo:read"],
        "owner": "geo-owner",
    }));
    assert_forwarded_with_identity(
        &from(&stack, &roaming.key, "198.51.100.7", &[]),
        &roaming.id,
    );
    let usage_path = format!("/api/v1/auth/keys/{}/usage", roaming.id);
    let countries =
        || admin_json(&stack.service, "GET", &usage_path, None).json()["countries"].clone();
    must(Duration::from_secs(15), "Germany recorded", || {
        countries()[0]["country"] == "DE"
    });
    assert_forwarded_with_identity(&from(&stack, &roaming.key, "203.0.113.9", &[]), &roaming.id);
    must(
        Duration::from_secs(20),
        "a key.new_country delivery",
        || !hooks.of("key.new_country").is_empty(),
    );
    let delivered = hooks.of("key.new_country");
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    let body = &delivered[0].body;
    assert_eq!(body["subject"], roaming.id.as_str());
    assert_eq!(
        body["data"],
        json!({
            "id": roaming.id, "name": "roaming", "owner": "geo-owner",
            "country": "US", "seen_before": ["DE"],
        })
    );
    assert!(delivered[0].header("keygate-signature").is_some());
    // Seen again from the United States: nothing more; the CLI lists both countries.
    assert_forwarded_with_identity(&from(&stack, &roaming.key, "203.0.113.9", &[]), &roaming.id);
    let printed = stack.service.cli(&["keys", "usage", &roaming.id]);
    assert!(printed.contains("countries seen: DE (since "), "{printed}");
    assert!(printed.contains("US (since "), "{printed}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        hooks.of("key.new_country").len(),
        1,
        "{:#?}",
        hooks.deliveries()
    );
}

#[test]
fn a_restricted_key_is_refused_by_a_filter_without_geo() {
    // No geoip in front and no `geo` option: the restriction cannot be checked, so it never
    // passes.
    let stack = Stack::start("geo-off");
    let restricted = stack.service.create_key_from(&json!({
        "name": "de-only",
        "scopes": ["demo:read"],
        "owner": "geo-owner",
        "allowed_countries": ["DE"],
    }));
    let reply = stack.get(
        "/v1/geo",
        &[
            ("authorization", bearer(&restricted.key).as_str()),
            ("x-geo-country", "DE"),
        ],
    );
    assert_denied(&reply, 403, None, Some(&restricted.key));
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:country-not-allowed"
    );
}
