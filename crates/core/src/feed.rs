//! The revocation feed: what the key service sends (`GET /v1/revocations?since=N&wait=S&window=W`),
//! the set of revoked ids a follower builds from it, and the follower's progress — all
//! encoded for proxy-wasm shared data so every worker of an Envoy reads one copy.
//!
//! **The set is bounded by time, not by count.** A filter needs a revocation only while it
//! might still hold a key record fetched before it: the record's TTL or allowed staleness,
//! whichever is longer, plus the lookup timeout (an answer in flight may have been read before
//! the revocation). That is the [`SetLimits::window_s`]. Older revocations are answered by
//! lookups, which see the record's status, so an entry leaves the set once its window has
//! passed (or once the key's own expiry has, whichever is first), and the follower asks the
//! key service only for events within its window.
//!
//! **Overflow never refuses the feed.** If more than `max_ids` revocations fall within the
//! window, the set keeps the newest ones, counts the others as evicted, and stops vouching for
//! records fetched before the newest evicted one ([`RevokedSet::vouches_for`]): such records
//! are looked up again before they decide, and the lookup sees the revocation. The same holds
//! for events the key service no longer has ([`FeedResponse::horizon`]).
//!
//! **Snapshots come in pages.** A cold follower's snapshot is paged like any other answer
//! (no answer carries more than the key service's page limit); [`Follower`] assembles the pages
//! and puts the set in force only once the last page is in, never half a set.
//!
//! **Role changes ride the same feed.** A change to a role (its scopes) is a
//! [`RoleEvent`] (`role_changed`, the role's name and its new version) in the answer's `roles`
//! list, numbered in the same sequence as revocations. The set keeps the newest version of
//! each role it heard of, within the same window and bound ([`RevokedSet::roles_current`]); a
//! cached key record that holds a role at an older version is looked up again before it
//! decides. Role events travel beside `events`, not in it: a filter that predates roles
//! ignores the member it does not know, where an unknown `kind` in `events` would make it
//! refuse the whole answer.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::decision::DenyReason;
use crate::wire::RoleRef;

/// Path of the feed on the key service.
pub const FEED_PATH: &str = "/v1/revocations";

/// How far the clocks of the key service and of the filter may disagree, in seconds. Event
/// times from the key service are trusted only up to this slack.
pub const CLOCK_SKEW_S: u64 = 60;

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

impl EventKind {
    /// The kind's name on the wire and in the key service's database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Rotated => "rotated",
            Self::Expired => "expired",
        }
    }

    /// The kind named `text` ([`EventKind::as_str`]).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "revoked" => Some(Self::Revoked),
            "rotated" => Some(Self::Rotated),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }

    /// What a request with a key on the list is told: a rotated key past its grace, like a
    /// key expired by an operator, has expired; only a revoked key is revoked.
    pub fn deny_reason(self) -> DenyReason {
        match self {
            Self::Revoked => DenyReason::Revoked,
            Self::Rotated | Self::Expired => DenyReason::Expired,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Revoked => 0,
            Self::Rotated => 1,
            Self::Expired => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Revoked),
            1 => Some(Self::Rotated),
            2 => Some(Self::Expired),
            _ => None,
        }
    }
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
    /// Unix seconds (key service clock) at which the event was committed. Absent from older
    /// key services: the follower then counts from the moment it got the event.
    #[serde(default)]
    pub created_at: Option<u64>,
}

/// The kind of a [`RoleEvent`]: so far only one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleEventKind {
    /// The role was created, changed or deleted: records holding it at an older version are
    /// looked up again.
    #[default]
    RoleChanged,
    /// A kind added later: ignored, so a newer key service never breaks this filter's feed.
    #[serde(other)]
    Other,
}

/// One change to a role, numbered in the sequence of the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleEvent {
    pub seq: u64,
    #[serde(default)]
    pub kind: RoleEventKind,
    /// The role's name.
    pub role: String,
    /// The role's version after the change.
    pub version: u64,
    /// Unix seconds (key service clock) at which the change was committed.
    #[serde(default)]
    pub created_at: Option<u64>,
}

/// Most role versions a set keeps: past it the oldest are evicted, and records fetched before
/// them are looked up again (as for revoked ids).
pub const MAX_ROLE_VERSIONS: usize = 10_000;

/// One answer of the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedResponse {
    /// The highest sequence number the answer brings the follower to.
    pub seq: u64,
    /// A snapshot: replace the whole set with `events` (and the pages that follow while
    /// `more` is true).
    #[serde(default)]
    pub reset: bool,
    /// More events follow: ask again at once.
    #[serde(default)]
    pub more: bool,
    #[serde(default)]
    pub events: Vec<FeedEvent>,
    /// Unix seconds (key service clock): events committed before it may be missing from what
    /// the follower has (pruned by age, or outside the window it asked for). Key records
    /// fetched before it are not vouched for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<u64>,
    /// Role changes in this answer's range of sequence numbers (see the module's notes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleEvent>,
}

/// Why an answer of the feed was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    #[error("the feed answer is not the expected JSON")]
    Malformed,
    #[error("the feed answer goes backwards (seq lower than the follower's)")]
    Backwards,
}

/// How the revoked set is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetLimits {
    /// Most ids kept; past it the oldest are evicted (and records fetched before them are
    /// looked up again).
    pub max_ids: usize,
    /// Seconds after its commit during which a revocation can still matter: the longest a
    /// record fetched before it may decide (TTL or staleness) plus `in_flight_s`.
    pub window_s: u64,
    /// The lookup timeout in whole seconds, rounded up: a record that arrives this long after
    /// a revocation may still have been read before it.
    pub in_flight_s: u64,
}

impl SetLimits {
    /// The limits for a filter whose records decide up to `record_life_ms` after they were
    /// fetched (TTL, or staleness when longer) and whose lookups time out after `timeout_ms`.
    pub fn for_records(max_ids: usize, record_life_ms: u64, timeout_ms: u64) -> Self {
        let in_flight_s = timeout_ms.div_ceil(1000);
        Self {
            max_ids,
            window_s: record_life_ms.div_ceil(1000).saturating_add(in_flight_s),
            in_flight_s,
        }
    }

    /// The `window` a follower asks the key service for: events older than this cannot
    /// matter, and the clock slack is the key service's to add.
    pub fn request_window_s(&self) -> u64 {
        self.window_s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// The latest event for the id: eviction goes oldest first.
    seq: u64,
    kind: EventKind,
    effective_at: u64,
    until: Option<u64>,
    /// When the latest event for the id was committed, in the filter's seconds (at most when
    /// the follower got it); 0: not known yet (a set written by an older filter), counted
    /// from the next answer.
    noted_at: u64,
}

/// The newest version of a role the set heard of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RoleEntry {
    version: u64,
    seq: u64,
    /// As [`Entry::noted_at`].
    noted_at: u64,
}

/// The revoked ids a follower has learnt, and up to which sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokedSet {
    seq: u64,
    ids: HashMap<String, Entry>,
    /// Roles changed within the window: their newest version.
    roles: HashMap<String, RoleEntry>,
    /// Key records fetched before this (Unix seconds) may predate a revocation the set does
    /// not hold; they must be looked up again before they decide.
    vouched_from_s: u64,
}

/// What applying an answer did beyond the set itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ids evicted because the set was full.
    pub evicted: usize,
}

#[derive(Serialize, Deserialize)]
struct Encoded {
    seq: u64,
    /// Sets written by older filters: (id, effective_at, until), all of kind revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<(String, u64, Option<u64>)>,
    /// (id, seq, kind code, effective_at, until, noted_at).
    #[serde(default)]
    entries: Vec<(String, u64, u8, u64, Option<u64>, u64)>,
    #[serde(default)]
    vouched_from: u64,
    /// (role, version, seq, noted_at).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<(String, u64, u64, u64)>,
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

    /// Why `id` must be refused at `now_s`, if it must.
    pub fn refusal(&self, id: &str, now_s: u64) -> Option<EventKind> {
        self.ids
            .get(id)
            .filter(|e| now_s >= e.effective_at)
            .map(|e| e.kind)
    }

    /// True when `id` must be refused at `now_s`.
    pub fn is_revoked(&self, id: &str, now_s: u64) -> bool {
        self.refusal(id, now_s).is_some()
    }

    /// Whether a key record holding `roles` is current as far as the set knows: false when
    /// the feed told of a newer version of one of them since the record was read.
    pub fn roles_current(&self, roles: &[RoleRef]) -> bool {
        roles.iter().all(|held| {
            self.roles
                .get(&held.name)
                .is_none_or(|known| known.version <= held.version)
        })
    }

    /// The newest version of `role` the set knows of, if it changed within the window.
    pub fn role_version(&self, role: &str) -> Option<u64> {
        self.roles.get(role).map(|e| e.version)
    }

    /// Whether a key record fetched at `fetched_at_ms` may decide with this set: false when a
    /// revocation it predates may be missing (evicted, or older than the key service's
    /// horizon).
    pub fn vouches_for(&self, fetched_at_ms: u64) -> bool {
        fetched_at_ms >= self.vouched_from_s.saturating_mul(1000)
    }

    /// Records fetched before this (Unix seconds) are not vouched for.
    pub fn vouched_from_s(&self) -> u64 {
        self.vouched_from_s
    }

    /// Applies one answer of the feed; on error nothing changes. A `reset` answer starts a
    /// new set (use [`Follower`] to assemble a paged snapshot before it is put in force).
    pub fn apply(
        &mut self,
        answer: &FeedResponse,
        now_s: u64,
        limits: &SetLimits,
    ) -> Result<Applied, FeedError> {
        if !answer.reset && answer.seq < self.seq {
            return Err(FeedError::Backwards);
        }
        if answer.reset {
            *self = Self::default();
        }
        self.seq = answer.seq;
        if let Some(horizon) = answer.horizon {
            self.distrust_before(horizon.saturating_add(CLOCK_SKEW_S), now_s, limits);
        }
        for event in &answer.events {
            self.note(event, now_s, limits);
        }
        for event in &answer.roles {
            self.note_role(event, now_s, limits);
        }
        self.prune(now_s, limits);
        self.evict_roles_past(MAX_ROLE_VERSIONS, now_s, limits);
        Ok(Applied {
            evicted: self.evict_past(limits, now_s),
        })
    }

    /// Records fetched before `at_s` (bounded by `now_s`: the follower has everything up to
    /// the moment it got the answer) plus a lookup timeout are no longer vouched for.
    fn distrust_before(&mut self, at_s: u64, now_s: u64, limits: &SetLimits) {
        let from = at_s.min(now_s).saturating_add(limits.in_flight_s);
        self.vouched_from_s = self.vouched_from_s.max(from);
    }

    fn note(&mut self, event: &FeedEvent, now_s: u64, limits: &SetLimits) {
        if event.until.is_some_and(|until| until < now_s) {
            return;
        }
        let noted_at = event
            .created_at
            .map_or(now_s, |at| at.saturating_add(CLOCK_SKEW_S).min(now_s));
        if noted_at.saturating_add(limits.window_s) < now_s {
            return;
        }
        let entry = Entry {
            seq: event.seq,
            kind: event.kind,
            effective_at: event.effective_at,
            until: event.until,
            noted_at,
        };
        self.ids
            .entry(event.id.clone())
            .and_modify(|e| {
                if entry.effective_at < e.effective_at {
                    e.effective_at = entry.effective_at;
                    e.kind = entry.kind;
                }
                e.seq = e.seq.max(entry.seq);
                e.noted_at = e.noted_at.max(entry.noted_at);
                e.until = match (e.until, entry.until) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            })
            .or_insert(entry);
    }

    fn note_role(&mut self, event: &RoleEvent, now_s: u64, limits: &SetLimits) {
        if event.kind != RoleEventKind::RoleChanged {
            return;
        }
        let noted_at = event
            .created_at
            .map_or(now_s, |at| at.saturating_add(CLOCK_SKEW_S).min(now_s));
        if noted_at.saturating_add(limits.window_s) < now_s {
            return;
        }
        let entry = RoleEntry {
            version: event.version,
            seq: event.seq,
            noted_at,
        };
        self.roles
            .entry(event.role.clone())
            .and_modify(|e| {
                e.version = e.version.max(entry.version);
                e.seq = e.seq.max(entry.seq);
                e.noted_at = e.noted_at.max(entry.noted_at);
            })
            .or_insert(entry);
    }

    /// Keeps at most `max` role versions, evicting the oldest; records fetched before the
    /// newest evicted change are no longer vouched for.
    fn evict_roles_past(&mut self, max: usize, now_s: u64, limits: &SetLimits) {
        let excess = self.roles.len().saturating_sub(max);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, u64, String)> = self
            .roles
            .iter()
            .map(|(name, e)| (e.seq, e.noted_at, name.clone()))
            .collect();
        by_age.select_nth_unstable(excess - 1);
        let mut newest_evicted = 0;
        for (_, noted_at, name) in &by_age[..excess] {
            newest_evicted = newest_evicted.max(*noted_at);
            self.roles.remove(name);
        }
        self.distrust_before(newest_evicted, now_s, limits);
    }

    /// Drops entries past the key's own expiry or past their window.
    fn prune(&mut self, now_s: u64, limits: &SetLimits) {
        self.roles.retain(|_, e| {
            if e.noted_at == 0 {
                e.noted_at = now_s;
            }
            e.noted_at.saturating_add(limits.window_s) >= now_s
        });
        self.ids.retain(|_, e| {
            if e.noted_at == 0 {
                e.noted_at = now_s;
            }
            e.until.is_none_or(|until| until >= now_s)
                && e.noted_at.saturating_add(limits.window_s) >= now_s
        });
    }

    /// Keeps at most `max_ids`, evicting the oldest (lowest sequence number); answers how many
    /// were evicted.
    fn evict_past(&mut self, limits: &SetLimits, now_s: u64) -> usize {
        let excess = self.ids.len().saturating_sub(limits.max_ids);
        if excess == 0 {
            return 0;
        }
        let mut by_age: Vec<(u64, u64, &String)> = self
            .ids
            .iter()
            .map(|(id, e)| (e.seq, e.noted_at, id))
            .collect();
        by_age.select_nth_unstable(excess - 1);
        let evicted = &by_age[..excess];
        let newest_evicted = evicted
            .iter()
            .map(|(_, noted_at, _)| *noted_at)
            .max()
            .unwrap_or(now_s);
        let evicted: Vec<String> = evicted.iter().map(|(_, _, id)| (*id).clone()).collect();
        for id in &evicted {
            self.ids.remove(id);
        }
        self.distrust_before(newest_evicted, now_s, limits);
        excess
    }

    pub fn encode(&self) -> Vec<u8> {
        let encoded = Encoded {
            seq: self.seq,
            ids: Vec::new(),
            entries: self
                .ids
                .iter()
                .map(|(id, e)| {
                    let kind = e.kind.code();
                    (id.clone(), e.seq, kind, e.effective_at, e.until, e.noted_at)
                })
                .collect(),
            vouched_from: self.vouched_from_s,
            roles: self
                .roles
                .iter()
                .map(|(name, e)| (name.clone(), e.version, e.seq, e.noted_at))
                .collect(),
        };
        serde_json::to_vec(&encoded).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let encoded: Encoded = serde_json::from_slice(bytes).ok()?;
        let mut ids = HashMap::with_capacity(encoded.entries.len() + encoded.ids.len());
        for (id, effective_at, until) in encoded.ids {
            let entry = Entry {
                seq: 0,
                kind: EventKind::Revoked,
                effective_at,
                until,
                noted_at: 0,
            };
            ids.insert(id, entry);
        }
        for (id, seq, kind, effective_at, until, noted_at) in encoded.entries {
            let entry = Entry {
                seq,
                kind: EventKind::from_code(kind)?,
                effective_at,
                until,
                noted_at,
            };
            ids.insert(id, entry);
        }
        let roles = encoded
            .roles
            .into_iter()
            .map(|(name, version, seq, noted_at)| {
                let entry = RoleEntry {
                    version,
                    seq,
                    noted_at,
                };
                (name, entry)
            })
            .collect();
        Some(Self {
            seq: encoded.seq,
            ids,
            roles,
            vouched_from_s: encoded.vouched_from,
        })
    }
}

/// Parses a feed answer (bounded by the caller's body limit).
pub fn parse_feed_response(body: &[u8]) -> Result<FeedResponse, FeedError> {
    serde_json::from_slice(body).map_err(|_| FeedError::Malformed)
}

/// A follower's way through the answers of the feed: the pages of a snapshot are assembled
/// apart, and the set is put in force only when the last page is in, never half a set.
#[derive(Clone, Debug, Default)]
pub struct Follower {
    /// The snapshot being assembled, up to its last page so far.
    assembling: Option<RevokedSet>,
    /// Start over with a snapshot (the key service's sequence went backwards).
    restart: bool,
}

/// What an accepted answer means for the set in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The set to put in force now.
    Whole(RevokedSet, Applied),
    /// A page of a run (a snapshot, or a burst of events): the set in force stays until its
    /// last page; ask for the next page at once.
    Partial(Applied),
}

impl Follower {
    /// The `since` of the next request.
    pub fn next_since(&self, current: &RevokedSet) -> u64 {
        match (&self.assembling, self.restart) {
            (Some(partial), _) => partial.seq(),
            (None, true) => 0,
            (None, false) => current.seq(),
        }
    }

    /// True while a paged snapshot is being assembled.
    pub fn is_assembling(&self) -> bool {
        self.assembling.is_some()
    }

    /// Takes one answer. On error the snapshot being assembled (if any) is dropped, and after
    /// [`FeedError::Backwards`] the next request starts over with a snapshot; the set in force
    /// never changes on error.
    pub fn accept(
        &mut self,
        current: &RevokedSet,
        answer: &FeedResponse,
        now_s: u64,
        limits: &SetLimits,
    ) -> Result<Accepted, FeedError> {
        let partial = self.assembling.take();
        // A run of pages (a snapshot, or a burst of more events than one answer holds) is
        // put in force once, after its last page: never half a snapshot, and a mass
        // revocation costs one copy of the set to the workers, not one per page.
        let in_run = answer.reset || self.restart || partial.is_some() || answer.more;
        let mut set = match partial {
            _ if answer.reset || self.restart => RevokedSet::default(),
            Some(partial) => partial,
            None => current.clone(),
        };
        let applied = match set.apply(answer, now_s, limits) {
            Ok(applied) => applied,
            Err(err) => {
                self.restart = err == FeedError::Backwards;
                return Err(err);
            }
        };
        self.restart = false;
        if in_run && answer.more {
            self.assembling = Some(set);
            Ok(Accepted::Partial(applied))
        } else {
            Ok(Accepted::Whole(set, applied))
        }
    }
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

    const LIMITS: SetLimits = SetLimits {
        max_ids: 10,
        window_s: 1_000,
        in_flight_s: 1,
    };

    fn event(seq: u64, id: &str, effective_at: u64, until: Option<u64>) -> FeedEvent {
        FeedEvent {
            seq,
            id: id.into(),
            kind: EventKind::Revoked,
            effective_at,
            until,
            created_at: None,
        }
    }

    fn of_kind(seq: u64, id: &str, kind: EventKind, effective_at: u64) -> FeedEvent {
        FeedEvent {
            kind,
            ..event(seq, id, effective_at, None)
        }
    }

    fn answer(seq: u64, reset: bool, more: bool, events: Vec<FeedEvent>) -> FeedResponse {
        FeedResponse {
            seq,
            reset,
            more,
            events,
            horizon: None,
            roles: Vec::new(),
        }
    }

    #[test]
    fn applies_snapshots_and_increments() {
        let mut set = RevokedSet::default();
        let snapshot = answer(
            5,
            true,
            false,
            vec![event(3, "a", 10, None), event(5, "b", 10, Some(1000))],
        );
        set.apply(&snapshot, 100, &LIMITS).unwrap();
        assert!(set.is_revoked("a", 100) && set.is_revoked("b", 100));
        assert!(!set.is_revoked("a", 9), "not before effective_at");
        set.apply(
            &answer(6, false, false, vec![event(6, "c", 200, None)]),
            100,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(set.seq(), 6);
        assert!(!set.is_revoked("c", 150), "a rotation's grace is honoured");
        assert!(set.is_revoked("c", 200));
        set.apply(
            &answer(7, true, false, vec![event(7, "d", 0, None)]),
            100,
            &LIMITS,
        )
        .unwrap();
        assert!(!set.is_revoked("a", 100) && set.is_revoked("d", 100));
    }

    #[test]
    fn the_kind_tells_revoked_from_expired() {
        let mut set = RevokedSet::default();
        let events = vec![
            of_kind(1, "revoked", EventKind::Revoked, 10),
            of_kind(2, "expired", EventKind::Expired, 10),
            of_kind(3, "rotated", EventKind::Rotated, 50),
            // Rotated (grace until 500), then revoked during the grace: revoked from 20.
            of_kind(4, "both", EventKind::Rotated, 500),
            of_kind(5, "both", EventKind::Revoked, 20),
        ];
        set.apply(&answer(5, true, false, events), 30, &LIMITS)
            .unwrap();
        assert_eq!(set.refusal("revoked", 30), Some(EventKind::Revoked));
        assert_eq!(set.refusal("expired", 30), Some(EventKind::Expired));
        assert_eq!(set.refusal("rotated", 30), None, "still in its grace");
        assert_eq!(set.refusal("rotated", 50), Some(EventKind::Rotated));
        assert_eq!(set.refusal("both", 30), Some(EventKind::Revoked));
        assert_eq!(EventKind::Revoked.deny_reason(), DenyReason::Revoked);
        assert_eq!(EventKind::Expired.deny_reason(), DenyReason::Expired);
        assert_eq!(EventKind::Rotated.deny_reason(), DenyReason::Expired);
    }

    #[test]
    fn entries_leave_after_their_window_or_the_keys_expiry() {
        let mut set = RevokedSet::default();
        let committed_at = |seq, id: &str, at| FeedEvent {
            created_at: Some(at),
            ..event(seq, id, at, None)
        };
        let events = vec![
            // Committed long before the window: no record fetched before it can be in use.
            committed_at(1, "ancient", 10_000 - 2_000),
            committed_at(2, "recent", 10_000 - 100),
            event(3, "expiring", 9_000, Some(10_500)),
        ];
        set.apply(&answer(3, true, false, events), 10_000, &LIMITS)
            .unwrap();
        assert!(!set.is_revoked("ancient", 10_000));
        assert!(set.is_revoked("recent", 10_000) && set.is_revoked("expiring", 10_000));
        // 'recent' counts from its commit plus the clock slack: 9_960 + 1_000.
        set.apply(&answer(3, false, false, vec![]), 10_960, &LIMITS)
            .unwrap();
        assert!(set.is_revoked("recent", 10_960));
        assert!(
            !set.is_revoked("expiring", 10_960),
            "the key expired anyway"
        );
        set.apply(&answer(3, false, false, vec![]), 10_961, &LIMITS)
            .unwrap();
        assert!(set.is_empty(), "a year of revocations never piles up");
        // Without a commit time (an older key service), the window counts from receipt.
        set.apply(
            &answer(4, false, false, vec![event(4, "x", 0, None)]),
            20_000,
            &LIMITS,
        )
        .unwrap();
        set.apply(&answer(4, false, false, vec![]), 21_000, &LIMITS)
            .unwrap();
        assert!(set.is_revoked("x", 21_000));
        set.apply(&answer(4, false, false, vec![]), 21_001, &LIMITS)
            .unwrap();
        assert!(set.is_empty());
        assert!(set.vouches_for(0), "nothing was ever evicted");
    }

    #[test]
    fn overflow_keeps_the_newest_and_stops_vouching_for_older_records() {
        let limits = SetLimits {
            max_ids: 3,
            ..LIMITS
        };
        let mut set = RevokedSet::default();
        let events: Vec<_> = (0..5u64)
            .map(|i| FeedEvent {
                created_at: Some(5_000 + i * 10),
                ..event(i + 1, &format!("k{i}"), 0, None)
            })
            .collect();
        let applied = set
            .apply(&answer(5, true, false, events), 6_000, &limits)
            .unwrap();
        assert_eq!(applied.evicted, 2, "counted, not refused");
        assert_eq!(set.len(), 3);
        assert_eq!(set.seq(), 5);
        assert!(!set.is_revoked("k0", 6_000) && !set.is_revoked("k1", 6_000));
        assert!(set.is_revoked("k4", 6_000) && set.is_revoked("k2", 6_000));
        // k1 was committed at 5_010 (+60 s of clock slack): a record fetched before then
        // (+ a lookup timeout) may not know it, so it is looked up again.
        assert_eq!(set.vouched_from_s(), 5_010 + CLOCK_SKEW_S + 1);
        assert!(!set.vouches_for((5_010 + CLOCK_SKEW_S) * 1000));
        assert!(set.vouches_for((5_010 + CLOCK_SKEW_S + 1) * 1000));
        // The bound never moves back, and a later reset starts vouching afresh.
        set.apply(&answer(6, false, false, vec![]), 6_001, &limits)
            .unwrap();
        assert_eq!(set.vouched_from_s(), 5_071);
        set.apply(&answer(9, true, false, vec![]), 6_002, &limits)
            .unwrap();
        assert_eq!(set.vouched_from_s(), 0);
    }

    #[test]
    fn a_horizon_stops_vouching_for_records_older_than_it() {
        let mut set = RevokedSet::default();
        let mut behind = answer(9, false, false, vec![]);
        behind.horizon = Some(1_000);
        set.apply(&behind, 5_000, &LIMITS).unwrap();
        assert_eq!(set.vouched_from_s(), 1_000 + CLOCK_SKEW_S + 1);
        // Never later than the answer itself (plus a lookup timeout): a horizon "now" after a
        // reset database makes every cached record be looked up once, not forever.
        let mut reset = answer(2, true, false, vec![]);
        reset.horizon = Some(9_999);
        set.apply(&reset, 5_000, &LIMITS).unwrap();
        assert_eq!(set.vouched_from_s(), 5_001);
    }

    #[test]
    fn refuses_going_backwards() {
        let mut set = RevokedSet::default();
        set.apply(
            &answer(2, true, false, vec![event(2, "a", 0, None)]),
            100,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            set.apply(&answer(1, false, false, vec![]), 100, &LIMITS),
            Err(FeedError::Backwards)
        );
        assert_eq!(set.seq(), 2, "a refused answer changes nothing");
        assert!(set.is_revoked("a", 100));
    }

    /// `count` revocations committed at `now`, in pages of `page` as the key service sends them.
    fn paged_snapshot(count: u64, page: u64, now: u64) -> Vec<FeedResponse> {
        let ids: Vec<u64> = (1..=count).collect();
        let chunks: Vec<_> = ids.chunks(page as usize).collect();
        let last = chunks.len() - 1;
        chunks
            .iter()
            .enumerate()
            .map(|(n, chunk)| FeedResponse {
                seq: chunk[chunk.len() - 1],
                reset: n == 0,
                more: n < last,
                events: chunk
                    .iter()
                    .map(|seq| FeedEvent {
                        created_at: Some(now - 5),
                        ..event(*seq, &format!("{seq:016}"), now - 5, None)
                    })
                    .collect(),
                horizon: Some(now - 2_000),
                roles: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_cold_follower_assembles_a_paged_snapshot_before_using_it() {
        let now = 1_000_000;
        let limits = SetLimits {
            max_ids: 300_000,
            ..LIMITS
        };
        let mut follower = Follower::default();
        let mut current = RevokedSet::default();
        assert_eq!(follower.next_since(&current), 0);
        let pages = paged_snapshot(200_000, 1_000, now);
        for (n, page) in pages.iter().enumerate() {
            match follower.accept(&current, page, now, &limits).unwrap() {
                Accepted::Partial(_) => {
                    assert!(n < pages.len() - 1);
                    assert!(current.is_empty(), "no half set is put in force");
                    assert_eq!(follower.next_since(&current), page.seq);
                }
                Accepted::Whole(set, applied) => {
                    assert_eq!(n, pages.len() - 1);
                    assert_eq!(applied.evicted, 0);
                    current = set;
                }
            }
        }
        assert!(!follower.is_assembling());
        assert_eq!(current.len(), 200_000);
        assert_eq!(current.seq(), 200_000);
        assert!(current.is_revoked(&format!("{:016}", 1), now));
        assert!(current.is_revoked(&format!("{:016}", 200_000), now));
        assert_eq!(follower.next_since(&current), 200_000);
        // Later answers are incremental and apply at once.
        let next = answer(200_001, false, false, vec![event(200_001, "new", 0, None)]);
        match follower.accept(&current, &next, now, &limits).unwrap() {
            Accepted::Whole(set, _) => current = set,
            other => panic!("{other:?}"),
        }
        assert!(current.is_revoked("new", now));
    }

    #[test]
    fn a_snapshot_over_the_cap_keeps_what_fits_and_still_refuses_the_newest() {
        let now = 1_000_000;
        let limits = SetLimits {
            max_ids: 100_000,
            ..LIMITS
        };
        let mut follower = Follower::default();
        let current = RevokedSet::default();
        let mut pages = paged_snapshot(200_000, 1_000, now);
        // The key revoked last, as a real key would be after a mass revocation.
        let last = pages.len() - 1;
        pages[last].events.push(FeedEvent {
            seq: 200_001,
            created_at: Some(now),
            ..of_kind(200_001, "the-newest-one!!", EventKind::Revoked, now)
        });
        pages[last].seq = 200_001;
        let mut evicted = 0;
        let mut whole = None;
        for page in &pages {
            match follower.accept(&current, page, now, &limits).unwrap() {
                Accepted::Partial(applied) => evicted += applied.evicted,
                Accepted::Whole(set, applied) => {
                    evicted += applied.evicted;
                    whole = Some(set);
                }
            }
        }
        let set = whole.expect("the last page puts the set in force");
        assert_eq!(set.len(), 100_000);
        assert_eq!(evicted, 100_001);
        assert_eq!(
            set.refusal("the-newest-one!!", now),
            Some(EventKind::Revoked)
        );
        // Every evicted id was committed at now - 5: records fetched before now - 5 + 60 s of
        // clock slack (at most: now) + a lookup timeout are looked up again, which sees the
        // key's status.
        assert!(!set.vouches_for(now * 1000));
        assert!(set.vouches_for((now + 1) * 1000));
        // The set in shared data stays within the body a worker reads.
        assert!(set.encode().len() < 8 * 1024 * 1024);
    }

    #[test]
    fn a_failed_page_drops_the_partial_snapshot_and_a_backwards_feed_starts_over() {
        let mut follower = Follower::default();
        let mut current = RevokedSet::default();
        current
            .apply(
                &answer(50, true, false, vec![event(9, "kept", 0, None)]),
                100,
                &LIMITS,
            )
            .unwrap();
        let first = answer(10, true, true, vec![event(10, "a", 0, None)]);
        assert!(matches!(
            follower.accept(&current, &first, 100, &LIMITS),
            Ok(Accepted::Partial(_))
        ));
        assert_eq!(follower.next_since(&current), 10);
        let backwards = answer(5, false, false, vec![]);
        assert_eq!(
            follower.accept(&current, &backwards, 100, &LIMITS),
            Err(FeedError::Backwards)
        );
        assert!(!follower.is_assembling());
        assert!(current.is_revoked("kept", 100), "the set in force stays");
        assert_eq!(
            follower.next_since(&current),
            0,
            "start over with a snapshot"
        );
        // Nothing was ever revoked on the new service: its empty, non-reset answer is whole.
        match follower.accept(&current, &answer(0, false, false, vec![]), 100, &LIMITS) {
            Ok(Accepted::Whole(set, _)) => assert!(set.is_empty() && set.seq() == 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(follower.next_since(&current), 50);
    }

    #[test]
    fn a_burst_of_pages_is_put_in_force_once() {
        let mut follower = Follower::default();
        let mut current = RevokedSet::default();
        current
            .apply(
                &answer(1, true, false, vec![event(1, "a", 0, None)]),
                100,
                &LIMITS,
            )
            .unwrap();
        let first = answer(2, false, true, vec![event(2, "b", 0, None)]);
        assert!(matches!(
            follower.accept(&current, &first, 100, &LIMITS),
            Ok(Accepted::Partial(_))
        ));
        assert!(
            !current.is_revoked("b", 100),
            "the set in force waits for the last page"
        );
        assert_eq!(follower.next_since(&current), 2);
        let last = answer(3, false, false, vec![event(3, "c", 0, None)]);
        match follower.accept(&current, &last, 100, &LIMITS) {
            Ok(Accepted::Whole(set, _)) => current = set,
            other => panic!("{other:?}"),
        }
        assert!(["a", "b", "c"].iter().all(|id| current.is_revoked(id, 100)));
        assert_eq!(current.seq(), 3);
    }

    #[test]
    fn encodes_for_shared_data() {
        let mut set = RevokedSet::default();
        let events = vec![
            event(3, "a", 1, Some(99)),
            of_kind(4, "b", EventKind::Rotated, 1),
        ];
        let mut first = answer(4, true, false, events);
        first.horizon = Some(10);
        set.apply(&first, 50, &LIMITS).unwrap();
        let decoded = RevokedSet::decode(&set.encode()).unwrap();
        assert_eq!(decoded, set);
        assert_eq!(decoded.refusal("b", 50), Some(EventKind::Rotated));
        assert_eq!(decoded.vouched_from_s(), 50 + 1);
        assert_eq!(RevokedSet::decode(b"junk"), None);
        // A set an older filter wrote: every id revoked, its window counted from now on.
        let mut old = RevokedSet::decode(br#"{"seq": 7, "ids": [["z", 5, null]]}"#).unwrap();
        assert_eq!(old.seq(), 7);
        old.apply(&answer(7, false, false, vec![]), 100_000, &LIMITS)
            .unwrap();
        assert_eq!(old.refusal("z", 100_000), Some(EventKind::Revoked));
        assert_eq!(parse_feed_response(b"<html>"), Err(FeedError::Malformed));
        let parsed = parse_feed_response(br#"{"seq": 3, "events": [{"seq": 3, "id": "x", "kind": "rotated", "effective_at": 5}]}"#).unwrap();
        assert_eq!(parsed.events[0].kind, EventKind::Rotated);
        assert_eq!(parsed.events[0].created_at, None);
        assert!(!parsed.reset && parsed.horizon.is_none());
    }

    fn role(seq: u64, name: &str, version: u64, created_at: Option<u64>) -> RoleEvent {
        RoleEvent {
            seq,
            kind: RoleEventKind::RoleChanged,
            role: name.into(),
            version,
            created_at,
        }
    }

    fn held(name: &str, version: u64) -> RoleRef {
        RoleRef {
            name: name.into(),
            version,
        }
    }

    #[test]
    fn role_changes_make_records_holding_older_versions_stale() {
        let mut set = RevokedSet::default();
        let mut first = answer(3, true, false, vec![event(1, "k", 0, None)]);
        first.roles = vec![role(2, "analyst", 2, None), role(3, "ops", 3, None)];
        set.apply(&first, 100, &LIMITS).unwrap();
        assert!(
            set.is_revoked("k", 100),
            "revocations still apply beside roles"
        );
        assert!(set.roles_current(&[]));
        assert!(set.roles_current(&[held("analyst", 2), held("ops", 3)]));
        assert!(set.roles_current(&[held("unheard-of", 1)]));
        assert!(!set.roles_current(&[held("analyst", 1)]));
        assert!(!set.roles_current(&[held("ops", 3), held("analyst", 1)]));
        // A newer change; an older one arriving late never lowers the version.
        let mut next = answer(5, false, false, vec![]);
        next.roles = vec![role(5, "analyst", 5, None), role(4, "analyst", 4, None)];
        set.apply(&next, 100, &LIMITS).unwrap();
        assert_eq!(set.role_version("analyst"), Some(5));
        assert!(!set.roles_current(&[held("analyst", 4)]));
        assert!(set.roles_current(&[held("analyst", 5)]));
        // Past the window, no record read before the change can still be in use.
        set.apply(&answer(5, false, false, vec![]), 1_101, &LIMITS)
            .unwrap();
        assert_eq!(set.role_version("analyst"), None);
        assert!(set.roles_current(&[held("analyst", 1)]));
        // A snapshot starts over.
        let mut reset = answer(9, true, false, vec![]);
        reset.roles = vec![role(9, "ops", 9, Some(2_000))];
        set.apply(&reset, 2_000, &LIMITS).unwrap();
        assert_eq!(set.role_version("ops"), Some(9));
        assert!(!set.roles_current(&[held("ops", 3)]));
    }

    #[test]
    fn role_versions_are_bounded_and_evicting_stops_vouching() {
        let mut set = RevokedSet::default();
        let mut big = answer(1, true, false, vec![]);
        big.roles = (0..MAX_ROLE_VERSIONS as u64 + 2)
            .map(|i| role(i + 1, &format!("r{i}"), i + 1, Some(5_000)))
            .collect();
        set.apply(&big, 5_100, &LIMITS).unwrap();
        assert_eq!(set.roles.len(), MAX_ROLE_VERSIONS);
        assert_eq!(set.role_version("r0"), None, "the oldest left");
        assert!(set
            .role_version(&format!("r{}", MAX_ROLE_VERSIONS + 1))
            .is_some());
        // Records read before the evicted change (+ slack, + a lookup timeout) are looked up.
        assert_eq!(set.vouched_from_s(), 5_000 + CLOCK_SKEW_S + 1);
    }

    #[test]
    fn role_versions_survive_shared_data_and_old_filters_ignore_them() {
        let mut set = RevokedSet::default();
        let mut first = answer(2, true, false, vec![]);
        first.roles = vec![role(2, "analyst", 2, None)];
        set.apply(&first, 100, &LIMITS).unwrap();
        let decoded = RevokedSet::decode(&set.encode()).unwrap();
        assert_eq!(decoded, set);
        assert!(!decoded.roles_current(&[held("analyst", 1)]));
        // The wire form: role changes beside `events`, so an older filter (whose answer type
        // has no `roles`) still reads the answer; a later role event kind is skipped.
        let body = br#"{"seq": 7, "events": [], "roles": [
            {"seq": 6, "kind": "role_changed", "role": "analyst", "version": 6},
            {"seq": 7, "kind": "role_renamed_someday", "role": "ops", "version": 7}],
            "a_member_from_the_future": true}"#;
        let parsed = parse_feed_response(body).unwrap();
        assert_eq!(parsed.roles.len(), 2);
        let mut set = RevokedSet::default();
        set.apply(&parsed, 100, &LIMITS).unwrap();
        assert_eq!(set.role_version("analyst"), Some(6));
        assert_eq!(set.role_version("ops"), None, "an unknown kind is ignored");
        #[derive(Deserialize)]
        struct OlderAnswer {
            seq: u64,
            #[allow(dead_code)]
            events: Vec<FeedEvent>,
        }
        let older: OlderAnswer = serde_json::from_slice(body).unwrap();
        assert_eq!(older.seq, 7);
        // Whereas an unknown kind inside `events` breaks the whole answer for everyone.
        let inside = br#"{"seq": 1, "events": [{"seq": 1, "id": "x", "kind": "role_changed", "effective_at": 0}]}"#;
        assert_eq!(parse_feed_response(inside), Err(FeedError::Malformed));
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

    #[test]
    fn limits_follow_the_record_life_and_the_lookup_timeout() {
        let limits = SetLimits::for_records(100_000, 300_000, 1_000);
        assert_eq!(limits.in_flight_s, 1);
        assert_eq!(limits.window_s, 301);
        let limits = SetLimits::for_records(5, 30_500, 1_500);
        assert_eq!((limits.window_s, limits.in_flight_s), (33, 2));
        assert_eq!(limits.request_window_s(), 33);
    }
}
