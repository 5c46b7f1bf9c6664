//! Fleet-wide limits through three real Envoys (2 workers each) and a real key service: one
//! key's global limit held across the fleet with the counts in a real `redis-server`, the
//! fallback when Redis and then the key service die, and a quota spent by route cost on the
//! single-service default (counts in the key service's memory).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use keygate_core::fleet::{lease_size, quota_lease_size};
use keygate_core::wire::RateLimit;
use serde_json::{json, Value};

use keygate_testkit::{bearer, send, Cluster, Envoy, Redis, Reply, StackBuilder};

/// Concurrent clients per Envoy.
const CLIENTS: usize = 4;

/// What a load run saw, by status.
#[derive(Debug, Default)]
struct Tally {
    allowed: u64,
    limited: u64,
    unavailable: u64,
    other: u64,
}

/// Sends GET `path` with `key` from `CLIENTS` clients per listener for `run`; counts what
/// came back. `stop` ends a client early when it returns true for an answer.
fn load(
    listeners: &[u16],
    path: &str,
    key: &str,
    run: Duration,
    stop: fn(&Reply) -> bool,
) -> Tally {
    let counts: [AtomicU64; 4] = Default::default();
    let until = Instant::now() + run;
    let authorization = bearer(key);
    thread::scope(|scope| {
        for &port in listeners {
            for _ in 0..CLIENTS {
                let (counts, authorization) = (&counts, &authorization);
                scope.spawn(move || {
                    let url = format!("http://127.0.0.1:{port}{path}");
                    while Instant::now() < until {
                        let reply = send("GET", &url, &[("authorization", authorization)], None);
                        let slot = match reply.status {
                            200 => 0,
                            429 => 1,
                            503 => 2,
                            _ => 3,
                        };
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                        if stop(&reply) {
                            break;
                        }
                    }
                });
            }
        }
    });
    Tally {
        allowed: counts[0].load(Ordering::Relaxed),
        limited: counts[1].load(Ordering::Relaxed),
        unavailable: counts[2].load(Ordering::Relaxed),
        other: counts[3].load(Ordering::Relaxed),
    }
}

fn fallback_count(envoys: &[&Envoy]) -> u64 {
    envoys
        .iter()
        .map(|e| e.keygate_counter("fleet_fallback"))
        .sum()
}

/// Three Envoys on one cluster: the cluster's own and two more.
fn fleet(cluster: &Cluster) -> (Vec<Envoy>, Vec<u16>) {
    let (two, two_port) = cluster.extra_envoy(1);
    let (three, three_port) = cluster.extra_envoy(2);
    (
        vec![two, three],
        vec![cluster.ports.listener, two_port, three_port],
    )
}

#[test]
fn a_global_limit_holds_across_three_envoys_and_falls_back_without_redis() {
    const RATE: f64 = 100.0;
    const BURST: u32 = 100;
    const SECONDS: u64 = 20;
    let dir = keygate_testkit::TempDir::new("fleet-redis");
    let mut redis = Redis::start(dir.path());
    let url = redis.url();
    let mut cluster = StackBuilder::new("fleet")
        .workers(2)
        .service_env(&[("KEYGATE_REDIS_URL", url.as_str())])
        .start();
    let (extra, listeners) = fleet(&cluster);
    let issued = cluster.services[0].create_key_from(&json!({
        "name": "global",
        "scopes": ["demo:read"],
        "global_limit": {"requests_per_second": RATE, "burst": BURST},
    }));

    // 1. Load on all three for 20 s: the fleet allows at most 100 × 20 + burst (+5 %).
    let tally = load(
        &listeners,
        "/v1/fleet",
        &issued.key,
        Duration::from_secs(SECONDS),
        |_| false,
    );
    let bound = RATE * SECONDS as f64 + f64::from(BURST);
    let overshoot = tally.allowed as f64 - bound;
    println!(
        "fleet limit {RATE} r/s, burst {BURST}, {SECONDS} s on 3 Envoys × 2 workers: {tally:?}; \
         allowed {} against {bound} (overshoot {overshoot:+}, {:+.2} %)",
        tally.allowed,
        overshoot / bound * 100.0
    );
    assert!(
        tally.allowed as f64 <= bound * 1.05,
        "the fleet allowed {} > {bound} + 5 %: {tally:?}",
        tally.allowed
    );
    assert!(
        tally.allowed as f64 >= bound * 0.5,
        "the fleet allowed too little ({} of {bound}): {tally:?}",
        tally.allowed
    );
    assert!(tally.limited > 0, "the load exceeded the limit: {tally:?}");
    assert_eq!(tally.other, 0, "{tally:?}");

    // 2. Redis dies: the key service cannot grant, each Envoy falls back to its share
    // (limit ÷ 3 gateways); the fleet stays within the limit, plus each one's burst share and
    // the leases it held.
    let all: Vec<&Envoy> = std::iter::once(&cluster.envoy)
        .chain(extra.iter())
        .collect();
    let before = fallback_count(&all);
    redis.kill();
    let limit = RateLimit {
        requests_per_second: RATE,
        burst: BURST,
    };
    let fallback_bound = |seconds: u64| {
        (RATE * seconds as f64 + f64::from(BURST) + 3.0 * f64::from(lease_size(&limit, 3, 500)))
            * 1.05
    };
    let tally = load(
        &listeners,
        "/v1/fleet",
        &issued.key,
        Duration::from_secs(6),
        |_| false,
    );
    let fallbacks = fallback_count(&all) - before;
    println!("without Redis, 6 s: {tally:?}; {fallbacks} requests decided by the fallback");
    assert!(tally.allowed > 0, "the fallback allows: {tally:?}");
    assert!(fallbacks > 0, "the fallback was used and counted");
    assert!(
        tally.allowed as f64 <= fallback_bound(6),
        "without Redis the fleet allowed {} > {}: {tally:?}",
        tally.allowed,
        fallback_bound(6)
    );
    assert_eq!(tally.other, 0, "{tally:?}");

    // 3. The key service dies too: the fallback goes on from cached records; every Envoy
    // still answers.
    cluster.services[0].stop();
    let tally = load(
        &listeners,
        "/v1/fleet",
        &issued.key,
        Duration::from_secs(6),
        |_| false,
    );
    println!("without the key service, 6 s: {tally:?}");
    assert!(tally.allowed > 0, "the fallback allows: {tally:?}");
    assert!(
        tally.allowed as f64 <= fallback_bound(6),
        "without the key service the fleet allowed {} > {}: {tally:?}",
        tally.allowed,
        fallback_bound(6)
    );
    assert_eq!(tally.other, 0, "{tally:?}");
    for envoy in &all {
        assert!(
            envoy.stats().contains("keygate.fleet_fallback"),
            "Envoy on admin port {} still answers",
            envoy.admin_port
        );
    }
}

#[test]
fn a_quota_spent_by_route_cost_across_three_envoys_on_one_key_service() {
    const QUOTA: u64 = 1_000;
    const COST: u64 = 10;
    // No Redis: the single key service keeps the counts in memory (the default).
    let cluster = StackBuilder::new("fleet-quota")
        .workers(2)
        .plugin(|config: &mut Value| {
            let routes = config["routes"].as_array_mut().expect("routes");
            routes.insert(
                0,
                json!({"prefix": "/v1/reports", "scopes": ["demo:read"], "cost": COST}),
            );
        })
        .start();
    let (extra, listeners) = fleet(&cluster);
    let service = &cluster.services[0];
    let issued = service.create_key_from(&json!({
        "name": "metered",
        "scopes": ["demo:read"],
        "quota": {"limit": QUOTA, "period": "day"},
    }));

    let exhausted = |reply: &Reply| {
        reply.status == 429 && reply.body.contains("urn:keygate:problem:quota-exhausted")
    };
    // Load for a while past the end of the quota: tokens a gateway held when its lease ran
    // out go back to the service with its next ask, and are spent then.
    let tally = load(
        &listeners,
        "/v1/reports",
        &issued.key,
        Duration::from_secs(8),
        |_| false,
    );
    let all: Vec<&Envoy> = std::iter::once(&cluster.envoy)
        .chain(extra.iter())
        .collect();
    // What is still in the gateways' leases (less than one request's cost each) is spent by
    // requests that cost 1 (a plain route), until the quota refuses them too.
    let mut plain_allowed = 0;
    let plain = loop {
        let reply = send(
            "GET",
            &format!("http://127.0.0.1:{}/v1/other", listeners[plain_allowed % 3]),
            &[("authorization", &bearer(&issued.key))],
            None,
        );
        if reply.status != 200 || plain_allowed > 3 * COST as usize {
            break reply;
        }
        plain_allowed += 1;
    };
    let spent = tally.allowed * COST + plain_allowed as u64;
    let bound = QUOTA + 3 * u64::from(quota_lease_size(QUOTA, 3));
    println!(
        "quota {QUOTA} at cost {COST} on 3 Envoys: {tally:?}, then {plain_allowed} at cost 1; \
         {spent} units allowed (overshoot {:+}); {} decided by the fallback",
        spent as i64 - QUOTA as i64,
        fallback_count(&all)
    );
    assert!(spent <= bound, "{spent} units > {bound}: {tally:?}");
    assert!(spent >= QUOTA * 9 / 10, "the quota was spent: {tally:?}");
    assert!(tally.limited > 0, "{tally:?}");
    assert_eq!(tally.other + tally.unavailable, 0, "{tally:?}");
    assert!(exhausted(&plain), "a plain route is refused too: {plain:?}");

    // The refusal says it is the quota, with the IETF headers.
    let reply = send(
        "GET",
        &format!("http://127.0.0.1:{}/v1/reports", listeners[1]),
        &[("authorization", &bearer(&issued.key))],
        None,
    );
    assert!(exhausted(&reply), "{reply:?}");
    let body: Value = serde_json::from_str(&reply.body).expect("a problem body");
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("quota"),
        "{body}"
    );
    let policy = reply.header("ratelimit-policy").unwrap_or_default();
    assert_eq!(policy, format!("\"quota\";q={QUOTA};w=86400"), "{reply:?}");
    assert!(reply
        .header("ratelimit")
        .is_some_and(|v| v.starts_with("\"quota\";r=0;t=")));
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
}
