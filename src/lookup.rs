//! Key records: the shared-data cache, one lookup in flight per key id, and the callouts to
//! the key service.
//!
//! Within a worker, requests for a key id that is being fetched wait on that one callout.
//! Across workers, a lease in shared data (set with compare-and-swap) marks the fetch; other
//! workers wait for the cache slot to fill, polling on the root context's tick, and take over
//! if the lease lapses. Waiting requests are answered in their own context once the record
//! arrives, so no request waits on more than one callout.

use keygate_core::cache::{
    find, find_from, lease_key, record_key, slot_of, store, CacheEntry, Freshness, Placement,
    RecordSlots, Stored, LEASE_STRIPES,
};
use keygate_core::decision::{
    authorize_proven, authorize_token_prepared, DenyReason, Identity, PreparedRecord,
};
use keygate_core::feed::FeedPolicy;
use keygate_core::key::{KeyDigest, KeyId};
use keygate_core::machine::callouts::Callout;
use keygate_core::machine::degraded::Fallback;
use keygate_core::machine::lease::{Reentry, SharedLease, Take};
use keygate_core::scope::Scope;
use keygate_core::wire::KeyLookup;
use proxy_wasm::types::LogLevel;

use std::net::IpAddr;
use std::rc::Rc;

use crate::answer::complete;
use crate::host::{self, ProxyHost};
use crate::metrics::Event;
use crate::state::{
    client_now, lookup_timeout, resolve_client, Forwarding, Local, Lookups, Pending, Presented,
    Proof, Shared, Step, Target, Waiter,
};

/// Largest lookup answer read from the key service.
const MAX_LOOKUP_BODY: usize = 64 * 1024;

/// A request answered now, or paused until its record arrives.
// Returned once per request and unpacked at once: boxing would only add an allocation to
// the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Now(Forwarding, Result<Identity, DenyReason>),
    Wait,
}

fn decide(
    shared: &Shared,
    entry: &Local,
    presented: &Presented,
    now_ms: u64,
) -> Result<Identity, DenyReason> {
    let now_s = now_ms / 1000;
    let record = entry.record.as_ref().zip(entry.prepared.as_ref());
    match (&presented.proof, record) {
        (Proof::Opaque(_), None) => Err(DenyReason::UnknownKey),
        // The digest is compared first: only the holder of the secret learns that the key
        // is revoked or expired (by its record or by the feed); anyone else gets `digest_mismatch`.
        (Proof::Opaque(digest), Some((record, prepared))) => {
            if !prepared.digest_matches(digest) {
                return Err(DenyReason::DigestMismatch);
            }
            let result = authorize_proven(
                record,
                prepared,
                &presented.required,
                client_for(prepared, &presented.forwarding),
                now_s,
            );
            match crate::feed::revocation(shared, &record.id, now_ms) {
                Some(reason) => Err(reason),
                None => result,
            }
        }
        (Proof::Token(identity), record) => authorize_token_prepared(
            record,
            identity.clone(),
            &presented.required,
            record.and_then(|(_, prepared)| client_for(prepared, &presented.forwarding)),
            now_s,
        ),
    }
}

/// The client address, read only when the record restricts addresses.
fn client_for(prepared: &PreparedRecord, forwarding: &Forwarding) -> Option<IpAddr> {
    if prepared.restricts_addresses() {
        client_now(forwarding)
    } else {
        None
    }
}

/// Answers a paused request with a decision.
fn finish(shared: &Shared, waiter: Waiter, result: Result<Identity, DenyReason>) {
    complete(
        shared,
        waiter.context_id,
        Step::Decided(waiter.presented.forwarding, result),
    );
}

/// While the revocation feed is not live, the default policy only trusts records fetched
/// recently (a revocation may have been missed since). A record the revoked set cannot vouch
/// for (older than an id it had to evict) is never trusted from the cache.
fn is_recent_enough(shared: &Shared, entry: &CacheEntry, now: u64) -> bool {
    crate::feed::with_trust(shared, |trust| {
        trust.is_recent_enough(entry.fetched_at_ms, now)
    })
}

/// The record for `id`: from this worker's copy while it is fresh, else from shared data
/// (another worker may have fetched it), keeping a fresh one for next time.
fn read_entry(shared: &Shared, id: &KeyId) -> Option<Rc<Local>> {
    let now = host::now_ms();
    let local = shared.lookups.borrow().local.get(id).cloned();
    let hint = local.as_ref().and_then(|l| l.slot);
    if let Some(entry) =
        local.filter(|e| e.freshness(now, &shared.config.cache) == Freshness::Fresh)
    {
        return Some(entry);
    }
    let placement = Placement::of(&shared.config.cache);
    let (slot, entry) = find_from(&mut SharedRecordSlots, &placement, id, hint)?;
    let entry = Local::new(entry, Some(slot));
    if entry.freshness(now, &shared.config.cache) == Freshness::Fresh {
        remember(shared, id, &entry);
    }
    Some(entry)
}

/// The record slots in shared data.
struct SharedRecordSlots;

impl RecordSlots for SharedRecordSlots {
    fn read(&mut self, slot: u32) -> Option<(Vec<u8>, u32)> {
        let (bytes, cas) = host::get_shared(&record_key(slot));
        Some((bytes?, cas.unwrap_or(0)))
    }

    fn write(&mut self, slot: u32, bytes: &[u8], cas: Option<u32>) -> bool {
        host::set_shared(&record_key(slot), bytes, cas).is_ok()
    }
}

/// The record for `id` in shared data only: safe while `shared.lookups` is borrowed.
fn read_shared_entry(shared: &Shared, id: &KeyId) -> Option<CacheEntry> {
    let placement = Placement::of(&shared.config.cache);
    find(&mut SharedRecordSlots, &placement, id).map(|(_, entry)| entry)
}

/// Stores a record just fetched in shared data; the slot it went to. `in_use`: the key was
/// asked for before this fetch (its entry is kept before those of keys seen once).
fn write_shared_entry(shared: &Shared, entry: &CacheEntry, in_use: bool) -> Option<u32> {
    let cache = &shared.config.cache;
    match store(
        &mut SharedRecordSlots,
        &Placement::of(cache),
        cache,
        entry,
        in_use,
    ) {
        Stored::At { slot, .. } => Some(slot),
        Stored::Lost => None,
    }
}

/// The fast path for an opaque key: decides from this worker's fresh copy of its record,
/// with no host call beyond the clock. The key is proven by the fingerprint of its text when
/// that text was proven before, else by its digest. `None` when this worker holds no record
/// for `id` that may decide now (the caller takes the full path).
pub fn decide_fresh(
    shared: &Shared,
    id: &KeyId,
    credential: &str,
    required: &[Scope],
    forwarding: &Forwarding,
    now: u64,
) -> Option<Result<Identity, DenyReason>> {
    let local = shared.lookups.borrow().local.get(id).cloned()?;
    if local.entry.freshness(now, &shared.config.cache) != Freshness::Fresh
        || crate::feed::degraded_policy(shared) == Some(FeedPolicy::FailClosed)
        || !is_recent_enough(shared, &local.entry, now)
    {
        return None;
    }
    shared.metrics.count(Event::CacheHit);
    let (Some(record), Some(prepared)) = (&local.entry.record, &local.prepared) else {
        return Some(Err(DenyReason::UnknownKey));
    };
    // The key is proven first, so its record's status is told only to its holder.
    let fingerprint = shared.fingerprints.of(credential.as_bytes());
    if local.proven.get() != Some(fingerprint) {
        if !prepared.digest_matches(&KeyDigest::of(credential.as_bytes())) {
            return Some(Err(DenyReason::DigestMismatch));
        }
        local.proven.set(Some(fingerprint));
    }
    if let Some(reason) = crate::feed::revocation(shared, &record.id, now) {
        return Some(Err(reason));
    }
    let client = client_for(prepared, forwarding);
    Some(authorize_proven(
        record,
        prepared,
        required,
        client,
        now / 1000,
    ))
}

/// Keeps a decoded record in this worker's bounded copy of the cache.
fn remember(shared: &Shared, id: &KeyId, entry: &Rc<Local>) {
    let mut lookups = shared.lookups.borrow_mut();
    if lookups.local.len() >= shared.config.cache.max_entries as usize
        && !lookups.local.contains_key(id)
    {
        lookups.local.clear();
    }
    lookups.local.insert(*id, Rc::clone(entry));
}

/// Decides from the cache when it can; otherwise starts or joins a lookup.
pub fn resolve(shared: &Shared, context_id: u32, presented: Presented) -> Outcome {
    let now = host::now_ms();
    let id = presented.key_id;
    let policy = crate::feed::degraded_policy(shared);
    if policy == Some(FeedPolicy::FailClosed) {
        return Outcome::Now(presented.forwarding, Err(DenyReason::ServiceUnavailable));
    }
    if presented.legacy
        && shared
            .lookups
            .borrow_mut()
            .legacy_unknown
            .contains(&id, now)
    {
        shared.metrics.count(Event::CacheHit);
        return Outcome::Now(presented.forwarding, Err(DenyReason::UnknownKey));
    }
    let cached = read_entry(shared, &id).filter(|e| is_recent_enough(shared, e, now));
    let stale = match cached
        .as_ref()
        .map(|e| (e, e.freshness(now, &shared.config.cache)))
    {
        Some((entry, Freshness::Fresh)) => {
            shared.metrics.count(Event::CacheHit);
            let result = decide(shared, entry, &presented, now);
            return Outcome::Now(presented.forwarding, result);
        }
        Some((_, Freshness::Stale)) => cached,
        _ => None,
    };
    shared.metrics.count(Event::CacheMiss);

    let mut presented = presented;
    resolve_client(&mut presented.forwarding);
    let waiter = Waiter {
        context_id,
        presented,
    };
    let mut lookups = shared.lookups.borrow_mut();
    if let Some(pending) = lookups.pending.get_mut(&id) {
        pending.waiters.push(waiter);
        return Outcome::Wait;
    }
    let mut pending = Pending {
        target: Target::of(&waiter.presented),
        waiters: vec![waiter],
        token: None,
        since_ms: now,
        stale,
    };
    match start_lookup(shared, &mut lookups, &id, &mut pending, now) {
        Ok(Started::Dispatched | Started::Waiting) => {
            lookups.pending.insert(id, pending);
            Outcome::Wait
        }
        Ok(Started::Filled(entry)) => {
            drop(lookups);
            let Some(waiter) = pending.waiters.pop() else {
                return Outcome::Wait;
            };
            let result = decide(shared, &entry, &waiter.presented, now);
            Outcome::Now(waiter.presented.forwarding, result)
        }
        Err(reason) => {
            drop(lookups);
            let Some(waiter) = pending.waiters.pop() else {
                return Outcome::Wait;
            };
            let result = fallback(
                shared,
                pending.stale.as_ref(),
                &waiter.presented,
                now,
                reason,
            );
            Outcome::Now(waiter.presented.forwarding, result)
        }
    }
}

/// What `start_lookup` did.
enum Started {
    /// Our callout is in flight.
    Dispatched,
    /// Another worker's callout is; we poll the cache.
    Waiting,
    /// The record arrived meanwhile: decide now.
    Filled(Rc<Local>),
}

/// Takes the lease and dispatches the callout, or arranges to wait for another worker's.
/// On `Err`, nothing is registered and the caller answers from `fallback`.
fn start_lookup(
    shared: &Shared,
    lookups: &mut Lookups,
    id: &KeyId,
    pending: &mut Pending,
    now: u64,
) -> Result<Started, DenyReason> {
    let config = &shared.config;
    let slot = slot_of(id, &config.cache);
    let lease_name = lease_key(slot);
    let lease = SharedLease::new(&lease_name);
    let current = lease.read(&ProxyHost);
    let holder = current.holder(now).map(|l| l.id == id.as_str());
    if holder == Some(true) {
        return wait_for_other_worker(pending);
    }
    let legacy = matches!(pending.target, Target::LegacyDigest(_));
    let full = if legacy {
        let cap = config.legacy_keys.as_ref().map_or(0, |l| l.max_in_flight);
        lookups.legacy_in_flight >= cap
    } else {
        lookups.in_flight >= config.key_service.max_in_flight
    };
    if full {
        return Err(DenyReason::Overloaded);
    }
    let timeout = lookup_timeout(config);
    // A stripe busy with another key id: look up without a lease rather than wait on a
    // stranger (a duplicate lookup at worst).
    let leased = holder.is_none() && {
        let until = now + timeout.as_millis() as u64 + 100;
        match current.take(&ProxyHost, id.as_str(), until, now, Reentry::Wait) {
            Take::Taken => true,
            // Another worker took the lease between our read and write.
            Take::Held(_) | Take::Lost => return wait_for_other_worker(pending),
        }
    };
    // The worker that held the lease may have filled the slot just before we took it.
    // (Shared data only: `lookups` is borrowed by our caller.)
    if let Some(entry) = read_shared_entry(shared, id)
        .filter(|e| e.freshness(now, &config.cache) == Freshness::Fresh)
        .filter(|e| is_recent_enough(shared, e, now))
        .map(|entry| Local::new(entry, None))
    {
        if leased {
            release_lease(&lease_name);
        }
        return Ok(Started::Filled(entry));
    }
    let path = pending.target.path(shared, id);
    let authorization = format!("Bearer {}", shared.secrets.service_token);
    let headers = vec![
        (":method", "GET"),
        (":path", path.as_str()),
        (":authority", config.key_service.authority.as_str()),
        ("authorization", authorization.as_str()),
        ("accept", "application/json"),
    ];
    match host::dispatch_http_call(&config.key_service.cluster, headers, timeout) {
        Ok(token) => {
            shared
                .callouts
                .borrow_mut()
                .insert(token, Callout::Lookup { id: *id, legacy });
            if legacy {
                lookups.legacy_in_flight += 1;
            } else {
                lookups.in_flight += 1;
            }
            pending.token = Some(token);
            Ok(Started::Dispatched)
        }
        Err(err) => {
            release_lease(&lease_name);
            shared.metrics.count(Event::CalloutFailure);
            host::log(
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

fn wait_for_other_worker(pending: &mut Pending) -> Result<Started, DenyReason> {
    pending.token = None;
    Ok(Started::Waiting)
}

fn release_lease(lease_name: &str) {
    SharedLease::new(lease_name).release(&ProxyHost);
}

/// Creates every lease key, so that taking a lease is always a compare-and-swap.
pub fn create_leases() {
    for stripe in 0..LEASE_STRIPES {
        SharedLease::new(&lease_key(stripe)).create(&ProxyHost);
    }
}

/// When the key service cannot answer: a stale record within the staleness bound still
/// decides; otherwise the request fails closed with `reason` (503).
fn fallback(
    shared: &Shared,
    stale: Option<&Rc<Local>>,
    presented: &Presented,
    now: u64,
    reason: DenyReason,
) -> Result<Identity, DenyReason> {
    let held = stale.map(|e| (e.fetched_at_ms, e.freshness(now, &shared.config.cache)));
    let choice = crate::feed::with_trust(shared, |trust| trust.fallback(held, now));
    match (choice, stale) {
        (Fallback::UseStale, Some(entry)) => {
            shared.metrics.count(Event::StaleUsed);
            decide(shared, entry, presented, now)
        }
        _ => Err(reason),
    }
}

/// A lookup answered: cache it and answer everyone who waited for it.
pub fn on_response(shared: &Shared, id: KeyId, legacy: bool, body_size: usize) {
    let now = host::now_ms();
    let pending = {
        let mut lookups = shared.lookups.borrow_mut();
        if legacy {
            lookups.legacy_in_flight = lookups.legacy_in_flight.saturating_sub(1);
        } else {
            lookups.in_flight = lookups.in_flight.saturating_sub(1);
        }
        lookups.pending.remove(&id).map(|p| (id, p))
    };
    let Some((id, pending)) = pending else {
        return;
    };
    let slot = slot_of(&id, &shared.config.cache);
    release_lease(&lease_key(slot));

    let status = host::call_response_status();
    let record = match status {
        Some(200) => host::call_response_body(body_size, MAX_LOOKUP_BODY)
            .and_then(|body| serde_json::from_slice::<KeyLookup>(&body).ok())
            .filter(|record| pending.target.answers(record, &id))
            .map(Some),
        Some(404) => Some(None),
        _ => None,
    };
    let legacy_target = matches!(pending.target, Target::LegacyDigest(_));
    match record {
        // An unknown legacy digest: remembered apart, so that it evicts no record.
        Some(None) if legacy_target => {
            let ttl = shared
                .config
                .legacy_keys
                .as_ref()
                .map_or(0, |l| l.negative_ttl_ms);
            shared
                .lookups
                .borrow_mut()
                .legacy_unknown
                .insert(id, now + ttl);
            for waiter in pending.waiters {
                finish(shared, waiter, Err(DenyReason::UnknownKey));
            }
        }
        Some(record) => {
            let entry = CacheEntry {
                id: id.to_string(),
                fetched_at_ms: now,
                record,
            };
            let in_use = pending.stale.is_some() || shared.lookups.borrow().local.contains_key(&id);
            let stored_at = write_shared_entry(shared, &entry, in_use);
            let entry = Local::new(entry, stored_at);
            remember(shared, &id, &entry);
            for waiter in pending.waiters {
                let result = decide(shared, &entry, &waiter.presented, now);
                finish(shared, waiter, result);
            }
        }
        None => {
            shared.metrics.count(Event::CalloutFailure);
            host::log(
                LogLevel::Warn,
                &format!(
                    "key service lookup failed for key_id={id}: status {}",
                    status.map_or_else(
                        || "none (unreachable or timed out)".to_owned(),
                        |s| s.to_string()
                    )
                ),
            );
            for waiter in pending.waiters {
                let result = fallback(
                    shared,
                    pending.stale.as_ref(),
                    &waiter.presented,
                    now,
                    DenyReason::ServiceUnavailable,
                );
                finish(shared, waiter, result);
            }
        }
    }
}

/// Polls lookups another worker is doing: answer from the cache once it fills, take over
/// when the lease lapses, give up after twice the lookup timeout.
pub fn on_tick(shared: &Shared) {
    let now = host::now_ms();
    let remote: Vec<KeyId> = {
        let lookups = shared.lookups.borrow();
        lookups
            .pending
            .iter()
            .filter(|(_, p)| p.token.is_none())
            .map(|(id, _)| *id)
            .collect()
    };
    for id in remote {
        let filled = read_entry(shared, &id).filter(|e| {
            e.fetched_at_ms + 1
                >= shared
                    .lookups
                    .borrow()
                    .pending
                    .get(&id)
                    .map_or(u64::MAX, |p| p.since_ms)
        });
        let Some(mut pending) = shared.lookups.borrow_mut().pending.remove(&id) else {
            continue;
        };
        if let Some(entry) = filled {
            for waiter in pending.waiters {
                let result = decide(shared, &entry, &waiter.presented, now);
                finish(shared, waiter, result);
            }
            continue;
        }
        let give_up_at = pending.since_ms + 2 * shared.config.key_service.timeout_ms + 200;
        let outcome = if now >= give_up_at {
            Err(DenyReason::ServiceUnavailable)
        } else {
            let mut lookups = shared.lookups.borrow_mut();
            start_lookup(shared, &mut lookups, &id, &mut pending, now)
        };
        match outcome {
            Ok(Started::Dispatched | Started::Waiting) => {
                shared.lookups.borrow_mut().pending.insert(id, pending);
            }
            Ok(Started::Filled(entry)) => {
                for waiter in pending.waiters {
                    let result = decide(shared, &entry, &waiter.presented, now);
                    finish(shared, waiter, result);
                }
            }
            Err(reason) => {
                for waiter in pending.waiters {
                    let result = fallback(
                        shared,
                        pending.stale.as_ref(),
                        &waiter.presented,
                        now,
                        reason.clone(),
                    );
                    finish(shared, waiter, result);
                }
            }
        }
    }
}

/// Looks the key record up (cache or callout) and decides from it.
pub fn resolve_record(shared: &Shared, context_id: u32, presented: Presented) -> Step {
    match resolve(shared, context_id, presented) {
        Outcome::Wait => Step::Wait,
        Outcome::Now(forwarding, result) => Step::Decided(forwarding, result),
    }
}
