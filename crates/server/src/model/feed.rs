//! The revocation feed's domain: what a follower asks, and the paging rules
//! ([`plan`], [`page`]). They are pure, so the store uses them on every backend and they are
//! unit-tested without a database. The wire types (an event, an answer) are the filter's own,
//! [`keygate_core::feed`].

pub use keygate_core::feed::{EventKind, FeedEvent, FeedResponse, RoleEvent, RoleEventKind};

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

/// The feed's bookkeeping row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedState {
    /// The highest sequence number committed (it never goes down, even when compaction
    /// deletes that event).
    pub last_seq: u64,
    /// The highest sequence number pruned by age (past the retention): a follower behind it
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

/// One row of the feed: a key's event, or a role's change (sent apart, in `roles`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    Key(FeedEvent),
    Role(RoleEvent),
}

impl FeedItem {
    fn seq(&self) -> u64 {
        match self {
            Self::Key(event) => event.seq,
            Self::Role(event) => event.seq,
        }
    }

    /// Rough upper bound of the item's size in an answer.
    fn bytes(&self) -> usize {
        // Field names, punctuation and five numbers of at most 20 digits; a name escaped in
        // full.
        match self {
            Self::Key(event) => 200 + event.id.len() * 6,
            Self::Role(event) => 200 + event.role.len() * 6,
        }
    }
}

/// Builds an answer from the events the query selected, in sequence order; give the store's
/// first `limit + 1` so `more` can be told. An answer stops at `limit` events or
/// [`MAX_ANSWER_BYTES`], whichever comes first.
pub fn page(
    events: Vec<FeedEvent>,
    state: FeedState,
    query: &FeedQuery,
    horizon: Option<i64>,
    limit: usize,
) -> FeedResponse {
    let items = events.into_iter().map(FeedItem::Key).collect();
    page_items(items, state, query, horizon, limit)
}

/// [`page`] of key events and role changes together: both count towards the limits, and
/// role changes go to the answer's `roles`.
pub fn page_items(
    mut items: Vec<FeedItem>,
    state: FeedState,
    query: &FeedQuery,
    horizon: Option<i64>,
    limit: usize,
) -> FeedResponse {
    let mut bytes = 0;
    let fits = items
        .iter()
        .take(limit.max(1))
        .take_while(|item| {
            bytes += item.bytes();
            bytes <= MAX_ANSWER_BYTES
        })
        .count()
        .max(1);
    let more = items.len() > fits;
    items.truncate(fits);
    let seq = match (more, items.last()) {
        (true, Some(last)) => last.seq(),
        _ => state.last_seq,
    };
    let mut events = Vec::with_capacity(items.len());
    let mut roles = Vec::new();
    for item in items {
        match item {
            FeedItem::Key(event) => events.push(event),
            FeedItem::Role(event) => roles.push(event),
        }
    }
    FeedResponse {
        seq,
        reset: query.reset,
        more,
        events,
        // Negative: before the epoch, so nothing is missing.
        horizon: horizon.map(unix_seconds),
        roles,
    }
}

/// Unix seconds as the wire has them; a time before the epoch is the epoch.
pub fn unix_seconds(time: i64) -> u64 {
    u64::try_from(time).unwrap_or(0)
}

/// One event for bulk loads of revocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEventInput {
    pub id: String,
    pub kind: EventKind,
    /// Unix seconds from which the id is refused.
    pub effective_at: i64,
    /// The key's own expiry, after which the event can be dropped.
    pub until: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn event(seq: u64) -> FeedEvent {
        FeedEvent {
            seq,
            id: format!("{seq:a>16}"),
            kind: EventKind::Revoked,
            effective_at: 0,
            until: None,
            created_at: Some(NOW as u64),
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
            .map(|seq| FeedEvent {
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
            .map(|n| FeedEvent {
                seq: u64::MAX - n,
                id: "zzzzzzzzzzzzzzzz".into(),
                kind: EventKind::Rotated,
                effective_at: u64::MAX,
                until: Some(u64::MAX),
                created_at: Some(u64::MAX),
            })
            .collect();
        let q = plan(request(0, Some(MAX_WINDOW_S)), state(u64::MAX, 0), NOW);
        // The widest horizon a store can give: the latest time it can hold.
        let full = page(worst, state(u64::MAX, 0), &q, Some(i64::MAX), FEED_LIMIT);
        assert_eq!(full.events.len(), FEED_LIMIT);
        let bytes = serde_json::to_vec(&full).unwrap().len();
        assert!(bytes <= MAX_ANSWER_BYTES, "{bytes}");
        const { assert!(MAX_ANSWER_BYTES * 8 <= 8 * 1024 * 1024) };
    }

    #[test]
    fn the_wire_format_is_the_documented_one() {
        let feed = FeedResponse {
            seq: 42,
            reset: false,
            more: false,
            events: vec![FeedEvent {
                seq: 41,
                id: "abcdefghijklmnop".into(),
                kind: EventKind::Rotated,
                effective_at: 1_790_000_000,
                until: None,
                created_at: Some(1_789_990_000),
            }],
            horizon: None,
            roles: Vec::new(),
        };
        assert_eq!(
            serde_json::to_value(&feed).unwrap(),
            serde_json::json!({"seq": 42, "reset": false, "more": false, "events": [
                {"seq": 41, "id": "abcdefghijklmnop", "kind": "rotated",
                 "effective_at": 1_790_000_000, "until": null, "created_at": 1_789_990_000}
            ]})
        );
        let with_horizon = FeedResponse {
            horizon: Some(5),
            ..feed
        };
        assert_eq!(serde_json::to_value(&with_horizon).unwrap()["horizon"], 5);
        let with_role = FeedResponse {
            roles: vec![RoleEvent {
                seq: 43,
                kind: RoleEventKind::RoleChanged,
                role: "analyst".into(),
                version: 43,
                created_at: Some(1_790_000_000),
            }],
            ..with_horizon
        };
        assert_eq!(
            serde_json::to_value(&with_role).unwrap()["roles"],
            serde_json::json!([{"seq": 43, "kind": "role_changed", "role": "analyst",
                "version": 43, "created_at": 1_790_000_000}])
        );
    }

    #[test]
    fn role_changes_page_with_key_events_and_travel_apart() {
        let state = FeedState {
            last_seq: 3,
            compacted_through: 0,
        };
        let query = plan(
            FeedRequest {
                since: 0,
                window_s: None,
            },
            state,
            NOW,
        );
        let role = |seq| {
            FeedItem::Role(RoleEvent {
                seq,
                kind: RoleEventKind::RoleChanged,
                role: "analyst".into(),
                version: seq,
                created_at: None,
            })
        };
        let items = vec![FeedItem::Key(event(1)), role(2), FeedItem::Key(event(3))];
        let first = page_items(items.clone(), state, &query, None, 2);
        assert_eq!((first.seq, first.more), (2, true));
        assert_eq!(first.events.len(), 1);
        assert_eq!(first.roles.len(), 1);
        let whole = page_items(items, state, &query, None, 10);
        assert_eq!((whole.seq, whole.more), (3, false));
        assert_eq!((whole.events.len(), whole.roles.len()), (2, 1));
    }
}
