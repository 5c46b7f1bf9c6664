//! One lookup per key id: the requests of one worker that need a record not in the cache
//! wait on one callout ([`Pending`]); across workers, the lease of the record's stripe
//! (`<key id>:<until_ms>`, see [`crate::machine::lease`]) marks the fetch, and the other
//! workers wait for the cache slot to fill, polling on the root tick ([`Lookups::retry`]),
//! taking over when the lease lapses and giving up after twice the lookup timeout.
//!
//! In-flight lookups are capped per worker (`key_service.max_in_flight`), and those of legacy
//! keys apart (`legacy_keys.max_in_flight`), so that a spray of legacy-looking strings cannot
//! use up the lookups of real keys.
//!
//! The machine is generic over what waits (`W`, the filter's paused request) and over the
//! stale record kept for the fallback (`S`); deciding from a record stays with the caller.

use std::collections::HashMap;
use std::time::Duration;

use crate::cache::{
    find, lease_key, record_key, slot_of, CacheEntry, Freshness, Placement, RecordSlots,
    LEASE_STRIPES,
};
use crate::config::FilterConfig;
use crate::decision::DenyReason;
use crate::host::{Event, Host, LogLevel};
use crate::key::KeyId;
use crate::machine::callouts::{Callout, Callouts};
use crate::machine::lease::{Reentry, SharedLease, Take};
use crate::wire::{KeyLookup, LOOKUP_PATH_PREFIX};

/// Largest lookup answer read from the key service.
pub const MAX_LOOKUP_BODY: usize = 64 * 1024;

/// The record slots in shared data, through the host.
pub struct HostSlots<'a, H>(pub &'a H);

impl<H: Host> RecordSlots for HostSlots<'_, H> {
    fn read(&mut self, slot: u32) -> Option<(Vec<u8>, u32)> {
        let (bytes, cas) = self.0.get_shared(&record_key(slot));
        Some((bytes?, cas.unwrap_or(0)))
    }

    fn write(&mut self, slot: u32, bytes: &[u8], cas: Option<u32>) -> bool {
        self.0.set_shared(&record_key(slot), bytes, cas).is_ok()
    }
}

/// Creates every lease key, so that taking a lease is always a compare-and-swap.
pub fn create_leases(host: &impl Host) {
    for stripe in 0..LEASE_STRIPES {
        SharedLease::new(&lease_key(stripe)).create(host);
    }
}

/// How long a lookup may take before others stop waiting on it.
pub fn lookup_timeout(config: &FilterConfig) -> Duration {
    Duration::from_millis(config.key_service.timeout_ms)
}

/// What a lookup asks the key service for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `GET /v1/keys/{id}`: an answer must carry that id.
    Id,
    /// A legacy key, `GET {legacy lookup path}{digest}`: an answer must carry that digest.
    LegacyDigest(String),
}

impl Target {
    pub fn path(&self, config: &FilterConfig, id: &KeyId) -> String {
        match (self, &config.legacy_keys) {
            (Self::LegacyDigest(digest), Some(legacy)) => format!("{}{digest}", legacy.lookup_path),
            _ => format!("{LOOKUP_PATH_PREFIX}{id}"),
        }
    }

    pub fn answers(&self, record: &KeyLookup, id: &KeyId) -> bool {
        match self {
            Self::Id => record.id == id.as_str(),
            Self::LegacyDigest(digest) => record.digest.eq_ignore_ascii_case(digest),
        }
    }

    pub fn is_legacy(&self) -> bool {
        matches!(self, Self::LegacyDigest(_))
    }
}

/// A lookup this worker waits on, and who waits.
#[derive(Debug)]
pub struct Pending<W, S> {
    pub target: Target,
    pub waiters: Vec<W>,
    /// `Some` when this worker's callout is in flight; `None` while another worker holds the lease.
    pub token: Option<u32>,
    /// This worker's callout holds the stripe's lease (a lookup made while the stripe was
    /// held for another key id holds none, and must release none).
    pub leased: bool,
    pub since_ms: u64,
    /// The record held before (expired but maybe within the staleness bound).
    pub stale: Option<S>,
}

impl<W, S> Pending<W, S> {
    pub fn new(target: Target, first: W, now_ms: u64, stale: Option<S>) -> Self {
        Self {
            target,
            waiters: vec![first],
            token: None,
            leased: false,
            since_ms: now_ms,
            stale,
        }
    }
}

/// What the caller sees once a lookup was started (or restarted on the tick).
// Built once per lookup and unpacked at once: boxing the record would add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Begun<W, S> {
    /// Registered: the waiters wait on our callout or on another worker's.
    Waiting,
    /// The record arrived in shared data meanwhile: decide for the waiters from it.
    Filled(CacheEntry, Pending<W, S>),
    /// No lookup could be started: answer the waiters from the fallback with this reason.
    Failed(DenyReason, Pending<W, S>),
}

/// What the key service answered.
// Built once per lookup and unpacked at once: boxing the record would add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The record (`None`: the key service does not know the key, 404).
    Record(Option<KeyLookup>),
    /// No usable answer (refused, timed out, 5xx, malformed, or for another key).
    Failed,
}

/// What a lookup needs of the configuration.
#[derive(Clone, Copy)]
pub struct LookupContext<'a> {
    pub config: &'a FilterConfig,
    pub service_token: &'a str,
}

/// Per-worker state of lookups in flight.
#[derive(Debug)]
pub struct Lookups<W, S> {
    pending: HashMap<KeyId, Pending<W, S>>,
    in_flight: usize,
    legacy_in_flight: usize,
}

impl<W, S> Default for Lookups<W, S> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            in_flight: 0,
            legacy_in_flight: 0,
        }
    }
}

impl<W, S> Lookups<W, S> {
    /// Joins the lookup in flight for `id`; gives the waiter back when there is none (the
    /// caller then starts one with [`Lookups::start`]).
    pub fn join(&mut self, id: &KeyId, waiter: W) -> Option<W> {
        match self.pending.get_mut(id) {
            Some(pending) => {
                pending.waiters.push(waiter);
                None
            }
            None => Some(waiter),
        }
    }

    /// Callouts of this worker in flight: (records, legacy).
    pub fn in_flight(&self) -> (usize, usize) {
        (self.in_flight, self.legacy_in_flight)
    }

    /// Is a lookup pending for `id`?
    pub fn is_pending(&self, id: &KeyId) -> bool {
        self.pending.contains_key(id)
    }

    /// Drops a waiter that ended while it waited.
    pub fn forget(&mut self, gone: impl Fn(&W) -> bool) {
        for pending in self.pending.values_mut() {
            pending.waiters.retain(|w| !gone(w));
        }
    }

    /// Are requests waiting on another worker's lookup (so the tick must poll)?
    pub fn has_remote_waits(&self) -> bool {
        self.pending.values().any(|p| p.token.is_none())
    }

    /// The lookups another worker does, and since when this worker waits on each.
    pub fn remote_waits(&self) -> Vec<(KeyId, u64)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.token.is_none())
            .map(|(id, p)| (*id, p.since_ms))
            .collect()
    }

    /// The waiters of `id`'s lookup, taken out (its record arrived by shared data).
    pub fn remove(&mut self, id: &KeyId) -> Option<Pending<W, S>> {
        self.pending.remove(id)
    }

    /// Starts the lookup of `id` for `pending`: takes the lease and dispatches the callout,
    /// or arranges to wait for another worker's. `usable`: may a record found in shared
    /// data meanwhile decide now (the feed's trust)?
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        host: &impl Host,
        context: LookupContext<'_>,
        callouts: &mut Callouts,
        id: KeyId,
        mut pending: Pending<W, S>,
        now_ms: u64,
        usable: impl Fn(&CacheEntry) -> bool,
    ) -> Begun<W, S> {
        match self.begin(host, context, callouts, &id, &mut pending, now_ms, usable) {
            Ok(None) => {
                self.pending.insert(id, pending);
                Begun::Waiting
            }
            Ok(Some(entry)) => Begun::Filled(entry, pending),
            Err(reason) => Begun::Failed(reason, pending),
        }
    }

    /// On the tick, for a lookup another worker does whose record has not arrived: gives
    /// up after twice the lookup timeout, else takes over if the lease lapsed (or waits on).
    pub fn retry(
        &mut self,
        host: &impl Host,
        context: LookupContext<'_>,
        callouts: &mut Callouts,
        id: KeyId,
        now_ms: u64,
        usable: impl Fn(&CacheEntry) -> bool,
    ) -> Option<Begun<W, S>> {
        let pending = self.pending.remove(&id)?;
        let give_up_at = pending.since_ms + 2 * context.config.key_service.timeout_ms + 200;
        if now_ms >= give_up_at {
            return Some(Begun::Failed(DenyReason::ServiceUnavailable, pending));
        }
        Some(self.start(host, context, callouts, id, pending, now_ms, usable))
    }

    /// `Ok(None)`: registered (our callout or another worker's); `Ok(Some)`: the record
    /// arrived meanwhile; `Err`: nothing is registered, the caller answers from the fallback.
    #[allow(clippy::too_many_arguments)]
    fn begin(
        &mut self,
        host: &impl Host,
        context: LookupContext<'_>,
        callouts: &mut Callouts,
        id: &KeyId,
        pending: &mut Pending<W, S>,
        now_ms: u64,
        usable: impl Fn(&CacheEntry) -> bool,
    ) -> Result<Option<CacheEntry>, DenyReason> {
        let config = context.config;
        let lease_name = lease_key(slot_of(id, &config.cache));
        let lease = SharedLease::new(&lease_name);
        let current = lease.read(host);
        let holder = current.holder(now_ms).map(|l| l.id == id.as_str());
        if holder == Some(true) {
            pending.token = None;
            return Ok(None);
        }
        let legacy = pending.target.is_legacy();
        let full = if legacy {
            let cap = config.legacy_keys.as_ref().map_or(0, |l| l.max_in_flight);
            self.legacy_in_flight >= cap
        } else {
            self.in_flight >= config.key_service.max_in_flight
        };
        if full {
            return Err(DenyReason::Overloaded);
        }
        let timeout = lookup_timeout(config);
        // A stripe busy with another key id: look up without a lease rather than wait on a
        // stranger (a duplicate lookup at worst).
        let leased = holder.is_none() && {
            let until = now_ms + timeout.as_millis() as u64 + 100;
            match current.take(host, id.as_str(), until, now_ms, Reentry::Wait) {
                Take::Taken => true,
                // Another worker took the lease between our read and write.
                Take::Held(_) | Take::Lost => {
                    pending.token = None;
                    return Ok(None);
                }
            }
        };
        // The worker that held the lease may have filled the slot just before we took it.
        if let Some(entry) = find(&mut HostSlots(host), &Placement::of(&config.cache), id)
            .map(|(_, entry)| entry)
            .filter(|e| e.freshness(now_ms, &config.cache) == Freshness::Fresh)
            .filter(|e| usable(e))
        {
            if leased {
                lease.release(host);
            }
            return Ok(Some(entry));
        }
        let path = pending.target.path(config, id);
        let authorization = format!("Bearer {}", context.service_token);
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", config.key_service.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("accept", "application/json"),
        ];
        match host.dispatch_http_call(&config.key_service.cluster, &headers, None, timeout) {
            Ok(token) => {
                callouts.insert(token, Callout::Lookup { id: *id, legacy });
                if legacy {
                    self.legacy_in_flight += 1;
                } else {
                    self.in_flight += 1;
                }
                pending.token = Some(token);
                pending.leased = leased;
                Ok(None)
            }
            Err(err) => {
                if leased {
                    lease.release(host);
                }
                host.count(Event::CalloutFailure, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "cannot call key service cluster '{}': {err:?}",
                        config.key_service.cluster
                    ),
                );
                Err(DenyReason::ServiceUnavailable)
            }
        }
    }

    /// Our lookup of `id` answered (in its callback): frees its place and its lease, and
    /// reads the answer. `None` when nobody waits on it any more.
    pub fn on_response(
        &mut self,
        host: &impl Host,
        config: &FilterConfig,
        id: KeyId,
        legacy: bool,
        body_size: usize,
    ) -> Option<(Pending<W, S>, Answer)> {
        if legacy {
            self.legacy_in_flight = self.legacy_in_flight.saturating_sub(1);
        } else {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let pending = self.pending.remove(&id)?;
        if pending.leased {
            SharedLease::new(&lease_key(slot_of(&id, &config.cache))).release(host);
        }

        let status = host.call_response_status();
        let record = match status {
            Some(200) => host
                .call_response_body(body_size, MAX_LOOKUP_BODY)
                .and_then(|body| serde_json::from_slice::<KeyLookup>(&body).ok())
                .filter(|record| pending.target.answers(record, &id))
                .map(Some),
            Some(404) => Some(None),
            _ => None,
        };
        let answer = match record {
            Some(record) => Answer::Record(record),
            None => {
                host.count(Event::CalloutFailure, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "key service lookup failed for key_id={id}: status {}",
                        status.map_or_else(
                            || "none (unreachable or timed out)".to_owned(),
                            |s| s.to_string()
                        )
                    ),
                );
                Answer::Failed
            }
        };
        Some((pending, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Lease;
    use crate::host::fake::{Effect, FakeHost};
    use crate::host::HostError;

    const TOKEN: &str = "service-token";

    fn config(extra: &str) -> FilterConfig {
        let text = format!(
            r#"{{"routes": [{{"prefix": "/", "scopes": ["a"]}}],
                "key_service": {{"timeout_ms": 1000, "max_in_flight": 2}},
                "legacy_keys": {{"header": "x-old", "max_in_flight": 1}}{extra}}}"#
        );
        FilterConfig::parse(text.as_bytes()).unwrap()
    }

    fn id(n: u8) -> KeyId {
        KeyId::from_bytes([n; crate::key::ID_LEN])
    }

    fn record(id: &KeyId) -> KeyLookup {
        KeyLookup::active(id.as_str(), "ab".repeat(32))
    }

    type Machine = Lookups<u32, ()>;

    struct World {
        config: FilterConfig,
        callouts: Callouts,
        lookups: Machine,
    }

    impl World {
        fn new() -> Self {
            Self {
                config: config(""),
                callouts: Callouts::default(),
                lookups: Machine::default(),
            }
        }

        fn context(&self) -> LookupContext<'_> {
            LookupContext {
                config: &self.config,
                service_token: TOKEN,
            }
        }

        /// A request (`waiter`) for `key` that found no record: joins or starts a lookup.
        fn ask(&mut self, host: &FakeHost, key: KeyId, waiter: u32, target: Target) -> Asked {
            let Some(waiter) = self.lookups.join(&key, waiter) else {
                return Asked::Joined;
            };
            let pending = Pending::new(target, waiter, host.now_ms(), None);
            let context = LookupContext {
                config: &self.config,
                service_token: TOKEN,
            };
            match self.lookups.start(
                host,
                context,
                &mut self.callouts,
                key,
                pending,
                host.now_ms(),
                |_| true,
            ) {
                Begun::Waiting => Asked::Waiting,
                Begun::Filled(entry, p) => Asked::Filled(entry, p.waiters),
                Begun::Failed(reason, p) => Asked::Failed(reason, p.waiters),
            }
        }

        fn answer(&mut self, host: &FakeHost, key: KeyId) -> Option<(Vec<u32>, Answer)> {
            let tokens: Vec<u32> = host
                .dispatched()
                .iter()
                .filter_map(|e| match e {
                    Effect::Dispatch { token, .. } => Some(*token),
                    _ => None,
                })
                .collect();
            let legacy = tokens
                .iter()
                .rev()
                .find_map(|t| match self.callouts.take(*t) {
                    Some(Callout::Lookup { id, legacy }) if id == key => Some(legacy),
                    _ => None,
                })?;
            self.lookups
                .on_response(host, &self.config, key, legacy, 1 << 20)
                .map(|(p, answer)| (p.waiters, answer))
        }
    }

    // Built once per lookup and unpacked at once: boxing the record would add an allocation.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, PartialEq, Eq)]
    enum Asked {
        Joined,
        Waiting,
        Filled(CacheEntry, Vec<u32>),
        Failed(DenyReason, Vec<u32>),
    }

    fn lease_of(host: &FakeHost, config: &FilterConfig, key: &KeyId) -> Option<Lease> {
        SharedLease::new(&lease_key(slot_of(key, &config.cache))).holder(host, host.now_ms())
    }

    fn store(host: &FakeHost, config: &FilterConfig, key: &KeyId, fetched_at_ms: u64) {
        let entry = CacheEntry {
            id: key.to_string(),
            fetched_at_ms,
            record: Some(record(key)),
        };
        crate::cache::store(
            &mut HostSlots(host),
            &Placement::of(&config.cache),
            &config.cache,
            &entry,
            false,
        );
    }

    #[test]
    fn requests_of_one_worker_for_one_key_share_one_callout() {
        let host = FakeHost::at(1_000);
        let mut world = World::new();
        create_leases(&host);
        let key = id(1);
        assert_eq!(world.ask(&host, key, 10, Target::Id), Asked::Waiting);
        assert_eq!(world.ask(&host, key, 11, Target::Id), Asked::Joined);
        assert_eq!(world.ask(&host, key, 12, Target::Id), Asked::Joined);
        let dispatched = host.dispatched();
        assert_eq!(dispatched.len(), 1, "one callout");
        let Effect::Dispatch {
            headers,
            cluster,
            timeout,
            ..
        } = &dispatched[0]
        else {
            panic!("{dispatched:?}");
        };
        assert_eq!(cluster, "keygate_service");
        assert_eq!(*timeout, Duration::from_millis(1000));
        assert!(headers.contains(&(":path".into(), format!("/v1/keys/{key}"))));
        assert!(headers.contains(&("authorization".into(), format!("Bearer {TOKEN}"))));
        assert_eq!(world.lookups.in_flight(), (1, 0));
        assert!(!world.lookups.has_remote_waits());
        // The stripe's lease names the key until the timeout (+100 ms).
        assert_eq!(
            lease_of(&host, &world.config, &key),
            Some(Lease {
                id: key.to_string(),
                until_ms: 1_000 + 1_000 + 100
            })
        );
        // A request that ends while waiting is forgotten.
        world.lookups.forget(|w| *w == 11);
        host.answer(Some(200), Some(&serde_json::to_vec(&record(&key)).unwrap()));
        let (waiters, answer) = world.answer(&host, key).unwrap();
        assert_eq!(waiters, vec![10, 12]);
        assert_eq!(answer, Answer::Record(Some(record(&key))));
        assert_eq!(world.lookups.in_flight(), (0, 0));
        assert_eq!(lease_of(&host, &world.config, &key), None, "released");
        assert!(!world.lookups.is_pending(&key));
    }

    #[test]
    fn an_unknown_key_is_a_record_of_none() {
        let host = FakeHost::at(0);
        let mut world = World::new();
        create_leases(&host);
        assert_eq!(world.ask(&host, id(2), 1, Target::Id), Asked::Waiting);
        host.answer(Some(404), None);
        let (waiters, answer) = world.answer(&host, id(2)).unwrap();
        assert_eq!((waiters, answer), (vec![1], Answer::Record(None)));
        assert_eq!(host.counted(Event::CalloutFailure), 0);
    }

    #[test]
    fn a_refused_callout_fails_at_once_and_frees_the_lease() {
        let host = FakeHost::at(0);
        let mut world = World::new();
        create_leases(&host);
        host.refuse_next_dispatch(HostError::Refused("BadArgument"));
        assert_eq!(
            world.ask(&host, id(3), 1, Target::Id),
            Asked::Failed(DenyReason::ServiceUnavailable, vec![1])
        );
        assert_eq!(lease_of(&host, &world.config, &id(3)), None);
        assert_eq!(host.counted(Event::CalloutFailure), 1);
        assert!(host.logged(LogLevel::Warn)[0].contains("cannot call key service cluster"));
        assert_eq!(world.lookups.in_flight(), (0, 0));
        assert!(!world.lookups.is_pending(&id(3)), "nothing registered");
        // The next request tries again.
        assert_eq!(world.ask(&host, id(3), 2, Target::Id), Asked::Waiting);
    }

    #[test]
    fn timeouts_5xx_malformed_and_foreign_answers_fail() {
        let key = id(4);
        let good = serde_json::to_vec(&record(&key)).unwrap();
        let foreign = serde_json::to_vec(&record(&id(5))).unwrap();
        type Case<'a> = (Option<u32>, Option<&'a [u8]>, &'a str);
        let cases: [Case<'_>; 5] = [
            (None, None, "status none (unreachable or timed out)"),
            (Some(503), Some(&good), "status 503"),
            (Some(200), Some(b"{not json"), "status 200"),
            (Some(200), None, "status 200"),
            (Some(200), Some(&foreign), "status 200"),
        ];
        for (status, body, logged) in cases {
            let host = FakeHost::at(0);
            let mut world = World::new();
            create_leases(&host);
            assert_eq!(world.ask(&host, key, 1, Target::Id), Asked::Waiting);
            host.answer(status, body);
            let (waiters, answer) = world.answer(&host, key).unwrap();
            assert_eq!((waiters, answer), (vec![1], Answer::Failed), "{logged}");
            assert_eq!(host.counted(Event::CalloutFailure), 1);
            let logs = host.logged(LogLevel::Warn);
            assert!(logs[0].ends_with(logged), "{logs:?}");
            assert_eq!(lease_of(&host, &world.config, &key), None);
            assert_eq!(world.lookups.in_flight(), (0, 0));
        }
    }

    #[test]
    fn an_answer_nobody_waits_for_still_frees_its_place() {
        let host = FakeHost::at(0);
        let mut world = World::new();
        create_leases(&host);
        assert_eq!(world.ask(&host, id(6), 1, Target::Id), Asked::Waiting);
        let _ = world.lookups.remove(&id(6));
        host.answer(Some(404), None);
        assert!(world.answer(&host, id(6)).is_none());
        assert_eq!(world.lookups.in_flight(), (0, 0));
    }

    #[test]
    fn in_flight_caps_for_records_and_legacy_keys_apart() {
        let host = FakeHost::at(0);
        let mut world = World::new();
        create_leases(&host);
        assert_eq!(world.ask(&host, id(1), 1, Target::Id), Asked::Waiting);
        assert_eq!(world.ask(&host, id(2), 2, Target::Id), Asked::Waiting);
        assert_eq!(
            world.ask(&host, id(3), 3, Target::Id),
            Asked::Failed(DenyReason::Overloaded, vec![3])
        );
        let legacy = || Target::LegacyDigest("cd".repeat(32));
        assert_eq!(world.ask(&host, id(4), 4, legacy()), Asked::Waiting);
        assert_eq!(
            world.ask(&host, id(7), 5, legacy()),
            Asked::Failed(DenyReason::Overloaded, vec![5])
        );
        assert_eq!(world.lookups.in_flight(), (2, 1));
        assert_eq!(host.dispatched().len(), 3);
        let Effect::Dispatch { headers, .. } = &host.dispatched()[2] else {
            panic!();
        };
        let legacy_path = world
            .config
            .legacy_keys
            .as_ref()
            .unwrap()
            .lookup_path
            .clone();
        assert!(headers.contains(&(":path".into(), format!("{legacy_path}{}", "cd".repeat(32)))));
        // A legacy answer must carry the digest asked for.
        let mut answered = record(&id(4));
        answered.digest = "CD".repeat(32);
        host.answer(Some(200), Some(&serde_json::to_vec(&answered).unwrap()));
        let (_, answer) = world.answer(&host, id(4)).unwrap();
        assert_eq!(answer, Answer::Record(Some(answered)));
        assert_eq!(world.lookups.in_flight(), (2, 0));
        assert_eq!(world.ask(&host, id(7), 6, legacy()), Asked::Waiting);
        // A place freed by an answer is usable again.
        host.answer(Some(404), None);
        world.answer(&host, id(1)).unwrap();
        assert_eq!(world.ask(&host, id(3), 7, Target::Id), Asked::Waiting);
    }

    #[test]
    fn two_workers_coalesce_on_the_lease_and_the_waiter_reads_the_cache() {
        let one = FakeHost::at(5_000);
        let two = one.worker();
        let (mut w1, mut w2) = (World::new(), World::new());
        create_leases(&one);
        let key = id(8);
        assert_eq!(w1.ask(&one, key, 1, Target::Id), Asked::Waiting);
        assert_eq!(w2.ask(&two, key, 2, Target::Id), Asked::Waiting);
        assert_eq!(w2.ask(&two, key, 3, Target::Id), Asked::Joined);
        assert!(
            two.dispatched().is_empty(),
            "worker two waits on worker one"
        );
        assert!(w2.lookups.has_remote_waits());
        assert_eq!(w2.lookups.remote_waits(), vec![(key, 5_000)]);
        assert_eq!(w2.lookups.in_flight(), (0, 0));
        // Worker one's answer is stored; worker two's tick finds it and takes the waiters.
        one.advance(30);
        store(&one, &w1.config, &key, one.now_ms());
        let pending = w2.lookups.remove(&key).unwrap();
        assert_eq!(pending.waiters, vec![2, 3]);
        assert!(!w2.lookups.has_remote_waits());
    }

    #[test]
    fn a_lease_lost_to_a_compare_and_swap_race_waits() {
        let host = FakeHost::at(0);
        let mut world = World::new();
        create_leases(&host);
        host.conflict_next_writes(1);
        assert_eq!(world.ask(&host, id(9), 1, Target::Id), Asked::Waiting);
        assert!(host.dispatched().is_empty());
        assert!(world.lookups.has_remote_waits());
    }

    #[test]
    fn a_stripe_held_for_another_key_is_looked_up_without_the_lease() {
        let host = FakeHost::at(0);
        let mut world = World::new();
        create_leases(&host);
        let key = id(10);
        let stranger = Lease {
            id: id(11).to_string(),
            until_ms: 10_000,
        };
        host.put_shared(
            &lease_key(slot_of(&key, &world.config.cache)),
            &stranger.encode(),
        );
        assert_eq!(world.ask(&host, key, 1, Target::Id), Asked::Waiting);
        assert_eq!(host.dispatched().len(), 1);
        assert_eq!(lease_of(&host, &world.config, &key), Some(stranger.clone()));
        // Its answer releases nothing: the stripe stays the stranger's.
        host.answer(Some(404), None);
        assert!(world.answer(&host, key).is_some());
        assert_eq!(lease_of(&host, &world.config, &key), Some(stranger.clone()));
        // Nor does a refused callout made without the lease.
        host.refuse_next_dispatch(HostError::Refused("BadArgument"));
        assert!(matches!(
            world.ask(&host, key, 2, Target::Id),
            Asked::Failed(DenyReason::ServiceUnavailable, _)
        ));
        assert_eq!(lease_of(&host, &world.config, &key), Some(stranger));
    }

    #[test]
    fn a_record_filled_just_before_the_lease_is_taken_decides_at_once() {
        let host = FakeHost::at(1_000);
        let mut world = World::new();
        create_leases(&host);
        let key = id(12);
        store(&host, &world.config, &key, 900);
        let Asked::Filled(entry, waiters) = world.ask(&host, key, 1, Target::Id) else {
            panic!("filled");
        };
        assert_eq!((entry.fetched_at_ms, waiters), (900, vec![1]));
        assert!(host.dispatched().is_empty());
        assert_eq!(lease_of(&host, &world.config, &key), None, "released");
        // Not when the feed does not trust it: then it is looked up.
        let pending = Pending::new(Target::Id, 2, 1_000, None);
        let context = world.context();
        let mut lookups = Machine::default();
        let begun = lookups.start(
            &host,
            context,
            &mut Callouts::default(),
            key,
            pending,
            1_000,
            |_| false,
        );
        assert!(matches!(begun, Begun::Waiting));
        assert_eq!(host.dispatched().len(), 1);
    }

    #[test]
    fn the_tick_takes_over_an_abandoned_lease_and_gives_up_in_the_end() {
        let one = FakeHost::at(0);
        let two = one.worker();
        let (mut w1, mut w2) = (World::new(), World::new());
        create_leases(&one);
        let key = id(13);
        assert_eq!(w1.ask(&one, key, 1, Target::Id), Asked::Waiting);
        assert_eq!(w2.ask(&two, key, 2, Target::Id), Asked::Waiting);
        let context = LookupContext {
            config: &w2.config,
            service_token: TOKEN,
        };
        // While worker one holds the lease, worker two keeps waiting.
        two.set_now(500);
        let begun = w2
            .lookups
            .retry(&two, context, &mut w2.callouts, key, 500, |_| true);
        assert!(matches!(begun, Some(Begun::Waiting)));
        assert!(two.dispatched().is_empty());
        // Worker one died: its lease lapses at 1,100 and worker two takes over.
        two.set_now(1_100);
        let begun = w2
            .lookups
            .retry(&two, context, &mut w2.callouts, key, 1_100, |_| true);
        assert!(matches!(begun, Some(Begun::Waiting)));
        assert_eq!(two.dispatched().len(), 1);
        assert!(!w2.lookups.has_remote_waits());
        assert_eq!(
            lease_of(&two, &w2.config, &key).map(|l| l.until_ms),
            Some(1_100 + 1_100)
        );
        // Its callout is never answered (its lease kept renewed) and a third worker waits
        // past twice the timeout.
        SharedLease::new(&lease_key(slot_of(&key, &w2.config.cache))).renew(
            &two,
            key.as_str(),
            100_000,
        );
        let three = one.worker();
        let mut w3 = World::new();
        two.set_now(1_200);
        assert_eq!(w3.ask(&three, key, 3, Target::Id), Asked::Waiting);
        let give_up = 1_200 + 2 * 1_000 + 200;
        let begun = w3
            .lookups
            .retry(&three, context, &mut w3.callouts, key, give_up - 1, |_| {
                true
            });
        assert!(matches!(begun, Some(Begun::Waiting)), "lease still held");
        let begun = w3
            .lookups
            .retry(&three, context, &mut w3.callouts, key, give_up, |_| true);
        let Some(Begun::Failed(reason, pending)) = begun else {
            panic!("gave up");
        };
        assert_eq!(
            (reason, pending.waiters),
            (DenyReason::ServiceUnavailable, vec![3])
        );
        assert!(three.dispatched().is_empty());
        assert!(w3
            .lookups
            .retry(&three, context, &mut w3.callouts, key, give_up, |_| true)
            .is_none());
    }
}
