//! Following the revocation feed: exactly one follower per Envoy process (a lease in shared
//! data, taken over when it lapses) long-polls the key service and writes the revoked set
//! into shared data; every worker keeps a copy, refreshed on its tick when the shared
//! version moves, and checks each request's key id against it.
//!
//! The set is bounded by time (see [`keygate_core::feed`]): the follower asks only for the
//! revocations that can still matter to this filter's records, assembles a paged snapshot
//! before it puts it in force, and when more ids fall in that window than
//! `revocation_feed.max_revoked`, keeps the newest and has records older than the evicted
//! ones looked up again ([`vouches_for`]).

use std::time::Duration;

use keygate_core::decision::DenyReason;
use keygate_core::feed::{
    parse_feed_response, Accepted, FeedPolicy, FeedState, Follower, FollowerStatus, RevokedSet,
    SetLimits,
};
use keygate_core::machine::callouts::Callout;
use keygate_core::machine::degraded::RecordTrust;
use keygate_core::machine::lease::{Reentry, SharedLease, Take};
use proxy_wasm::types::LogLevel;

use crate::filter::Shared;
use crate::host::{self, ProxyHost};
use crate::metrics::Event;

const SET_KEY: &str = "keygate.feed.set";
const STATUS_KEY: &str = "keygate.feed.status";
const LEASE_KEY: &str = "keygate.feed.lease";
const WORKER_COUNTER_KEY: &str = "keygate.worker.counter";
/// Largest feed answer read (the key service's pages stay far below it).
const MAX_FEED_BODY: usize = 8 * 1024 * 1024;
/// Longest pause between attempts after failures.
const MAX_BACKOFF_MS: u64 = 5_000;

/// What one worker knows of the feed.
#[derive(Default)]
pub struct FeedView {
    set: RevokedSet,
    /// Generation of the set this worker loaded (see [`FollowerStatus::generation`]).
    generation: Option<u64>,
    status: FollowerStatus,
    state: Option<FeedState>,
    /// This worker's identity in leases.
    worker_id: String,
    /// A poll is in flight (this worker is the follower).
    polling: bool,
    /// Where this worker is in the feed when it follows (a snapshot being assembled).
    follower: Follower,
    /// Ids evicted by the answers of a run of pages (logged once, after its last page).
    evicted_unlogged: usize,
    next_poll_ms: u64,
    failures: u32,
}

impl FeedView {
    pub fn new(worker_id: String) -> Self {
        Self {
            worker_id,
            ..Self::default()
        }
    }
}

/// At configure: the lease key, and whatever set the follower has shared.
pub fn on_start(shared: &Shared) {
    if !shared.config.revocation_feed.enabled {
        return;
    }
    SharedLease::new(LEASE_KEY).create(&ProxyHost);
    refresh(shared, host::now_ms());
}

/// A name unique among the workers (VMs) of this Envoy, for leases.
pub fn next_worker_id() -> String {
    for _ in 0..16 {
        let (value, cas) = host::get_shared(WORKER_COUNTER_KEY);
        let current: u64 = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let next = current + 1;
        if host::set_shared(WORKER_COUNTER_KEY, next.to_string().as_bytes(), cas).is_ok() {
            return format!("w{next}");
        }
    }
    format!("w{}", host::now_ms())
}

/// Why `id` must be refused now, if it is on the revoked list: `Revoked`, or `Expired` for a
/// key expired by an operator or past its rotation grace.
pub fn revocation(shared: &Shared, id: &str, now_ms: u64) -> Option<DenyReason> {
    if !shared.config.revocation_feed.enabled {
        return None;
    }
    shared
        .feed
        .borrow()
        .set
        .refusal(id, now_ms / 1000)
        .map(|kind| kind.deny_reason())
}

/// What the feed lets cached records do now (see [`RecordTrust`]).
pub fn with_trust<R>(shared: &Shared, f: impl FnOnce(RecordTrust<'_>) -> R) -> R {
    let settings = &shared.config.revocation_feed;
    if !settings.enabled {
        return f(RecordTrust::NO_FEED);
    }
    let view = shared.feed.borrow();
    f(RecordTrust {
        set: Some(&view.set),
        live: view.state == Some(FeedState::Live),
        policy: settings.policy,
        recent_ms: settings.recent_ms,
    })
}

/// How this filter's revoked set is bounded: the longest a cached record may decide (its TTL,
/// or its staleness while the key service is down), plus a lookup timeout.
fn limits(shared: &Shared) -> SetLimits {
    let cache = &shared.config.cache;
    SetLimits::for_records(
        shared.config.revocation_feed.max_revoked,
        cache.ttl_ms.max(cache.max_stale_ms),
        shared.config.key_service.timeout_ms,
    )
}

/// The policy in force for key records: `None` while the feed is live (or not used).
pub fn degraded_policy(shared: &Shared) -> Option<FeedPolicy> {
    with_trust(shared, |trust| trust.degraded_policy())
}

/// Every tick: pick up the follower's latest set, notice state changes, and follow the feed
/// if this worker holds (or can take) the lease.
pub fn on_tick(shared: &Shared) {
    if !shared.config.revocation_feed.enabled {
        return;
    }
    let now = host::now_ms();
    refresh(shared, now);
    let (idle, due) = {
        let view = shared.feed.borrow();
        (!view.polling, now >= view.next_poll_ms)
    };
    if idle && due {
        poll(shared, now);
    }
}

/// Reloads the shared set when its version moved, and logs a change of state.
fn refresh(shared: &Shared, now: u64) {
    let settings = &shared.config.revocation_feed;
    let status = host::get_shared(STATUS_KEY)
        .0
        .as_deref()
        .and_then(FollowerStatus::decode)
        .unwrap_or_default();
    let mut view = shared.feed.borrow_mut();
    if view.generation != Some(status.generation) {
        if let Some(set) = host::get_shared(SET_KEY)
            .0
            .as_deref()
            .and_then(RevokedSet::decode)
        {
            host::log(
                LogLevel::Debug,
                &format!(
                    "revocation feed: loaded generation {} (seq {}, {} ids)",
                    status.generation,
                    set.seq(),
                    set.len()
                ),
            );
            view.set = set;
            view.generation = Some(status.generation);
            shared
                .metrics
                .gauge(Event::RevokedIds, view.set.len() as u64);
        }
    }
    view.status = status;
    let state = status.state(now, settings.max_unreachable_ms);
    if view.state != Some(state) {
        let previous = view.state.map_or("start", FeedState::as_str);
        view.state = Some(state);
        drop(view);
        shared.metrics.count(Event::FeedStateChange);
        shared
            .metrics
            .gauge(Event::FeedLive, u64::from(state == FeedState::Live));
        let level = if state == FeedState::Unreachable {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        host::log(
            level,
            &format!(
                "revocation feed: {previous} -> {} (policy while not live: {:?})",
                state.as_str(),
                settings.policy
            ),
        );
    }
}

/// Takes or renews the follower lease and sends the next long-poll.
fn poll(shared: &Shared, now: u64) {
    let settings = &shared.config.revocation_feed;
    let (worker_id, since, assembling) = {
        let view = shared.feed.borrow();
        (
            view.worker_id.clone(),
            view.follower.next_since(&view.set),
            view.follower.is_assembling(),
        )
    };
    let timeout_ms = settings.wait_s * 1000 + 5_000;
    let until = now + timeout_ms + 5_000;
    let lease = SharedLease::new(LEASE_KEY);
    if lease.take(&ProxyHost, &worker_id, until, now, Reentry::Renew) != Take::Taken {
        // Another worker follows (or just took the lease); look again in a while in case
        // it dies.
        shared.feed.borrow_mut().next_poll_ms = now + 1_000;
        return;
    }
    // Wait only once a first answer has loaded: a cold follower wants its snapshot now, and
    // one assembling a snapshot its next page.
    let loaded = shared.feed.borrow().status.loaded_ms != 0;
    let wait = if loaded && !assembling {
        settings.wait_s
    } else {
        0
    };
    dispatch(shared, since, wait, timeout_ms, now);
}

fn dispatch(shared: &Shared, since: u64, wait: u64, timeout_ms: u64, now: u64) {
    let config = &shared.config;
    let window = limits(shared).request_window_s();
    let path = format!(
        "{}?since={since}&wait={wait}&window={window}",
        config.revocation_feed.path
    );
    let authorization = format!("Bearer {}", shared.secrets.service_token);
    let headers = vec![
        (":method", "GET"),
        (":path", path.as_str()),
        (":authority", config.key_service.authority.as_str()),
        ("authorization", authorization.as_str()),
        ("accept", "application/json"),
    ];
    match host::dispatch_http_call(
        &config.key_service.cluster,
        headers,
        Duration::from_millis(timeout_ms),
    ) {
        Ok(token) => {
            shared.feed.borrow_mut().polling = true;
            shared.callouts.borrow_mut().insert(token, Callout::Feed);
        }
        Err(err) => {
            failed(
                shared,
                now,
                &format!(
                    "cannot call cluster '{}': {err:?}",
                    config.key_service.cluster
                ),
            );
        }
    }
}

fn failed(shared: &Shared, now: u64, why: &str) {
    shared.metrics.count(Event::FeedFailure);
    let mut view = shared.feed.borrow_mut();
    view.failures = view.failures.saturating_add(1);
    let backoff = (250u64 << view.failures.min(8)).min(MAX_BACKOFF_MS);
    view.next_poll_ms = now + backoff;
    let failures = view.failures;
    drop(view);
    host::log(
        LogLevel::Warn,
        &format!("revocation feed: {why}; keeping the last good set, retrying in {backoff} ms (failure {failures})"),
    );
}

/// A feed answer arrived: apply it, share it, and ask again at once.
pub fn on_response(shared: &Shared, body_size: usize) {
    shared.feed.borrow_mut().polling = false;
    let now = host::now_ms();
    let settings = &shared.config.revocation_feed;
    let status = host::call_response_status();
    if status != Some(200) {
        let shown = status.map_or_else(
            || "no answer (unreachable or timed out)".to_owned(),
            |s| format!("status {s}"),
        );
        failed(shared, now, &shown);
        return;
    }
    let answer = match host::call_response_body(body_size, MAX_FEED_BODY)
        .as_deref()
        .map(parse_feed_response)
    {
        Some(Ok(answer)) => answer,
        _ => {
            failed(shared, now, "the answer is not a feed document");
            return;
        }
    };
    refresh(shared, now);
    let accepted = {
        let mut view = shared.feed.borrow_mut();
        let FeedView { set, follower, .. } = &mut *view;
        follower.accept(set, &answer, now / 1000, &limits(shared))
    };
    let (set, applied) = match accepted {
        Ok(Accepted::Whole(set, applied)) => (Some(set), applied),
        Ok(Accepted::Partial(applied)) => (None, applied),
        Err(err) => {
            shared.feed.borrow_mut().evicted_unlogged = 0;
            failed(shared, now, &err.to_string());
            return;
        }
    };
    if !answer.events.is_empty() || answer.reset {
        shared
            .metrics
            .count_by(Event::FeedEvents, answer.events.len() as u64);
    }
    if applied.evicted > 0 {
        shared
            .metrics
            .count_by(Event::FeedEvicted, applied.evicted as u64);
    }
    let evicted = {
        let mut view = shared.feed.borrow_mut();
        view.evicted_unlogged += applied.evicted;
        if set.is_some() && !answer.more {
            std::mem::take(&mut view.evicted_unlogged)
        } else {
            0
        }
    };
    if evicted > 0 {
        host::log(
            LogLevel::Warn,
            &format!(
                "revocation feed: more revoked ids than revocation_feed.max_revoked ({}) within \
                 the window that matters; kept the newest, evicted {evicted}: keys whose cached \
                 record predates them are looked up again",
                settings.max_revoked
            ),
        );
    }
    let Some(set) = set else {
        // A page of a run (a snapshot, or a burst of events): the set in force stays until
        // the last page is in.
        shared.feed.borrow_mut().failures = 0;
        let since = shared
            .feed
            .borrow()
            .follower
            .next_since(&RevokedSet::default());
        host::log(
            LogLevel::Debug,
            &format!(
                "revocation feed: page of {} event(s) up to seq {since}, more follow",
                answer.events.len()
            ),
        );
        renew_and_dispatch(shared, since, 0, now);
        return;
    };
    host::log(
        LogLevel::Debug,
        &format!(
            "revocation feed: applied {} event(s), seq {} (reset: {})",
            answer.events.len(),
            answer.seq,
            answer.reset
        ),
    );
    let _ = host::set_shared(SET_KEY, &set.encode(), None);
    let mut status = shared.feed.borrow().status;
    status.generation += 1;
    status.last_ok_ms = now;
    if status.loaded_ms == 0 {
        status.loaded_ms = now;
    }
    let _ = host::set_shared(STATUS_KEY, &status.encode(), None);
    let since = set.seq();
    shared.metrics.gauge(Event::RevokedIds, set.len() as u64);
    {
        let mut view = shared.feed.borrow_mut();
        view.set = set;
        view.generation = Some(status.generation);
        view.failures = 0;
    }
    refresh(shared, now);
    let wait = if answer.more { 0 } else { settings.wait_s };
    renew_and_dispatch(shared, since, wait, now);
}

/// Renews the follower lease and asks the next question.
fn renew_and_dispatch(shared: &Shared, since: u64, wait: u64, now: u64) {
    let timeout_ms = shared.config.revocation_feed.wait_s * 1000 + 5_000;
    let worker_id = shared.feed.borrow().worker_id.clone();
    SharedLease::new(LEASE_KEY).renew(&ProxyHost, &worker_id, now + timeout_ms + 5_000);
    dispatch(shared, since, wait, timeout_ms, now);
}
