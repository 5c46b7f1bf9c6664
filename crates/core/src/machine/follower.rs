//! Following the revocation feed: exactly one follower per Envoy process (a lease in shared
//! data, taken over when it lapses) long-polls the key service and writes the revoked set
//! into shared data; every worker keeps a copy and checks each request's key id against it.
//! A worker reloads its copy when the follower tells it, by a message on the worker's own
//! shared queue, that a new set is in, and on its tick (every 100 ms) in case a message was
//! lost. A worker whose queue could not be registered ticks every 10 ms instead, as every
//! worker did before queues: a timer that fires 100 times a second costs Envoy several µs of
//! CPU per request (`make bench`, H8 against H1), however little the filter does on it.
//!
//! The set is bounded by time (see [`crate::feed`]): the follower asks only for the
//! revocations that can still matter to this filter's records, assembles a paged snapshot
//! before it puts it in force, and when more ids fall in that window than
//! `revocation_feed.max_revoked`, keeps the newest and has records older than the evicted
//! ones looked up again ([`FeedView::trust`]).

use std::time::Duration;

use crate::cache::CachePolicy;
use crate::config::{FeedSettings, KeyService};
use crate::decision::DenyReason;
use crate::feed::{
    parse_feed_response, Accepted, FeedState, Follower, FollowerStatus, RevokedSet, SetLimits,
};
use crate::host::{Event, Host, LogLevel};
use crate::machine::degraded::RecordTrust;
use crate::machine::lease::{Reentry, SharedLease, Take};
use crate::wire::GATEWAY_HEADER;

pub const SET_KEY: &str = "keygate.feed.set";
pub const STATUS_KEY: &str = "keygate.feed.status";
pub const LEASE_KEY: &str = "keygate.feed.lease";
const WORKER_COUNTER_KEY: &str = "keygate.worker.counter";
/// The names of the workers' queues, one per line, oldest first: told of every new set.
pub const LISTENERS_KEY: &str = "keygate.feed.listeners";
/// Most queues told of a new set. Past it the oldest names (likely of VMs a configuration
/// change retired) are dropped; a worker left out still reloads the set on its tick.
const MAX_LISTENERS: usize = 256;
/// Most messages taken from a worker's queue at once (one reload covers them all).
const MAX_TAKEN: usize = 64;
/// The message that tells a worker to look at shared data (its content is not read).
const LOOK: &[u8] = b"look";
/// Largest feed answer read (the key service's pages stay far below it).
const MAX_FEED_BODY: usize = 8 * 1024 * 1024;
/// Longest pause between attempts after failures.
const MAX_BACKOFF_MS: u64 = 5_000;

/// What the follower needs of the filter's configuration.
#[derive(Clone, Copy, Debug)]
pub struct FeedContext<'a> {
    pub settings: &'a FeedSettings,
    pub cache: &'a CachePolicy,
    pub key_service: &'a KeyService,
    /// The bearer token of the feed's requests.
    pub service_token: &'a str,
    /// This gateway's name (Envoy's `node.id`), sent in [`GATEWAY_HEADER`].
    pub gateway: Option<&'a str>,
    /// Threat detection: the operator blocks the feed brings, the automatic blocks reported
    /// with the feed's requests (`None`: neither).
    pub threat: Option<&'a std::cell::RefCell<crate::machine::threat::ThreatState>>,
}

impl FeedContext<'_> {
    /// How this filter's revoked set is bounded: the longest a cached record may decide (its
    /// TTL, or its staleness while the key service is down), plus a lookup timeout.
    fn limits(&self) -> SetLimits {
        SetLimits::for_records(
            self.settings.max_revoked,
            self.cache.ttl_ms.max(self.cache.max_stale_ms),
            self.key_service.timeout_ms,
        )
    }
}

/// What one worker knows of the feed, and its follower state.
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
    /// This worker's queue, on which the follower tells it of a new set (`None`: the host
    /// gave none, and the worker ticks fast to pick sets up).
    queue: Option<u32>,
}

/// A name unique among the workers (VMs) of this Envoy, for leases.
pub fn next_worker_id(host: &impl Host) -> String {
    for _ in 0..16 {
        let (value, cas) = host.get_shared(WORKER_COUNTER_KEY);
        let current: u64 = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let next = current + 1;
        if host
            .set_shared(WORKER_COUNTER_KEY, next.to_string().as_bytes(), cas)
            .is_ok()
        {
            return format!("w{next}");
        }
    }
    format!("w{}", host.now_ms())
}

/// The name of a worker's feed queue.
fn queue_name(worker_id: &str) -> String {
    format!("keygate.feed.{worker_id}")
}

/// The queue names in the listeners' list.
fn listeners(value: Option<&[u8]>) -> Vec<&str> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(|v| v.lines().filter(|name| !name.is_empty()).collect())
        .unwrap_or_default()
}

/// Registers this worker's feed queue and adds its name to the listeners' list (dropping
/// the oldest past [`MAX_LISTENERS`]). `None` when the host gives no queue or the list could
/// not be written: the worker then finds new sets by ticking fast.
fn listen(host: &impl Host, worker_id: &str) -> Option<u32> {
    let name = queue_name(worker_id);
    let Some(queue) = host.register_queue(&name) else {
        host.log(
            LogLevel::Warn,
            "revocation feed: Envoy registered no shared queue for this worker; it looks for \
             new revoked sets every 10 ms instead",
        );
        return None;
    };
    for _ in 0..16 {
        let (value, cas) = host.get_shared(LISTENERS_KEY);
        let Some(cas) = cas else {
            // Created empty first, so that every later write is a compare-and-swap (a write
            // to a missing key always succeeds, and two workers would overwrite each other).
            let _ = host.set_shared(LISTENERS_KEY, b"", None);
            continue;
        };
        let mut names = listeners(value.as_deref());
        names.retain(|listed| *listed != name);
        names.push(&name);
        let excess = names.len().saturating_sub(MAX_LISTENERS);
        names.drain(..excess);
        if host
            .set_shared(LISTENERS_KEY, names.join("\n").as_bytes(), Some(cas))
            .is_ok()
        {
            return Some(queue);
        }
    }
    host.log(
        LogLevel::Warn,
        "revocation feed: could not join the workers told of new sets (shared data kept \
         changing); this worker looks for them every 10 ms instead",
    );
    None
}

/// Tells every listed worker to look at shared data now: a new revoked set (with the operator
/// blocks that came with it), or a block another worker just added. Names whose queue is gone
/// (their VM was retired) are dropped from the list, if no other worker wrote it meanwhile.
pub fn tell_workers(host: &impl Host) {
    let (value, cas) = host.get_shared(LISTENERS_KEY);
    let names = listeners(value.as_deref());
    let told: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| host.post_to_queue(name, LOOK))
        .collect();
    if told.len() < names.len() {
        if let Some(cas) = cas {
            let _ = host.set_shared(LISTENERS_KEY, told.join("\n").as_bytes(), Some(cas));
        }
    }
}

impl FeedView {
    pub fn new(worker_id: String) -> Self {
        Self {
            worker_id,
            ..Self::default()
        }
    }

    /// At configure: the lease key, and whatever set the follower has shared.
    pub fn on_start(&mut self, host: &impl Host, context: &FeedContext) {
        if !context.settings.enabled {
            return;
        }
        SharedLease::new(LEASE_KEY).create(host);
        self.queue = listen(host, &self.worker_id);
        self.refresh(host, context, host.now_ms());
    }

    /// Whether the follower tells this worker of new sets (else its tick must find them).
    pub fn listens(&self) -> bool {
        self.queue.is_some()
    }

    /// A message on one of this worker's queues: if it is the feed's, the follower shared a
    /// new set, which is loaded now. Returns whether the queue was the feed's.
    pub fn on_queue_ready(&mut self, host: &impl Host, context: &FeedContext, queue: u32) -> bool {
        if self.queue != Some(queue) {
            return false;
        }
        let taken = (0..MAX_TAKEN)
            .take_while(|_| host.take_from_queue(queue).is_some())
            .count();
        if taken > 0 && context.settings.enabled {
            let before = self.generation;
            self.refresh(host, context, host.now_ms());
            if self.generation != before {
                host.count(Event::FeedTold, 1);
            }
        }
        true
    }

    /// Why `id` must be refused now, if it is on the revoked list: `Revoked`, or `Expired`
    /// for a key expired by an operator or past its rotation grace.
    pub fn refusal(&self, settings: &FeedSettings, id: &str, now_ms: u64) -> Option<DenyReason> {
        if !settings.enabled {
            return None;
        }
        self.set
            .refusal(id, now_ms / 1000)
            .map(|kind| kind.deny_reason())
    }

    /// What the feed lets cached records do now.
    pub fn trust<'a>(&'a self, settings: &FeedSettings) -> RecordTrust<'a> {
        if !settings.enabled {
            return RecordTrust::NO_FEED;
        }
        RecordTrust {
            set: Some(&self.set),
            live: self.state == Some(FeedState::Live),
            policy: settings.policy,
            recent_ms: settings.recent_ms,
        }
    }

    /// Every tick: pick up the follower's latest set, notice state changes, and follow the
    /// feed if this worker holds (or can take) the lease. Returns the token of a poll sent.
    pub fn on_tick(&mut self, host: &impl Host, context: &FeedContext) -> Option<u32> {
        if !context.settings.enabled {
            return None;
        }
        let now = host.now_ms();
        self.refresh(host, context, now);
        if !self.polling && now >= self.next_poll_ms {
            return self.poll(host, context, now);
        }
        None
    }

    /// Reloads the shared set when its version moved, and logs a change of state.
    fn refresh(&mut self, host: &impl Host, context: &FeedContext, now: u64) {
        let settings = context.settings;
        let status = host
            .get_shared(STATUS_KEY)
            .0
            .as_deref()
            .and_then(FollowerStatus::decode)
            .unwrap_or_default();
        if self.generation != Some(status.generation) {
            if let Some(set) = host
                .get_shared(SET_KEY)
                .0
                .as_deref()
                .and_then(RevokedSet::decode)
            {
                host.log(
                    LogLevel::Debug,
                    &format!(
                        "revocation feed: loaded generation {} (seq {}, {} ids)",
                        status.generation,
                        set.seq(),
                        set.len()
                    ),
                );
                self.set = set;
                self.generation = Some(status.generation);
                host.gauge(Event::RevokedIds, self.set.len() as u64);
            }
        }
        self.status = status;
        let state = status.state(now, settings.max_unreachable_ms);
        if self.state != Some(state) {
            let previous = self.state.map_or("start", FeedState::as_str);
            self.state = Some(state);
            host.count(Event::FeedStateChange, 1);
            host.gauge(Event::FeedLive, u64::from(state == FeedState::Live));
            let level = if state == FeedState::Unreachable {
                LogLevel::Warn
            } else {
                LogLevel::Info
            };
            host.log(
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
    fn poll(&mut self, host: &impl Host, context: &FeedContext, now: u64) -> Option<u32> {
        let settings = context.settings;
        let since = self.follower.next_since(&self.set);
        let assembling = self.follower.is_assembling();
        let timeout_ms = settings.wait_s * 1000 + 5_000;
        let until = now + timeout_ms + 5_000;
        let lease = SharedLease::new(LEASE_KEY);
        if lease.take(host, &self.worker_id, until, now, Reentry::Renew) != Take::Taken {
            // Another worker follows (or just took the lease); look again in a while in case
            // it dies.
            self.next_poll_ms = now + 1_000;
            return None;
        }
        // Wait only once a first answer has loaded: a cold follower wants its snapshot now,
        // and one assembling a snapshot its next page.
        let loaded = self.status.loaded_ms != 0;
        let wait = if loaded && !assembling {
            settings.wait_s
        } else {
            0
        };
        self.dispatch(host, context, since, wait, timeout_ms, now)
    }

    fn dispatch(
        &mut self,
        host: &impl Host,
        context: &FeedContext,
        since: u64,
        wait: u64,
        timeout_ms: u64,
        now: u64,
    ) -> Option<u32> {
        let key_service = context.key_service;
        let window = context.limits().request_window_s();
        let mut path = format!(
            "{}?since={since}&wait={wait}&window={window}",
            context.settings.path
        );
        // Operator blocks: asked for with the version this follower holds; automatic blocks
        // of this Envoy not reported yet go along in a header.
        let mut blocked = None;
        if let Some(threat) = context.threat {
            let mut threat = threat.borrow_mut();
            path.push_str(&format!("&blocks={}", threat.feed_blocks_version));
            blocked = crate::machine::threat::unreported(host, &mut threat, now);
        }
        let authorization = format!("Bearer {}", context.service_token);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", key_service.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        if let Some(gateway) = context.gateway {
            headers.push((GATEWAY_HEADER, gateway));
        }
        if let Some(blocked) = &blocked {
            headers.push((crate::machine::threat::BLOCKED_HEADER, blocked.as_str()));
        }
        match host.dispatch_http_call(
            &key_service.cluster,
            &headers,
            None,
            Duration::from_millis(timeout_ms),
        ) {
            Ok(token) => {
                self.polling = true;
                Some(token)
            }
            Err(err) => {
                self.failed(
                    host,
                    now,
                    &format!("cannot call cluster '{}': {err:?}", key_service.cluster),
                );
                None
            }
        }
    }

    fn failed(&mut self, host: &impl Host, now: u64, why: &str) {
        host.count(Event::FeedFailure, 1);
        self.failures = self.failures.saturating_add(1);
        let backoff = (250u64 << self.failures.min(8)).min(MAX_BACKOFF_MS);
        self.next_poll_ms = now + backoff;
        let failures = self.failures;
        host.log(
            LogLevel::Warn,
            &format!("revocation feed: {why}; keeping the last good set, retrying in {backoff} ms (failure {failures})"),
        );
    }

    /// A feed answer arrived: apply it, share it, and ask again at once. Returns the token
    /// of the next poll.
    pub fn on_response(
        &mut self,
        host: &impl Host,
        context: &FeedContext,
        body_size: usize,
    ) -> Option<u32> {
        self.polling = false;
        let now = host.now_ms();
        let settings = context.settings;
        let status = host.call_response_status();
        if status != Some(200) {
            let shown = status.map_or_else(
                || "no answer (unreachable or timed out)".to_owned(),
                |s| format!("status {s}"),
            );
            self.failed(host, now, &shown);
            return None;
        }
        let body = host.call_response_body(body_size, MAX_FEED_BODY);
        let answer = match body.as_deref().map(parse_feed_response) {
            Some(Ok(answer)) => answer,
            _ => {
                self.failed(host, now, "the answer is not a feed document");
                return None;
            }
        };
        if let (Some(threat), Some(blocks)) = (
            context.threat,
            body.as_deref()
                .and_then(crate::machine::threat::feed_blocks),
        ) {
            crate::machine::threat::take_operator_blocks(host, &mut threat.borrow_mut(), blocks);
        }
        self.refresh(host, context, now);
        let accepted = self
            .follower
            .accept(&self.set, &answer, now / 1000, &context.limits());
        let (set, applied) = match accepted {
            Ok(Accepted::Whole(set, applied)) => (Some(set), applied),
            Ok(Accepted::Partial(applied)) => (None, applied),
            Err(err) => {
                self.evicted_unlogged = 0;
                self.failed(host, now, &err.to_string());
                return None;
            }
        };
        if !answer.events.is_empty() || answer.reset {
            host.count(Event::FeedEvents, answer.events.len() as u64);
        }
        if applied.evicted > 0 {
            host.count(Event::FeedEvicted, applied.evicted as u64);
        }
        self.evicted_unlogged += applied.evicted;
        let evicted = if set.is_some() && !answer.more {
            std::mem::take(&mut self.evicted_unlogged)
        } else {
            0
        };
        if evicted > 0 {
            host.log(
                LogLevel::Warn,
                &format!(
                    "revocation feed: more revoked ids than revocation_feed.max_revoked ({}) \
                     within the window that matters; kept the newest, evicted {evicted}: keys \
                     whose cached record predates them are looked up again",
                    settings.max_revoked
                ),
            );
        }
        let Some(set) = set else {
            // A page of a run (a snapshot, or a burst of events): the set in force stays
            // until the last page is in.
            self.failures = 0;
            let since = self.follower.next_since(&RevokedSet::default());
            host.log(
                LogLevel::Debug,
                &format!(
                    "revocation feed: page of {} event(s) up to seq {since}, more follow",
                    answer.events.len()
                ),
            );
            return self.renew_and_dispatch(host, context, since, 0, now);
        };
        host.log(
            LogLevel::Debug,
            &format!(
                "revocation feed: applied {} event(s), seq {} (reset: {})",
                answer.events.len(),
                answer.seq,
                answer.reset
            ),
        );
        let _ = host.set_shared(SET_KEY, &set.encode(), None);
        let mut status = self.status;
        status.generation += 1;
        status.last_ok_ms = now;
        if status.loaded_ms == 0 {
            status.loaded_ms = now;
        }
        let _ = host.set_shared(STATUS_KEY, &status.encode(), None);
        let since = set.seq();
        host.gauge(Event::RevokedIds, set.len() as u64);
        self.set = set;
        self.generation = Some(status.generation);
        self.failures = 0;
        self.refresh(host, context, now);
        tell_workers(host);
        let wait = if answer.more { 0 } else { settings.wait_s };
        self.renew_and_dispatch(host, context, since, wait, now)
    }

    /// Renews the follower lease and asks the next question.
    fn renew_and_dispatch(
        &mut self,
        host: &impl Host,
        context: &FeedContext,
        since: u64,
        wait: u64,
        now: u64,
    ) -> Option<u32> {
        let timeout_ms = context.settings.wait_s * 1000 + 5_000;
        SharedLease::new(LEASE_KEY).renew(host, &self.worker_id, now + timeout_ms + 5_000);
        self.dispatch(host, context, since, wait, timeout_ms, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::FeedPolicy;
    use crate::host::fake::{Effect, FakeHost};
    use crate::host::HostError;

    const T0: u64 = 1_800_000_000_000;
    const REVOKED: &str = "aaaaaaaaaaaaaaaa";

    struct Setup {
        settings: FeedSettings,
        cache: CachePolicy,
        key_service: KeyService,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                settings: FeedSettings {
                    enabled: true,
                    path: "/v1/revocations".into(),
                    wait_s: 20,
                    max_unreachable_ms: 60_000,
                    policy: FeedPolicy::FailClosedUnlessRecent,
                    recent_ms: 30_000,
                    max_revoked: 100,
                },
                cache: CachePolicy {
                    ttl_ms: 60_000,
                    negative_ttl_ms: 10_000,
                    max_stale_ms: 300_000,
                    max_entries: 100,
                },
                key_service: KeyService::default(),
            }
        }

        fn context(&self) -> FeedContext<'_> {
            FeedContext {
                settings: &self.settings,
                cache: &self.cache,
                key_service: &self.key_service,
                service_token: "svc",
                gateway: Some("gw-1"),
                threat: None,
            }
        }
    }

    fn snapshot(seq: u64, more: bool, ids: &[&str]) -> Vec<u8> {
        let events: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                format!(
                    r#"{{"seq":{},"id":"{id}","kind":"revoked","effective_at":0}}"#,
                    i + 1
                )
            })
            .collect();
        format!(
            r#"{{"seq":{seq},"reset":true,"more":{more},"events":[{}]}}"#,
            events.join(",")
        )
        .into_bytes()
    }

    /// The `:path` of the last poll this worker sent.
    fn last_poll(host: &FakeHost) -> String {
        let dispatched = host.dispatched();
        let Some(Effect::Dispatch { headers, .. }) = dispatched.last() else {
            panic!("no poll sent");
        };
        headers
            .iter()
            .find(|(name, _)| name == ":path")
            .map(|(_, value)| value.clone())
            .unwrap()
    }

    fn answer(view: &mut FeedView, host: &FakeHost, setup: &Setup, body: &[u8]) -> Option<u32> {
        host.answer(Some(200), Some(body));
        view.on_response(host, &setup.context(), body.len())
    }

    /// Two workers of one Envoy, started.
    fn two_workers(setup: &Setup) -> (FakeHost, FakeHost, FeedView, FeedView) {
        let host_one = FakeHost::at(T0);
        let host_two = host_one.worker();
        let mut one = FeedView::new(next_worker_id(&host_one));
        let mut two = FeedView::new(next_worker_id(&host_two));
        one.on_start(&host_one, &setup.context());
        two.on_start(&host_two, &setup.context());
        (host_one, host_two, one, two)
    }

    #[test]
    fn one_worker_follows_and_every_worker_refuses_what_it_shares() {
        let setup = Setup::new();
        let (host_one, host_two, mut one, mut two) = two_workers(&setup);
        assert!(
            one.trust(&setup.settings).degraded_policy().is_some(),
            "cold"
        );

        // Worker one takes the lease; a cold follower asks for its snapshot without waiting.
        assert!(one.on_tick(&host_one, &setup.context()).is_some());
        assert!(last_poll(&host_one).contains("since=0&wait=0"));
        let Some(Effect::Dispatch { headers, .. }) = host_one.dispatched().last().cloned() else {
            panic!("no poll sent");
        };
        assert!(
            headers.contains(&(GATEWAY_HEADER.to_owned(), "gw-1".to_owned())),
            "the poll names its gateway: {headers:?}"
        );
        assert_eq!(two.on_tick(&host_two, &setup.context()), None, "lease held");
        assert!(host_two.dispatched().is_empty());

        let next = answer(&mut one, &host_one, &setup, &snapshot(1, false, &[REVOKED]));
        assert!(next.is_some(), "the next long-poll goes at once");
        assert!(last_poll(&host_one).contains("since=1&wait=20"));
        assert_eq!(
            one.refusal(&setup.settings, REVOKED, T0),
            Some(DenyReason::Revoked)
        );
        assert_eq!(one.trust(&setup.settings).degraded_policy(), None, "live");

        // Worker two picks the set up from shared data on its tick.
        assert_eq!(two.refusal(&setup.settings, REVOKED, T0), None);
        host_two.advance(1_000);
        two.on_tick(&host_two, &setup.context());
        assert_eq!(
            two.refusal(&setup.settings, REVOKED, T0),
            Some(DenyReason::Revoked)
        );
        assert_eq!(two.trust(&setup.settings).degraded_policy(), None);
        assert!(host_two.dispatched().is_empty(), "still not the follower");
    }

    #[test]
    fn the_follower_tells_every_worker_of_a_new_set_on_its_queue() {
        let setup = Setup::new();
        let (host_one, host_two, mut one, mut two) = two_workers(&setup);
        assert!(one.listens() && two.listens());
        assert_eq!(
            host_one.shared(LISTENERS_KEY).unwrap(),
            b"keygate.feed.w1\nkeygate.feed.w2"
        );

        assert!(one.on_tick(&host_one, &setup.context()).is_some());
        answer(&mut one, &host_one, &setup, &snapshot(1, false, &[REVOKED]));
        assert_eq!(host_two.queued("keygate.feed.w2"), Some(1));
        assert_eq!(host_two.queued("keygate.feed.w1"), Some(1));

        // No tick, no time passed: the message alone makes worker two load the set.
        assert_eq!(two.refusal(&setup.settings, REVOKED, T0), None);
        let queue = host_two.register_queue("keygate.feed.w2").unwrap();
        assert!(!two.on_queue_ready(&host_two, &setup.context(), queue + 100));
        assert_eq!(
            two.refusal(&setup.settings, REVOKED, T0),
            None,
            "not its queue"
        );
        assert!(two.on_queue_ready(&host_two, &setup.context(), queue));
        assert_eq!(
            two.refusal(&setup.settings, REVOKED, T0),
            Some(DenyReason::Revoked)
        );
        assert_eq!(two.trust(&setup.settings).degraded_policy(), None, "live");
        assert_eq!(host_two.queued("keygate.feed.w2"), Some(0), "taken");
        assert_eq!(host_two.counted(Event::FeedTold), 1);
    }

    #[test]
    fn a_retired_workers_queue_leaves_the_list_and_the_list_is_bounded() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut one = FeedView::new(next_worker_id(&host));
        one.on_start(&host, &setup.context());
        let gone = host.worker();
        FeedView::new(next_worker_id(&gone)).on_start(&gone, &setup.context());
        host.drop_queue("keygate.feed.w2");
        assert!(one.on_tick(&host, &setup.context()).is_some());
        answer(&mut one, &host, &setup, &snapshot(1, false, &[REVOKED]));
        assert_eq!(host.shared(LISTENERS_KEY).unwrap(), b"keygate.feed.w1");

        for _ in 0..MAX_LISTENERS + 10 {
            let worker = host.worker();
            FeedView::new(next_worker_id(&worker)).on_start(&worker, &setup.context());
        }
        let list = host.shared(LISTENERS_KEY).unwrap();
        let names = listeners(Some(&list));
        assert_eq!(names.len(), MAX_LISTENERS);
        assert_eq!(names.last(), Some(&"keygate.feed.w268"), "the newest kept");
        assert!(!names.contains(&"keygate.feed.w1"), "the oldest dropped");
    }

    #[test]
    fn a_worker_without_a_queue_is_not_listed_and_says_so() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        host.refuse_queues();
        let mut view = FeedView::new(next_worker_id(&host));
        view.on_start(&host, &setup.context());
        assert!(!view.listens());
        assert_eq!(host.shared(LISTENERS_KEY), None);
        assert!(host
            .logged(LogLevel::Warn)
            .iter()
            .any(|line| line.contains("no shared queue")));

        // Shared data that keeps changing: the worker gives up joining, and says so.
        let other = FakeHost::at(T0);
        other.conflict_next_writes(100);
        let mut view = FeedView::new(next_worker_id(&other));
        view.on_start(&other, &setup.context());
        assert!(!view.listens());
        assert!(other
            .logged(LogLevel::Warn)
            .iter()
            .any(|line| line.contains("every 10 ms instead")));
    }

    #[test]
    fn a_role_change_on_the_feed_makes_every_worker_look_up_records_holding_it() {
        use crate::cache::CacheEntry;
        use crate::wire::{KeyLookup, RoleRef};
        let setup = Setup::new();
        let host_one = FakeHost::at(T0);
        let host_two = host_one.worker();
        let mut one = FeedView::new("w1".into());
        let mut two = FeedView::new("w2".into());
        one.on_start(&host_one, &setup.context());
        two.on_start(&host_two, &setup.context());
        one.on_tick(&host_one, &setup.context());
        answer(&mut one, &host_one, &setup, &snapshot(3, false, &[]));
        let record = |version| CacheEntry {
            id: REVOKED.into(),
            fetched_at_ms: T0,
            record: Some(KeyLookup {
                subject: "s".into(),
                scopes: vec!["models:read".into()],
                roles: vec![RoleRef {
                    name: "analyst".into(),
                    version,
                }],
                ..KeyLookup::active(REVOKED, "00".repeat(32))
            }),
        };
        let now = T0 + 500;
        assert!(one.trust(&setup.settings).trusts(&record(3), now));
        // The role changes: version 4 arrives on the long-poll.
        let change = br#"{"seq":4,"events":[],"roles":[{"seq":4,"kind":"role_changed","role":"analyst","version":4,"created_at":1800000000}]}"#;
        assert!(answer(&mut one, &host_one, &setup, change).is_some());
        let trust = one.trust(&setup.settings);
        assert!(!trust.trusts(&record(3), now), "held at an older version");
        assert!(trust.trusts(&record(4), now), "read after the change");
        // The other worker picks it up from shared data on its tick.
        host_two.advance(1_000);
        two.on_tick(&host_two, &setup.context());
        assert!(!two.trust(&setup.settings).trusts(&record(3), now));
        // A record without roles, or no record at all (unknown key), is not concerned.
        let mut plain = record(3);
        if let Some(r) = plain.record.as_mut() {
            r.roles.clear();
        }
        assert!(two.trust(&setup.settings).trusts(&plain, now));
        plain.record = None;
        assert!(two.trust(&setup.settings).trusts(&plain, now));
        // Without a feed, nothing tells of role changes: records decide until their TTL.
        assert!(RecordTrust::NO_FEED.trusts(&record(3), now));
    }

    #[test]
    fn failures_back_off_and_keep_the_last_good_set() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut view = FeedView::new("w1".into());
        view.on_start(&host, &setup.context());
        assert!(view.on_tick(&host, &setup.context()).is_some());
        answer(&mut view, &host, &setup, &snapshot(1, false, &[REVOKED]));
        // Unreachable, an error status, a body that is not a feed document: each a failure
        // that keeps the set and waits longer before the next attempt.
        let failures: [(Option<u32>, &[u8]); 3] =
            [(None, b""), (Some(503), b""), (Some(200), b"<html>")];
        for (round, (status, body)) in failures.into_iter().enumerate() {
            host.answer(status, Some(body));
            assert_eq!(view.on_response(&host, &setup.context(), body.len()), None);
            assert_eq!(host.counted(Event::FeedFailure), round as u64 + 1);
            assert_eq!(
                view.refusal(&setup.settings, REVOKED, host.now_ms()),
                Some(DenyReason::Revoked)
            );
            let backoff = (250u64 << (round + 1)).min(MAX_BACKOFF_MS);
            host.advance(backoff - 1);
            assert_eq!(view.on_tick(&host, &setup.context()), None, "backing off");
            host.advance(1);
            assert!(view.on_tick(&host, &setup.context()).is_some(), "retries");
        }
        assert!(host.logged(LogLevel::Warn).len() >= 3);
        // A refused dispatch is a failure too.
        host.refuse_next_dispatch(HostError::Refused("BadArgument"));
        host.answer(Some(200), Some(&snapshot(2, false, &[REVOKED])));
        let body = snapshot(2, false, &[REVOKED]);
        assert_eq!(view.on_response(&host, &setup.context(), body.len()), None);
        assert_eq!(host.counted(Event::FeedFailure), 4);
    }

    #[test]
    fn an_unreachable_feed_degrades_record_trust_until_it_answers() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut view = FeedView::new("w1".into());
        view.on_start(&host, &setup.context());
        view.on_tick(&host, &setup.context());
        answer(&mut view, &host, &setup, &snapshot(1, false, &[]));
        assert_eq!(view.trust(&setup.settings).degraded_policy(), None);
        host.answer(None, None);
        view.on_response(&host, &setup.context(), 0);
        host.advance(60_001);
        view.on_tick(&host, &setup.context());
        let trust = view.trust(&setup.settings);
        assert_eq!(
            trust.degraded_policy(),
            Some(FeedPolicy::FailClosedUnlessRecent)
        );
        assert!(!trust.is_recent_enough(T0, host.now_ms()));
        assert!(host.effects_contain_gauge(Event::FeedLive, 0));
        // It answers again: live.
        answer(&mut view, &host, &setup, &snapshot(2, false, &[]));
        assert_eq!(view.trust(&setup.settings).degraded_policy(), None);
    }

    #[test]
    fn a_dead_followers_lease_lapses_and_another_worker_takes_over() {
        let setup = Setup::new();
        let host_one = FakeHost::at(T0);
        let host_two = host_one.worker();
        let mut one = FeedView::new("w1".into());
        let mut two = FeedView::new("w2".into());
        one.on_start(&host_one, &setup.context());
        two.on_start(&host_two, &setup.context());
        assert!(one.on_tick(&host_one, &setup.context()).is_some());
        answer(&mut one, &host_one, &setup, &snapshot(1, false, &[REVOKED]));
        // Worker one dies with its poll in flight. Worker two looks every second...
        assert_eq!(two.on_tick(&host_two, &setup.context()), None);
        host_two.advance(1_000);
        assert_eq!(two.on_tick(&host_two, &setup.context()), None);
        // ...and takes over once the lease (poll timeout + margin) lapses.
        host_two.advance(30_000);
        assert!(two.on_tick(&host_two, &setup.context()).is_some());
        assert!(
            last_poll(&host_two).contains("since=1&wait=20"),
            "{}",
            last_poll(&host_two)
        );
    }

    #[test]
    fn a_paged_snapshot_is_put_in_force_after_its_last_page() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut view = FeedView::new("w1".into());
        view.on_start(&host, &setup.context());
        view.on_tick(&host, &setup.context());
        assert!(answer(&mut view, &host, &setup, &snapshot(1, true, &[REVOKED])).is_some());
        assert!(last_poll(&host).contains("wait=0"), "next page at once");
        assert_eq!(view.refusal(&setup.settings, REVOKED, T0), None, "not yet");
        let last = br#"{"seq":2,"more":false,"events":[{"seq":2,"id":"bbbbbbbbbbbbbbbb","kind":"revoked","effective_at":0}]}"#;
        assert!(answer(&mut view, &host, &setup, last).is_some());
        assert_eq!(
            view.refusal(&setup.settings, REVOKED, T0),
            Some(DenyReason::Revoked)
        );
        assert_eq!(
            view.refusal(&setup.settings, "bbbbbbbbbbbbbbbb", T0),
            Some(DenyReason::Revoked)
        );
    }

    #[test]
    fn every_worker_gets_its_own_name_despite_lost_races() {
        let one = FakeHost::at(T0);
        let two = one.worker();
        assert_eq!(next_worker_id(&one), "w1");
        two.conflict_next_writes(3);
        assert_eq!(next_worker_id(&two), "w2", "retried after lost races");
        // Beyond reason: a name from the clock, still distinct from the counted ones.
        one.conflict_next_writes(16);
        assert_eq!(next_worker_id(&one), format!("w{T0}"));
    }

    #[test]
    fn without_the_feed_nothing_happens_and_every_record_is_trusted() {
        let mut setup = Setup::new();
        setup.settings.enabled = false;
        let host = FakeHost::at(T0);
        let mut view = FeedView::new("w1".into());
        view.on_start(&host, &setup.context());
        assert_eq!(view.on_tick(&host, &setup.context()), None);
        assert!(host.take_effects().is_empty());
        assert_eq!(view.refusal(&setup.settings, REVOKED, T0), None);
        assert_eq!(view.trust(&setup.settings).degraded_policy(), None);
    }
}
