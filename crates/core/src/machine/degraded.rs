//! Degraded operation: what a cached key record may still decide while the revocation feed
//! is not live, and what a request gets when the key service cannot answer.
//!
//! - While the feed is live (or not used), cached records decide until their TTL.
//! - While it is not, the configured [`FeedPolicy`] applies: `fail_closed_unless_recent`
//!   trusts only records fetched within `recent_ms` (a revocation may have been missed
//!   since), `fail_closed` refuses every keyed request (503), `fail_open` keeps deciding.
//! - A record the revoked set cannot vouch for (older than an id the set had to evict) is
//!   never trusted from the cache, whatever the state.
//! - A record holding a role the feed has told a newer version of is never trusted from the
//!   cache either ([`RecordTrust::trusts`]).
//! - When the key service cannot answer, a stale record that is still trusted and within its
//!   staleness bound decides ([`Fallback::UseStale`]); otherwise the request fails closed.

use crate::cache::{CacheEntry, Freshness};
use crate::feed::{FeedPolicy, RevokedSet};

/// What the feed lets cached records do right now.
#[derive(Clone, Copy, Debug)]
pub struct RecordTrust<'a> {
    /// The revoked set in force; `None` when the feed is not used.
    pub set: Option<&'a RevokedSet>,
    /// Whether the feed is live (meaningless without a set).
    pub live: bool,
    /// The policy while the feed is not live.
    pub policy: FeedPolicy,
    /// How recent a record must be under [`FeedPolicy::FailClosedUnlessRecent`].
    pub recent_ms: u64,
}

/// What a request gets when its record could not be fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The stale record decides.
    UseStale,
    /// The request is refused with the reason the fetch failed for.
    Refuse,
}

impl RecordTrust<'_> {
    /// The feed is not used: every record is trusted until its TTL.
    pub const NO_FEED: RecordTrust<'static> = RecordTrust {
        set: None,
        live: false,
        policy: FeedPolicy::FailOpen,
        recent_ms: 0,
    };

    /// The policy in force: `None` while the feed is live (or not used).
    pub fn degraded_policy(&self) -> Option<FeedPolicy> {
        match self.set {
            Some(_) if !self.live => Some(self.policy),
            _ => None,
        }
    }

    /// Whether every keyed request is refused now (`fail_closed` while not live).
    pub fn refuses_all(&self) -> bool {
        self.degraded_policy() == Some(FeedPolicy::FailClosed)
    }

    /// Whether the revoked set can vouch for a record fetched at `fetched_at_ms`.
    pub fn vouches_for(&self, fetched_at_ms: u64) -> bool {
        self.set.is_none_or(|set| set.vouches_for(fetched_at_ms))
    }

    /// Whether a record fetched at `fetched_at_ms` may decide from the cache now.
    pub fn is_recent_enough(&self, fetched_at_ms: u64, now_ms: u64) -> bool {
        if !self.vouches_for(fetched_at_ms) {
            return false;
        }
        match self.degraded_policy() {
            Some(FeedPolicy::FailClosedUnlessRecent) => {
                now_ms.saturating_sub(fetched_at_ms) <= self.recent_ms
            }
            _ => true,
        }
    }

    /// Whether a cached `entry` may decide now: recent enough ([`Self::is_recent_enough`]) and
    /// holding no role the feed has told a newer version of (such a record is looked up
    /// again; if the key service cannot answer, the request fails closed).
    pub fn trusts(&self, entry: &CacheEntry, now_ms: u64) -> bool {
        self.is_recent_enough(entry.fetched_at_ms, now_ms)
            && entry
                .record
                .as_ref()
                .is_none_or(|record| self.set.is_none_or(|set| set.roles_current(&record.roles)))
    }

    /// What a request gets when the key service could not answer, given the stale record
    /// held for it, if any (when it was fetched and how fresh it is).
    pub fn fallback(&self, stale: Option<(u64, Freshness)>, now_ms: u64) -> Fallback {
        match stale {
            Some((fetched_at_ms, freshness))
                if freshness != Freshness::Dead && self.is_recent_enough(fetched_at_ms, now_ms) =>
            {
                Fallback::UseStale
            }
            _ => Fallback::Refuse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{FeedResponse, SetLimits};

    fn trust(set: &RevokedSet, live: bool, policy: FeedPolicy) -> RecordTrust<'_> {
        RecordTrust {
            set: Some(set),
            live,
            policy,
            recent_ms: 30_000,
        }
    }

    /// A set whose feed said that events before `horizon_s` may be missing.
    fn set_with_horizon(horizon_s: u64) -> RevokedSet {
        let mut set = RevokedSet::default();
        let answer = FeedResponse {
            seq: 1,
            reset: true,
            more: false,
            events: Vec::new(),
            horizon: Some(horizon_s),
            roles: Vec::new(),
        };
        let limits = SetLimits::for_records(100, 60_000, 1_000);
        assert!(set.apply(&answer, horizon_s + 3_600, &limits).is_ok());
        set
    }

    #[test]
    fn without_a_feed_every_record_is_trusted() {
        let trust = RecordTrust::NO_FEED;
        assert_eq!(trust.degraded_policy(), None);
        assert!(!trust.refuses_all());
        assert!(trust.is_recent_enough(0, u64::MAX));
    }

    #[test]
    fn a_live_feed_trusts_records_it_vouches_for() {
        let set = RevokedSet::default();
        let live = trust(&set, true, FeedPolicy::FailClosed);
        assert_eq!(live.degraded_policy(), None);
        assert!(!live.refuses_all());
        assert!(live.is_recent_enough(0, 10_000_000));
    }

    #[test]
    fn fail_closed_unless_recent_trusts_only_recent_records() {
        let set = RevokedSet::default();
        let down = trust(&set, false, FeedPolicy::FailClosedUnlessRecent);
        assert_eq!(
            down.degraded_policy(),
            Some(FeedPolicy::FailClosedUnlessRecent)
        );
        assert!(!down.refuses_all());
        assert!(down.is_recent_enough(100_000, 130_000), "at the bound");
        assert!(!down.is_recent_enough(100_000, 130_001), "past it");
    }

    #[test]
    fn fail_closed_refuses_and_fail_open_trusts() {
        let set = RevokedSet::default();
        assert!(trust(&set, false, FeedPolicy::FailClosed).refuses_all());
        let open = trust(&set, false, FeedPolicy::FailOpen);
        assert!(!open.refuses_all());
        assert!(open.is_recent_enough(0, 10_000_000));
    }

    #[test]
    fn a_record_older_than_the_sets_horizon_is_never_trusted() {
        let set = set_with_horizon(1_000);
        let vouched_from_ms = set.vouched_from_s() * 1000;
        assert!(vouched_from_ms > 0, "the set vouches from its horizon");
        for (live, policy) in [
            (true, FeedPolicy::FailOpen),
            (false, FeedPolicy::FailOpen),
            (false, FeedPolicy::FailClosedUnlessRecent),
        ] {
            let trust = trust(&set, live, policy);
            assert!(!trust.is_recent_enough(vouched_from_ms - 1, vouched_from_ms));
            assert!(trust.is_recent_enough(vouched_from_ms, vouched_from_ms));
            assert_eq!(
                trust.fallback(
                    Some((vouched_from_ms - 1, Freshness::Stale)),
                    vouched_from_ms
                ),
                Fallback::Refuse
            );
        }
    }

    #[test]
    fn fallback_uses_a_trusted_stale_record_and_refuses_otherwise() {
        let set = RevokedSet::default();
        let live = trust(&set, true, FeedPolicy::FailClosedUnlessRecent);
        assert_eq!(live.fallback(None, 0), Fallback::Refuse, "nothing held");
        assert_eq!(
            live.fallback(Some((0, Freshness::Stale)), 1_000_000),
            Fallback::UseStale
        );
        assert_eq!(
            live.fallback(Some((0, Freshness::Fresh)), 1_000),
            Fallback::UseStale
        );
        assert_eq!(
            live.fallback(Some((0, Freshness::Dead)), 1_000_000),
            Fallback::Refuse,
            "past max staleness"
        );
        let down = trust(&set, false, FeedPolicy::FailClosedUnlessRecent);
        assert_eq!(
            down.fallback(Some((0, Freshness::Stale)), 30_000),
            Fallback::UseStale
        );
        assert_eq!(
            down.fallback(Some((0, Freshness::Stale)), 30_001),
            Fallback::Refuse,
            "not recent while the feed is down"
        );
        let open = trust(&set, false, FeedPolicy::FailOpen);
        assert_eq!(
            open.fallback(Some((0, Freshness::Stale)), 1_000_000),
            Fallback::UseStale
        );
    }
}
