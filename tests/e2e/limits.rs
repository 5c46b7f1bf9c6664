//! Limits through a real Envoy (2 workers): the per-key rate limit shared by both workers, the
//! client address allow-list (TCP peer and `X-Forwarded-For` with trusted hops), the validity
//! window, usage reporting (including across a key-service restart) and the audit log.

use std::sync::{Arc, Barrier};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use keygate_core::key::{mint_opaque_key, GatewayKey, KeyPrefix, ID_LEN};
use keygate_core::limits::{BucketOwner, RATE_SLOTS};
use serde_json::{json, Value};

use keygate_testkit::{admin_json, admin_send, admin_send_as, rfc3339, unix_now};
use keygate_testkit::{assert_denied, assert_forwarded_with_identity};
use keygate_testkit::{
    bearer, random_hex, send, IssuedKey, KeyService, Reply, Stack, ADMIN_KEY, KEY_PREFIX,
};
use keygate_testkit::{Cluster, Database, Options};

/// Polls `check` every 100 ms until it yields `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    keygate_testkit::poll(timeout, Duration::from_millis(100), check)
}

fn patch_key(service: &KeyService, id: &str, body: &Value) -> Value {
    let reply = admin_json(
        service,
        "PATCH",
        &format!("/api/v1/auth/keys/{id}"),
        Some(body),
    );
    assert_eq!(reply.status, 200, "PATCH {id} {body}: {reply:?}");
    reply.json()
}

// ── 1. rate limit ────────────────────────────────────────────────────────────────────────────

#[test]
fn rate_limit_across_both_workers() {
    let stack = Stack::start("ratelimit");
    let issued = stack.service.create_key_from(&json!({
        "name": "limited",
        "scopes": ["demo:read"],
        "owner": "limited-owner",
        "rate_limit": {"requests_per_second": 10, "burst": 10},
    }));
    assert_eq!(
        issued.raw["rate_limit"]["burst"],
        json!(10),
        "create answer: {}",
        issued.raw
    );
    // Warm the record cache (one token), then let the bucket refill to its burst of 10.
    let warm = stack.get_with_key("/v1/rl", &issued.key);
    assert_forwarded_with_identity(&warm, &issued.id);
    sleep(Duration::from_millis(1200));

    const THREADS: usize = 50;
    const PER_THREAD: usize = 2;
    let barrier = Arc::new(Barrier::new(THREADS));
    let url = stack.url("/v1/rl");
    let auth = bearer(&issued.key);
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let url = url.clone();
            let auth = auth.clone();
            thread::spawn(move || {
                barrier.wait();
                // `send` uses a fresh connection per request: both workers serve the burst.
                (0..PER_THREAD)
                    .map(|_| send("GET", &url, &[("authorization", auth.as_str())], None))
                    .collect::<Vec<Reply>>()
            })
        })
        .collect();
    let replies: Vec<Reply> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a request thread panicked"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();

    let allowed: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    let other: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status != 200 && r.status != 429)
        .collect();
    // One shared bucket of 10 plus what refills at 10/s while the burst runs (+1 for rounding).
    let refill = (10.0 * elapsed).ceil() as usize;
    let bound = 10 + refill + 1;
    println!(
        "rate limit: {} allowed, {} limited, {} other in {elapsed:.3} s (bound {bound})",
        allowed.len(),
        limited.len(),
        other.len()
    );
    assert!(other.is_empty(), "statuses besides 200/429: {other:#?}");
    assert!(
        allowed.len() >= 10,
        "only {} of 100 allowed: the burst of 10 was not honoured\n{}",
        allowed.len(),
        stack.envoy.keygate_stats()
    );
    assert!(
        allowed.len() <= bound,
        "{} allowed in {elapsed:.3} s, more than 10 + refill ({bound}): each worker has its own bucket?\n{}",
        allowed.len(),
        stack.envoy.keygate_stats()
    );
    assert!(
        limited.len() >= 80,
        "only {} of 100 got 429 (a per-worker bucket lets up to 20 through)",
        limited.len()
    );
    for reply in &limited {
        assert_denied(reply, 429, None, Some(&issued.key));
        let retry_after = reply.header("retry-after").unwrap_or_default();
        assert!(
            retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
            "429 without a positive integer Retry-After: {reply:#?}"
        );
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"keygate\";q=10;w=1"),
            "429 RateLimit-Policy: {reply:#?}"
        );
        let state = reply.header("ratelimit").unwrap_or_default();
        assert!(
            state.starts_with("\"keygate\";r=0;t="),
            "429 RateLimit {state:?}: {reply:#?}"
        );
    }
    for reply in &allowed {
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"keygate\";q=10;w=1"),
            "allowed response RateLimit-Policy: {reply:#?}"
        );
        let state = reply.header("ratelimit").unwrap_or_default();
        assert!(
            state.starts_with("\"keygate\";r=") && state.contains(";t="),
            "allowed response RateLimit {state:?}: {reply:#?}"
        );
    }
    let counted = stack.envoy.keygate_counter("denied.rate_limited");
    assert_eq!(
        counted,
        limited.len() as u64,
        "denied.rate_limited counter vs 429s\n{}",
        stack.envoy.keygate_stats()
    );
}

// ── 2. IP allow-list ─────────────────────────────────────────────────────────────────────────

#[test]
fn ip_allow_list() {
    let stack = Stack::start_with("cidr", |cfg| cfg["cache"]["ttl_seconds"] = json!(1));
    let issued = stack.service.create_key_from(&json!({
        "name": "loopback-only",
        "scopes": ["demo:read"],
        "owner": "cidr-owner",
        "allowed_cidrs": ["127.0.0.0/8"],
    }));
    assert_forwarded_with_identity(&stack.get_with_key("/v1/ip", &issued.key), &issued.id);

    let patched = patch_key(
        &stack.service,
        &issued.id,
        &json!({"allowed_cidrs": ["192.0.2.0/24"]}),
    );
    assert_eq!(
        patched["allowed_cidrs"],
        json!(["192.0.2.0/24"]),
        "{patched}"
    );
    let before = stack.envoy.keygate_counter("denied.address_not_allowed");
    // The cached record lives 1 s: within a few seconds every worker refuses.
    let reply = poll(Duration::from_secs(6), || {
        let reply = stack.get_with_key("/v1/ip", &issued.key);
        (reply.status != 200).then_some(reply)
    })
    .unwrap_or_else(|| panic!("still 200 from 127.0.0.1 after narrowing the allow-list"));
    assert_denied(&reply, 403, None, Some(&issued.key));
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:address-not-allowed",
        "{reply:#?}"
    );
    // Both workers refuse from now on.
    for _ in 0..6 {
        assert_eq!(stack.get_with_key("/v1/ip", &issued.key).status, 403);
    }
    assert!(
        stack.envoy.keygate_counter("denied.address_not_allowed") >= before + 7,
        "denied.address_not_allowed did not count the refusals\n{}",
        stack.envoy.keygate_stats()
    );
}

#[test]
fn ip_allow_list_with_trusted_hops() {
    // envoy/envoy.yaml's HTTP connection manager sets `use_remote_address`, so Envoy appends an
    // entry of its own to X-Forwarded-For (its address, the peer being on loopback); the filter
    // skips that entry and counts hops in XFF as the client (here: "the trusted proxy") sent
    // it. The 200 below checks that by reading the XFF the upstream received.
    let stack = Stack::start_with("xff", |cfg| {
        cfg["client_address"] = json!({"trusted_hops": 1});
    });
    let issued = stack.service.create_key_from(&json!({
        "name": "one-host",
        "scopes": ["demo:read"],
        "owner": "xff-owner",
        "allowed_cidrs": ["203.0.113.7/32"],
    }));
    let auth = bearer(&issued.key);

    // One trusted hop: the rightmost entry is what our proxy saw.
    let reply = stack.get(
        "/v1/xff",
        &[
            ("authorization", auth.as_str()),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    );
    let upstream = assert_forwarded_with_identity(&reply, &issued.id);
    let forwarded = upstream
        .get("x-forwarded-for")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        forwarded.starts_with("203.0.113.7,") && forwarded.split(',').count() == 2,
        "Envoy did not append one entry to X-Forwarded-For: {upstream:#?}"
    );

    // The client prepends the allowed address itself: the rightmost entry (6.6.6.6) decides.
    let reply = stack.get(
        "/v1/xff",
        &[
            ("authorization", auth.as_str()),
            ("x-forwarded-for", "203.0.113.7, 6.6.6.6"),
        ],
    );
    assert_denied(&reply, 403, None, Some(&issued.key));
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:address-not-allowed"
    );

    // No XFF with trusted_hops 1: the address is unknown, an allow-listed key is refused (the
    // TCP peer 127.0.0.1 is the proxy, never the client).
    let reply = stack.get_with_key("/v1/xff", &issued.key);
    assert_denied(&reply, 403, None, Some(&issued.key));
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:address-not-allowed"
    );
}

// ── 3. validity window ───────────────────────────────────────────────────────────────────────

#[test]
fn validity_window() {
    let stack = Stack::start("validity");
    let now = unix_now();
    let future = stack.service.create_key_from(&json!({
        "name": "not-yet",
        "scopes": ["demo:read"],
        "owner": "validity-owner",
        "not_before": rfc3339(now + 3600),
    }));
    let before = stack.envoy.keygate_counter("denied.not_yet_valid");
    let reply = stack.get_with_key("/v1/valid", &future.key);
    assert_denied(
        &reply,
        401,
        Some("error=\"invalid_token\""),
        Some(&future.key),
    );
    assert_eq!(
        stack.envoy.keygate_counter("denied.not_yet_valid"),
        before + 1,
        "denied.not_yet_valid\n{}",
        stack.envoy.keygate_stats()
    );

    // A window opening in 2 s: refused now, accepted once it opens (record cached meanwhile).
    let soon = stack.service.create_key_from(&json!({
        "name": "soon",
        "scopes": ["demo:read"],
        "owner": "validity-owner",
        "not_before": rfc3339(unix_now() + 2),
    }));
    assert_eq!(stack.get_with_key("/v1/valid", &soon.key).status, 401);
    let opened = poll(Duration::from_secs(6), || {
        let r = stack.get_with_key("/v1/valid", &soon.key);
        (r.status == 200).then_some(r)
    });
    assert!(
        opened.is_some(),
        "the key never became valid after not_before"
    );

    // not_after 2 s ahead: accepted now, refused (401, expired) once it passes.
    let ending = stack.service.create_key_from(&json!({
        "name": "ending",
        "scopes": ["demo:read"],
        "owner": "validity-owner",
        "not_after": rfc3339(unix_now() + 2),
    }));
    assert_forwarded_with_identity(&stack.get_with_key("/v1/valid", &ending.key), &ending.id);
    let expired_before = stack.envoy.keygate_counter("denied.expired");
    let reply = poll(Duration::from_secs(6), || {
        let r = stack.get_with_key("/v1/valid", &ending.key);
        (r.status != 200).then_some(r)
    })
    .unwrap_or_else(|| panic!("still accepted well past not_after"));
    assert_denied(
        &reply,
        401,
        Some("error=\"invalid_token\""),
        Some(&ending.key),
    );
    assert!(
        stack.envoy.keygate_counter("denied.expired") > expired_before,
        "past not_after is not counted as denied.expired\n{}",
        stack.envoy.keygate_stats()
    );

    // PATCH a fresh (never used, so not cached) key's not_after into the past: its first
    // lookup already carries the closed window.
    let key = stack.service.create_key("patched-window", &["demo:read"]);
    let patched = patch_key(
        &stack.service,
        &key.id,
        &json!({"not_after": rfc3339(unix_now() - 60)}),
    );
    assert!(
        patched["not_after"].is_string(),
        "PATCH not_after: {patched}"
    );
    let reply = stack.get_with_key("/v1/valid", &key.key);
    assert_denied(&reply, 401, Some("error=\"invalid_token\""), Some(&key.key));
}

// ── 4. usage ─────────────────────────────────────────────────────────────────────────────────

fn usage(service: &KeyService, id: &str, from: i64) -> Value {
    let reply = service.usage_reply(id, from);
    assert_eq!(reply.status, 200, "usage of {id}: {reply:?}");
    reply.json()
}

fn wait_usage(
    service: &KeyService,
    id: &str,
    from: i64,
    timeout: Duration,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = poll(timeout, || {
        last = usage(service, id, from)["totals"].clone();
        want(&last).then_some(())
    });
    assert!(ok.is_some(), "usage totals of {id} never matched: {last}");
    last
}

#[test]
fn usage_counts_match_requests() {
    let mut cluster = Cluster::start(
        "usage",
        Options {
            replicas: 1,
            database: Database::Sqlite,
            feed_proxy: false,
        },
        |cfg| cfg["usage"] = json!({"enabled": true, "flush_seconds": 1}),
        |_| {},
    );
    let from = unix_now() - 180;
    let issued: IssuedKey = cluster.services[0].create_key("counted", &["demo:read"]);
    let auth = bearer(&issued.key);
    for _ in 0..7 {
        let reply = cluster.get_with_key("/v1/usage", &issued.key);
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    for _ in 0..3 {
        let reply = send(
            "POST",
            &cluster.url("/v1/usage"),
            &[("authorization", auth.as_str())],
            Some("{}"),
        );
        assert_eq!(reply.status, 403, "{reply:?}");
    }
    let totals = wait_usage(
        &cluster.services[0],
        &issued.id,
        from,
        Duration::from_secs(10),
        |t| t["allowed"] == 7 && t["denied"]["insufficient_scope"] == 3 && t["status"]["2xx"] == 7,
    );
    println!("usage totals after 10 requests: {totals}");
    let shown = admin_json(
        &cluster.services[0],
        "GET",
        &format!("/api/v1/auth/keys/{}", issued.id),
        None,
    );
    assert!(
        shown.json()["last_used_at"].is_string(),
        "last_used_at not set: {}",
        shown.body
    );

    // The key service is down for ~3 s while the cached key keeps working; the filter keeps
    // the counts and reports them once the service is back on the same database.
    cluster.kill_replica(0);
    let down_at = Instant::now();
    for _ in 0..5 {
        let reply = cluster.get_with_key("/v1/usage", &issued.key);
        assert_eq!(
            reply.status, 200,
            "cached key while the service is down: {reply:?}"
        );
        sleep(Duration::from_millis(200));
    }
    if let Some(rest) = Duration::from_secs(3).checked_sub(down_at.elapsed()) {
        sleep(rest);
    }
    cluster.restart_replica(0);
    let totals = wait_usage(
        &cluster.services[0],
        &issued.id,
        from,
        Duration::from_secs(10),
        |t| t["allowed"].as_u64().unwrap_or(0) >= 12,
    );
    assert_eq!(
        totals["allowed"], 12,
        "usage over-counted across the restart: {totals}"
    );
    assert_eq!(totals["denied"]["insufficient_scope"], 3, "{totals}");
    println!(
        "usage after the restart: {totals}; flush failures {}",
        cluster.counter("usage.flush_failure")
    );
}

// ── 5. audit log ─────────────────────────────────────────────────────────────────────────────

#[test]
fn audit_log_has_every_action_and_no_secret() {
    let stack = Stack::start("audit");
    let service = &stack.service;
    let opaque = service.create_key("audited", &["demo:read"]);
    let jwt = service.create_jwt_key("audited-jwt", &["demo:read"], "ES256", 3600);
    let patched = patch_key(service, &opaque.id, &json!({"name": "audited-renamed"}));
    assert_eq!(patched["name"], "audited-renamed");
    let successor = service.rotate(&opaque.id, 60);
    service.revoke(&jwt.id);
    let doomed = service.create_key("doomed", &["demo:read"]);
    let reply = admin_send(
        service,
        "POST",
        &format!("/api/v1/auth/keys/{}/expire", doomed.id),
        None,
        "application/json",
    );
    assert!((200..300).contains(&reply.status), "expire: {reply:?}");
    let wrong_admin = format!("kg-wrong-admin-{}", random_hex(24));
    let reply = admin_send_as(
        service,
        &wrong_admin,
        "GET",
        "/api/v1/auth/keys",
        None,
        "application/json",
    );
    assert_eq!(reply.status, 401, "wrong admin key: {reply:?}");
    let legacy_plain = format!("legacy-audit-{}", random_hex(16));
    let import = json!([{"name": "legacy-audit", "scopes": ["demo:read"], "key": legacy_plain}]);
    let reply = admin_send(
        service,
        "POST",
        "/api/v1/auth/keys/import?format=json",
        Some(&import.to_string()),
        "application/json",
    );
    assert_eq!(reply.status, 200, "import: {reply:?}");
    assert_eq!(reply.json()["created"], 1, "{}", reply.body);

    let reply = admin_json(service, "GET", "/api/v1/audit?limit=100", None);
    assert_eq!(reply.status, 200, "GET /api/v1/audit: {reply:?}");
    let audit = reply.json();
    let entries = audit["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no `entries` in {audit}"))
        .clone();
    let find = |action: &str, target: Option<&str>| -> Value {
        entries
            .iter()
            .find(|e| e["action"] == action && target.is_none_or(|t| e["target"] == t))
            .cloned()
            .unwrap_or_else(|| {
                panic!("no `{action}` entry for {target:?} in the audit log:\n{audit:#}")
            })
    };
    let mut actors = Vec::new();
    for (action, target) in [
        ("create", Some(opaque.id.as_str())),
        ("create", Some(jwt.id.as_str())),
        ("create", Some(doomed.id.as_str())),
        ("update", Some(opaque.id.as_str())),
        ("rotate", Some(opaque.id.as_str())),
        ("revoke", Some(jwt.id.as_str())),
        ("expire", Some(doomed.id.as_str())),
        ("import", None),
    ] {
        let entry = find(action, target);
        assert_eq!(entry["outcome"], "ok", "{action}: {entry}");
        let actor = entry["actor"].as_str().unwrap_or_default().to_string();
        assert!(!actor.is_empty(), "{action} has no actor: {entry}");
        actors.push(actor);
    }
    actors.dedup();
    assert_eq!(
        actors.len(),
        1,
        "one admin key did everything, yet the actors differ: {actors:?}"
    );
    let rotate = find("rotate", Some(&opaque.id));
    assert_eq!(
        rotate["detail"]["successor"], successor.id,
        "rotate detail: {rotate}"
    );
    let update = find("update", Some(&opaque.id));
    assert!(
        update["detail"].to_string().contains("name"),
        "update detail lacks the changed field: {update}"
    );
    let denied = find("admin_auth", None);
    assert_eq!(denied["outcome"], "denied", "{denied}");
    assert!(
        denied["actor"].is_null(),
        "a failed admin auth has an actor: {denied}"
    );

    // No secret anywhere: the whole audit log, the key service's log.
    let log = std::fs::read_to_string(&service.proc.log).unwrap_or_default();
    let dump = audit.to_string();
    let gateway_key = stack.gateway_key();
    let jwt_signature = jwt.key.rsplit('.').next().unwrap_or_default().to_string();
    let secrets = [
        ("opaque key", opaque.key.as_str()),
        ("JWT key", jwt.key.as_str()),
        ("JWT signature", jwt_signature.as_str()),
        ("rotated successor key", successor.key.as_str()),
        ("expired key", doomed.key.as_str()),
        ("legacy plaintext", legacy_plain.as_str()),
        ("admin key", ADMIN_KEY),
        ("wrong admin key", wrong_admin.as_str()),
        ("service token", service.service_token.as_str()),
        ("gateway key", gateway_key.trim()),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 16, "{what} too short to search: {secret:?}");
        assert!(!dump.contains(secret), "the audit log holds the {what}");
        assert!(
            !log.contains(secret),
            "the key service log ({}) holds the {what}",
            service.proc.log.display()
        );
    }
}

// ── 6. buckets that hold: collisions, load, contention ───────────────────────────────────────

/// Counts allowed (200) and limited (429) replies; anything else fails the test.
fn tally(replies: &[Reply], what: &str) -> (usize, usize) {
    let other: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status != 200 && r.status != 429)
        .collect();
    assert!(
        other.is_empty(),
        "{what}: statuses besides 200/429: {other:#?}"
    );
    let allowed = replies.iter().filter(|r| r.status == 200).count();
    (allowed, replies.len() - allowed)
}

/// Creates keys with `rate_limit` until two of them share a rate-limit slot (slot numbers are
/// computable from public key ids: anyone can pick such a pair from their own keys).
fn colliding_pair(service: &KeyService, rate_limit: &Value) -> (IssuedKey, IssuedKey) {
    let mut by_slot = std::collections::HashMap::new();
    for n in 0..2000 {
        let issued = service.create_key_from(&json!({
            "name": format!("collide-{n}"),
            "scopes": ["demo:read"],
            "owner": format!("collide-owner-{n}"),
            "rate_limit": rate_limit,
        }));
        let slot = BucketOwner::key(&issued.id).slot();
        if let Some(first) = by_slot.insert(slot, issued.clone()) {
            return (first, issued);
        }
    }
    panic!("no two of 2000 keys share one of {RATE_SLOTS} slots");
}

#[test]
fn keys_sharing_a_bucket_slot_never_reset_each_other() {
    // One record slot too, so that the record cache cannot hide anything either.
    let stack = Stack::start_with("rl-collide", |cfg| cfg["cache"]["max_entries"] = json!(1));
    let (a, b) = colliding_pair(
        &stack.service,
        &json!({"requests_per_second": 1, "burst": 3}),
    );
    let started = Instant::now();
    let mut replies = (Vec::new(), Vec::new());
    // Alternating the two keys: were one's bucket reset to full by the other, every request
    // would pass.
    for _ in 0..10 {
        replies.0.push(stack.get_with_key("/v1/collide", &a.key));
        replies.1.push(stack.get_with_key("/v1/collide", &b.key));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 3 + elapsed.floor() as usize;
    for (issued, replies) in [(&a, &replies.0), (&b, &replies.1)] {
        let (allowed, limited) = tally(replies, &issued.id);
        println!(
            "key {}: {allowed} allowed, {limited} limited in {elapsed:.2} s",
            issued.id
        );
        assert!(
            allowed >= 3,
            "key {}: only {allowed} allowed, its burst is 3",
            issued.id
        );
        assert!(
            allowed <= bound,
            "key {}: {allowed} of 10 allowed in {elapsed:.2} s (at most {bound}): the other key \
             of its slot reset its bucket\n{}",
            issued.id,
            stack.envoy.keygate_stats()
        );
    }
    assert_eq!(stack.envoy.keygate_counter("rate_limit_contention"), 0);
}

/// Sends GETs with `key` on fresh connections until `until`; returns the statuses.
fn hammer(url: &str, key: &str, until: Instant) -> Vec<u16> {
    let auth = bearer(key);
    let mut statuses = Vec::new();
    while Instant::now() < until {
        statuses.push(send("GET", url, &[("authorization", auth.as_str())], None).status);
    }
    statuses
}

#[test]
fn many_limited_keys_under_load_each_stay_within_their_limit() {
    const KEYS: usize = 500;
    const ROUND_ROBIN_THREADS: usize = 6;
    const HOT_THREADS: usize = 3;
    const LOAD: Duration = Duration::from_secs(6);
    let stack = Stack::start("rl-load");
    let hot_limit = (50.0, 50u32);
    let cold_limit = (0.1, 1u32);
    let hot = stack.service.create_key_from(&json!({
        "name": "hot", "scopes": ["demo:read"], "owner": "hot-owner",
        "rate_limit": {"requests_per_second": hot_limit.0, "burst": hot_limit.1},
    }));
    let keys: Vec<IssuedKey> = (0..KEYS)
        .map(|n| {
            stack.service.create_key_from(&json!({
                "name": format!("rr-{n}"), "scopes": ["demo:read"], "owner": format!("rr-owner-{n}"),
                "rate_limit": {"requests_per_second": cold_limit.0, "burst": cold_limit.1},
            }))
        })
        .collect();
    let url = stack.url("/v1/load");

    // Every key's bucket starts at its first request (counted like any other).
    let started = Instant::now();
    let mut statuses: Vec<Vec<u16>> = vec![Vec::new(); KEYS];
    for (issued, statuses) in keys.iter().zip(&mut statuses) {
        statuses.push(stack.get_with_key("/v1/load", &issued.key).status);
    }
    let hot_started = Instant::now();
    let mut hot_statuses = vec![stack.get_with_key("/v1/load", &hot.key).status];

    let until = Instant::now() + LOAD;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keys = Arc::new(keys);
    let round_robin: Vec<_> = (0..ROUND_ROBIN_THREADS)
        .map(|_| {
            let (next, keys, url) = (Arc::clone(&next), Arc::clone(&keys), url.clone());
            thread::spawn(move || {
                let mut seen = Vec::new();
                while Instant::now() < until {
                    let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % KEYS;
                    let auth = bearer(&keys[at].key);
                    let reply = send("GET", &url, &[("authorization", auth.as_str())], None);
                    seen.push((at, reply.status));
                }
                seen
            })
        })
        .collect();
    let hot_threads: Vec<_> = (0..HOT_THREADS)
        .map(|_| {
            let (url, key) = (url.clone(), hot.key.clone());
            thread::spawn(move || hammer(&url, &key, until))
        })
        .collect();
    for handle in round_robin {
        for (at, status) in handle.join().expect("a round-robin thread panicked") {
            statuses[at].push(status);
        }
    }
    for handle in hot_threads {
        hot_statuses.extend(handle.join().expect("a hot-key thread panicked"));
    }
    // Each bound counts from before the key's first request to after its last answer.
    let elapsed = started.elapsed().as_secs_f64();
    let hot_elapsed = hot_started.elapsed().as_secs_f64();

    let bound =
        |(rate, burst): (f64, u32), elapsed: f64| (rate * elapsed + f64::from(burst)) * 1.02;
    let check = |what: &str, statuses: &[u16], limit: (f64, u32), elapsed: f64| {
        let other: Vec<&u16> = statuses
            .iter()
            .filter(|s| **s != 200 && **s != 429)
            .collect();
        assert!(
            other.is_empty(),
            "{what}: statuses besides 200/429: {other:?}\n{}",
            stack.envoy.keygate_stats()
        );
        let allowed = statuses.iter().filter(|s| **s == 200).count();
        assert!(
            allowed as f64 <= bound(limit, elapsed),
            "{what}: {allowed} of {} allowed in {elapsed:.2} s, more than {:.2} \
             (rate × seconds + burst, +2%)\n{}",
            statuses.len(),
            bound(limit, elapsed),
            stack.envoy.keygate_stats()
        );
        (allowed, statuses.len() - allowed)
    };
    let (hot_allowed, hot_limited) = check("hot key", &hot_statuses, hot_limit, hot_elapsed);
    let mut attempts = 0;
    let mut limited = 0;
    for (n, statuses) in statuses.iter().enumerate() {
        let (_, refused) = check(
            &format!("round-robin key {n}"),
            statuses,
            cold_limit,
            elapsed,
        );
        attempts += statuses.len();
        limited += refused;
    }
    println!(
        "{elapsed:.2} s: hot key {hot_allowed} allowed / {hot_limited} limited \
         (bound {:.1}); {KEYS} keys {attempts} requests, {limited} limited (bound {:.2} each)",
        bound(hot_limit, hot_elapsed),
        bound(cold_limit, elapsed)
    );
    // The load really exceeded the limits, or the bounds above proved nothing.
    assert!(
        hot_limited > 0,
        "the hot key was never limited: not enough load"
    );
    assert!(
        limited > 0,
        "round-robin keys: {attempts} requests, none limited: not enough load"
    );
    assert_eq!(stack.envoy.keygate_counter("rate_limit_contention"), 0);
}

// ── 7. status details only after the secret matched ──────────────────────────────────────────

/// A key with an authentic tag (built with the gateway key) under `id`, with another secret.
fn same_id_other_secret(stack: &Stack, id: &str) -> String {
    let mut id_bytes = [0u8; ID_LEN];
    keygate_core::base32::decode_into(id.as_bytes(), &mut id_bytes)
        .unwrap_or_else(|| panic!("key id {id} is not base32"));
    let gateway_key = GatewayKey::from_hex(stack.gateway_key().trim()).expect("gateway key");
    let prefix = KeyPrefix::parse(KEY_PREFIX).expect("prefix");
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&hex_bytes(&random_hex(32)));
    let minted = mint_opaque_key(&prefix, &gateway_key, id_bytes, secret);
    assert_eq!(minted.id.as_str(), id);
    minted.plaintext
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A revoked key's id with another secret gets the generic answer of a wrong secret,
/// whether the id's record is cached or only its revocation (from the feed) is known.
#[test]
fn revoked_id_with_another_secret_learns_nothing() {
    let stack = Stack::start("deny-details");
    let used = stack
        .service
        .create_key_from(&json!({"name": "used", "scopes": ["demo:read"], "owner": "o1"}));
    let unused = stack
        .service
        .create_key_from(&json!({"name": "unused", "scopes": ["demo:read"], "owner": "o2"}));
    // `used` has its record cached on the way; `unused` is never presented before its revoke.
    assert_forwarded_with_identity(&stack.get_with_key("/v1/d", &used.key), &used.id);
    stack.service.revoke(&used.id);
    stack.service.revoke(&unused.id);
    // The holder of the secret learns that the key is revoked (feed: within moments).
    let reply = poll(Duration::from_secs(10), || {
        let reply = stack.get_with_key("/v1/d", &used.key);
        (reply.status == 401).then_some(reply)
    })
    .unwrap_or_else(|| panic!("the revoked key still passes"));
    assert_eq!(
        reply.json()["type"],
        "urn:keygate:problem:revoked-key",
        "{reply:#?}"
    );
    // Wait until the feed has the unused key's revocation too.
    let _ = poll(Duration::from_secs(10), || {
        (stack.envoy.keygate_counter("feed.revoked_ids") >= 2).then_some(())
    });

    // The reference: an active key's id with another secret (a plain wrong secret).
    let active = stack
        .service
        .create_key_from(&json!({"name": "active", "scopes": ["demo:read"], "owner": "o3"}));
    let wrong_secret = stack.get_with_key("/v1/d", &same_id_other_secret(&stack, &active.id));
    assert_denied(&wrong_secret, 401, Some("error=\"invalid_token\""), None);
    for (what, id) in [("cached record", &used.id), ("feed only", &unused.id)] {
        for _ in 0..4 {
            let before = stack.envoy.keygate_counter("denied.revoked");
            let forged = same_id_other_secret(&stack, id);
            let reply = stack.get_with_key("/v1/d", &forged);
            assert_denied(&reply, 401, Some("error=\"invalid_token\""), Some(&forged));
            assert_eq!(
                reply.json()["type"],
                "urn:keygate:problem:invalid-key",
                "{what}: a key with the revoked id {id} and another secret was told more \
                 than a wrong secret is: {reply:#?}"
            );
            assert_eq!(reply.body, wrong_secret.body, "{what}: body differs");
            assert_eq!(
                reply.header("www-authenticate"),
                wrong_secret.header("www-authenticate"),
                "{what}: challenge differs"
            );
            assert_eq!(
                stack.envoy.keygate_counter("denied.revoked"),
                before,
                "{what}: counted as revoked"
            );
        }
    }
    // The real holders still learn the truth.
    for issued in [&used, &unused] {
        let reply = stack.get_with_key("/v1/d", &issued.key);
        assert_denied(&reply, 401, None, Some(&issued.key));
        assert_eq!(
            reply.json()["type"],
            "urn:keygate:problem:revoked-key",
            "{reply:#?}"
        );
    }
}

// ── 8. legacy lookups: their own cap and a negative cache ────────────────────────────────────

/// Sends `per_thread` GETs with fresh legacy-looking strings from `threads` clients at once;
/// returns the statuses.
fn legacy_spray(stack: &Stack, threads: usize, per_thread: usize) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(threads));
    let url = stack.url("/v1/s");
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, url) = (Arc::clone(&barrier), url.clone());
            thread::spawn(move || {
                barrier.wait();
                (0..per_thread)
                    .map(|_| {
                        let auth = bearer(&format!("sk_old_{}", random_hex(16)));
                        send("GET", &url, &[("authorization", auth.as_str())], None).status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a spray thread panicked"))
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "spray statuses: {statuses:?}"
    );
    statuses
}

/// Unknown legacy strings are remembered apart: they evict no cached record, and one that
/// comes back is answered without asking the key service again.
#[test]
fn legacy_spray_evicts_no_record() {
    let stack = Stack::start_with("legacy-evict", |cfg| {
        cfg["legacy_keys"] = json!({"prefixes": ["sk_old_"]});
        // Few record slots: unknown strings written there would evict real records at once.
        cfg["cache"]["max_entries"] = json!(4);
    });
    let real = stack.service.create_key("real", &["demo:read"]);
    assert_forwarded_with_identity(&stack.get_with_key("/v1/s", &real.key), &real.id);
    legacy_spray(&stack, 4, 16);

    // The real key's record is still cached: no lookup for it.
    let lookups = stack.service.lookups();
    for _ in 0..4 {
        assert_forwarded_with_identity(&stack.get_with_key("/v1/s", &real.key), &real.id);
    }
    assert_eq!(
        stack.service.lookups(),
        lookups,
        "the spray evicted the real key's cached record"
    );

    // An unknown legacy string is asked about once per worker, then answered from the
    // negative cache.
    let unknown = format!("sk_old_{}", random_hex(16));
    let lookups = stack.service.lookups();
    for _ in 0..8 {
        let reply = stack.get_with_key("/v1/s", &unknown);
        assert_denied(&reply, 401, None, Some(&unknown));
    }
    let asked = stack.service.lookups() - lookups;
    assert!(
        (1..=2).contains(&asked),
        "{asked} lookups for one unknown legacy string sent 8 times"
    );
}

/// Legacy lookups have their own in-flight cap: a spray meets it (503) while the lookups of
/// real keys go on.
#[test]
fn legacy_spray_meets_its_own_lookup_cap() {
    let stack = Stack::start_with("legacy-cap", |cfg| {
        cfg["legacy_keys"] = json!({"prefixes": ["sk_old_"], "max_in_flight": 1});
    });
    let statuses = legacy_spray(&stack, 16, 8);
    assert!(
        statuses.contains(&503),
        "with legacy_keys.max_in_flight 1, 16 concurrent sprayers never met the cap: \
         {statuses:?}\n{}",
        stack.envoy.keygate_stats()
    );
    // A new key is looked up at once: the spray holds none of its lookup slots.
    let fresh = stack.service.create_key("fresh", &["demo:read"]);
    assert_forwarded_with_identity(&stack.get_with_key("/v1/s", &fresh.key), &fresh.id);
}

/// A route's default limit covers every credential kind: legacy keys (decided by their
/// imported record) and Keygate keys without a limit of their own alike.
#[test]
fn route_default_limits_legacy_and_plain_keys() {
    let stack = Stack::start_with("rl-route-default", |cfg| {
        cfg["legacy_keys"] = json!({"header": "x-legacy-key"});
        for route in cfg["routes"].as_array_mut().expect("routes") {
            if route.get("scopes").is_some() {
                route["rate_limit"] = json!({"requests_per_second": 0.5, "burst": 2});
            }
        }
    });
    let legacy = format!("legacy-{}", random_hex(20));
    let file = json!([
        {"name": "old", "owner": "old-owner", "scopes": ["demo:read"], "key": legacy},
    ])
    .to_string();
    let reply = admin_send(
        &stack.service,
        "POST",
        "/api/v1/auth/keys/import?format=json",
        Some(&file),
        "application/json",
    );
    assert_eq!(reply.status, 200, "import: {reply:?}");
    let plain = stack.service.create_key("no-limit", &["demo:read"]);

    let started = Instant::now();
    let legacy_replies: Vec<Reply> = (0..6)
        .map(|_| stack.get("/v1/rd", &[("x-legacy-key", legacy.as_str())]))
        .collect();
    let plain_replies: Vec<Reply> = (0..6)
        .map(|_| stack.get_with_key("/v1/rd", &plain.key))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 2 + (0.5 * elapsed).floor() as usize;
    for (what, replies) in [
        ("legacy key", &legacy_replies),
        ("plain key", &plain_replies),
    ] {
        let (allowed, limited) = tally(replies, what);
        assert!(
            (2..=bound).contains(&allowed) && limited > 0,
            "{what}: {allowed} allowed, {limited} limited in {elapsed:.2} s under the route \
             default (burst 2, 0.5/s)"
        );
    }
}
