//! The host the filter runs in, as a trait: the clock, shared data, HTTP callouts, request
//! properties and headers, local replies, logs and metrics. The filter's one implementation
//! calls proxy-wasm (`src/host.rs`); the core's tests use [`fake::FakeHost`], which records
//! what was done and lets a test script the host's answers.
//!
//! The machines in [`crate::machine`] take a `&impl Host`, so everything they decide about
//! leases, callouts, limits and degraded operation runs natively in unit tests and the same
//! way inside Envoy.

use std::time::Duration;

#[cfg(any(test, feature = "testing"))]
pub mod fake;

/// A log level, as proxy-wasm has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// A host call that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The host refused the arguments (unknown cluster, dead context, ...): the name of the
    /// host's status.
    Refused(&'static str),
    /// Shared data changed since it was read.
    CasMismatch,
}

/// A value in shared data and its version (`None`, `None` when the key does not exist).
pub type Versioned = (Option<Vec<u8>>, Option<u32>);

/// What the core needs from the host. Every method is infallible from the caller's view
/// unless it returns a `Result`: a failed log, header write or metric cannot be acted upon.
pub trait Host {
    /// Milliseconds since the Unix epoch by the host's clock (0 if the host cannot say).
    fn now_ms(&self) -> u64;

    fn log(&self, level: LogLevel, message: &str);

    /// A shared-data value and its version.
    fn get_shared(&self, key: &str) -> Versioned;

    /// Writes a shared-data value; with `cas`, only if its version is still `cas`.
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;

    /// Starts an HTTP call to `cluster`; the answer arrives later with the returned token.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;

    /// The `:status` of the callout answer being handled (in its callback), if it has one.
    fn call_response_status(&self) -> Option<u32>;

    /// Up to `max` of the `size` bytes of the callout answer's body being handled.
    fn call_response_body(&self, size: usize, max: usize) -> Option<Vec<u8>>;

    /// A host property such as `["xds", "route_name"]`; `None` when absent.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// Sets (replaces) a request header of the current request.
    fn set_request_header(&self, name: &str, value: &str);

    fn remove_request_header(&self, name: &str);

    /// Answers the current request from the filter.
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]);

    /// Adds `by` to an event's counter.
    fn count(&self, event: Event, by: u64);

    /// Sets an event's gauge.
    fn gauge(&self, event: Event, value: u64);

    /// Adds `by` to the counter of denials for `reason` (`keygate.denied.<reason>`, or in
    /// shadow mode `keygate.shadow.denied.<reason>`).
    fn count_denial(&self, shadow: bool, reason: &'static str, by: u64);

    /// Makes `context_id` the context later calls act on; fails when that request is gone.
    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError>;

    /// Resumes the current (paused) request.
    fn resume_request(&self);

    /// Sets (replaces) a response header of the current request.
    fn set_response_header(&self, name: &str, value: &str);

    /// The current request's upstream response `:status`.
    fn response_status(&self) -> Option<u32>;

    /// Calls a host foreign function (such as Envoy's `verify_signature`).
    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError>;

    /// Sets the root context's tick period (zero: no ticks).
    fn set_tick_period(&self, period: Duration);

    /// Registers a queue of this VM under `name`: a message another VM of the plugin posts to
    /// it wakes this one (the root context's `on_queue_ready`). `None` when the host refused.
    fn register_queue(&self, name: &str) -> Option<u32>;

    /// Posts `message` to the queue a VM of this plugin registered as `name`. False when
    /// there is no such queue (its VM is gone) or the host refused.
    fn post_to_queue(&self, name: &str, message: &[u8]) -> bool;

    /// Takes the next message of one of this VM's queues; `None` when it is empty.
    fn take_from_queue(&self, queue: u32) -> Option<Vec<u8>>;
}

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
    /// A request decided by the local fallback of a fleet-wide limit (the key service or
    /// its store could not grant a lease).
    FleetFallback,
    /// A lease ask that failed (no answer, timeout, error status, unreadable answer).
    FleetAskFailure,
    /// Addresses blocked automatically (authentication failures past the threshold).
    ThreatBlocked,
    /// Requests refused because their client address is blocked.
    ThreatRefused,
    /// Failures not counted because the address's slot held only blocked addresses.
    ThreatTableFull,
    /// Failures (or blocks) not recorded because every compare-and-swap round was lost.
    ThreatContention,
    /// Gauge: blocks in force on this worker (automatic and operator).
    ThreatBlocks,
    /// Countries a usage row could not carry (it held `MAX_ROW_COUNTRIES` already).
    UsageCountriesDropped,
    /// New revoked sets a worker loaded because the follower told it on its queue.
    FeedTold,
}

impl Event {
    /// Every event, in declaration order (`event as usize` indexes it).
    pub const ALL: [Event; 30] = [
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
        Event::FleetFallback,
        Event::FleetAskFailure,
        Event::ThreatBlocked,
        Event::ThreatRefused,
        Event::ThreatTableFull,
        Event::ThreatContention,
        Event::ThreatBlocks,
        Event::UsageCountriesDropped,
        Event::FeedTold,
    ];

    /// The metric name on Envoy's `/stats` (under `wasmcustom.`).
    pub fn name(self) -> &'static str {
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
            Event::FleetFallback => "keygate.fleet_fallback",
            Event::FleetAskFailure => "keygate.fleet.ask_failure",
            Event::ThreatBlocked => "keygate.threat.blocked",
            Event::ThreatRefused => "keygate.threat.refused",
            Event::ThreatTableFull => "keygate.threat.table_full",
            Event::ThreatContention => "keygate.threat.contention",
            Event::ThreatBlocks => "keygate.threat.blocks",
            Event::UsageCountriesDropped => "keygate.usage.countries_dropped",
            Event::FeedTold => "keygate.feed.told",
        }
    }

    pub fn is_gauge(self) -> bool {
        matches!(
            self,
            Event::FeedLive | Event::RevokedIds | Event::ThreatBlocks
        )
    }
}
