//! The storage suite, written once and run on both backends: every test here is an
//! `async fn(&TestDb)` listed in `on_both_backends!`, which makes a `sqlite::NAME` and a
//! `postgres::NAME` test of it.

use std::time::Duration;

use keygate_core::key::KeyDigest;
use keygate_core::wire::{KeyStatus, RateLimit};
use keygate_server::model::feed::{EventKind, FeedEvent, FeedRequest};
use keygate_server::model::{KeyPatch, KeyRecord, PageAfter, SigningKeyRow, UsageDelta};
use keygate_server::store::{KeyStore, StoreError};
use serde_json::Map;

use crate::backends::{Connect, TestDb};

const NOW: i64 = crate::NOW;

on_both_backends!(db:
    keys_round_trip_page_and_filter_by_status,
    uniqueness_constraints_hold,
    revoke_adds_one_event_only_the_first_time,
    rotate_adds_an_event_at_the_end_of_the_grace,
    rotation_refusals_add_no_event,
    expire_now_ends_the_key_with_an_event,
    the_feed_pages_and_resets_when_it_must,
    compaction_drops_ended_entries_and_old_followers_get_a_snapshot,
    signing_keys_one_active_per_algorithm_and_publication,
    admin_keys_store_digests,
    the_feed_signal_wakes_on_commit,
    reopening_keeps_data_and_sequence,
    keys_are_counted_by_status,
    updates_apply_the_patch_or_nothing,
    usage_batches_apply_once_and_last_use_only_moves_forward,
);

/// A key record with the id [`key_id`]`(n)`, created `n` seconds after NOW.
pub fn record(n: usize, expires_at: Option<i64>) -> KeyRecord {
    let id = key_id(n);
    let digest = KeyDigest::of(format!("key {n}").as_bytes()).to_hex();
    KeyRecord {
        id,
        prefix: "kg_test_".into(),
        name: format!("key {n}"),
        owner: String::new(),
        scopes: vec!["demo:read".into()],
        metadata: Map::new(),
        digest,
        format: "opaque".into(),
        created_at: NOW + i64::try_from(n).unwrap(),
        expires_at,
        grace_until: None,
        revoked_at: None,
        last_used_at: None,
        last_used_address: None,
        rotated_from: None,
        rotated_to: None,
        algorithm: None,
        signing_kid: None,
        limits: Default::default(),
        roles: Vec::new(),
    }
}

/// Distinct ids for `n` in 0..10_000 (digits map to letters so ids stay base32).
fn key_id(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut id = *b"kkkkkkkkkkkkkkkk";
    let mut rest = n;
    for slot in id.iter_mut().rev().take(6) {
        *slot = ALPHABET[rest % 32];
        rest /= 32;
    }
    String::from_utf8(id.to_vec()).unwrap()
}

/// Stores `count` keys (ids from [`key_id`]) and answers them.
pub async fn insert_keys(
    store: &KeyStore,
    count: usize,
    expires_at: Option<i64>,
) -> Vec<KeyRecord> {
    let mut keys = Vec::new();
    for n in 0..count {
        let mut key = record(n, expires_at);
        key.id = key_id(n);
        store.insert_key(&key).await.unwrap();
        keys.push(key);
    }
    keys
}

/// An event as the store answers it; committed at `effective_at` (see [`created`]).
fn event(seq: u64, id: &str, kind: EventKind, effective_at: i64, until: Option<i64>) -> FeedEvent {
    FeedEvent {
        seq,
        id: id.to_owned(),
        kind,
        effective_at: effective_at as u64,
        until: until.map(|until| until as u64),
        created_at: Some(effective_at as u64),
    }
}

/// `event` committed at `at`.
fn created(event: FeedEvent, at: i64) -> FeedEvent {
    FeedEvent {
        created_at: Some(at as u64),
        ..event
    }
}

/// A request of a follower at `seq` that does not say its window.
fn since(seq: u64) -> FeedRequest {
    FeedRequest {
        since: seq,
        window_s: None,
    }
}

async fn keys_round_trip_page_and_filter_by_status(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 4, None).await;
    let mut with_metadata = keys[0].clone();
    assert_eq!(
        store.get_key(&with_metadata.id).await.unwrap().unwrap(),
        with_metadata
    );
    assert_eq!(store.get_key("zzzzzzzzzzzzzzzz").await.unwrap(), None);
    with_metadata.id = key_id(100);
    with_metadata.digest = "ab".repeat(32);
    with_metadata
        .metadata
        .insert("ticket".into(), "OPS-1".into());
    with_metadata.owner = "team-a".into();
    with_metadata.expires_at = Some(NOW + 5);
    with_metadata.created_at = NOW + 10;
    store.insert_key(&with_metadata).await.unwrap();
    assert_eq!(
        store.get_key(&with_metadata.id).await.unwrap().unwrap(),
        with_metadata
    );

    let all = store.list_keys(None, 100, None, NOW).await.unwrap();
    let ids: Vec<_> = all.iter().map(|k| k.id.clone()).collect();
    let mut expected: Vec<_> = keys.iter().map(|k| k.id.clone()).collect();
    expected.push(with_metadata.id.clone());
    assert_eq!(ids, expected, "creation order");
    let first = store.list_keys(None, 2, None, NOW).await.unwrap();
    assert_eq!(first.len(), 2);
    let after = PageAfter {
        created_at: first[1].created_at,
        id: first[1].id.clone(),
    };
    let rest = store.list_keys(Some(&after), 10, None, NOW).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[0].id, keys[2].id);

    store.revoke_key(&keys[1].id, NOW).await.unwrap();
    let by = |status| {
        let store = store.clone();
        async move {
            store
                .list_keys(None, 100, Some(status), NOW + 5)
                .await
                .unwrap()
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by(KeyStatus::Revoked).await, [keys[1].id.clone()]);
    assert_eq!(by(KeyStatus::Expired).await, [with_metadata.id.clone()]);
    assert_eq!(
        by(KeyStatus::Active).await,
        [keys[0].id.clone(), keys[2].id.clone(), keys[3].id.clone()]
    );
    // Paging combines with a status filter.
    let after = PageAfter {
        created_at: keys[0].created_at,
        id: keys[0].id.clone(),
    };
    let active_after = store
        .list_keys(Some(&after), 1, Some(KeyStatus::Active), NOW + 5)
        .await
        .unwrap();
    assert_eq!(active_after.len(), 1);
    assert_eq!(active_after[0].id, keys[2].id);
}

async fn uniqueness_constraints_hold(db: &TestDb) {
    let store = db.connect().await;
    let key = insert_keys(&store, 1, None).await.remove(0);
    let mut same_id = record(7, None);
    same_id.id = key.id.clone();
    assert!(matches!(
        store.insert_key(&same_id).await,
        Err(StoreError::Database(_))
    ));
    let mut same_digest = record(8, None);
    same_digest.id = key_id(8);
    same_digest.digest = key.digest.clone();
    assert!(matches!(
        store.insert_key(&same_digest).await,
        Err(StoreError::Database(_))
    ));
    let digest = KeyDigest::of(b"admin");
    store
        .insert_admin_key("admin1", &digest, NOW)
        .await
        .unwrap();
    assert!(store
        .insert_admin_key("admin2", &digest, NOW)
        .await
        .is_err());
    assert!(store
        .insert_admin_key("admin1", &KeyDigest::of(b"other"), NOW)
        .await
        .is_err());
    // A JWT key record must name a signing key that exists.
    let mut jwt = record(9, Some(NOW + 60));
    jwt.id = key_id(9);
    jwt.signing_kid = Some("kg-es256-missing".into());
    assert!(matches!(
        store.insert_key(&jwt).await,
        Err(StoreError::SigningKeyNotFound)
    ));
    assert_eq!(store.get_key(&jwt.id).await.unwrap(), None);
}

async fn revoke_adds_one_event_only_the_first_time(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 2, Some(NOW + 3600)).await;
    assert_eq!(store.feed_seq().await.unwrap(), 0);
    let revoked = store.revoke_key(&keys[0].id, NOW + 1).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW + 1));
    assert_eq!(store.feed_seq().await.unwrap(), 1);
    let again = store.revoke_key(&keys[0].id, NOW + 50).await.unwrap();
    assert_eq!(again.revoked_at, Some(NOW + 1), "the first time stays");
    assert_eq!(store.feed_seq().await.unwrap(), 1, "no second event");
    let feed = store.read_feed(since(0), 1000, NOW + 60).await.unwrap();
    assert!(feed.reset && !feed.more);
    assert_eq!(feed.seq, 1);
    assert_eq!(
        feed.events,
        [event(
            1,
            &keys[0].id,
            EventKind::Revoked,
            NOW + 1,
            Some(NOW + 3600)
        )]
    );
    // A key that has already expired adds no event (nothing left to refuse).
    let expired = store.revoke_key(&keys[1].id, NOW + 3600).await.unwrap();
    assert_eq!(expired.status(NOW + 3600), KeyStatus::Revoked);
    assert_eq!(store.feed_seq().await.unwrap(), 1);
    assert!(matches!(
        store.revoke_key("zzzzzzzzzzzzzzzz", NOW).await,
        Err(StoreError::KeyNotFound)
    ));
}

async fn rotate_adds_an_event_at_the_end_of_the_grace(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 2, None).await;
    let mut successor = record(50, None);
    successor.id = key_id(50);
    let (old, new) = store
        .rotate_key(&keys[0].id, &successor, NOW + 3600, NOW)
        .await
        .unwrap();
    assert_eq!(old.grace_until, Some(NOW + 3600));
    assert_eq!(old.rotated_to.as_deref(), Some(successor.id.as_str()));
    assert_eq!(new.rotated_from.as_deref(), Some(keys[0].id.as_str()));
    assert_eq!(store.get_key(&successor.id).await.unwrap().unwrap(), new);
    assert_eq!(store.get_key(&keys[0].id).await.unwrap().unwrap(), old);
    // Grace 0: refused from now.
    let mut second = record(51, None);
    second.id = key_id(51);
    store
        .rotate_key(&keys[1].id, &second, NOW, NOW)
        .await
        .unwrap();
    let feed = store.read_feed(since(0), 1000, NOW).await.unwrap();
    assert_eq!(
        feed.events,
        [
            created(
                event(1, &keys[0].id, EventKind::Rotated, NOW + 3600, None),
                NOW
            ),
            event(2, &keys[1].id, EventKind::Rotated, NOW, None),
        ]
    );
    // Revoked during its grace: a stricter event for the same id (the follower keeps the
    // earliest refusal of the two).
    store.revoke_key(&keys[0].id, NOW + 10).await.unwrap();
    let feed = store.read_feed(since(0), 1000, NOW + 10).await.unwrap();
    assert_eq!(
        feed.events,
        [
            created(
                event(1, &keys[0].id, EventKind::Rotated, NOW + 3600, None),
                NOW
            ),
            event(2, &keys[1].id, EventKind::Rotated, NOW, None),
            event(3, &keys[0].id, EventKind::Revoked, NOW + 10, None),
        ]
    );
    let incremental = store.read_feed(since(2), 1000, NOW + 10).await.unwrap();
    assert!(!incremental.reset);
    assert_eq!(incremental.events.len(), 1);
    assert_eq!(incremental.seq, 3);
}

async fn rotation_refusals_add_no_event(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 3, Some(NOW + 100)).await;
    store.revoke_key(&keys[0].id, NOW).await.unwrap();
    let mut successor = record(60, None);
    successor.id = key_id(60);
    let before = store.feed_seq().await.unwrap();
    assert!(matches!(
        store.rotate_key(&keys[0].id, &successor, NOW, NOW).await,
        Err(StoreError::KeyRevoked)
    ));
    assert!(matches!(
        store
            .rotate_key(&keys[1].id, &successor, NOW + 200, NOW + 100)
            .await,
        Err(StoreError::KeyExpired)
    ));
    store
        .rotate_key(&keys[2].id, &successor, NOW + 50, NOW)
        .await
        .unwrap();
    let mut other = record(61, None);
    other.id = key_id(61);
    assert!(matches!(
        store.rotate_key(&keys[2].id, &other, NOW + 50, NOW).await,
        Err(StoreError::KeyAlreadyRotated)
    ));
    assert!(matches!(
        store.rotate_key("zzzzzzzzzzzzzzzz", &other, NOW, NOW).await,
        Err(StoreError::KeyNotFound)
    ));
    assert_eq!(store.feed_seq().await.unwrap(), before + 1);
    assert_eq!(store.get_key(&other.id).await.unwrap(), None, "rolled back");
}

async fn expire_now_ends_the_key_with_an_event(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 3, Some(NOW + 86_400)).await;
    let expired = store.expire_key(&keys[0].id, NOW + 5).await.unwrap();
    assert_eq!(expired.expires_at, Some(NOW + 5));
    assert_eq!(expired.status(NOW + 5), KeyStatus::Expired);
    assert_eq!(store.get_key(&keys[0].id).await.unwrap().unwrap(), expired);
    // The entry lives until the key's *original* expiry (a JWT stays valid offline until
    // its exp).
    let feed = store.read_feed(since(0), 1000, NOW + 5).await.unwrap();
    assert_eq!(
        feed.events,
        [event(
            1,
            &keys[0].id,
            EventKind::Expired,
            NOW + 5,
            Some(NOW + 86_400)
        )]
    );
    // Idempotent: again, or on a revoked key, nothing changes and no event is added.
    let again = store.expire_key(&keys[0].id, NOW + 9).await.unwrap();
    assert_eq!(again.expires_at, Some(NOW + 5));
    store.revoke_key(&keys[1].id, NOW).await.unwrap();
    let revoked = store.expire_key(&keys[1].id, NOW + 9).await.unwrap();
    assert_eq!(revoked.expires_at, Some(NOW + 86_400));
    assert_eq!(store.feed_seq().await.unwrap(), 2);
    // Revoking a key that was expired adds nothing either.
    store.revoke_key(&keys[0].id, NOW + 10).await.unwrap();
    assert_eq!(store.feed_seq().await.unwrap(), 2);
    assert!(matches!(
        store.expire_key("zzzzzzzzzzzzzzzz", NOW).await,
        Err(StoreError::KeyNotFound)
    ));
}

async fn the_feed_pages_and_resets_when_it_must(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 5, None).await;
    // Nothing ever revoked: a cold follower is already up to date (its long-poll is held).
    let empty = store.read_feed(since(0), 1000, NOW).await.unwrap();
    assert!(!empty.reset && empty.events.is_empty());
    assert_eq!(empty.seq, 0);
    for key in &keys {
        store.revoke_key(&key.id, NOW).await.unwrap();
    }
    let cold = store.read_feed(since(0), 1000, NOW).await.unwrap();
    assert!(cold.reset && !cold.more);
    assert_eq!(cold.seq, 5);
    let seqs: Vec<_> = cold.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);

    let page = store.read_feed(since(2), 2, NOW).await.unwrap();
    assert!(!page.reset && page.more);
    assert_eq!(page.seq, 4);
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    let page = store.read_feed(since(4), 2, NOW).await.unwrap();
    assert!(!page.more);
    assert_eq!(page.seq, 5);
    assert_eq!(page.events[0].id, keys[4].id);
    let idle = store.read_feed(since(5), 2, NOW).await.unwrap();
    assert!(!idle.reset && idle.events.is_empty());
    assert_eq!(idle.seq, 5);
    // Ahead of the service (its database was reset): treat as cold.
    let ahead = store.read_feed(since(9), 1000, NOW).await.unwrap();
    assert!(ahead.reset);
    assert_eq!(
        ahead.horizon,
        Some(NOW as u64),
        "records from another database are not vouched for"
    );
    assert_eq!(ahead.events.len(), 5);
    assert_eq!(ahead.seq, 5);
    // A paged snapshot continues incrementally.
    let first = store.read_feed(since(0), 3, NOW).await.unwrap();
    assert!(first.reset && first.more);
    assert_eq!(first.seq, 3);
    let rest = store.read_feed(since(first.seq), 3, NOW).await.unwrap();
    assert!(!rest.reset && !rest.more);
    assert_eq!(
        rest.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 5]
    );
}

async fn compaction_drops_ended_entries_and_old_followers_get_a_snapshot(db: &TestDb) {
    let store = db.connect().await;
    let forever = insert_keys(&store, 1, None).await.remove(0);
    let mut short = record(1, Some(NOW + 100));
    short.id = key_id(1);
    let mut long = record(2, Some(NOW + 1_000_000));
    long.id = key_id(2);
    store.insert_key(&short).await.unwrap();
    store.insert_key(&long).await.unwrap();
    store.revoke_key(&forever.id, NOW).await.unwrap(); // seq 1
    store.revoke_key(&short.id, NOW).await.unwrap(); // seq 2
    store.revoke_key(&long.id, NOW + 1_000).await.unwrap(); // seq 3
    let day = 86_400;

    // Past the short key's expiry (and the clock slack), answers leave it out even before
    // compaction.
    let snapshot = store.read_feed(since(0), 1000, NOW + 161).await.unwrap();
    let ids: Vec<_> = snapshot.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, [forever.id.clone(), long.id.clone()]);
    // Nothing to compact yet (the key ended less than 60 s ago: `before` is now - 60).
    let prune =
        |now| keygate_server::service::feed::prune(&store, now, Duration::from_secs(86_400));
    assert_eq!(prune(NOW + 160).await.unwrap(), 0);
    assert_eq!(prune(NOW + 161).await.unwrap(), 1);
    assert_eq!(prune(NOW + 161).await.unwrap(), 0);
    // A key past its expiry never matters again: no follower is told it missed anything.
    let behind = store.read_feed(since(1), 1000, NOW + 200).await.unwrap();
    assert!(!behind.reset && behind.horizon.is_none());
    assert_eq!(behind.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);

    // A day on, the revocation of the key without expiry is pruned by age: the feed holds a
    // day of revocations, however many keys were ever revoked.
    assert_eq!(prune(NOW + day).await.unwrap(), 0, "exactly a day: kept");
    assert_eq!(prune(NOW + day + 1).await.unwrap(), 1);
    // A follower behind the pruned event is not snapshotted again (older followers page
    // through any seq), but told that records it fetched before the first retained event
    // must be looked up again.
    let old = store
        .read_feed(since(0), 1000, NOW + day + 1)
        .await
        .unwrap();
    assert!(old.reset);
    assert_eq!(old.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(old.horizon, Some((NOW + 1_000) as u64));
    // One that had the pruned event missed nothing.
    let had_it = store
        .read_feed(since(1), 1000, NOW + day + 1)
        .await
        .unwrap();
    assert!(!had_it.reset && had_it.horizon.is_none());
    let current = store
        .read_feed(since(3), 1000, NOW + day + 1)
        .await
        .unwrap();
    assert!(!current.reset && current.horizon.is_none());
    // The sequence never goes back, even when its top event is compacted.
    prune(NOW + 20_000 + day).await.unwrap();
    assert_eq!(store.feed_seq().await.unwrap(), 3);
    let after = store
        .read_feed(since(3), 1000, NOW + 20_000 + day)
        .await
        .unwrap();
    assert!(!after.reset && after.events.is_empty());
    assert_eq!(after.seq, 3);
    let cold = store
        .read_feed(since(0), 1000, NOW + 20_000 + day)
        .await
        .unwrap();
    assert!(cold.events.is_empty(), "nothing is kept for good");
    assert_eq!(
        cold.horizon,
        Some((NOW + 20_000 + day) as u64),
        "nothing retained: all may be missing"
    );
}

fn signing_row(kid: &str, algorithm: &str) -> SigningKeyRow {
    SigningKeyRow {
        kid: kid.into(),
        algorithm: algorithm.into(),
        public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
        private_key_enc: vec![0, 1, 2, 255],
        created_at: NOW,
        retired_at: None,
        not_after: None,
        signs_forever: false,
    }
}

async fn signing_keys_one_active_per_algorithm_and_publication(db: &TestDb) {
    let store = db.connect().await;
    assert!(store
        .insert_first_signing_key(&signing_row("a1", "ES256"))
        .await
        .unwrap());
    assert!(
        !store
            .insert_first_signing_key(&signing_row("a2", "ES256"))
            .await
            .unwrap(),
        "a second active ES256 key loses"
    );
    assert!(store
        .insert_first_signing_key(&signing_row("b1", "EdDSA"))
        .await
        .unwrap());
    assert_eq!(
        store.active_signing_key("ES256").await.unwrap().unwrap(),
        signing_row("a1", "ES256")
    );
    assert_eq!(store.active_signing_key("RS256").await.unwrap(), None);

    // JWT key records extend their signing key's publication.
    let mut jwt = record(1, Some(NOW + 500));
    jwt.id = key_id(1);
    jwt.format = "jwt".into();
    jwt.algorithm = Some("ES256".into());
    jwt.signing_kid = Some("a1".into());
    store.insert_key(&jwt).await.unwrap();
    let mut earlier = jwt.clone();
    earlier.id = key_id(2);
    earlier.digest = "cd".repeat(32);
    earlier.expires_at = Some(NOW + 100);
    store.insert_key(&earlier).await.unwrap();
    let a1 = store.get_signing_key("a1").await.unwrap().unwrap();
    assert_eq!(a1.not_after, Some(NOW + 500), "the latest exp wins");
    assert!(!a1.signs_forever);
    let mut forever = jwt.clone();
    forever.id = key_id(3);
    forever.digest = "ef".repeat(32);
    forever.expires_at = None;
    store.insert_key(&forever).await.unwrap();
    assert!(
        store
            .get_signing_key("a1")
            .await
            .unwrap()
            .unwrap()
            .signs_forever
    );

    let retired = store
        .rotate_signing_key(&signing_row("a3", "ES256"), NOW + 10)
        .await
        .unwrap();
    assert_eq!(retired.as_deref(), Some("a1"));
    assert_eq!(
        store
            .active_signing_key("ES256")
            .await
            .unwrap()
            .unwrap()
            .kid,
        "a3"
    );
    let none = store
        .rotate_signing_key(&signing_row("c1", "RS256"), NOW + 10)
        .await
        .unwrap();
    assert_eq!(none, None);
    let listed = store.list_signing_keys().await.unwrap();
    let kids: Vec<_> = listed.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, ["a1", "a3", "b1", "c1"]);
    assert_eq!(listed[0].retired_at, Some(NOW + 10));
    assert_eq!(listed[0].private_key_enc, [0, 1, 2, 255]);
}

async fn admin_keys_store_digests(db: &TestDb) {
    let store = db.connect().await;
    assert_eq!(store.count_admin_keys().await.unwrap(), 0);
    assert!(store.active_admin_digests().await.unwrap().is_empty());
    let first = KeyDigest::of(b"first admin key");
    let second = KeyDigest::of(b"second admin key");
    store.insert_admin_key("one", &first, NOW).await.unwrap();
    store.insert_admin_key("two", &second, NOW).await.unwrap();
    assert_eq!(store.count_admin_keys().await.unwrap(), 2);
    let digests: Vec<_> = store
        .active_admin_digests()
        .await
        .unwrap()
        .iter()
        .map(KeyDigest::to_hex)
        .collect();
    assert_eq!(digests.len(), 2);
    assert!(digests.contains(&first.to_hex()) && digests.contains(&second.to_hex()));
}

async fn the_feed_signal_wakes_on_commit(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 1, None).await;
    let mut latest = store.subscribe_feed();
    assert_eq!(*latest.borrow_and_update(), 0);
    store.revoke_key(&keys[0].id, NOW).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), latest.changed())
        .await
        .expect("woken within a second")
        .unwrap();
    assert_eq!(*latest.borrow_and_update(), 1);
}

async fn reopening_keeps_data_and_sequence(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 2, None).await;
    store.revoke_key(&keys[0].id, NOW).await.unwrap();
    store.revoke_key(&keys[1].id, NOW).await.unwrap();
    drop(store);
    // Migrations run again without harm; the new store starts from the stored sequence.
    let reopened = db.connect().await;
    assert_eq!(*reopened.subscribe_feed().borrow(), 2);
    assert_eq!(reopened.feed_seq().await.unwrap(), 2);
    assert_eq!(
        reopened
            .get_key(&keys[0].id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(NOW)
    );
}

async fn keys_are_counted_by_status(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 4, None).await;
    let mut expiring = record(10, Some(NOW + 100));
    expiring.id = key_id(10);
    store.insert_key(&expiring).await.unwrap();
    store.revoke_key(&keys[2].id, NOW).await.unwrap();
    let mut successor = record(11, None);
    successor.id = key_id(11);
    store
        .rotate_key(&keys[3].id, &successor, NOW + 10, NOW)
        .await
        .unwrap();
    // (active, revoked, expired): the rotated key counts as active until its grace ends.
    assert_eq!(store.count_keys_by_status(NOW).await.unwrap(), (5, 1, 0));
    assert_eq!(
        store.count_keys_by_status(NOW + 10).await.unwrap(),
        (4, 1, 1)
    );
    assert_eq!(
        store.count_keys_by_status(NOW + 100).await.unwrap(),
        (3, 1, 2)
    );
}

async fn updates_apply_the_patch_or_nothing(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 1, None).await;
    let limit = RateLimit {
        requests_per_second: 2.5,
        burst: 5,
    };
    let patch = KeyPatch {
        name: Some("renamed".into()),
        rate_limit: Some(Some(limit)),
        allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
        not_after: Some(Some(NOW + 50)),
        allowed_principals: Some(vec!["spiffe://td/ns/a/sa/*".into()]),
        ..KeyPatch::default()
    };
    let refused = store
        .update_key(&keys[0].id, &patch, |_| Err("no"))
        .await
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(
        store.get_key(&keys[0].id).await.unwrap().unwrap(),
        keys[0],
        "a refused update writes nothing"
    );
    let updated = store
        .update_key(&keys[0].id, &patch, |_| Ok::<(), ()>(()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.limits.rate_limit, Some(limit));
    assert_eq!(updated.limits.allowed_cidrs, ["10.0.0.0/8"]);
    assert_eq!(updated.limits.not_after, Some(NOW + 50));
    assert_eq!(updated.limits.allowed_principals, ["spiffe://td/ns/a/sa/*"]);
    assert_eq!(
        updated.scopes, keys[0].scopes,
        "what the patch does not name is kept"
    );
    assert_eq!(store.get_key(&keys[0].id).await.unwrap().unwrap(), updated);
    let cleared = KeyPatch {
        rate_limit: Some(None),
        ..KeyPatch::default()
    };
    let updated = store
        .update_key(&keys[0].id, &cleared, |_| Ok::<(), ()>(()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.limits.rate_limit, None);
    assert_eq!(store.get_key(&keys[0].id).await.unwrap().unwrap(), updated);
    assert!(matches!(
        store
            .update_key(&key_id(99), &patch, |_| Ok::<(), ()>(()))
            .await,
        Err(StoreError::KeyNotFound)
    ));
}

async fn usage_batches_apply_once_and_last_use_only_moves_forward(db: &TestDb) {
    let store = db.connect().await;
    let keys = insert_keys(&store, 2, None).await;
    let minute = NOW - NOW % 3600;
    let mut first = UsageDelta::default();
    first
        .counts
        .insert((keys[0].id.clone(), minute, "allowed", String::new()), 2);
    first
        .counts
        .insert((keys[0].id.clone(), minute, "denied", "revoked".into()), 1);
    first.counts.insert(
        (keys[1].id.clone(), minute + 60, "allowed", String::new()),
        5,
    );
    first.last_used.insert(keys[0].id.clone(), NOW + 5);
    first.last_used.insert(keys[1].id.clone(), NOW + 70);
    assert!(store.apply_usage("batch-1", &first, NOW).await.unwrap());
    assert!(
        !store.apply_usage("batch-1", &first, NOW).await.unwrap(),
        "a batch id counts once"
    );
    let mut second = UsageDelta::default();
    second
        .counts
        .insert((keys[0].id.clone(), minute, "allowed", String::new()), 3);
    second.last_used.insert(keys[0].id.clone(), NOW + 1);
    assert!(store.apply_usage("batch-2", &second, NOW).await.unwrap());
    let used = |key: KeyRecord| key.last_used_at;
    let get = |n: usize| store.get_key(&keys[n].id);
    assert_eq!(used(get(0).await.unwrap().unwrap()), Some(NOW + 5));
    assert_eq!(used(get(1).await.unwrap().unwrap()), Some(NOW + 70));
    let cells = store
        .usage_cells(&keys[0].id, minute, minute + 3600, 3600)
        .await
        .unwrap();
    let summary: Vec<_> = cells
        .iter()
        .map(|cell| {
            (
                cell.bucket,
                cell.kind.as_str(),
                cell.name.as_str(),
                cell.count,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(minute, "allowed", "", 5), (minute, "denied", "revoked", 1)]
    );
    assert!(store.has_usage(&keys[1].id).await.unwrap());
    assert!(!store.has_usage(&key_id(99)).await.unwrap());
    let known = store
        .known_key_ids(&[keys[0].id.as_str(), "nosuchkeynosuchk"])
        .await
        .unwrap();
    assert_eq!(known.into_iter().collect::<Vec<_>>(), [keys[0].id.clone()]);
    assert_eq!(store.prune_usage(minute + 60).await.unwrap(), 2);
    assert!(!store.has_usage(&keys[0].id).await.unwrap());
    assert!(store.has_usage(&keys[1].id).await.unwrap());
}

/// A database made before the feed existed (migrations 0001 and 0002 from the old
/// `migrations/` directory, same versions and checksums) opens, and its revoked and rotated
/// keys enter the feed.
#[tokio::test]
async fn sqlite_databases_from_before_the_feed_are_upgraded() {
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let old_migrations = dir.path().join("migrations");
    std::fs::create_dir(&old_migrations).unwrap();
    let current = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for file in ["0001_keys.sql", "0002_jwt.sql"] {
        std::fs::copy(current.join(file), old_migrations.join(file)).unwrap();
    }
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old_migrations.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    for (n, revoked_at, grace_until, rotated_to) in [
        (1, Some(NOW + 20), None, None),
        (2, None, Some(NOW + 500), Some("zzzzzzzzzzzzzzzz")),
        (3, None, None, None),
    ] {
        sqlx::query(
            "INSERT INTO keys (id, prefix, name, scopes, digest, created_at, revoked_at, \
             grace_until, rotated_to) VALUES (?, 'kg_test_', 'old', '[]', ?, ?, ?, ?, ?)",
        )
        .bind(key_id(n))
        .bind(format!("{n:064}"))
        .bind(NOW)
        .bind(revoked_at)
        .bind(grace_until)
        .bind(rotated_to)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();

    let store = KeyStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(
        store.get_key(&key_id(3)).await.unwrap().unwrap().name,
        "old"
    );
    let feed = store.read_feed(since(0), 1000, NOW).await.unwrap();
    assert_eq!(
        feed.events,
        [
            event(1, &key_id(1), EventKind::Revoked, NOW + 20, None),
            event(2, &key_id(2), EventKind::Rotated, NOW + 500, None),
        ]
    );
    assert_eq!(feed.seq, 2);
    let mut next = record(4, None);
    next.id = key_id(4);
    store.insert_key(&next).await.unwrap();
    store.revoke_key(&next.id, NOW).await.unwrap();
    assert_eq!(store.feed_seq().await.unwrap(), 3);
}
