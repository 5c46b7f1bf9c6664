//! Counters, visible on Envoy's `/stats` as `wasmcustom.keygate.*`.

use std::collections::HashMap;

use keygate_core::decision::DenyReason;
use keygate_core::jwt::JwtError;

use crate::host;

#[derive(Debug, Default)]
pub struct Metrics {
    allowed: Option<u32>,
    allowed_public: Option<u32>,
    cache_hit: Option<u32>,
    cache_miss: Option<u32>,
    stale_used: Option<u32>,
    callout_failure: Option<u32>,
    token_cache_hit: Option<u32>,
    jwks_refreshed: Option<u32>,
    jwks_fetch_failure: Option<u32>,
    feed_events: Option<u32>,
    feed_failure: Option<u32>,
    feed_state_change: Option<u32>,
    feed_live: Option<u32>,
    revoked_ids: Option<u32>,
    denied: HashMap<&'static str, Option<u32>>,
}

/// Something worth counting.
#[derive(Clone, Copy, Debug)]
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
}

impl Metrics {
    pub fn define() -> Self {
        Self {
            allowed: host::define_counter("keygate.allowed"),
            allowed_public: host::define_counter("keygate.allowed_public"),
            cache_hit: host::define_counter("keygate.cache_hit"),
            cache_miss: host::define_counter("keygate.cache_miss"),
            stale_used: host::define_counter("keygate.stale_used"),
            callout_failure: host::define_counter("keygate.callout_failure"),
            token_cache_hit: host::define_counter("keygate.token_cache_hit"),
            jwks_refreshed: host::define_counter("keygate.jwks_refreshed"),
            jwks_fetch_failure: host::define_counter("keygate.jwks_fetch_failure"),
            feed_events: host::define_counter("keygate.feed.events"),
            feed_failure: host::define_counter("keygate.feed.failure"),
            feed_state_change: host::define_counter("keygate.feed.state_change"),
            feed_live: host::define_gauge("keygate.feed.live"),
            revoked_ids: host::define_gauge("keygate.feed.revoked_ids"),
            denied: DenyReason::METRIC_NAMES
                .iter()
                .chain(JwtError::METRIC_NAMES.iter())
                .map(|name| {
                    (
                        *name,
                        host::define_counter(&format!("keygate.denied.{name}")),
                    )
                })
                .collect(),
        }
    }

    pub fn count(&self, event: Event) {
        self.count_by(event, 1);
    }

    pub fn gauge(&self, event: Event, value: u64) {
        host::record(self.id(event), value);
    }

    pub fn count_by(&self, event: Event, by: u64) {
        host::increment_by(self.id(event), by);
    }

    fn id(&self, event: Event) -> Option<u32> {
        match event {
            Event::Allowed => self.allowed,
            Event::AllowedPublic => self.allowed_public,
            Event::CacheHit => self.cache_hit,
            Event::CacheMiss => self.cache_miss,
            Event::StaleUsed => self.stale_used,
            Event::CalloutFailure => self.callout_failure,
            Event::TokenCacheHit => self.token_cache_hit,
            Event::JwksRefreshed => self.jwks_refreshed,
            Event::JwksFetchFailure => self.jwks_fetch_failure,
            Event::FeedEvents => self.feed_events,
            Event::FeedFailure => self.feed_failure,
            Event::FeedStateChange => self.feed_state_change,
            Event::FeedLive => self.feed_live,
            Event::RevokedIds => self.revoked_ids,
        }
    }

    pub fn count_denial(&self, reason: &DenyReason) {
        host::increment(self.denied.get(reason.metric_name()).copied().flatten());
    }
}
