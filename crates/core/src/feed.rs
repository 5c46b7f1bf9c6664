//! The revocation feed: what the key service sends (`GET /v1/revocations?since=N&wait=S`),
//! the set of revoked ids a follower builds from it, and the follower's progress — all
//! encoded for proxy-wasm shared data so every worker of an Envoy reads one copy.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Path of the feed on the key service.
pub const FEED_PATH: &str = "/v1/revocations";

/// Why a key id is on the revoked list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Revoked,
    /// A rotated key's grace period ends at `effective_at`.
    Rotated,
    /// Expired by an operator ("expire now").
    Expired,
}

/// One revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    pub seq: u64,
    pub id: String,
    pub kind: EventKind,
    /// Unix seconds from which the id is refused.
    pub effective_at: u64,
    /// Unix seconds after which the entry may be dropped (the key expired anyway).
    #[serde(default)]
    pub until: Option<u64>,
}

/// One answer of the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedResponse {
    /// The highest sequence number the answer brings the follower to.
    pub seq: u64,
    /// A snapshot: replace the whole set with `events`.
    #[serde(default)]
    pub reset: bool,
    /// More events follow: ask again at once.
    #[serde(default)]
    pub more: bool,
    #[serde(default)]
    pub events: Vec<FeedEvent>,
}

/// Why an answer of the feed was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    #[error("the feed answer is not the expected JSON")]
    Malformed,
    #[error("the feed answer goes backwards (seq lower than the follower's)")]
    Backwards,
    #[error("the revoked set would exceed its limit of {0} ids")]
    TooMany(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    effective_at: u64,
    until: Option<u64>,
}

/// The revoked ids a follower has learnt, and up to which sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokedSet {
    seq: u64,
    ids: HashMap<String, Entry>,
}

#[derive(Serialize, Deserialize)]
struct Encoded {
    seq: u64,
    ids: Vec<(String, u64, Option<u64>)>,
}

impl RevokedSet {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// True when `id` must be refused at `now_s`.
    pub fn is_revoked(&self, id: &str, now_s: u64) -> bool {
        self.ids.get(id).is_some_and(|e| now_s >= e.effective_at)
    }

    /// Applies one answer of the feed; on error nothing changes.
    pub fn apply(
        &mut self,
        answer: &FeedResponse,
        now_s: u64,
        max_ids: usize,
    ) -> Result<(), FeedError> {
        if !answer.reset && answer.seq < self.seq {
            return Err(FeedError::Backwards);
        }
        let mut ids = if answer.reset {
            HashMap::new()
        } else {
            self.ids.clone()
        };
        for event in &answer.events {
            if event.until.is_some_and(|until| until < now_s) {
                continue;
            }
            let entry = Entry {
                effective_at: event.effective_at,
                until: event.until,
            };
            ids.entry(event.id.clone())
                .and_modify(|e| e.effective_at = e.effective_at.min(entry.effective_at))
                .or_insert(entry);
        }
        ids.retain(|_, e| e.until.is_none_or(|until| until >= now_s));
        if ids.len() > max_ids {
            return Err(FeedError::TooMany(max_ids));
        }
        self.ids = ids;
        self.seq = answer.seq;
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        let encoded = Encoded {
            seq: self.seq,
            ids: self
                .ids
                .iter()
                .map(|(id, e)| (id.clone(), e.effective_at, e.until))
                .collect(),
        };
        serde_json::to_vec(&encoded).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let encoded: Encoded = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            seq: encoded.seq,
            ids: encoded
                .ids
                .into_iter()
                .map(|(id, effective_at, until)| {
                    (
                        id,
                        Entry {
                            effective_at,
                            until,
                        },
                    )
                })
                .collect(),
        })
    }
}

/// Parses a feed answer (bounded by the caller's body limit).
pub fn parse_feed_response(body: &[u8]) -> Result<FeedResponse, FeedError> {
    serde_json::from_slice(body).map_err(|_| FeedError::Malformed)
}

/// How far the follower of an Envoy has got, shared by its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    /// When the feed last answered well (Unix ms); 0 = never.
    pub last_ok_ms: u64,
    /// When the first snapshot was applied (Unix ms); 0 = not yet.
    pub loaded_ms: u64,
    /// Bumped each time the follower writes a new set, so workers copy the set only when it
    /// changed.
    #[serde(default)]
    pub generation: u64,
}

/// What workers make of the feed at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// No snapshot loaded yet.
    Cold,
    /// Following: the revoked set is current.
    Live,
    /// The feed has not answered for longer than the configured bound.
    Unreachable,
}

impl FeedState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Live => "live",
            Self::Unreachable => "unreachable",
        }
    }
}

impl FollowerStatus {
    pub fn state(&self, now_ms: u64, max_unreachable_ms: u64) -> FeedState {
        if self.loaded_ms == 0 {
            FeedState::Cold
        } else if now_ms.saturating_sub(self.last_ok_ms) > max_unreachable_ms {
            FeedState::Unreachable
        } else {
            FeedState::Live
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What the filter does with keys while the feed is cold or unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedPolicy {
    /// Only key records fetched within `recent_seconds` are used from the cache; others are
    /// looked up again, and refused (503) when the key service cannot answer either.
    #[default]
    FailClosedUnlessRecent,
    /// Every request with a key is refused (503) until the feed is live again.
    FailClosed,
    /// Cached records keep deciding as usual (up to `max_stale_seconds`): a revocation made
    /// meanwhile is missed until the record's TTL runs out.
    FailOpen,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, id: &str, effective_at: u64, until: Option<u64>) -> FeedEvent {
        FeedEvent {
            seq,
            id: id.into(),
            kind: EventKind::Revoked,
            effective_at,
            until,
        }
    }

    #[test]
    fn applies_snapshots_and_increments() {
        let mut set = RevokedSet::default();
        let snapshot = FeedResponse {
            seq: 5,
            reset: true,
            more: false,
            events: vec![event(3, "a", 10, None), event(5, "b", 10, Some(1000))],
        };
        set.apply(&snapshot, 100, 10).unwrap();
        assert!(set.is_revoked("a", 100) && set.is_revoked("b", 100));
        assert!(!set.is_revoked("a", 9), "not before effective_at");
        let more = FeedResponse {
            seq: 6,
            reset: false,
            more: false,
            events: vec![event(6, "c", 200, None)],
        };
        set.apply(&more, 100, 10).unwrap();
        assert_eq!(set.seq(), 6);
        assert!(!set.is_revoked("c", 150), "a rotation's grace is honoured");
        assert!(set.is_revoked("c", 200));
        let reset = FeedResponse {
            seq: 7,
            reset: true,
            more: false,
            events: vec![event(7, "d", 0, None)],
        };
        set.apply(&reset, 100, 10).unwrap();
        assert!(!set.is_revoked("a", 100) && set.is_revoked("d", 100));
    }

    #[test]
    fn drops_expired_entries_and_refuses_going_backwards_or_overflowing() {
        let mut set = RevokedSet::default();
        let answer = FeedResponse {
            seq: 2,
            reset: true,
            more: false,
            events: vec![event(1, "old", 0, Some(50)), event(2, "new", 0, Some(500))],
        };
        set.apply(&answer, 100, 10).unwrap();
        assert_eq!(set.len(), 1);
        let back = FeedResponse {
            seq: 1,
            ..answer.clone()
        };
        let back = FeedResponse {
            reset: false,
            ..back
        };
        assert_eq!(set.apply(&back, 100, 10), Err(FeedError::Backwards));
        let many = FeedResponse {
            seq: 9,
            reset: false,
            more: false,
            events: (0..5)
                .map(|i| event(3 + i, &format!("k{i}"), 0, None))
                .collect(),
        };
        assert_eq!(set.apply(&many, 100, 3), Err(FeedError::TooMany(3)));
        assert_eq!(set.seq(), 2, "a refused answer changes nothing");
    }

    #[test]
    fn encodes_for_shared_data() {
        let mut set = RevokedSet::default();
        set.apply(
            &FeedResponse {
                seq: 4,
                reset: true,
                more: false,
                events: vec![event(4, "a", 1, Some(99))],
            },
            0,
            10,
        )
        .unwrap();
        assert_eq!(RevokedSet::decode(&set.encode()), Some(set));
        assert_eq!(RevokedSet::decode(b"junk"), None);
        assert_eq!(parse_feed_response(b"<html>"), Err(FeedError::Malformed));
        let parsed = parse_feed_response(br#"{"seq": 3, "events": [{"seq": 3, "id": "x", "kind": "rotated", "effective_at": 5}]}"#).unwrap();
        assert_eq!(parsed.events[0].kind, EventKind::Rotated);
        assert!(!parsed.reset);
    }

    #[test]
    fn follower_status_tells_the_state() {
        let cold = FollowerStatus::default();
        assert_eq!(cold.state(1_000, 30_000), FeedState::Cold);
        let live = FollowerStatus {
            last_ok_ms: 10_000,
            loaded_ms: 5_000,
            generation: 3,
        };
        assert_eq!(live.state(40_000, 30_000), FeedState::Live);
        assert_eq!(live.state(40_001, 30_000), FeedState::Unreachable);
        assert_eq!(FollowerStatus::decode(&live.encode()), Some(live));
    }
}
