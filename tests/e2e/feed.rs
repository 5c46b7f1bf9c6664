//! The revocation feed end to end: real Envoy (2 workers), real key-service replicas (on one
//! PostgreSQL database, or SQLite), revocations reaching every worker through the follower's
//! long-poll, and the faults: a killed key service, a restarted PostgreSQL, a feed answering 500
//! or garbage. Propagation times are printed (`--nocapture` shows them).
//!
//! PostgreSQL comes from `KEYGATE_TEST_POSTGRES_URL` (`make test` starts a cluster); the tests
//! fail without it. `postgres_restart` runs a private cluster of its own (scripts/postgres.sh).

use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use keygate_testkit::{bearer, send, IssuedKey, KeyService, Reply, Stack, ADMIN_KEY};
use keygate_testkit::{
    create_database, feed_stats, must, postgres_server_url, prime_feed, Cluster, Database,
    FeedMode, Options, PgCluster,
};

/// The bound the issue sets for "the next request is refused".
const PROPAGATION_BOUND: Duration = Duration::from_millis(1000);
/// Requests after the first refusal that must all be refused too.
const CONFIRMATIONS: usize = 10;
const PATH: &str = "/v1/feed-check";

fn feed_settings(plugin: &mut Value, settings: Value) {
    plugin["revocation_feed"] = settings;
}

/// Uses `key` until it is accepted (the first use looks it up; a JWT waits for the JWKS), then
/// `CONFIRMATIONS` more times on fresh connections so both workers have seen it.
fn warm(cluster: &Cluster, key: &IssuedKey) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = cluster.get_with_key(PATH, &key.key);
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "key {} never accepted: {reply:?}\n{}",
            key.id,
            cluster.envoy.keygate_stats()
        );
        sleep(Duration::from_millis(100));
    }
    for _ in 0..CONFIRMATIONS {
        let reply = cluster.get_with_key(PATH, &key.key);
        assert_eq!(reply.status, 200, "warm key {} refused: {reply:?}", key.id);
    }
}

/// After `revoked_at`: requests with `key` on fresh connections, back to back, until
/// `CONFIRMATIONS` + 1 in a row are refused with 401; asserts that this run of refusals is
/// complete within `bound`. (Workers load a new set on their next tick, so for a few ms one
/// worker may refuse while the other still accepts; such answers are counted and printed.)
fn assert_refused_within(
    cluster: &Cluster,
    key: &IssuedKey,
    revoked_at: Instant,
    bound: Duration,
    what: &str,
) -> Duration {
    let (first, before) = cluster.until_refused(&key.key, revoked_at, bound);
    let mut streak = 1;
    let mut stable_from = first;
    let mut flips = 0;
    while streak <= CONFIRMATIONS {
        let reply = cluster.get_with_key(PATH, &key.key);
        let at = revoked_at.elapsed();
        if reply.status == 401 {
            streak += 1;
        } else {
            assert_eq!(reply.status, 200, "{what}: unexpected answer {reply:?}");
            flips += 1;
            streak = 0;
            stable_from = at;
        }
        assert!(
            at < bound,
            "{what}: not refused consistently {at:?} after the revoke ({flips} acceptances \
             after the first refusal)\n{}",
            cluster.envoy.keygate_stats()
        );
    }
    let all = revoked_at.elapsed();
    println!(
        "{what}: first 401 {:.1} ms after the revoke returned ({before} acceptances before it, \
         {flips} after it), refused from {:.1} ms, {} in a row by {:.1} ms",
        first.as_secs_f64() * 1000.0,
        stable_from.as_secs_f64() * 1000.0,
        CONFIRMATIONS + 1,
        all.as_secs_f64() * 1000.0
    );
    all
}

/// The replica not holding the follower's long-poll (so the event must cross replicas).
fn other_replica(cluster: &Cluster) -> (usize, usize) {
    let holder = cluster.wait_follower(Duration::from_secs(10));
    (holder, (holder + 1) % cluster.services.len())
}

/// `DELETE /api/v1/auth/keys/{id}` on `service`, retried on 5xx/transport errors until
/// `timeout` (right after a database restart); returns the number of attempts.
fn revoke_retrying(service: &KeyService, id: &str, timeout: Duration) -> u32 {
    let deadline = Instant::now() + timeout;
    let auth = bearer(ADMIN_KEY);
    let url = service.url(&format!("/api/v1/auth/keys/{id}"));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let status = match agent
            .delete(&url)
            .set("authorization", auth.as_str())
            .call()
        {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(_) => 0,
        };
        if (200..300).contains(&status) {
            return attempts;
        }
        assert!(
            (status == 0 || status >= 500) && Instant::now() < deadline,
            "revoking {id}: status {status} after {attempts} attempts"
        );
        sleep(Duration::from_millis(50));
    }
}

// ── 1. two replicas on PostgreSQL ────────────────────────────────────────────────────────────

#[test]
fn two_replicas_on_postgres() {
    let database = create_database(&postgres_server_url());
    let mut jwt = None;
    let cluster = Cluster::start(
        "feed-pg",
        Options {
            replicas: 2,
            database: Database::Postgres(database),
            feed_proxy: false,
        },
        |_| {},
        // Minted before Envoy starts, so its first JWKS fetch has the signing key.
        |services| {
            prime_feed(&services[0]);
            jwt = Some(services[0].create_jwt_key("feed-jwt", &["demo:read"], "ES256", 3600));
        },
    );
    let jwt = jwt.expect("the JWT key");
    let opaque = cluster.services[0].create_key("feed-opaque", &["demo:read"]);
    // Both replicas see the same database: B knows what A minted.
    let shown = send(
        "GET",
        &cluster.services[1].url(&format!("/api/v1/auth/keys/{}", opaque.id)),
        &[("authorization", bearer(ADMIN_KEY).as_str())],
        None,
    );
    assert_eq!(
        shown.status, 200,
        "replica B does not know A's key: {shown:?}"
    );
    warm(&cluster, &opaque);
    warm(&cluster, &jwt);

    let (holder, other) = other_replica(&cluster);
    println!("the follower's long-poll is held by replica {holder}; revoking on replica {other}");
    cluster.services[other].revoke(&opaque.id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &opaque,
        revoked_at,
        PROPAGATION_BOUND,
        "opaque key revoked on the other replica",
    );

    let (holder, other) = other_replica(&cluster);
    println!("the follower's long-poll is held by replica {holder}; revoking on replica {other}");
    cluster.services[other].revoke(&jwt.id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &jwt,
        revoked_at,
        PROPAGATION_BOUND,
        "JWT key revoked on the other replica",
    );

    // Refused because of the feed, not a cache expiry (the record TTL is 30 s).
    assert!(
        cluster.counter("feed.events") >= 2,
        "feed.events: {}",
        cluster.envoy.keygate_stats()
    );
    assert_eq!(cluster.counter("feed.live"), 1, "feed.live gauge");
    // The primer, the opaque key and the JWT key.
    assert_eq!(
        cluster.counter("feed.revoked_ids"),
        3,
        "feed.revoked_ids gauge"
    );
    // One follower per Envoy: one long-poll held across both replicas.
    cluster.wait_follower(Duration::from_secs(5));
}

// ── 2. the key service dies and comes back ───────────────────────────────────────────────────

#[test]
fn key_service_restart_loses_nothing() {
    let mut cluster = Cluster::start(
        "feed-restart",
        Options {
            replicas: 1,
            database: Database::Sqlite,
            feed_proxy: false,
        },
        |_| {},
        |services| prime_feed(&services[0]),
    );
    let service = &cluster.services[0];
    let keys: Vec<IssuedKey> = (0..3)
        .map(|i| service.create_key(&format!("restart-{i}"), &["demo:read"]))
        .collect();
    for key in &keys {
        warm(&cluster, key);
    }
    cluster.wait_follower(Duration::from_secs(10));
    cluster.services[0].revoke(&keys[0].id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &keys[0],
        revoked_at,
        PROPAGATION_BOUND,
        "revoked while the follower is connected",
    );
    // Workers that do not follow are told of new sets on their queues (Envoy's shared
    // queues): some set was loaded so.
    let deadline = Instant::now() + Duration::from_secs(2);
    while cluster.counter("feed.told") == 0 {
        assert!(
            Instant::now() < deadline,
            "no worker was told of the new set on its queue\n{}",
            cluster.envoy.keygate_stats()
        );
        sleep(Duration::from_millis(20));
    }
    let events_before = cluster.counter("feed.events");
    let changes_before = cluster.counter("feed.state_change");
    let failures_before = cluster.counter("feed.failure");

    cluster.kill_replica(0);
    let killed_at = Instant::now();
    must(
        Duration::from_secs(10),
        "the follower notices the dead service",
        || cluster.counter("feed.failure") > failures_before,
    );
    // Down: the revoked key stays refused, the others keep working from the cache.
    for _ in 0..5 {
        assert_eq!(cluster.get_with_key(PATH, &keys[0].key).status, 401);
        assert_eq!(cluster.get_with_key(PATH, &keys[1].key).status, 200);
    }
    sleep(Duration::from_secs(2).saturating_sub(killed_at.elapsed()));

    cluster.restart_replica(0);
    let restarted_at = Instant::now();
    // Revoked at once, while the follower may still be backing off: it must not be lost.
    cluster.services[0].revoke(&keys[1].id);
    let revoked_at = Instant::now();
    let (late, _) = cluster.until_refused(&keys[1].key, revoked_at, Duration::from_secs(10));
    println!(
        "revoked right after the restart: refused {:.0} ms later (the follower was backing off)",
        late.as_secs_f64() * 1000.0
    );
    cluster.wait_follower(Duration::from_secs(10));
    println!(
        "the follower holds a long-poll on the restarted service {:.0} ms after it was healthy",
        restarted_at.elapsed().as_secs_f64() * 1000.0
    );
    cluster.services[0].revoke(&keys[2].id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &keys[2],
        revoked_at,
        PROPAGATION_BOUND,
        "revoked after the follower resumed",
    );
    for key in &keys {
        assert_eq!(
            cluster.get_with_key(PATH, &key.key).status,
            401,
            "{}",
            key.id
        );
    }
    // Resumed from its sequence: exactly the two new events, no snapshot re-counting the first.
    let stats = cluster.envoy.keygate_stats();
    assert_eq!(
        cluster.counter("feed.events"),
        events_before + 2,
        "the follower did not resume incrementally:\n{stats}"
    );
    // Never back to cold (nor unreachable: the outage was shorter than 30 s).
    assert_eq!(
        cluster.counter("feed.state_change"),
        changes_before,
        "the feed state changed across the restart:\n{stats}"
    );
    assert_eq!(cluster.counter("feed.live"), 1, "{stats}");
    let lines = cluster.feed_log_lines();
    // Each VM (the workers and the main thread's) went cold -> live exactly once.
    let thread_of = |l: &String| l.split("][").nth(1).unwrap_or_default().to_string();
    let mut went_live: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("cold -> live"))
        .map(thread_of)
        .collect();
    let total = went_live.len();
    went_live.sort();
    went_live.dedup();
    assert!(
        total >= 2 && went_live.len() == total,
        "each VM goes cold -> live once: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("live -> ") || l.contains("-> unreachable")),
        "{lines:#?}"
    );
}

// ── 3. PostgreSQL restarts under the replicas ─────────────────────────────────────────────────

#[test]
fn postgres_restart() {
    // Fail loudly without PostgreSQL, like the others, even though this one runs its own cluster.
    let _ = postgres_server_url();
    let pg = PgCluster::start();
    let database = create_database(&pg.url);
    let cluster = Cluster::start(
        "feed-pg-restart",
        Options {
            replicas: 2,
            database: Database::Postgres(database),
            feed_proxy: false,
        },
        |_| {},
        |services| prime_feed(&services[0]),
    );
    let keys: Vec<IssuedKey> = (0..2)
        .map(|i| cluster.services[0].create_key(&format!("pg-{i}"), &["demo:read"]))
        .collect();
    for key in &keys {
        warm(&cluster, key);
    }
    let (_, other) = other_replica(&cluster);

    let stopped_at = Instant::now();
    pg.stop();
    sleep(Duration::from_millis(500));
    pg.restart();
    println!(
        "PostgreSQL down and up again in {:.0} ms",
        stopped_at.elapsed().as_secs_f64() * 1000.0
    );
    // The long-poll held before the restart is still held (wait 20 s): the revoke must wake it.
    let attempts = revoke_retrying(
        &cluster.services[other],
        &keys[0].id,
        Duration::from_secs(15),
    );
    let revoked_at = Instant::now();
    println!("first revoke after the restart took {attempts} attempt(s)");
    assert_refused_within(
        &cluster,
        &keys[0],
        revoked_at,
        PROPAGATION_BOUND,
        "revoked on the other replica right after PostgreSQL restarted",
    );

    // And in steady state after the restart, a key minted since.
    let fresh = cluster.services[0].create_key("pg-fresh", &["demo:read"]);
    warm(&cluster, &fresh);
    let (holder, other) = other_replica(&cluster);
    println!("after the restart the long-poll is on replica {holder}; revoking on {other}");
    cluster.services[other].revoke(&fresh.id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &fresh,
        revoked_at,
        PROPAGATION_BOUND,
        "revoked on the other replica after the restart",
    );
    assert_eq!(cluster.get_with_key(PATH, &keys[1].key).status, 200);
}

// ── 4. a feed answering 500 or garbage ───────────────────────────────────────────────────────

#[test]
fn bad_feed_keeps_last_good_state() {
    let cluster = Cluster::start(
        "feed-bad",
        Options {
            replicas: 1,
            database: Database::Sqlite,
            feed_proxy: true,
        },
        |plugin| {
            feed_settings(
                plugin,
                json!({"wait_seconds": 2, "max_unreachable_seconds": 4}),
            )
        },
        |services| prime_feed(&services[0]),
    );
    let proxy = cluster.proxy.as_ref().expect("the feed proxy");
    let service = &cluster.services[0];
    let keys: Vec<IssuedKey> = (0..4)
        .map(|i| service.create_key(&format!("bad-{i}"), &["demo:read"]))
        .collect();
    for key in &keys {
        warm(&cluster, key);
    }
    cluster.wait_follower(Duration::from_secs(10));
    service.revoke(&keys[0].id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &keys[0],
        revoked_at,
        PROPAGATION_BOUND,
        "revoked before the feed went bad",
    );
    let failures = cluster.counter("feed.failure");
    let changes = cluster.counter("feed.state_change");

    // 500s.
    proxy.set_mode(FeedMode::Error500);
    must(
        Duration::from_secs(10),
        "feed.failure grows on 500s",
        || cluster.counter("feed.failure") > failures,
    );
    assert!(proxy.sabotaged() >= 1);
    // A revocation made while the feed is broken (seen after it recovers).
    service.revoke(&keys[2].id);
    // Past max_unreachable_seconds (4 s): the metrics say the feed is not live.
    must(Duration::from_secs(12), "feed.live drops to 0", || {
        cluster.counter("feed.live") == 0
    });
    assert!(
        cluster.counter("feed.state_change") > changes,
        "{}",
        cluster.envoy.keygate_stats()
    );
    let lines = cluster.feed_log_lines();
    assert!(
        lines.iter().any(|l| l.contains("live -> unreachable")),
        "no live -> unreachable log line: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("keeping the last good set")),
        "{lines:#?}"
    );
    // The last good set still decides: the revoked key stays refused (its cached record says
    // active), a good key used recently keeps working (policy fail_closed_unless_recent).
    for _ in 0..CONFIRMATIONS {
        assert_eq!(cluster.get_with_key(PATH, &keys[0].key).status, 401);
    }
    assert_eq!(cluster.get_with_key(PATH, &keys[1].key).status, 200);
    // The primer and keys[0].
    assert_eq!(cluster.counter("feed.revoked_ids"), 2);

    // Garbage with a 200.
    proxy.set_mode(FeedMode::Garbage);
    let sabotaged = proxy.sabotaged();
    let failures = cluster.counter("feed.failure");
    must(
        Duration::from_secs(12),
        "feed.failure grows on garbage",
        || proxy.sabotaged() > sabotaged && cluster.counter("feed.failure") > failures,
    );
    for _ in 0..CONFIRMATIONS {
        assert_eq!(cluster.get_with_key(PATH, &keys[0].key).status, 401);
    }
    // The primer and keys[0].
    assert_eq!(cluster.counter("feed.revoked_ids"), 2);
    assert!(
        cluster
            .feed_log_lines()
            .iter()
            .any(|l| l.contains("not a feed document")),
        "{:#?}",
        cluster.feed_log_lines()
    );

    // Healthy again: live, and the revocation made meanwhile arrives.
    proxy.set_mode(FeedMode::Forward);
    let recovered_at = Instant::now();
    must(Duration::from_secs(12), "feed.live back to 1", || {
        cluster.counter("feed.live") == 1
    });
    let (late, _) = cluster.until_refused(&keys[2].key, recovered_at, Duration::from_secs(12));
    println!(
        "the revocation made while the feed was broken was enforced {:.0} ms after it recovered",
        late.as_secs_f64() * 1000.0
    );
    cluster.wait_follower(Duration::from_secs(10));
    let failures = cluster.counter("feed.failure");
    service.revoke(&keys[3].id);
    let revoked_at = Instant::now();
    assert_refused_within(
        &cluster,
        &keys[3],
        revoked_at,
        PROPAGATION_BOUND,
        "revoked after the feed recovered",
    );
    assert_eq!(cluster.counter("feed.failure"), failures);
    assert_eq!(cluster.get_with_key(PATH, &keys[0].key).status, 401);
    assert_eq!(cluster.get_with_key(PATH, &keys[1].key).status, 200);
    assert_eq!(cluster.counter("feed.revoked_ids"), 4);
}

// ── 5. idle cost ─────────────────────────────────────────────────────────────────────────────

/// Envoy idle for `IDLE` with `wait_seconds` 2: one long-poll held, and about IDLE / 2 feed
/// requests, whatever the number of workers.
fn assert_idle_cost(cluster: &Cluster) {
    const IDLE: Duration = Duration::from_secs(5);
    let service = &cluster.services[0];
    // Let the start-up settle (the first snapshot, the first long-poll).
    sleep(Duration::from_secs(1));
    let start = feed_stats(service);
    let began = Instant::now();
    let mut samples = Vec::new();
    while began.elapsed() < IDLE {
        samples.push(feed_stats(service).waiting);
        sleep(Duration::from_millis(100));
    }
    let end = feed_stats(service);
    let requests = end.requests - start.requests;
    let held = samples.iter().filter(|w| **w == 1).count();
    println!(
        "idle {IDLE:?} with wait_seconds {IDLE_WAIT_S}: {requests} feed requests; long-poll \
         held in {held} of {} samples (max {})",
        samples.len(),
        samples.iter().max().copied().unwrap_or(0),
    );
    assert!(
        samples.iter().all(|w| *w <= 1),
        "more than one long-poll held by one Envoy: {samples:?}"
    );
    // ≈ IDLE / wait = 2.5 polls; one per worker per tick would be hundreds.
    assert!(
        (2..=4).contains(&requests),
        "{requests} feed requests in {IDLE:?} of idleness (expected ~{}); long-polls held: \
         {samples:?}\n{}",
        IDLE.as_secs() / IDLE_WAIT_S,
        cluster.envoy.keygate_stats()
    );
    assert!(
        held * 10 >= samples.len() * 9,
        "a long-poll is not held most of the time: {samples:?}"
    );
    assert_eq!(cluster.counter("feed.failure"), 0);
    assert_eq!(cluster.counter("feed.live"), 1);
}

const IDLE_WAIT_S: u64 = 2;

fn idle_cluster(label: &str, primed: bool) -> Cluster {
    Cluster::start(
        label,
        Options {
            replicas: 1,
            database: Database::Sqlite,
            feed_proxy: false,
        },
        |plugin| feed_settings(plugin, json!({ "wait_seconds": IDLE_WAIT_S })),
        |services| {
            if primed {
                prime_feed(&services[0]);
            }
        },
    )
}

#[test]
fn idle_cost_is_one_long_poll_per_envoy() {
    let cluster = idle_cluster("feed-idle", true);
    assert_idle_cost(&cluster);
}

/// A new deployment: nothing revoked yet (feed sequence 0). The follower must idle the same.
#[test]
fn idle_cost_with_an_empty_feed() {
    let cluster = idle_cluster("feed-idle-empty", false);
    assert_idle_cost(&cluster);
}

// ── 6. what a refused key is told ────────────────────────────────────────────────────────────

const HELLO: &str = "/v1/hello";

/// Uses `key` through `stack` until it is accepted, then a few more times.
fn warm_stack(stack: &Stack, key: &IssuedKey) {
    must(Duration::from_secs(15), "the key is accepted", || {
        stack.get_with_key(HELLO, &key.key).status == 200
    });
    for _ in 0..CONFIRMATIONS {
        assert_eq!(stack.get_with_key(HELLO, &key.key).status, 200);
    }
}

/// Requests with `key` until `CONFIRMATIONS` + 1 in a row are refused, within `timeout`
/// (workers load a new set on their next tick, so for a few ms one may still accept);
/// returns those refusals.
fn steady_refusals(stack: &Stack, key: &IssuedKey, timeout: Duration) -> Vec<Reply> {
    let deadline = Instant::now() + timeout;
    let mut refusals = Vec::new();
    while refusals.len() <= CONFIRMATIONS {
        let reply = stack.get_with_key(HELLO, &key.key);
        if reply.status == 200 {
            refusals.clear();
            sleep(Duration::from_millis(5));
        } else {
            refusals.push(reply);
        }
        assert!(
            Instant::now() < deadline,
            "key {} not refused steadily after {timeout:?}\n{}",
            key.id,
            stack.envoy.keygate_stats()
        );
    }
    refusals
}

/// Asserts a 401 that tells the key's holder it `ended` ("expired" or "revoked").
fn assert_told(reply: &Reply, ended: &str) {
    assert_eq!(reply.status, 401, "{reply:#?}");
    let problem = reply.json();
    assert_eq!(
        problem["type"],
        format!("urn:keygate:problem:{ended}-key"),
        "{problem}"
    );
    let detail = if ended == "revoked" {
        "The API key has been revoked."
    } else {
        "The API key has expired."
    };
    assert_eq!(problem["detail"], detail, "{problem}");
}

/// `POST /api/v1/auth/keys/{id}/expire` ("expire now"), then the key as `GET` shows it.
fn expire_now(service: &KeyService, id: &str) -> Value {
    let auth = bearer(ADMIN_KEY);
    let headers = [("authorization", auth.as_str())];
    let url = service.url(&format!("/api/v1/auth/keys/{id}/expire"));
    let reply = send("POST", &url, &headers, None);
    assert_eq!(reply.status, 200, "expiring {id}: {reply:?}");
    let url = service.url(&format!("/api/v1/auth/keys/{id}"));
    send("GET", &url, &headers, None).json()
}

#[test]
fn an_expired_key_is_told_expired_not_revoked() {
    // The default cache TTL (30 s): the key's record stays cached as active, so the
    // revocation feed is what refuses it, and must say why.
    let stack = Stack::start("feed-expired");
    let expiring = stack.service.create_key("expiring", &["demo:read"]);
    let revoked = stack.service.create_key("revoked", &["demo:read"]);
    warm_stack(&stack, &expiring);
    warm_stack(&stack, &revoked);

    let shown = expire_now(&stack.service, &expiring.id);
    assert_eq!(shown["status"], "expired", "{shown}");
    for reply in steady_refusals(&stack, &expiring, Duration::from_secs(5)) {
        assert_told(&reply, "expired");
    }
    assert_eq!(stack.envoy.keygate_counter("denied.revoked"), 0);

    stack.service.revoke(&revoked.id);
    for reply in steady_refusals(&stack, &revoked, Duration::from_secs(5)) {
        assert_told(&reply, "revoked");
    }
    assert!(stack.envoy.keygate_counter("denied.expired") > CONFIRMATIONS as u64);
}

#[test]
fn a_rotated_key_past_its_grace_is_told_expired() {
    let stack = Stack::start("feed-rotated");
    let old = stack.service.create_key("rotating", &["demo:read"]);
    warm_stack(&stack, &old);
    let rotated_at = Instant::now();
    let new = stack.service.rotate(&old.id, 2);
    let refusals = steady_refusals(&stack, &old, Duration::from_secs(10));
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(1),
        "refused during its grace: {:#?}",
        refusals[0]
    );
    for reply in refusals {
        assert_told(&reply, "expired");
    }
    assert_eq!(stack.get_with_key(HELLO, &new.key).status, 200);
    assert_eq!(stack.envoy.keygate_counter("denied.revoked"), 0);
}

// ── 7. a year of revocations ─────────────────────────────────────────────────────────────────

/// Revocations loaded in bulk into the key service's database, beyond `max_revoked`.
const BULK: usize = 200_000;

/// Appends `BULK` revocation events committed now to the SQLite database of `service`, as a
/// mass revocation would (written directly: through the API it would take minutes).
fn bulk_revoke(service: &KeyService) {
    bulk_revoke_in(service, "bulk");
}

/// [`bulk_revoke`] with ids starting with `tag` (8 characters at most).
fn bulk_revoke_in(service: &KeyService, tag: &str) {
    let database = service.proc.log.with_file_name("keygate.db");
    let script = r#"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
now = int(time.time())
db.executemany(
    "INSERT INTO revocation_events (key_id, kind, effective_at, key_expires_at, created_at) "
    "VALUES (?, 'revoked', ?, NULL, ?)",
    ((f"{sys.argv[3]}{n:0{16 - len(sys.argv[3])}d}", now, now) for n in range(int(sys.argv[2]))),
)
db.execute("UPDATE feed_state SET last_seq = (SELECT MAX(seq) FROM revocation_events) WHERE id = 1")
db.commit()
"#;
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&database)
        .arg(BULK.to_string())
        .arg(tag)
        .status()
        .expect("running python3 (a prerequisite of the project)");
    assert!(
        status.success(),
        "bulk revocation into {}",
        database.display()
    );
}

#[test]
fn a_cold_follower_loads_a_paged_snapshot_past_max_revoked_and_still_refuses_revoked_keys() {
    let mut early = None;
    let mut late = None;
    let stack = Stack::start_prepared(
        "feed-paged",
        |_| {},
        |service| {
            let key = service.create_key("early", &["demo:read"]);
            service.revoke(&key.id);
            early = Some(key);
            bulk_revoke(service);
            let key = service.create_key("late", &["demo:read"]);
            service.revoke(&key.id);
            late = Some(key);
        },
    );
    let (early, late) = (early.expect("early key"), late.expect("late key"));
    let started = Instant::now();
    must(
        Duration::from_secs(180),
        "the feed goes live with the paged snapshot",
        || stack.envoy.keygate_counter("feed.live") == 1,
    );
    println!(
        "{} revocations: live after {:.1} s",
        BULK + 2,
        started.elapsed().as_secs_f64()
    );
    let max_revoked = 100_000;
    assert_eq!(
        stack.envoy.keygate_counter("feed.revoked_ids"),
        max_revoked,
        "{}",
        stack.envoy.keygate_stats()
    );
    // (More if a page failed and the snapshot was assembled again.)
    assert!(
        stack.envoy.keygate_counter("feed.evicted") >= (BULK + 2) as u64 - max_revoked,
        "{}",
        stack.envoy.keygate_stats()
    );
    // Kept in the set (the newest), and evicted (its record says revoked): both refused.
    assert_told(&stack.get_with_key(HELLO, &late.key), "revoked");
    assert_told(&stack.get_with_key(HELLO, &early.key), "revoked");
    // Not an outage: a good key works, and a revocation still reaches the workers.
    let victim = stack.service.create_key("victim", &["demo:read"]);
    warm_stack(&stack, &victim);
    stack.service.revoke(&victim.id);
    for reply in steady_refusals(&stack, &victim, Duration::from_secs(10)) {
        assert_told(&reply, "revoked");
    }
    let good = stack.service.create_key("good", &["demo:read"]);
    warm_stack(&stack, &good);
    let lines = std::fs::read_to_string(&stack.envoy.proc.log).unwrap_or_default();
    assert!(
        lines.contains("evicted"),
        "the overflow is logged:\n{}",
        keygate_testkit::tail(&stack.envoy.proc.log, 40)
    );
}

#[test]
fn a_cached_key_whose_revocation_was_evicted_is_looked_up_again_not_accepted() {
    // A record cached for 5 minutes, and a short long-poll so the bulk load (written behind
    // the key service's back) is seen soon.
    let stack = Stack::start_with("feed-evicted", |plugin| {
        plugin["cache"]["ttl_seconds"] = json!(300);
        feed_settings(plugin, json!({"wait_seconds": 2}));
    });
    let victim = stack.service.create_key("victim", &["demo:read"]);
    let good = stack.service.create_key("good", &["demo:read"]);
    warm_stack(&stack, &victim);
    warm_stack(&stack, &good);
    stack.service.revoke(&victim.id);
    for reply in steady_refusals(&stack, &victim, Duration::from_secs(5)) {
        assert_told(&reply, "revoked");
    }
    // A mass revocation after it: the victim's entry, the oldest, is evicted from the full
    // set while its record (active, fetched before the revocation) is still cached.
    let loaded = Instant::now();
    bulk_revoke_in(&stack.service, "mass");
    must(
        Duration::from_secs(120),
        "the mass revocation fills the set",
        || stack.envoy.keygate_counter("feed.revoked_ids") == 100_000,
    );
    assert!(stack.envoy.keygate_counter("feed.evicted") > 0);
    println!(
        "{BULK} revocations applied incrementally in {:.1} s",
        loaded.elapsed().as_secs_f64()
    );
    // Not accepted: the set no longer vouches for that record, so the key is looked up.
    let lookups = stack.service.lookups();
    for reply in steady_refusals(&stack, &victim, Duration::from_secs(10)) {
        assert_told(&reply, "revoked");
    }
    assert!(
        stack.service.lookups() > lookups,
        "the victim was looked up again"
    );
    warm_stack(&stack, &good);
}
