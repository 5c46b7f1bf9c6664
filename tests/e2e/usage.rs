//! Usage reporting through a real Envoy (2 workers) and a real key service:
//! - a burst of keys whose counts exceed the key service's usage body limit in one interval
//!   (the 40,000-keys case, at a smaller scale under a lowered limit) is reported in batches
//!   that fit, and reporting goes on afterwards;
//! - a batch the key service refuses (413) is dropped and counted, never resent forever;
//! - only proven keys get usage under their id, and only allowed requests mark a key used;
//! - rows carry the route (the filter route's `name`, else Envoy's route name), an upstream
//!   latency histogram (p50/p95/p99 in the usage API) and the client address of the key's
//!   last use; the gateway names itself (`node.id`) and shows in `GET /api/v1/fleet`.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::mistyped;
use keygate_testkit::{admin_json, unix_now};
use keygate_testkit::{random_hex, send, IssuedKey, KeyService, Stack};

/// Polls `check` every 200 ms until it is true or `timeout` passes; answers whether it held.
fn poll(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    keygate_testkit::poll(timeout, Duration::from_millis(200), || {
        check().then_some(())
    })
    .is_some()
}

/// `GET /api/v1/auth/keys/{id}/usage` from `from` by minute: (HTTP status, totals).
fn usage_totals(service: &KeyService, id: &str, from: i64) -> (u16, Value) {
    let reply = service.usage_reply(id, from);
    let totals = if reply.status == 200 {
        reply.json()["totals"].clone()
    } else {
        Value::Null
    };
    (reply.status, totals)
}

/// A sample of the key service's `/metrics` (0 when absent).
fn service_metric(service: &KeyService, name: &str) -> u64 {
    let reply = send("GET", &service.url("/metrics"), &[], None);
    assert_eq!(reply.status, 200, "GET /metrics: {reply:?}");
    reply
        .body
        .lines()
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse::<f64>().ok())?
        })
        .map_or(0, |value| value as u64)
}

/// `count` keys with scope `demo:read`.
fn create_keys(service: &KeyService, count: usize) -> Vec<IssuedKey> {
    (0..count)
        .map(|i| service.create_key(&format!("burst-{i}"), &["demo:read"]))
        .collect()
}

/// One GET per key through Envoy, on 4 threads; every one must be allowed.
fn use_each_once(stack: &Stack, keys: &[IssuedKey]) {
    thread::scope(|scope| {
        for part in keys.chunks(keys.len().div_ceil(4).max(1)) {
            scope.spawn(move || {
                for key in part {
                    let reply = stack.get_with_key("/v1/burst", &key.key);
                    assert_eq!(reply.status, 200, "{reply:?}");
                }
            });
        }
    });
}

#[test]
fn a_burst_larger_than_the_usage_body_limit_is_reported_and_nothing_sticks() {
    // 400 keys make ~40 KB of usage rows in one interval: over the key service's limit
    // (lowered to 16 KiB), as 40,000 keys are over the default 1 MiB. The filter's batches are
    // 8 KiB.
    const KEYS: usize = 400;
    let mut keys = Vec::new();
    let stack = Stack::start_with_service_env(
        "usage-burst",
        |cfg| {
            cfg["usage"] = json!({"enabled": true, "flush_seconds": 15, "max_batch_bytes": 8192});
        },
        &[("KEYGATE_USAGE_MAX_BODY_BYTES", "16384")],
        |service| keys = create_keys(service, KEYS),
    );
    let from = unix_now() - 120;
    let started = Instant::now();
    use_each_once(&stack, &keys);
    println!("{KEYS} keys used in {:?}", started.elapsed());

    let service = &stack.service;
    let reported = poll(Duration::from_secs(90), || {
        service_metric(service, "keygate_usage_rows_total") >= KEYS as u64
    });
    assert!(
        reported,
        "usage rows applied: {} of at least {KEYS}; filter: {}",
        service_metric(service, "keygate_usage_rows_total"),
        stack.envoy.keygate_stats()
    );
    let flushed = stack.envoy.keygate_counter("usage.flushed");
    assert!(
        flushed >= 3,
        "{flushed} batches for ~40 KB under 8 KiB batches"
    );
    for counter in ["usage.rejected", "usage.dropped", "usage.flush_failure"] {
        assert_eq!(
            stack.envoy.keygate_counter(counter),
            0,
            "{counter}: {}",
            stack.envoy.keygate_stats()
        );
    }
    assert_eq!(
        service_metric(service, "keygate_usage_rows_refused_total"),
        0
    );
    for key in [&keys[0], &keys[KEYS / 2], &keys[KEYS - 1]] {
        let ok = poll(Duration::from_secs(30), || {
            let (_, totals) = usage_totals(service, &key.id, from);
            totals["allowed"] == 1 && totals["status"]["2xx"] == 1
        });
        assert!(
            ok,
            "usage of {}: {:?}",
            key.id,
            usage_totals(service, &key.id, from)
        );
    }

    // Nothing is stuck: the next interval's counts arrive too.
    let rows_before = service_metric(service, "keygate_usage_rows_total");
    use_each_once(&stack, &keys[..20]);
    let ok = poll(Duration::from_secs(60), || {
        usage_totals(service, &keys[0].id, from).1["allowed"] == 2
    });
    assert!(
        ok,
        "second round: {:?}",
        usage_totals(service, &keys[0].id, from)
    );
    assert!(service_metric(service, "keygate_usage_rows_total") > rows_before);
}

#[test]
fn a_batch_the_key_service_refuses_is_dropped_and_reporting_goes_on() {
    // Misconfigured on purpose: the filter's batches (16 KiB) exceed the key service's
    // limit (4 KiB), so a busy interval's batch is refused with 413.
    const KEYS: usize = 100;
    let mut keys = Vec::new();
    let stack = Stack::start_with_service_env(
        "usage-refused",
        |cfg| {
            cfg["usage"] = json!({"enabled": true, "flush_seconds": 3, "max_batch_bytes": 16384});
        },
        &[("KEYGATE_USAGE_MAX_BODY_BYTES", "4096")],
        |service| keys = create_keys(service, KEYS),
    );
    let from = unix_now() - 120;
    use_each_once(&stack, &keys);
    let rejected = poll(Duration::from_secs(60), || {
        stack.envoy.keygate_counter("usage.rejected") >= 1
    });
    assert!(
        rejected,
        "the oversized batch was never dropped: {}",
        stack.envoy.keygate_stats()
    );

    // Later counts (a batch that fits) are reported: the refused batch is not resent forever.
    let lone = &keys[7];
    let ok = poll(Duration::from_secs(60), || {
        let reply = stack.get_with_key("/v1/after", &lone.key);
        assert_eq!(reply.status, 200, "{reply:?}");
        let (_, totals) = usage_totals(&stack.service, &lone.id, from);
        totals["allowed"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        ok,
        "reporting stayed stuck after a refused batch: {}",
        stack.envoy.keygate_stats()
    );
    assert!(stack.envoy.keygate_counter("usage.flushed") >= 1);
}

#[test]
fn only_proven_keys_get_usage_and_only_allowed_requests_mark_a_use() {
    let stack = Stack::start_with("usage-proven", |cfg| {
        cfg["usage"] = json!({"enabled": true, "flush_seconds": 1})
    });
    let service = &stack.service;
    let from = unix_now() - 120;
    let reader = service.create_key("reader", &["demo:read"]);
    let knocker = service.create_key("knocker", &["demo:read"]);

    // A forged key (another gateway key): valid shape and checksum, an id the attacker chose.
    let other_dir = stack.dir.path().join("other-service");
    let mut other = KeyService::start(&other_dir, &random_hex(32), &random_hex(32));
    other.wait_ready();
    let forged = other.create_key("forged", &["demo:read"]);
    other.stop();

    let typo = mistyped(&reader.key);
    for _ in 0..10 {
        assert_eq!(stack.get_with_key("/v1/read", &reader.key).status, 200);
        // The reader's id with a wrong secret: refused, decided from the cached record.
        assert_eq!(stack.get_with_key("/v1/read", &typo).status, 401);
        assert_eq!(stack.get_with_key("/v1/read", &forged.key).status, 401);
        // A proven key refused for its scope: counted, but not a use.
        let auth = keygate_testkit::bearer(&knocker.key);
        let reply = stack.post("/v1/write", &[("authorization", auth.as_str())]);
        assert_eq!(reply.status, 403, "{reply:?}");
    }

    let ok = poll(Duration::from_secs(30), || {
        let (_, reader_totals) = usage_totals(service, &reader.id, from);
        let (_, knocker_totals) = usage_totals(service, &knocker.id, from);
        reader_totals["allowed"] == 10 && knocker_totals["denied"]["insufficient_scope"] == 10
    });
    assert!(
        ok,
        "reader {:?}, knocker {:?}",
        usage_totals(service, &reader.id, from),
        usage_totals(service, &knocker.id, from)
    );
    // Give a stray row one more flush to arrive, then check what must never be there.
    thread::sleep(Duration::from_secs(3));
    let (_, reader_totals) = usage_totals(service, &reader.id, from);
    assert_eq!(
        reader_totals["denied"],
        json!({}),
        "denials of a wrong secret were counted under the real key's id"
    );
    let (status, totals) = usage_totals(service, &forged.id, from);
    assert_eq!(status, 404, "the forged id got usage: {totals}");
    assert!(stack.envoy.keygate_counter("denied.forged_key") >= 10);

    let shown = |key: &IssuedKey| {
        admin_json(
            service,
            "GET",
            &format!("/api/v1/auth/keys/{}", key.id),
            None,
        )
        .json()
    };
    assert!(shown(&reader)["last_used_at"].is_string());
    assert_eq!(
        shown(&knocker)["last_used_at"],
        Value::Null,
        "refused requests marked the key as used"
    );
}

/// Envoy routes `/v1/orders/` under its own route name (which usage does not read for a table
/// route), and the node names itself.
const ORDERS_ROUTE: &str = "- name: envoy-orders
  match: { prefix: \"/v1/orders/\" }
  route: { cluster: echo, timeout: 15s }";

#[test]
fn usage_shows_routes_latency_the_last_address_and_the_gateway() {
    let stack = Stack::start_with_yaml(
        "usage-analytics",
        |cfg| {
            cfg["usage"] = json!({"enabled": true, "flush_seconds": 1});
            // A named filter route first; `/v1/orders/` falls to the unnamed GET route.
            let routes = cfg["routes"].as_array_mut().unwrap();
            routes.insert(
                0,
                json!({"name": "named-read", "methods": ["GET"], "prefix": "/v1/named/",
                       "scopes": ["demo:read"]}),
            );
        },
        |yaml| {
            let yaml = keygate_testkit::with_routes_before_catch_all(yaml, ORDERS_ROUTE);
            format!("node:\n  id: edge-e2e\n  cluster: keygate\n{yaml}")
        },
    );
    let service = &stack.service;
    let from = unix_now() - 120;
    let reader = service.create_key("reader", &["demo:read"]);
    for _ in 0..5 {
        assert_eq!(stack.get_with_key("/v1/named/x", &reader.key).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(stack.get_with_key("/v1/orders/1", &reader.key).status, 200);
    }

    let mut totals = Value::Null;
    let ok = poll(Duration::from_secs(30), || {
        totals = usage_totals(service, &reader.id, from).1;
        // The unnamed filter route counts under its place in the table (the demo table's
        // `GET /v1/` entry, third once `named-read` is first), not under Envoy's route name:
        // a table route's label never costs a host call.
        totals["routes"] == json!({"named-read": 5, "route[2]": 3}) && totals["status"]["2xx"] == 8
    });
    assert!(ok, "usage never showed both routes: {totals}");
    println!("usage totals: {totals}");
    // Every response was timed: the histogram holds 8, and the percentiles name a bucket
    // bound (the echo upstream answers in well under 5 s).
    let timed: u64 = totals["latency"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(timed, 8, "{totals}");
    for p in ["p50", "p95", "p99"] {
        assert!(totals["latency_ms"][p].is_u64(), "{p}: {totals}");
    }

    let key = admin_json(
        service,
        "GET",
        &format!("/api/v1/auth/keys/{}", reader.id),
        None,
    )
    .json();
    assert!(key["last_used_at"].is_string(), "{key}");
    assert_eq!(key["last_used_address"], "127.0.0.1", "{key}");

    let mut fleet = Value::Null;
    let seen = poll(Duration::from_secs(30), || {
        fleet = admin_json(service, "GET", "/api/v1/fleet", None).json();
        fleet.as_array().is_some_and(|gateways| {
            gateways.iter().any(|g| {
                g["gateway"] == "edge-e2e"
                    && g["last_usage_batch_at"].is_string()
                    && g["last_feed_sequence"].is_u64()
            })
        })
    });
    if !seen {
        let info = send(
            "GET",
            &format!("http://127.0.0.1:{}/server_info", stack.ports.admin),
            &[],
            None,
        );
        let log = std::fs::read_to_string(stack.dir.path().join("envoy.log")).unwrap_or_default();
        let keygate: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("keygate"))
            .take(40)
            .collect();
        panic!(
            "the gateway never showed in the fleet: {fleet}\nserver_info: {}\nlog: {}",
            info.body
                .find("\"node\"")
                .map_or("", |at| &info.body[at..info.body.len().min(at + 300)]),
            keygate.join("\n")
        );
    }
    println!("fleet: {fleet}");
}
