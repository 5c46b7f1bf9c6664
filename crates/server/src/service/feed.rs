//! The revocation feed: every revoke, rotation and forced expiry becomes an event with a
//! monotonically increasing sequence number, which filters follow with a long-poll on
//! `GET /v1/revocations?since=N&wait=S`.
//!
//! The wire types here are the contract the filter parses. The paging rules
//! ([`plan`], [`page_incremental`], [`page_snapshot`]) are pure so both store backends share
//! them and they are unit-tested without a database.
//!
//! Freshness comes from a [`tokio::sync::watch`] of the latest committed sequence number that
//! the store updates after each commit (and, on PostgreSQL, on every `NOTIFY` from another
//! replica), so a held long-poll is woken at once, not polled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::{KeyStore, StoreError};

/// Most events in one answer; `more: true` says there are others.
pub const FEED_LIMIT: usize = 1000;
/// Most bytes of events in one answer (estimated generously per event), far below the
/// filter's read cap of 8 MiB whatever the ids: a snapshot of any size comes in pages.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest `wait` a follower may ask for, in seconds.
pub const MAX_WAIT_S: u64 = 60;
/// Longest `window` a follower may ask for, in seconds (30 days).
pub const MAX_WINDOW_S: u64 = 30 * 86_400;
/// Slack for clock skew between the service and the filters, in seconds: an event is kept
/// this long past the moment it stops mattering.
pub const COMPACTION_SLACK_S: i64 = 60;
/// How often the service compacts the feed.
pub const COMPACTION_PERIOD: Duration = Duration::from_secs(60);
/// How long events are kept at most, whatever the key's expiry: a day. A filter needs an
/// event only while it may hold a key record fetched before it (its TTL or staleness, seconds
/// to minutes by default); one that fell further behind, or that keeps records longer, is told
/// so ([`RevocationFeed::horizon`]) and looks those records up again.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(86_400);

/// Why an id entered the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// `DELETE /api/v1/auth/keys/{id}`: refused from `effective_at` (now).
    Revoked,
    /// The key was rotated: refused (as expired) from the end of its grace period.
    Rotated,
    /// `POST /api/v1/auth/keys/{id}/expire`: refused (as expired) from now.
    Expired,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "revoked" => Some(Self::Revoked),
            "rotated" => Some(Self::Rotated),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// One entry of the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    pub seq: u64,
    /// The 16-character key id (the `jti` of a JWT key).
    pub id: String,
    pub kind: EventKind,
    /// Unix seconds from which the id must be refused.
    pub effective_at: i64,
    /// Unix seconds of the key's own expiry, after which the entry can be dropped; `None`: the
    /// key never expires.
    pub until: Option<i64>,
    /// Unix seconds at which the event was committed: filters keep it only while a key record
    /// fetched before then may still decide.
    pub created_at: i64,
}

/// The answer of `GET /v1/revocations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationFeed {
    /// Ask next with `since` = this.
    pub seq: u64,
    /// A snapshot: the follower starts a new set with `events`, completed by the pages that
    /// follow while `more` is true.
    pub reset: bool,
    /// More events follow: ask again at once with `since` = `seq`.
    pub more: bool,
    pub events: Vec<RevocationEvent>,
    /// Unix seconds: events committed before it may be missing from what the follower has
    /// (pruned by age while it was behind, outside the window it asked for, or from another
    /// database). Key records it fetched before then must be looked up again. Absent: the
    /// follower misses nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<i64>,
}

/// The feed's bookkeeping row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedState {
    /// The highest sequence number committed (it never goes down, even when compaction
    /// deletes that event).
    pub last_seq: u64,
    /// The highest sequence number pruned by age ([`DEFAULT_RETENTION`]): a follower behind it
    /// may have missed events that still mattered. (Events dropped after their key's own
    /// expiry never matter again and leave no mark.)
    pub compacted_through: u64,
}

/// What a follower asks: `GET /v1/revocations?since=N&window=W`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedRequest {
    /// The last sequence number the follower has (0: none, it starts cold).
    pub since: u64,
    /// Seconds after its commit during which an event can still matter to the follower;
    /// older events are left out. `None` (followers that do not say): every retained event.
    pub window_s: Option<u64>,
}

/// How a store answers a request: which events, and what the answer says about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedQuery {
    /// Events with a higher sequence number ...
    pub after: u64,
    /// ... committed at or after this ...
    pub created_from: i64,
    /// ... of keys whose own expiry is not before this, in sequence order.
    pub until_from: i64,
    /// A snapshot: the follower starts a new set.
    pub reset: bool,
    /// The horizon known from the request alone (its window; a database it does not know).
    pub horizon: Option<i64>,
    /// The follower is behind events pruned by age: the store adds the commit time of the
    /// oldest retained event after them ([`FeedState::compacted_through`]) to the horizon.
    pub behind_pruned: bool,
}

impl FeedQuery {
    /// The horizon of the answer, given the commit time of the first retained event after the
    /// pruned ones (`None`: none is retained, so anything up to `now` may be missing).
    pub fn horizon(&self, first_retained_at: Option<i64>, now: i64) -> Option<i64> {
        let pruned = self.behind_pruned.then(|| first_retained_at.unwrap_or(now));
        match (self.horizon, pruned) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a request gets at `now`.
///
/// A cold follower (`since` 0) gets a snapshot: every retained event in its window, paged
/// like any other answer, with `reset` on the first page. One ahead of the service (its
/// database was replaced) gets a snapshot too, and a horizon of now. Every other follower gets
/// the events after `since`: compaction only ever deletes events that can no longer matter
/// (past their key's expiry) or that are older than the retention, and for those the answer
/// carries a horizon.
pub fn plan(request: FeedRequest, state: FeedState, now: i64) -> FeedQuery {
    let created_from = match request.window_s {
        Some(window) => now
            .saturating_sub(i64::try_from(window).unwrap_or(i64::MAX))
            .saturating_sub(COMPACTION_SLACK_S),
        None => i64::MIN,
    };
    let window_horizon = request.window_s.map(|_| created_from);
    let since = request.since;
    let (after, reset, horizon) = if since == 0 && state.last_seq == 0 {
        // Nothing was ever revoked: a cold follower's empty set is already complete, and its
        // long-poll must be held like any other (not answered at once, over and over).
        (0, false, None)
    } else if since == 0 {
        (0, true, window_horizon)
    } else if since > state.last_seq {
        (0, true, Some(now))
    } else {
        (since, false, None)
    };
    FeedQuery {
        after,
        created_from,
        until_from: now.saturating_sub(COMPACTION_SLACK_S),
        reset,
        horizon,
        behind_pruned: after < state.compacted_through,
    }
}

/// Rough upper bound of one event's size in an answer.
fn event_bytes(event: &RevocationEvent) -> usize {
    // Field names, punctuation and five numbers of at most 20 digits; an id escaped in full.
    200 + event.id.len() * 6
}

/// Builds an answer from the events the query selected, in sequence order; give the store's
/// first `limit + 1` so `more` can be told. An answer stops at `limit` events or
/// [`MAX_ANSWER_BYTES`], whichever comes first.
pub fn page(
    mut events: Vec<RevocationEvent>,
    state: FeedState,
    query: &FeedQuery,
    horizon: Option<i64>,
    limit: usize,
) -> RevocationFeed {
    let mut bytes = 0;
    let fits = events
        .iter()
        .take(limit.max(1))
        .take_while(|event| {
            bytes += event_bytes(event);
            bytes <= MAX_ANSWER_BYTES
        })
        .count()
        .max(1);
    let more = events.len() > fits;
    events.truncate(fits);
    let seq = match (more, events.last()) {
        (true, Some(last)) => last.seq,
        _ => state.last_seq,
    };
    RevocationFeed {
        seq,
        reset: query.reset,
        more,
        events,
        horizon,
    }
}

/// The latest committed sequence number, shared by the store (which publishes after each
/// commit) and every held long-poll (each is one receiver).
#[derive(Debug)]
pub struct FeedSignal {
    latest: watch::Sender<u64>,
}

impl FeedSignal {
    pub fn new(current: u64) -> Self {
        Self {
            latest: watch::Sender::new(current),
        }
    }

    /// Records that `seq` is committed; wakes the receivers if it is newer.
    pub fn publish(&self, seq: u64) {
        self.latest.send_if_modified(|latest| {
            let newer = seq > *latest;
            if newer {
                *latest = seq;
            }
            newer
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }
}

/// Counters of the feed endpoint, shown by `GET /v1/stats`.
#[derive(Debug, Default)]
pub struct FeedCounters {
    requests: AtomicU64,
    waiting: AtomicU64,
}

impl FeedCounters {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Long-polls held right now.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one held long-poll for as long as it lives (also when the client goes away and the
/// request future is dropped).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn start(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once `shutdown` turns true; never if its sender is gone.
async fn shutting_down(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Answers a feed request: at once when there is something newer than `since` (or a
/// snapshot is due), otherwise when an event is committed, `wait` has passed or the service
/// shuts down, whichever comes first.
pub async fn long_poll(
    store: &KeyStore,
    clock: &Arc<dyn Clock>,
    counters: &FeedCounters,
    shutdown: watch::Receiver<bool>,
    request: FeedRequest,
    wait: Duration,
) -> Result<RevocationFeed, StoreError> {
    // Subscribe before reading, so a commit after the read is never missed.
    let mut latest = store.subscribe_feed();
    latest.borrow_and_update();
    let page = store.read_feed(request, FEED_LIMIT, clock.now()).await?;
    if is_news(&page) || wait.is_zero() || *shutdown.borrow() {
        return Ok(page);
    }
    let _waiting = Waiting::start(&counters.waiting);
    let deadline = tokio::time::Instant::now() + wait;
    let stop = shutting_down(shutdown);
    tokio::pin!(stop);
    let mut page = page;
    loop {
        tokio::select! {
            changed = latest.changed() => {
                if changed.is_err() {
                    // The store is gone; nothing more will be committed through it.
                    tokio::time::sleep_until(deadline).await;
                    return Ok(page);
                }
                latest.borrow_and_update();
                page = store.read_feed(request, FEED_LIMIT, clock.now()).await?;
                if is_news(&page) {
                    return Ok(page);
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(page),
            () = &mut stop => return Ok(page),
        }
    }
}

/// An answer worth sending before the wait is over.
fn is_news(page: &RevocationFeed) -> bool {
    page.reset || !page.events.is_empty() || page.horizon.is_some()
}

/// Prunes the feed at `now`: deletes the events of keys past their own expiry (they can never
/// matter again: a record fetched at any time refuses the key by its expiry), and every event
/// older than `retention` (a rotation of a key without expiry included: once a filter's
/// records fetched before it are gone, the records it fetches show the end of the grace). So
/// the feed holds at most `retention` of revocations, however many keys were ever revoked.
/// Answers how many events were deleted.
pub async fn prune(store: &KeyStore, now: i64, retention: Duration) -> Result<u64, StoreError> {
    let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    store
        .compact_feed(
            now.saturating_sub(COMPACTION_SLACK_S),
            now.saturating_sub(retention),
        )
        .await
}

/// [`prune`]s the feed with `retention` (by default [`DEFAULT_RETENTION`]) now and then every
/// `period`, until the task is dropped. Failures are logged and retried next period.
pub async fn compact_periodically(
    store: KeyStore,
    clock: Arc<dyn Clock>,
    period: Duration,
    retention: Duration,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match prune(&store, clock.now(), retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "revocation feed compacted"),
            Err(error) => tracing::warn!(error = %error, "revocation feed compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn event(seq: u64) -> RevocationEvent {
        RevocationEvent {
            seq,
            id: format!("{seq:a>16}"),
            kind: EventKind::Revoked,
            effective_at: 0,
            until: None,
            created_at: NOW,
        }
    }

    fn state(last_seq: u64, compacted_through: u64) -> FeedState {
        FeedState {
            last_seq,
            compacted_through,
        }
    }

    fn request(since: u64, window_s: Option<u64>) -> FeedRequest {
        FeedRequest { since, window_s }
    }

    #[test]
    fn snapshots_for_cold_and_reset_followers_increments_for_the_others() {
        let s = state(10, 4);
        let cold = plan(request(0, None), s, NOW);
        assert!(cold.reset && cold.after == 0 && cold.behind_pruned);
        assert_eq!(cold.horizon, None);
        // Behind the pruning: the events after it, with a horizon (not a snapshot: paged
        // answers of an older follower continue from any seq).
        let behind = plan(request(3, None), s, NOW);
        assert!(!behind.reset && behind.after == 3 && behind.behind_pruned);
        assert_eq!(behind.horizon(Some(NOW - 500), NOW), Some(NOW - 500));
        assert_eq!(behind.horizon(None, NOW), Some(NOW));
        let current = plan(request(4, None), s, NOW);
        assert!(!current.reset && !current.behind_pruned);
        assert_eq!(current.horizon(None, NOW), None);
        assert_eq!(plan(request(10, None), s, NOW).after, 10);
        // Ahead of the service: its database was replaced; nothing cached is vouched for.
        let ahead = plan(request(11, None), s, NOW);
        assert!(ahead.reset && ahead.after == 0);
        assert_eq!(ahead.horizon, Some(NOW));
        // Nothing ever revoked: the cold follower is up to date and its long-poll is held.
        let empty = plan(request(0, Some(300)), state(0, 0), NOW);
        assert!(!empty.reset && empty.horizon.is_none());
    }

    #[test]
    fn the_window_bounds_what_is_sent_by_time() {
        let q = plan(request(0, Some(300)), state(10, 0), NOW);
        assert_eq!(q.created_from, NOW - 300 - COMPACTION_SLACK_S);
        assert_eq!(q.horizon, Some(q.created_from));
        assert_eq!(q.until_from, NOW - COMPACTION_SLACK_S);
        let unbounded = plan(request(5, None), state(10, 0), NOW);
        assert_eq!(unbounded.created_from, i64::MIN);
        let huge = plan(request(5, Some(u64::MAX)), state(10, 0), NOW);
        assert!(huge.created_from < 0, "saturates instead of wrapping");
    }

    #[test]
    fn pages_stop_at_the_limit_and_the_byte_bound() {
        let q = plan(request(4, None), state(20, 0), NOW);
        let page1 = page((5..=8).map(event).collect(), state(20, 0), &q, None, 3);
        assert!(page1.more && !page1.reset);
        assert_eq!(page1.seq, 7);
        assert_eq!(page1.events.len(), 3);
        let last = page((5..=7).map(event).collect(), state(20, 0), &q, None, 3);
        assert!(!last.more);
        assert_eq!(last.seq, 20);
        let empty = page(vec![], state(20, 0), &q, None, 3);
        assert_eq!(empty.seq, 20);
        assert!(empty.events.is_empty() && !empty.more);
        // Ids far longer than key ids: the answer stops at the byte bound, not the count.
        let long: Vec<_> = (1..=FEED_LIMIT as u64 + 1)
            .map(|seq| RevocationEvent {
                id: "\u{1}".repeat(2_000),
                ..event(seq)
            })
            .collect();
        let bounded = page(long, state(2_000, 0), &q, None, FEED_LIMIT);
        assert!(bounded.more);
        assert!(bounded.events.len() < FEED_LIMIT);
        assert!(serde_json::to_vec(&bounded).unwrap().len() <= MAX_ANSWER_BYTES);
    }

    #[test]
    fn a_full_page_of_key_ids_is_far_below_the_filters_read_cap() {
        let worst: Vec<_> = (0..=FEED_LIMIT as u64)
            .map(|n| RevocationEvent {
                seq: u64::MAX - n,
                id: "zzzzzzzzzzzzzzzz".into(),
                kind: EventKind::Rotated,
                effective_at: i64::MIN,
                until: Some(i64::MIN),
                created_at: i64::MIN,
            })
            .collect();
        let q = plan(request(0, Some(MAX_WINDOW_S)), state(u64::MAX, 0), NOW);
        let full = page(worst, state(u64::MAX, 0), &q, Some(i64::MIN), FEED_LIMIT);
        assert_eq!(full.events.len(), FEED_LIMIT);
        let bytes = serde_json::to_vec(&full).unwrap().len();
        assert!(bytes <= MAX_ANSWER_BYTES, "{bytes}");
        const { assert!(MAX_ANSWER_BYTES * 8 <= 8 * 1024 * 1024) };
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        let feed = RevocationFeed {
            seq: 42,
            reset: false,
            more: false,
            events: vec![RevocationEvent {
                seq: 41,
                id: "abcdefghijklmnop".into(),
                kind: EventKind::Rotated,
                effective_at: 1_790_000_000,
                until: None,
                created_at: 1_789_990_000,
            }],
            horizon: None,
        };
        assert_eq!(
            serde_json::to_value(&feed).unwrap(),
            serde_json::json!({"seq": 42, "reset": false, "more": false, "events": [
                {"seq": 41, "id": "abcdefghijklmnop", "kind": "rotated",
                 "effective_at": 1_790_000_000, "until": null, "created_at": 1_789_990_000}
            ]})
        );
        let with_horizon = RevocationFeed {
            horizon: Some(5),
            ..feed
        };
        assert_eq!(serde_json::to_value(&with_horizon).unwrap()["horizon"], 5);
    }

    #[test]
    fn the_signal_only_moves_forward() {
        let signal = FeedSignal::new(5);
        let mut rx = signal.subscribe();
        signal.publish(3);
        assert!(!rx.has_changed().unwrap());
        signal.publish(6);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 6);
        assert_eq!(signal.latest(), 6);
    }
}
