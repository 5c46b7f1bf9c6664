//! Fleet-wide limits through the HTTP API: global limits, quotas and owner pools on keys (both
//! backends), `POST /v1/leases` (auth, bounds, grants), and the Redis counters on a real
//! `redis-server` (`KEYGATE_TEST_REDIS_URL`, set by `scripts/redis.sh run`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use keygate_core::wire::RateLimit;
use keygate_server::service::counters::{
    CounterAsk, CounterLimit, Counters, LeaseSettings, MemoryCounters,
};
use keygate_server::service::redis_counters::RedisCounters;
use serde_json::{json, Value};

use crate::backends::Backend;
use crate::{harness_on, jwt_settings, Harness, ADMIN, KEYS, NOW, SERVICE};

on_both_backends!(
    fleet_limits_round_trip_from_create_to_lookup,
    leases_grant_from_global_limits_quotas_and_pools,
    pools_are_set_shown_listed_and_deleted,
);

const LEASES: &str = "/v1/leases";

async fn harness(backend: Backend) -> Harness {
    harness_on(backend, jwt_settings()).await
}

impl Harness {
    async fn leases(&self, body: &Value) -> crate::Answer {
        self.send("POST", LEASES, Some(SERVICE), Some(&body.to_string()))
            .await
    }

    /// One ask; answers its grant.
    async fn lease(&self, gateway: &str, bucket: &str, want: u32, returned: u32) -> Value {
        let answer = self
            .leases(&json!({"gateway": gateway, "leases": [
                {"bucket": bucket, "want": want, "returned": returned}
            ]}))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["leases"][0].clone()
    }
}

fn redis_url() -> String {
    match std::env::var("KEYGATE_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "KEYGATE_TEST_REDIS_URL is not set: these tests need a real Redis server. Run them \
             inside `scripts/redis.sh run <command>` (as `make test` does), or start one with \
             `export KEYGATE_TEST_REDIS_URL=$(scripts/redis.sh start /tmp/redis-tests)`."
        ),
    }
}

/// A bucket name no other test (or earlier run on the same Redis) uses.
fn unique(kind: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{hex}")
}

async fn fleet_limits_round_trip_from_create_to_lookup(backend: Backend) {
    let h = harness(backend).await;
    let created = h
        .create(json!({
            "name": "fleet", "scopes": ["demo:read"], "owner": "acme",
            "global_limit": {"requests_per_second": 100, "burst": 150},
            "quota": {"limit": 1000, "period": "day"},
        }))
        .await;
    assert_eq!(
        created["global_limit"],
        json!({"requests_per_second": 100.0, "burst": 150})
    );
    assert_eq!(created["quota"]["limit"], 1000);
    assert_eq!(created["quota"]["period_s"], 86_400);
    let id = created["id"].as_str().unwrap();
    let day = NOW - NOW % 86_400;
    let shown = h.show(id).await;
    assert_eq!(shown["quota"]["remaining"], 1000);
    assert_eq!(shown["quota"]["window_start"], crate::rfc3339(day));
    assert_eq!(shown["quota"]["window_end"], crate::rfc3339(day + 86_400));

    // No pool yet: the lookup has none.
    let lookup = h.lookup(id).await;
    assert_eq!(lookup.body["global_limit"]["burst"], 150);
    assert_eq!(
        lookup.body["quota"],
        json!({"limit": 1000, "period_s": 86_400, "window_start": day})
    );
    assert!(lookup.body.get("pool").is_none());
    let set = h
        .admin(
            "PUT",
            "/api/v1/pools/acme",
            Some(json!({"requests_per_second": 50, "burst": 60})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let lookup = h.lookup(id).await;
    let wire: keygate_core::wire::KeyLookup = serde_json::from_value(lookup.body).unwrap();
    assert_eq!(
        wire.pool.unwrap().limit,
        RateLimit {
            requests_per_second: 50.0,
            burst: 60
        }
    );
    assert_eq!(wire.quota.unwrap().limit, 1000);

    // Spending shows in `remaining`.
    let grant = h.lease("g1", &format!("quota:{id}"), 10, 0).await;
    assert_eq!(grant["granted"], 10);
    assert_eq!(grant["remaining"], 990);
    assert_eq!(h.show(id).await["quota"]["remaining"], 990);

    // A new limit keeps the window (and what was spent in it); a new period starts a new one.
    let patched = h
        .admin(
            "PATCH",
            &format!("{KEYS}/{id}"),
            Some(json!({"quota": {"limit": 2000, "period": 86_400}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(h.show(id).await["quota"]["remaining"], 1990);
    h.clock.advance(3_600);
    let patched = h
        .admin(
            "PATCH",
            &format!("{KEYS}/{id}"),
            Some(json!({"quota": {"limit": 2000, "period": "1h"}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    let shown = h.show(id).await;
    assert_eq!(shown["quota"]["remaining"], 2000);
    assert_eq!(shown["quota"]["period_s"], 3600);

    // null clears.
    let cleared = h
        .admin(
            "PATCH",
            &format!("{KEYS}/{id}"),
            Some(json!({"quota": null, "global_limit": null})),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.body);
    assert_eq!(cleared.body["quota"], Value::Null);
    assert_eq!(cleared.body["global_limit"], Value::Null);
    let lookup = h.lookup(id).await;
    assert!(lookup.body.get("quota").is_none());
    assert!(lookup.body.get("global_limit").is_none());

    // Bad values: 400 with the field named.
    for (body, field) in [
        (
            json!({"global_limit": {"requests_per_second": 0}}),
            "global_limit",
        ),
        (
            json!({"global_limit": {"requests_per_second": 5, "burst": 0}}),
            "global_limit",
        ),
        (json!({"quota": {"limit": 0, "period": "day"}}), "quota"),
        (
            json!({"quota": {"limit": 5, "period": "fortnight"}}),
            "quota",
        ),
        (json!({"quota": {"limit": 5}}), "period"),
    ] {
        let answer = h
            .admin("PATCH", &format!("{KEYS}/{id}"), Some(body.clone()))
            .await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
        assert!(
            answer.detail().contains(field),
            "{body}: {}",
            answer.detail()
        );
        let mut create = json!({"name": "bad", "scopes": []});
        for (k, v) in body.as_object().unwrap() {
            create[k] = v.clone();
        }
        h.admin("POST", KEYS, Some(create))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
}

async fn leases_grant_from_global_limits_quotas_and_pools(backend: Backend) {
    let h = harness(backend).await;
    let limited = h
        .create(json!({
            "name": "limited", "scopes": [], "owner": "acme",
            "global_limit": {"requests_per_second": 100, "burst": 100},
            "quota": {"limit": 100, "period": "month"},
        }))
        .await;
    let id = limited["id"].as_str().unwrap();
    let free = h.create(json!({"name": "free", "scopes": []})).await;
    let free_id = free["id"].as_str().unwrap();

    // One gateway: leases of rate × 500 ms = 50, until the bucket is empty (the test clock
    // stands still, so nothing refills).
    let first = h.lease("g1", &format!("key:{id}"), 80, 0).await;
    assert_eq!(first["granted"], 50);
    assert_eq!(first["gateways"], 1);
    assert_eq!(first["valid_ms"], 2000);
    assert!(first.get("remaining").is_none());
    // A second gateway: leases shrink to rate × 500 ms ÷ 2.
    let second = h.lease("g2", &format!("key:{id}"), 80, 0).await;
    assert_eq!(
        (second["granted"].as_u64(), second["gateways"].as_u64()),
        (Some(25), Some(2))
    );
    let third = h.lease("g2", &format!("key:{id}"), 80, 0).await;
    assert_eq!(third["granted"], 25);
    let empty = h.lease("g1", &format!("key:{id}"), 80, 0).await;
    assert_eq!(empty["granted"], 0);
    // Returned tokens can be taken again.
    let back = h.lease("g1", &format!("key:{id}"), 80, 5).await;
    assert_eq!(back["granted"], 5);

    // The quota: never more than its limit in all.
    let mut total = 0;
    for n in 0..200 {
        let grant = h
            .lease(&format!("g{}", n % 3), &format!("quota:{id}"), 10, 0)
            .await;
        total += grant["granted"].as_u64().unwrap();
        assert_eq!(grant["remaining"].as_u64().unwrap(), 100 - total);
    }
    assert_eq!(total, 100);

    // Without a limit everything asked is granted; an unknown key gets nothing; an owner
    // without a pool has no pooled limit.
    let several = h
        .leases(&json!({"gateway": "g1", "leases": [
            {"bucket": format!("key:{free_id}"), "want": 7},
            {"bucket": format!("quota:{free_id}"), "want": 8},
            {"bucket": "key:aaaaaaaaaaaaaaaa", "want": 9},
            {"bucket": "pool:acme", "want": 10},
        ]}))
        .await;
    assert_eq!(several.status, StatusCode::OK, "{}", several.body);
    let granted: Vec<u64> = several.body["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["granted"].as_u64().unwrap())
        .collect();
    assert_eq!(granted, [7, 8, 0, 10]);
    assert_eq!(several.body["leases"][2]["bucket"], "key:aaaaaaaaaaaaaaaa");

    // With a pool, the owner's keys share its bucket.
    h.admin(
        "PUT",
        "/api/v1/pools/acme",
        Some(json!({"requests_per_second": 10, "burst": 12})),
    )
    .await;
    let pooled = h.lease("g1", "pool:acme", 100, 0).await;
    assert_eq!(pooled["granted"], 5);
    let mut pool_total = 5;
    for _ in 0..10 {
        pool_total += h.lease("g1", "pool:acme", 100, 0).await["granted"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(pool_total, 12);
}

async fn pools_are_set_shown_listed_and_deleted(backend: Backend) {
    let h = harness(backend).await;
    let set = h
        .admin(
            "PUT",
            "/api/v1/pools/team%20a",
            Some(json!({"requests_per_second": 2.5})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    assert_eq!(set.body["owner"], "team a");
    assert_eq!(
        set.body["rate_limit"],
        json!({"requests_per_second": 2.5, "burst": 3})
    );
    h.admin(
        "PUT",
        "/api/v1/pools/team%20b",
        Some(json!({"requests_per_second": 1, "burst": 1})),
    )
    .await;
    let shown = h.admin("GET", "/api/v1/pools/team%20a", None).await;
    assert_eq!(shown.body["rate_limit"]["burst"], 3);
    let listed = h.admin("GET", "/api/v1/pools", None).await;
    let owners: Vec<&str> = listed.body["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["team a", "team b"]);
    let deleted = h.admin("DELETE", "/api/v1/pools/team%20a", None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    h.admin("GET", "/api/v1/pools/team%20a", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.admin("DELETE", "/api/v1/pools/team%20a", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    for body in [
        json!({"requests_per_second": 0}),
        json!({"requests_per_second": 1, "burst": 0}),
        json!({"requests_per_second": 1, "extra": 1}),
    ] {
        h.admin("PUT", "/api/v1/pools/x", Some(body))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    h.admin(
        "PUT",
        "/api/v1/pools/a%0Ab",
        Some(json!({"requests_per_second": 1})),
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST);
    // The management API needs the admin key.
    h.send("GET", "/api/v1/pools", Some(SERVICE), None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    // Changes are audited, newest first; reads are not.
    let page = h.admin("GET", "/api/v1/audit?target=team%20a", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let entries = page.body["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("pool_delete", "error: not-found (404)"),
            ("pool_delete", "ok"),
            ("pool_set", "ok"),
        ]
    );
    assert_eq!(
        entries[2]["detail"],
        json!({"requests_per_second": 2.5, "burst": 3})
    );
    let refused = h.admin("GET", "/api/v1/audit?target=x", None).await;
    assert_eq!(refused.body["entries"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn lease_requests_are_authenticated_and_bounded() {
    let h = harness(Backend::Sqlite).await;
    let body = json!({"gateway": "g1", "leases": [{"bucket": "key:aaaaaaaaaaaaaaaa", "want": 1}]})
        .to_string();
    for token in [None, Some(ADMIN), Some("not-the-token")] {
        h.send("POST", LEASES, token, Some(&body))
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);
    }
    let ask = |bucket: &str| json!({"bucket": bucket, "want": 1});
    let cases = [
        "not json".to_owned(),
        json!({"leases": []}).to_string(),
        json!({"gateway": "", "leases": []}).to_string(),
        json!({"gateway": "g 1", "leases": []}).to_string(),
        json!({"gateway": "g".repeat(65), "leases": []}).to_string(),
        json!({"gateway": "g", "leases": [ask("nope:x")]}).to_string(),
        json!({"gateway": "g", "leases": [ask("key:")]}).to_string(),
        json!({"gateway": "g", "leases": [{"bucket": "key:x", "want": -1}]}).to_string(),
        json!({"gateway": "g", "leases": [{"bucket": "key:x", "want": 2_000_000}]}).to_string(),
        json!({"gateway": "g", "leases": vec![ask("key:x"); 257]}).to_string(),
    ];
    for case in cases {
        h.send("POST", LEASES, Some(SERVICE), Some(&case))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    let huge = json!({"gateway": "g", "leases": [ask(&format!("key:{}", "x".repeat(70_000)))]});
    h.send("POST", LEASES, Some(SERVICE), Some(&huge.to_string()))
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    // An empty request is fine.
    let empty = h.leases(&json!({"gateway": "g", "leases": []})).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!({"leases": []}));
}

/// Counters that cannot be reached: 503 (the filters fall back), never a crash; counted.
#[tokio::test]
async fn unreachable_counters_answer_503() {
    let mut h = harness(Backend::Sqlite).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let counters = RedisCounters::new(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    h.state = h
        .state
        .clone()
        .with_counters(Arc::new(counters), LeaseSettings::default());
    let created = h
        .create(
            json!({"name": "g", "scopes": [], "global_limit": {"requests_per_second": 5},
                        "quota": {"limit": 10, "period": "day"}}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let answer = h
        .leases(&json!({"gateway": "g", "leases": [{"bucket": format!("key:{id}"), "want": 1}]}))
        .await;
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(!answer.detail().contains(&port.to_string()));
    // The key still shows, without `remaining`.
    let shown = h.show(id).await;
    assert_eq!(shown["quota"]["remaining"], Value::Null);
    let request = axum::http::Request::builder()
        .uri("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(keygate_server::app(h.state.clone()), request)
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let metrics = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        metrics.contains("keygate_lease_counter_failures_total 1"),
        "{metrics}"
    );
}

fn rate(bucket: &str, rps: f64, burst: u32, want: u32, returned: u32) -> CounterAsk {
    CounterAsk {
        bucket: bucket.into(),
        limit: CounterLimit::Rate(RateLimit {
            requests_per_second: rps,
            burst,
        }),
        want,
        returned,
    }
}

fn quota(bucket: &str, limit: u64, want: u32, returned: u32) -> CounterAsk {
    CounterAsk {
        bucket: bucket.into(),
        limit: CounterLimit::Quota {
            limit,
            window_start: 1_000,
            window_end: 4_000_000_000,
        },
        want,
        returned,
    }
}

const SETTINGS: LeaseSettings = LeaseSettings {
    interval_ms: 500,
    valid_ms: 2_000,
    gateway_window_ms: 10_000,
};

/// The same behaviour from both counter backends.
async fn counters_behave(counters: &dyn Counters) {
    let key = unique("key");
    let grant = |gateway: &'static str, ask: CounterAsk| async move {
        counters.take(gateway, &[ask], SETTINGS, 0).await.unwrap()[0]
    };
    // Slow refill (one token per 1000 s), so the test does not race the clock.
    let first = grant("g1", rate(&key, 0.001, 10, 100, 0)).await;
    assert_eq!(
        (first.granted, first.gateways, first.remaining),
        (1, 1, None)
    );
    let slow = unique("key");
    // Burst 10 at 20 r/s: lease ceil(20 × 0.5) = 10 for one gateway, 5 for two.
    assert_eq!(grant("g1", rate(&slow, 20.0, 10, 100, 0)).await.granted, 10);
    let two = grant("g2", rate(&slow, 20.0, 10, 100, 0)).await;
    assert_eq!(two.gateways, 2);
    assert!(two.granted <= 5, "{two:?}");
    let q = unique("quota");
    let mut total = 0;
    for _ in 0..40 {
        let g = grant("g1", quota(&q, 50, 7, 0)).await;
        total += g.granted;
        assert_eq!(g.remaining, Some(50 - u64::from(total)));
    }
    assert_eq!(total, 50);
    assert_eq!(counters.quota_used(&q, 1_000).await.unwrap(), 50);
    let back = grant("g1", quota(&q, 50, 0, 20)).await;
    assert_eq!(back.remaining, Some(20));
    assert_eq!(counters.quota_used(&q, 1_000).await.unwrap(), 30);
    assert_eq!(counters.quota_used(&q, 2_000).await.unwrap(), 0);
}

#[tokio::test]
async fn memory_counters_behave() {
    counters_behave(&MemoryCounters::new()).await;
}

#[tokio::test]
async fn redis_counters_behave() {
    counters_behave(&RedisCounters::new(&redis_url()).unwrap()).await;
}

/// Many lease requests at once, from many gateways, never take more than the bucket holds:
/// the script runs atomically.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redis_leases_never_overdraw() {
    let counters = Arc::new(RedisCounters::new(&redis_url()).unwrap());
    let key = unique("key");
    let q = unique("quota");
    let mut tasks = Vec::new();
    for n in 0..16 {
        let counters = counters.clone();
        let (key, q) = (key.clone(), q.clone());
        tasks.push(tokio::spawn(async move {
            let gateway = format!("g{n}");
            let (mut rate_total, mut quota_total) = (0u64, 0u64);
            for _ in 0..25 {
                let asks = [rate(&key, 0.001, 200, 9, 0), quota(&q, 300, 9, 0)];
                let grants = counters.take(&gateway, &asks, SETTINGS, 0).await.unwrap();
                rate_total += u64::from(grants[0].granted);
                quota_total += u64::from(grants[1].granted);
            }
            (rate_total, quota_total)
        }));
    }
    let (mut rate_total, mut quota_total) = (0, 0);
    for task in tasks {
        let (r, q) = task.await.unwrap();
        rate_total += r;
        quota_total += q;
    }
    // 16 × 25 asks of 9 want far more than either holds: each gives exactly what it has.
    assert_eq!(rate_total, 200);
    assert_eq!(quota_total, 300);
}

/// Redis going away makes calls fail fast (503 upstream); when it is back, the counters
/// reconnect by themselves.
#[tokio::test]
async fn redis_counters_fail_fast_when_redis_is_down_and_reconnect() {
    let server = which_redis_server();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let start = || {
        let child = std::process::Command::new(&server)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    let counters = RedisCounters::new(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let key = unique("key");
    let ask = [rate(&key, 1000.0, 1000, 1, 0)];
    let server_process = start();
    let up = async {
        for _ in 0..100 {
            if counters.take("g", &ask, SETTINGS, 0).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(up.await, "the counters never reached the test redis-server");
    drop(server_process);
    let started = std::time::Instant::now();
    assert!(counters.take("g", &ask, SETTINGS, 0).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    let _again = start();
    let mut back = false;
    for _ in 0..100 {
        if counters.take("g", &ask, SETTINGS, 0).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "the counters did not reconnect to the restarted redis-server"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which_redis_server() -> String {
    if let Ok(path) = std::env::var("REDIS_SERVER") {
        return path;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = std::path::Path::new(dir).join("redis-server");
        if candidate.is_file() {
            return candidate.display().to_string();
        }
    }
    panic!("redis-server not found: install it (apt-get install -y redis-server, or scripts/prereqs.sh) or set REDIS_SERVER");
}
