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
/// Longest `wait` a follower may ask for, in seconds.
pub const MAX_WAIT_S: u64 = 60;
/// Events are dropped this long after the key's own expiry (slack for clock skew).
pub const COMPACTION_SLACK_S: i64 = 60;
/// How often the service compacts the feed.
pub const COMPACTION_PERIOD: Duration = Duration::from_secs(60);

/// Why an id entered the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// `DELETE /api/v1/auth/keys/{id}`: refused from `effective_at` (now).
    Revoked,
    /// The key was rotated: refused from the end of its grace period.
    Rotated,
    /// `POST /api/v1/auth/keys/{id}/expire`: refused from now.
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
}

/// The answer of `GET /v1/revocations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationFeed {
    /// Ask next with `since` = this.
    pub seq: u64,
    /// A snapshot: the follower replaces its whole set with `events`.
    pub reset: bool,
    /// More events follow: ask again at once with `since` = `seq`.
    pub more: bool,
    pub events: Vec<RevocationEvent>,
}

/// The feed's bookkeeping row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedState {
    /// The highest sequence number committed (it never goes down, even when compaction
    /// deletes that event).
    pub last_seq: u64,
    /// The highest sequence number compaction ever deleted: every event above it is retained.
    pub compacted_through: u64,
}

/// What a request with `since` gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedPlan {
    /// The events after `since`.
    After(u64),
    /// Every live entry: a cold follower (`since` 0), one older than the compaction watermark
    /// (it may have missed deleted events), or one ahead of the service (its database was
    /// reset).
    Snapshot,
}

pub fn plan(since: u64, state: FeedState) -> FeedPlan {
    // Nothing was ever revoked: a cold follower's empty set is already complete, and its
    // long-poll must be held like any other (not answered at once, over and over).
    if since == 0 && state.last_seq == 0 {
        return FeedPlan::After(0);
    }
    if since == 0 || since < state.compacted_through || since > state.last_seq {
        FeedPlan::Snapshot
    } else {
        FeedPlan::After(since)
    }
}

/// Builds an incremental answer from the events after `since` in sequence order; give the
/// store's first `limit + 1` so `more` can be told.
pub fn page_incremental(
    mut events: Vec<RevocationEvent>,
    state: FeedState,
    limit: usize,
) -> RevocationFeed {
    let more = events.len() > limit;
    events.truncate(limit);
    let seq = match (more, events.last()) {
        (true, Some(last)) => last.seq,
        _ => state.last_seq,
    };
    RevocationFeed {
        seq,
        reset: false,
        more,
        events,
    }
}

/// Builds a snapshot answer from every live entry (the latest event of each id whose `until`
/// has not passed) in sequence order.
///
/// Past `limit` the snapshot is paged: the follower continues with `since` = `seq`
/// incrementally, which must not look older than the compaction watermark, so a first page
/// always covers every entry up to `compacted_through` (it can then hold more than `limit`).
pub fn page_snapshot(
    mut entries: Vec<RevocationEvent>,
    state: FeedState,
    limit: usize,
) -> RevocationFeed {
    if entries.len() <= limit {
        return RevocationFeed {
            seq: state.last_seq,
            reset: true,
            more: false,
            events: entries,
        };
    }
    let mut cut = limit.max(1);
    while cut < entries.len() && entries[cut].seq <= state.compacted_through {
        cut += 1;
    }
    if cut >= entries.len() {
        return RevocationFeed {
            seq: state.last_seq,
            reset: true,
            more: false,
            events: entries,
        };
    }
    entries.truncate(cut);
    let last = entries.last().map_or(0, |event| event.seq);
    RevocationFeed {
        seq: last.max(state.compacted_through),
        reset: true,
        more: true,
        events: entries,
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
    since: u64,
    wait: Duration,
) -> Result<RevocationFeed, StoreError> {
    // Subscribe before reading, so a commit after the read is never missed.
    let mut latest = store.subscribe_feed();
    latest.borrow_and_update();
    let page = store.read_feed(since, FEED_LIMIT, clock.now()).await?;
    if page.reset || !page.events.is_empty() || wait.is_zero() || *shutdown.borrow() {
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
                page = store.read_feed(since, FEED_LIMIT, clock.now()).await?;
                if page.reset || !page.events.is_empty() {
                    return Ok(page);
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(page),
            () = &mut stop => return Ok(page),
        }
    }
}

/// Deletes the events of keys past their own expiry (by more than [`COMPACTION_SLACK_S`]), now
/// and then every `period`, until the task is dropped. Failures are logged and retried next
/// period.
pub async fn compact_periodically(store: KeyStore, clock: Arc<dyn Clock>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let before = clock.now().saturating_sub(COMPACTION_SLACK_S);
        match store.compact_feed(before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "revocation feed compacted"),
            Err(error) => tracing::warn!(error = %error, "revocation feed compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> RevocationEvent {
        RevocationEvent {
            seq,
            id: format!("{seq:a>16}"),
            kind: EventKind::Revoked,
            effective_at: 0,
            until: None,
        }
    }

    fn state(last_seq: u64, compacted_through: u64) -> FeedState {
        FeedState {
            last_seq,
            compacted_through,
        }
    }

    #[test]
    fn snapshots_for_cold_compacted_and_reset_followers() {
        let s = state(10, 4);
        assert_eq!(plan(0, s), FeedPlan::Snapshot);
        assert_eq!(plan(3, s), FeedPlan::Snapshot);
        assert_eq!(plan(4, s), FeedPlan::After(4));
        assert_eq!(plan(10, s), FeedPlan::After(10));
        assert_eq!(plan(11, s), FeedPlan::Snapshot);
        // Nothing ever revoked: the cold follower is up to date and its long-poll is held.
        assert_eq!(plan(0, state(0, 0)), FeedPlan::After(0));
    }

    #[test]
    fn incremental_pages_stop_at_the_limit() {
        let page = page_incremental((5..=8).map(event).collect(), state(20, 0), 3);
        assert!(page.more && !page.reset);
        assert_eq!(page.seq, 7);
        assert_eq!(page.events.len(), 3);
        let page = page_incremental((5..=7).map(event).collect(), state(20, 0), 3);
        assert!(!page.more);
        assert_eq!(page.seq, 20);
        let empty = page_incremental(vec![], state(20, 0), 3);
        assert_eq!(empty.seq, 20);
        assert!(empty.events.is_empty() && !empty.more);
    }

    #[test]
    fn snapshot_pages_never_end_below_the_compaction_watermark() {
        let entries: Vec<_> = [2, 5, 7, 9, 12].into_iter().map(event).collect();
        let whole = page_snapshot(entries.clone(), state(15, 0), 5);
        assert!(whole.reset && !whole.more);
        assert_eq!(whole.seq, 15);
        let paged = page_snapshot(entries.clone(), state(15, 0), 2);
        assert!(paged.reset && paged.more);
        assert_eq!(paged.seq, 5);
        assert_eq!(plan(paged.seq, state(15, 0)), FeedPlan::After(5));
        // Watermark 8: the first page takes 2, 5, 7 and answers seq 8, not older than it.
        let paged = page_snapshot(entries.clone(), state(15, 8), 2);
        assert_eq!(paged.events.len(), 3);
        assert_eq!(paged.seq, 8);
        assert_eq!(plan(paged.seq, state(15, 8)), FeedPlan::After(8));
        // Watermark past every entry: one page.
        let one = page_snapshot(entries, state(15, 12), 2);
        assert!(!one.more);
        assert_eq!(one.events.len(), 5);
        assert_eq!(one.seq, 15);
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
            }],
        };
        assert_eq!(
            serde_json::to_value(&feed).unwrap(),
            serde_json::json!({"seq": 42, "reset": false, "more": false, "events": [
                {"seq": 41, "id": "abcdefghijklmnop", "kind": "rotated",
                 "effective_at": 1_790_000_000, "until": null}
            ]})
        );
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
