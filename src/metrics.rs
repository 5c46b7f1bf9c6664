//! Counters and gauges, visible on Envoy's `/stats` as `wasmcustom.keygate.*`.

use std::collections::HashMap;

use keygate_core::decision::DenyReason;
use keygate_core::jwt::JwtError;

use crate::host;

/// Something worth counting (or, for gauges, reporting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Allowed,
    AllowedPublic,
    CacheHit,
    CacheMiss,
    /// A stale record was used because the key service could not be asked.
    StaleUsed,
    CalloutFailure,
    /// A JWT found in the verified-token cache.
    TokenCacheHit,
    JwksRefreshed,
    JwksFetchFailure,
    /// Revocation events applied from the feed (counted by the follower).
    FeedEvents,
    FeedFailure,
    FeedStateChange,
    /// Gauge: 1 while the feed is live.
    FeedLive,
    /// Gauge: ids on the revoked list.
    RevokedIds,
    /// Revoked ids evicted because the set was full (`revocation_feed.max_revoked`): keys
    /// whose records predate them are looked up again.
    FeedEvicted,
    /// Shadow mode: a request that would have been allowed.
    ShadowAllowed,
    /// A rate-limit bucket could not be updated (compare-and-swap kept failing).
    RateLimitContention,
    UsageFlushed,
    UsageFlushFailure,
    /// Usage rows dropped because too many waited.
    UsageDropped,
    /// Usage batches the key service refused for good (4xx): dropped, not resent.
    UsageRejected,
}

impl Event {
    const ALL: [Event; 21] = [
        Event::Allowed,
        Event::AllowedPublic,
        Event::CacheHit,
        Event::CacheMiss,
        Event::StaleUsed,
        Event::CalloutFailure,
        Event::TokenCacheHit,
        Event::JwksRefreshed,
        Event::JwksFetchFailure,
        Event::FeedEvents,
        Event::FeedFailure,
        Event::FeedStateChange,
        Event::FeedLive,
        Event::RevokedIds,
        Event::FeedEvicted,
        Event::ShadowAllowed,
        Event::RateLimitContention,
        Event::UsageFlushed,
        Event::UsageFlushFailure,
        Event::UsageDropped,
        Event::UsageRejected,
    ];

    fn name(self) -> &'static str {
        match self {
            Event::Allowed => "keygate.allowed",
            Event::AllowedPublic => "keygate.allowed_public",
            Event::CacheHit => "keygate.cache_hit",
            Event::CacheMiss => "keygate.cache_miss",
            Event::StaleUsed => "keygate.stale_used",
            Event::CalloutFailure => "keygate.callout_failure",
            Event::TokenCacheHit => "keygate.token_cache_hit",
            Event::JwksRefreshed => "keygate.jwks_refreshed",
            Event::JwksFetchFailure => "keygate.jwks_fetch_failure",
            Event::FeedEvents => "keygate.feed.events",
            Event::FeedFailure => "keygate.feed.failure",
            Event::FeedStateChange => "keygate.feed.state_change",
            Event::FeedLive => "keygate.feed.live",
            Event::RevokedIds => "keygate.feed.revoked_ids",
            Event::FeedEvicted => "keygate.feed.evicted",
            Event::ShadowAllowed => "keygate.shadow.allowed",
            Event::RateLimitContention => "keygate.rate_limit_contention",
            Event::UsageFlushed => "keygate.usage.flushed",
            Event::UsageFlushFailure => "keygate.usage.flush_failure",
            Event::UsageDropped => "keygate.usage.dropped",
            Event::UsageRejected => "keygate.usage.rejected",
        }
    }

    fn is_gauge(self) -> bool {
        matches!(self, Event::FeedLive | Event::RevokedIds)
    }
}

#[derive(Debug)]
pub struct Metrics {
    /// Indexed by `Event as usize` (the order of [`Event::ALL`]).
    events: [Option<u32>; Event::ALL.len()],
    denied: HashMap<&'static str, Option<u32>>,
    shadow_denied: HashMap<&'static str, Option<u32>>,
}

impl Metrics {
    pub fn define() -> Self {
        let events = Event::ALL.map(|event| {
            if event.is_gauge() {
                host::define_gauge(event.name())
            } else {
                host::define_counter(event.name())
            }
        });
        Self {
            events,
            denied: reason_counters("keygate.denied"),
            shadow_denied: reason_counters("keygate.shadow.denied"),
        }
    }

    fn id(&self, event: Event) -> Option<u32> {
        self.events.get(event as usize).copied().flatten()
    }

    pub fn count(&self, event: Event) {
        self.count_by(event, 1);
    }

    pub fn count_by(&self, event: Event, by: u64) {
        host::increment_by(self.id(event), by);
    }

    pub fn gauge(&self, event: Event, value: u64) {
        host::record(self.id(event), value);
    }

    pub fn count_denial(&self, reason: &DenyReason) {
        host::increment(self.denied.get(reason.metric_name()).copied().flatten());
    }

    pub fn count_shadow_denial(&self, reason: &DenyReason) {
        host::increment(
            self.shadow_denied
                .get(reason.metric_name())
                .copied()
                .flatten(),
        );
    }
}

/// One counter per deny reason (opaque keys and JWTs) under `prefix`.
fn reason_counters(prefix: &str) -> HashMap<&'static str, Option<u32>> {
    DenyReason::METRIC_NAMES
        .iter()
        .chain(JwtError::METRIC_NAMES.iter())
        .map(|name| (*name, host::define_counter(&format!("{prefix}.{name}"))))
        .collect()
}
