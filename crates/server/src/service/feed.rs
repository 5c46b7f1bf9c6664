//! The revocation feed: every revoke, rotation and forced expiry becomes an event with a
//! monotonically increasing sequence number, which filters follow with a long-poll on
//! `GET /v1/revocations?since=N&wait=S`.
//!
//! The wire types are the filter's own ([`keygate_core::feed`]); the paging rules are in
//! [`crate::model::feed`].
//!
//! Freshness comes from a [`tokio::sync::watch`] of the latest committed sequence number that
//! the store updates after each commit (and, on PostgreSQL, on every `NOTIFY` from another
//! replica), so a held long-poll is woken at once, not polled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::model::feed::{FeedRequest, FeedResponse, COMPACTION_SLACK_S, FEED_LIMIT};
use crate::store::{KeyStore, StoreError};

/// How often the service compacts the feed.
pub const COMPACTION_PERIOD: Duration = Duration::from_secs(60);
/// How long events are kept at most, whatever the key's expiry: a day. A filter needs an
/// event only while it may hold a key record fetched before it (its TTL or staleness, seconds
/// to minutes by default); one that fell further behind, or that keeps records longer, is told
/// so ([`FeedResponse::horizon`]) and looks those records up again.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(86_400);

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
) -> Result<FeedResponse, StoreError> {
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
fn is_news(page: &FeedResponse) -> bool {
    page.reset || !page.events.is_empty() || !page.roles.is_empty() || page.horizon.is_some()
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
