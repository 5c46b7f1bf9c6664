//! Roles end to end: a key holding a role is allowed what the role grants; changing the role
//! reaches every Envoy worker through the revocation feed (a `role_changed` event), within the
//! feed's latency, although the key's cached record has an hour of TTL left.

use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_testkit::{admin_json, prime_feed, Stack};
use serde_json::json;

/// How long the change may take to reach every worker (the feed's long-poll answers at once,
/// and workers load the new set on their next tick).
const FEED_BOUND: Duration = Duration::from_secs(2);
/// Requests after the first refusal that must all be refused too (fresh connections, so both
/// workers answer).
const CONFIRMATIONS: usize = 10;
const MODELS: &str = "/v1/models/m1";

#[test]
fn a_role_change_reaches_every_worker_through_the_feed_not_the_ttl() {
    let stack = Stack::start_prepared(
        "roles",
        |cfg| {
            // An hour of TTL: only the feed can make the filter look the key up again.
            cfg["cache"]["ttl_seconds"] = json!(3600);
            cfg["cache"]["max_stale_seconds"] = json!(3600);
            cfg["routes"] = json!([
                {"prefix": "/v1/models/", "scopes": ["models:read"]},
                {"prefix": "/v1/", "scopes": ["datasets:read"]}
            ]);
        },
        prime_feed,
    );
    let service = &stack.service;
    let created = admin_json(
        service,
        "POST",
        "/api/v1/roles",
        Some(&json!({"name": "analyst", "scopes": ["models:read", "datasets:read"]})),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let key = service.create_key_from(&json!({
        "name": "analyst-key", "scopes": [], "roles": ["analyst"]
    }));

    // Allowed by the role, on both workers (the first use fetches the record).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stack.get_with_key(MODELS, &key.key);
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never allowed: {reply:?}");
        sleep(Duration::from_millis(100));
    }
    for _ in 0..CONFIRMATIONS {
        let reply = stack.get_with_key(MODELS, &key.key);
        assert_eq!(reply.status, 200, "{reply:?}");
    }

    // The role loses models:read.
    let changed_at = Instant::now();
    let changed = admin_json(
        service,
        "PATCH",
        "/api/v1/roles/analyst",
        Some(&json!({"scopes": ["datasets:read"]})),
    );
    assert_eq!(changed.status, 200, "{changed:?}");
    loop {
        let reply = stack.get_with_key(MODELS, &key.key);
        if reply.status == 403 {
            break;
        }
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            changed_at.elapsed() < FEED_BOUND,
            "the role change has not reached the filter {:?} after it was made",
            changed_at.elapsed()
        );
        sleep(Duration::from_millis(50));
    }
    let took = changed_at.elapsed();
    for _ in 0..CONFIRMATIONS {
        let reply = stack.get_with_key(MODELS, &key.key);
        assert_eq!(reply.status, 403, "a worker still allows it: {reply:?}");
    }
    assert!(took < FEED_BOUND, "{took:?}");
    println!("role change reached every worker in {took:?}");
    // What the role still grants is still allowed.
    let reply = stack.get_with_key("/v1/datasets/d1", &key.key);
    assert_eq!(reply.status, 200, "{reply:?}");

    // Given back, it is allowed again the same way.
    let restored = admin_json(
        service,
        "PATCH",
        "/api/v1/roles/analyst",
        Some(&json!({"scopes": ["models:read", "datasets:read"]})),
    );
    assert_eq!(restored.status, 200, "{restored:?}");
    let restored_at = Instant::now();
    loop {
        let reply = stack.get_with_key(MODELS, &key.key);
        if reply.status == 200 {
            break;
        }
        assert!(restored_at.elapsed() < FEED_BOUND, "{reply:?}");
        sleep(Duration::from_millis(50));
    }
}
