//! `GET /v1/revocations` over HTTP (through `app(state)`), on both backends; cross-replica
//! wake-ups and listener reconnection on PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use keygate_server::clock::Clock;
use keygate_server::model::feed::{
    EventKind, FeedEventInput, FeedRequest, FeedResponse, MAX_ANSWER_BYTES,
};
use keygate_server::service::feed::{prune, DEFAULT_RETENTION};
use serde_json::{json, Value};

use crate::backends::{eventually, Backend, Connect, PrivateCluster, TestDb};
use crate::storage::insert_keys;
use crate::{harness_for, harness_on, jwt_settings, Harness, KEYS, NOW, SERVICE};

on_both_backends!(
    the_feed_needs_the_service_token_and_valid_parameters,
    revoke_rotate_and_expire_reach_the_feed,
    a_long_poll_answers_at_once_when_there_are_events,
    a_long_poll_waits_when_there_are_none,
    a_long_poll_is_woken_by_a_revoke,
    shutdown_answers_held_long_polls,
    a_cold_follower_pages_through_200000_revocations_and_the_feed_forgets_them_in_time,
    rotations_of_keys_without_expiry_are_compacted,
);

impl Harness {
    async fn feed(&self, query: &str) -> FeedResponse {
        let answer = self.feed_answer(query).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.content_type(), "application/json");
        serde_json::from_value(answer.body).unwrap()
    }

    async fn feed_answer(&self, query: &str) -> crate::Answer {
        self.send(
            "GET",
            &format!("/v1/revocations?{query}"),
            Some(SERVICE),
            None,
        )
        .await
    }

    async fn new_key(&self, body: Value) -> String {
        self.create(body).await["id"].as_str().unwrap().to_owned()
    }

    async fn revoke(&self, id: &str) {
        let answer = self.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    async fn stats(&self) -> Value {
        self.send("GET", "/v1/stats", Some(SERVICE), None)
            .await
            .body
    }
}

async fn the_feed_needs_the_service_token_and_valid_parameters(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let missing = h.send("GET", "/v1/revocations?since=0", None, None).await;
    missing.assert_problem(StatusCode::UNAUTHORIZED);
    let admin = h
        .send("GET", "/v1/revocations", Some(crate::ADMIN), None)
        .await;
    admin.assert_problem(StatusCode::UNAUTHORIZED);
    for bad in [
        "since=-1",
        "since=abc",
        "since=1.5",
        "since=",
        "since=%2B1",
        "since=99999999999999999999999",
        "wait=61",
        "wait=-1",
        "wait=x",
        "since=0&wait=3600",
        "window=x",
        "window=-1",
        "window=2592001",
    ] {
        let answer = h.feed_answer(bad).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
        let field = bad.split('=').next().unwrap();
        let field = if bad.contains("wait=") { "wait" } else { field };
        assert!(
            answer.detail().starts_with(field),
            "{bad}: {}",
            answer.detail()
        );
    }
    // No parameters and nothing ever revoked: nothing to send (the empty set is complete),
    // at once since wait defaults to 0.
    let cold = h.feed("").await;
    assert_eq!(
        serde_json::to_value(&cold).unwrap(),
        json!({"seq": 0, "reset": false, "more": false, "events": []})
    );
    let stats = h.stats().await;
    assert_eq!(stats["feed_requests"], 16, "{stats}");
    assert_eq!(stats["feed_waiting"], 0);
}

async fn revoke_rotate_and_expire_reach_the_feed(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let revoked = h
        .new_key(json!({"name": "r", "scopes": [], "expires_in": 3600}))
        .await;
    let rotated = h.new_key(json!({"name": "g", "scopes": []})).await;
    let rotated_now = h.new_key(json!({"name": "z", "scopes": []})).await;
    let expiring = h
        .new_key(json!({"name": "e", "scopes": [], "expires_in": 86_400}))
        .await;
    let jwt = h
        .create(json!({"name": "j", "scopes": [], "format": "jwt", "expires_in": 600}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    h.revoke(&revoked).await;
    h.revoke(&revoked).await; // idempotent: no second event
    h.clock.advance(5);
    let answer = h
        .admin(
            "POST",
            &format!("{KEYS}/{rotated}/rotate"),
            Some(json!({"grace": 3600})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let answer = h
        .admin(
            "POST",
            &format!("{KEYS}/{rotated_now}/rotate"),
            Some(json!({"grace": 0})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let expired = h
        .admin("POST", &format!("{KEYS}/{expiring}/expire"), None)
        .await;
    assert_eq!(expired.status, StatusCode::OK, "{}", expired.body);
    assert_eq!(expired.body["status"], "expired");
    assert_eq!(expired.body["expires_at"], crate::rfc3339(NOW + 5));
    assert_eq!(h.lookup(&expiring).await.body["status"], "expired");
    let again = h
        .admin("POST", &format!("{KEYS}/{expiring}/expire"), None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    h.revoke(&jwt).await;

    let feed = h.feed("since=0").await;
    assert_eq!(
        serde_json::to_value(&feed).unwrap(),
        json!({"seq": 5, "reset": true, "more": false, "events": [
            {"seq": 1, "id": revoked, "kind": "revoked", "effective_at": NOW, "until": NOW + 3600,
             "created_at": NOW},
            {"seq": 2, "id": rotated, "kind": "rotated", "effective_at": NOW + 5 + 3600, "until": null,
             "created_at": NOW + 5},
            {"seq": 3, "id": rotated_now, "kind": "rotated", "effective_at": NOW + 5, "until": null,
             "created_at": NOW + 5},
            {"seq": 4, "id": expiring, "kind": "expired", "effective_at": NOW + 5, "until": NOW + 86_400,
             "created_at": NOW + 5},
            {"seq": 5, "id": jwt, "kind": "revoked", "effective_at": NOW + 5, "until": NOW + 600,
             "created_at": NOW + 5},
        ]})
    );
    // The filter's own wire types (keygate-core) read this answer as it is.
    let parsed: keygate_core::feed::FeedResponse =
        serde_json::from_value(serde_json::to_value(&feed).unwrap()).unwrap();
    assert!(parsed.reset && !parsed.more);
    assert_eq!(parsed.seq, 5);
    assert_eq!(
        parsed.events[3].kind,
        keygate_core::feed::EventKind::Expired
    );
    assert_eq!(parsed.events[3].until, Some((NOW + 86_400) as u64));
    assert_eq!(parsed.events[1].until, None);
    assert_eq!(parsed.events[1].created_at, Some((NOW + 5) as u64));
    assert_eq!(
        parsed.events[1].kind.deny_reason(),
        keygate_core::decision::DenyReason::Expired,
        "a rotated key past its grace is reported as expired"
    );
    let incremental = h.feed("since=3").await;
    assert!(!incremental.reset);
    assert_eq!(incremental.seq, 5);
    assert_eq!(incremental.events.len(), 2);

    let unknown = h
        .admin("POST", &format!("{KEYS}/aaaaaaaaaaaaaaaa/expire"), None)
        .await;
    unknown.assert_problem(StatusCode::NOT_FOUND);
    let anonymous = h
        .send("POST", &format!("{KEYS}/{expiring}/expire"), None, None)
        .await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
}

async fn a_long_poll_answers_at_once_when_there_are_events(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let id = h.new_key(json!({"name": "x", "scopes": []})).await;
    h.revoke(&id).await;
    let started = Instant::now();
    let cold = h.feed("since=0&wait=30").await;
    let behind = h.feed("since=0&wait=30").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(cold.reset && behind.reset);
    let id2 = h.new_key(json!({"name": "y", "scopes": []})).await;
    h.revoke(&id2).await;
    let started = Instant::now();
    let next = h.feed("since=1&wait=30").await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(next.events.len(), 1);
    assert_eq!(next.events[0].id, id2);
    assert_eq!(next.seq, 2);
}

async fn a_long_poll_waits_when_there_are_none(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let id = h.new_key(json!({"name": "x", "scopes": []})).await;
    h.revoke(&id).await;
    let started = Instant::now();
    let (answer, waiting) = tokio::join!(h.feed("since=1&wait=1"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.stats().await["feed_waiting"].clone()
    });
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(waiting, 1, "the long-poll is counted while held");
    assert!(!answer.reset && !answer.more && answer.events.is_empty());
    assert_eq!(answer.seq, 1);
    assert_eq!(h.stats().await["feed_waiting"], 0);
    // wait=0 (the default) answers at once.
    let started = Instant::now();
    let now = h.feed("since=1").await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(now.events.is_empty());
}

async fn a_long_poll_is_woken_by_a_revoke(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let first = h.new_key(json!({"name": "a", "scopes": []})).await;
    let second = h.new_key(json!({"name": "b", "scopes": []})).await;
    h.revoke(&first).await;
    let (answer, revoked_at) = tokio::join!(h.feed("since=1&wait=20"), async {
        assert!(
            eventually(Duration::from_secs(5), || h.state.feed_counters().waiting()
                == 1)
            .await,
            "the long-poll is held"
        );
        h.revoke(&second).await;
        Instant::now()
    });
    let woken_after = revoked_at.elapsed();
    assert!(woken_after < Duration::from_millis(500), "{woken_after:?}");
    assert_eq!(answer.events.len(), 1);
    assert_eq!(answer.events[0].id, second);
    assert_eq!(answer.seq, 2);
}

async fn shutdown_answers_held_long_polls(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let id = h.new_key(json!({"name": "x", "scopes": []})).await;
    h.revoke(&id).await;
    let started = Instant::now();
    let (first, second, ()) = tokio::join!(h.feed_idle_poll(), h.feed_idle_poll(), async {
        assert!(
            eventually(Duration::from_secs(5), || h.state.feed_counters().waiting()
                == 2)
            .await,
            "both long-polls are held"
        );
        h.state.begin_shutdown();
    });
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    for answer in [first, second] {
        assert!(answer.events.is_empty() && !answer.reset);
        assert_eq!(answer.seq, 1);
    }
    assert_eq!(h.state.feed_counters().waiting(), 0);
    // After shutdown began, a new long-poll does not wait either.
    let started = Instant::now();
    let late = h.feed_idle_poll().await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(late.events.is_empty());
}

#[tokio::test]
async fn answers_hold_at_most_1000_events() {
    let h = harness_on(Backend::Sqlite, jwt_settings()).await;
    let keys = insert_keys(h.state.store(), 1001, None).await;
    for key in &keys {
        h.state.store().revoke_key(&key.id, NOW).await.unwrap();
    }
    let first = h.feed("since=0").await;
    assert!(first.reset && first.more);
    assert_eq!(first.events.len(), 1000);
    assert_eq!(first.seq, 1000);
    let rest = h.feed("since=1000").await;
    assert!(!rest.reset && !rest.more);
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.seq, 1001);
    let from_one = h.feed("since=1").await;
    assert!(!from_one.reset && !from_one.more, "exactly 1000 left");
    assert_eq!(from_one.events.len(), 1000);
    assert_eq!(from_one.events[0].seq, 2);
    assert_eq!(from_one.seq, 1001);
}

/// The filter's read cap on one feed answer (`MAX_FEED_BODY` in the filter's `src/feed.rs`).
const FILTER_READ_CAP: usize = 8 * 1024 * 1024;
/// The window a filter with the default settings asks for: max(TTL 30 s, staleness 300 s) plus
/// a lookup timeout of 1 s.
const DEFAULT_WINDOW: u64 = 301;

async fn a_cold_follower_pages_through_200000_revocations_and_the_feed_forgets_them_in_time(
    backend: Backend,
) {
    const BULK: usize = 200_000;
    let h = harness_on(backend, jwt_settings()).await;
    let first = h.new_key(json!({"name": "first", "scopes": []})).await;
    h.revoke(&first).await;
    let bulk: Vec<_> = (0..BULK)
        .map(|n| FeedEventInput {
            id: format!("{n:a>16}"),
            kind: if n % 3 == 0 {
                EventKind::Rotated
            } else {
                EventKind::Revoked
            },
            effective_at: NOW,
            until: None,
        })
        .collect();
    let bulk_seq = h
        .state
        .store()
        .append_feed_events(&bulk, NOW)
        .await
        .unwrap();
    assert_eq!(bulk_seq, 1 + BULK as u64);
    let last = h.new_key(json!({"name": "last", "scopes": []})).await;
    h.revoke(&last).await;

    // A cold follower pages through the snapshot: no answer near the filter's read cap.
    let mut since = 0;
    let mut pages = 0;
    let mut largest = 0;
    let mut seen = std::collections::HashSet::new();
    loop {
        let answer = h
            .feed_answer(&format!("since={since}&window={DEFAULT_WINDOW}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        largest = largest.max(serde_json::to_vec(&answer.body).unwrap().len());
        let page: FeedResponse = serde_json::from_value(answer.body).unwrap();
        assert_eq!(
            page.reset,
            pages == 0,
            "only the first page starts a new set"
        );
        assert!(page.seq > since);
        seen.extend(page.events.into_iter().map(|e| e.id));
        pages += 1;
        since = page.seq;
        if !page.more {
            break;
        }
        assert!(pages < 10_000, "the pages never end");
    }
    assert_eq!(seen.len(), BULK + 2, "every revocation, once");
    assert!(seen.contains(&first) && seen.contains(&last));
    assert_eq!(since, BULK as u64 + 2);
    assert!(pages >= BULK / 1000, "{pages} pages");
    assert!(largest <= MAX_ANSWER_BYTES, "{largest} bytes");
    assert!(largest * 8 <= FILTER_READ_CAP, "{largest} bytes");
    println!("{BULK} revocations: {pages} pages, the largest {largest} bytes");

    // Bounded by time: once no filter record can predate them, a cold follower gets none of
    // them (and is told from when on it has everything) ...
    h.clock.advance(DEFAULT_WINDOW as i64 + 61);
    let later = h.feed(&format!("since=0&window={DEFAULT_WINDOW}")).await;
    assert!(later.reset && !later.more && later.events.is_empty());
    assert_eq!(later.seq, BULK as u64 + 2);
    assert_eq!(later.horizon, Some((NOW + 1) as u64));
    // ... and a day on, the key service forgets them too.
    h.clock.advance(DEFAULT_RETENTION.as_secs() as i64);
    let store = h.state.store();
    let deleted = prune(store, h.clock.now(), DEFAULT_RETENTION)
        .await
        .unwrap();
    assert_eq!(deleted, BULK as u64 + 2);
    let cold = h.feed("since=0").await;
    assert!(cold.events.is_empty() && !cold.more);
    assert_eq!(cold.seq, BULK as u64 + 2, "the sequence never goes back");
}

async fn rotations_of_keys_without_expiry_are_compacted(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let forever = h.new_key(json!({"name": "forever", "scopes": []})).await;
    let rotated = h
        .admin(
            "POST",
            &format!("{KEYS}/{forever}/rotate"),
            Some(json!({"grace": 3600})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let store = h.state.store();
    let day = DEFAULT_RETENTION.as_secs() as i64;
    let feed = h.feed("since=0").await;
    assert_eq!(feed.events.len(), 1);
    assert_eq!(feed.events[0].until, None, "a key without expiry");
    // The grace ends; past the retention the event is gone, though the key never expires
    // (filters keep any record fetched before the rotation far shorter than that).
    h.clock.advance(3600);
    assert_eq!(
        prune(store, h.clock.now(), DEFAULT_RETENTION)
            .await
            .unwrap(),
        0
    );
    h.clock.advance(day - 3600 + 1);
    assert_eq!(
        prune(store, h.clock.now(), DEFAULT_RETENTION)
            .await
            .unwrap(),
        1
    );
    assert!(h.feed("since=0").await.events.is_empty());
    // What a filter looks up instead says the key has ended.
    assert_eq!(h.lookup(&forever).await.body["status"], "expired");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: several replicas

/// Two replicas (two stores, two app states) on one PostgreSQL database.
async fn two_replicas(db: Arc<TestDb>) -> (Harness, Harness) {
    let a = harness_for(db.clone(), db.connect().await, jwt_settings()).await;
    let b = harness_for(db.clone(), db.connect().await, jwt_settings()).await;
    (a, b)
}

#[tokio::test]
async fn postgres_a_revoke_on_one_replica_wakes_a_long_poll_on_another() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let (a, b) = two_replicas(db).await;
    let first = a.new_key(json!({"name": "x", "scopes": []})).await;
    let id = a.new_key(json!({"name": "y", "scopes": []})).await;
    a.revoke(&first).await;
    // B hears A's commit (through NOTIFY) without any request.
    let mut latest = b.state.store().subscribe_feed();
    tokio::time::timeout(Duration::from_secs(2), latest.wait_for(|seq| *seq == 1))
        .await
        .expect("replica B heard seq 1")
        .unwrap();
    let (answer, revoked_at) = tokio::join!(b.feed_idle_poll(), async {
        assert!(
            eventually(Duration::from_secs(5), || b.state.feed_counters().waiting()
                == 1)
            .await
        );
        a.revoke(&id).await;
        Instant::now()
    });
    let woken_after = revoked_at.elapsed();
    assert!(woken_after < Duration::from_millis(1000), "{woken_after:?}");
    assert_eq!(answer.events.len(), 1);
    assert_eq!(answer.events[0].id, id);
    assert_eq!(*b.state.store().subscribe_feed().borrow(), answer.seq);
}

#[tokio::test]
async fn postgres_replicas_share_one_gap_free_ordered_sequence() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let a = db.connect().await;
    let b = db.connect().await;
    let keys = insert_keys(&a, 20, None).await;
    let revokes = keys.iter().enumerate().map(|(n, key)| {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let id = key.id.clone();
        tokio::spawn(async move { store.revoke_key(&id, NOW).await.unwrap() })
    });
    for revoke in revokes.collect::<Vec<_>>() {
        revoke.await.unwrap();
    }
    let feed = b
        .read_feed(FeedRequest::default(), 1000, NOW)
        .await
        .unwrap();
    let seqs: Vec<_> = feed.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert_eq!(feed.seq, 20);
    // Both replicas have heard every commit.
    for store in [&a, &b] {
        let mut latest = store.subscribe_feed();
        let heard = tokio::time::timeout(Duration::from_secs(2), latest.wait_for(|s| *s == 20))
            .await
            .is_ok();
        assert!(heard);
    }
}

#[tokio::test]
async fn postgres_the_listener_reconnects_after_a_server_restart() {
    // Fails like the other PostgreSQL tests when the test server is not configured.
    crate::backends::postgres_server_url();
    let cluster = tokio::task::spawn_blocking(PrivateCluster::start)
        .await
        .unwrap();
    let db = Arc::new(TestDb::postgres_on(&cluster.url).await);
    let (a, b) = two_replicas(db.clone()).await;
    let first = a.new_key(json!({"name": "x", "scopes": []})).await;
    let second = a.new_key(json!({"name": "y", "scopes": []})).await;
    a.revoke(&first).await;
    assert_eq!(b.state.store().feed_listener_connected(), Some(true));

    let cluster = Arc::new(cluster);
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            b.state.store().feed_listener_connected() == Some(false)
        })
        .await,
        "the listener noticed the lost connection"
    );
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.restart())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            b.state.store().feed_listener_connected() == Some(true)
        })
        .await,
        "the listener reconnected"
    );

    let (answer, revoked_at) = tokio::join!(b.feed_idle_poll(), async {
        assert!(
            eventually(Duration::from_secs(5), || b.state.feed_counters().waiting()
                == 1)
            .await
        );
        a.revoke(&second).await;
        Instant::now()
    });
    let woken_after = revoked_at.elapsed();
    assert!(woken_after < Duration::from_millis(1000), "{woken_after:?}");
    assert_eq!(answer.events.len(), 1);
    assert_eq!(answer.events[0].id, second);
    drop((a, b));
    drop(db);
}

impl Harness {
    /// A long-poll (wait=20) from the current sequence number (which must not be 0: since=0
    /// is a snapshot, answered at once).
    async fn feed_idle_poll(&self) -> FeedResponse {
        let seq = self.state.store().feed_seq().await.unwrap();
        assert!(seq > 0, "a long-poll needs an event first");
        self.feed(&format!("since={seq}&wait=20")).await
    }
}
