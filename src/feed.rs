//! The revocation feed, the glue: following it, sharing the revoked set and trusting cached
//! records by it are the core's ([`keygate_core::machine::follower`]); this module hands it
//! the host and the configuration and routes its callouts.

use keygate_core::decision::DenyReason;
use keygate_core::feed::FeedPolicy;
use keygate_core::machine::callouts::Callout;
use keygate_core::machine::degraded::RecordTrust;
use keygate_core::machine::follower::FeedContext;

pub use keygate_core::machine::follower::FeedView;

use crate::host::ProxyHost;
use crate::state::Shared;

fn context(shared: &Shared) -> FeedContext<'_> {
    FeedContext {
        settings: &shared.config.revocation_feed,
        cache: &shared.config.cache,
        key_service: &shared.config.key_service,
        service_token: &shared.secrets.service_token,
    }
}

fn polling(shared: &Shared, token: Option<u32>) {
    if let Some(token) = token {
        shared.callouts.borrow_mut().insert(token, Callout::Feed);
    }
}

/// At configure: the lease key, and whatever set the follower has shared.
pub fn on_start(shared: &Shared) {
    shared
        .feed
        .borrow_mut()
        .on_start(&ProxyHost, &context(shared));
}

/// A name unique among the workers (VMs) of this Envoy, for leases.
pub fn next_worker_id() -> String {
    keygate_core::machine::follower::next_worker_id(&ProxyHost)
}

/// Why `id` must be refused now, if it is on the revoked list.
pub fn revocation(shared: &Shared, id: &str, now_ms: u64) -> Option<DenyReason> {
    shared
        .feed
        .borrow()
        .refusal(&shared.config.revocation_feed, id, now_ms)
}

/// What the feed lets cached records do now (see [`RecordTrust`]).
pub fn with_trust<R>(shared: &Shared, f: impl FnOnce(RecordTrust<'_>) -> R) -> R {
    f(shared.feed.borrow().trust(&shared.config.revocation_feed))
}

/// The policy in force for key records: `None` while the feed is live (or not used).
pub fn degraded_policy(shared: &Shared) -> Option<FeedPolicy> {
    with_trust(shared, |trust| trust.degraded_policy())
}

/// Every tick: pick up the follower's latest set; the follower polls.
pub fn on_tick(shared: &Shared) {
    let token = shared
        .feed
        .borrow_mut()
        .on_tick(&ProxyHost, &context(shared));
    polling(shared, token);
}

/// A feed answer arrived.
pub fn on_response(shared: &Shared, body_size: usize) {
    let token = shared
        .feed
        .borrow_mut()
        .on_response(&ProxyHost, &context(shared), body_size);
    polling(shared, token);
}
