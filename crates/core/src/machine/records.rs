//! Key records: the shared-data cache, one lookup in flight per key id, and the callouts to
//! the key service.
//!
//! Within a worker, requests for a key id that is being fetched wait on that one callout.
//! Across workers, a lease in shared data (set with compare-and-swap) marks the fetch; other
//! workers wait for the cache slot to fill, polling on the root context's tick, and take over
//! if the lease lapses. Waiting requests are answered in their own context once the record
//! arrives, so no request waits on more than one callout.

use crate::binding::Requirement;
use crate::cache::{find_from, store, CacheEntry, Freshness, Placement, Stored};
use crate::decision::{
    authorize_proven_peer, authorize_token_peer, DenyReason, Identity, Peer, PreparedRecord,
};
use crate::feed::FeedPolicy;
use crate::key::{KeyDigest, KeyId};
use crate::machine::degraded::Fallback;
use crate::machine::lookup::{Answer, Begun, HostSlots, LookupContext, Pending, Target};

use std::net::IpAddr;
use std::rc::Rc;

use crate::host::Event;
use crate::host::Host;
use crate::machine::answer::complete;
use crate::machine::state::{
    client_now, principal_now, resolve_client, Forwarding, Local, Presented, Proof, Shared, Step,
    Waiter,
};

/// A request answered now, or paused until its record arrives.
// Returned once per request and unpacked at once: boxing would only add an allocation to
// the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Now(Forwarding, Result<Identity, DenyReason>),
    Wait,
}

fn decide(
    host: &impl Host,
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
            let principal = principal_for(host, prepared, &presented.forwarding);
            let result = authorize_proven_peer(
                record,
                prepared,
                &presented.required,
                peer(host, prepared, &presented.forwarding, principal.as_deref()),
                now_s,
            );
            match crate::machine::state::revocation(shared, &record.id, now_ms) {
                Some(reason) => Err(reason),
                None => result,
            }
        }
        (Proof::Token(identity), record) => {
            let principal = record
                .and_then(|(_, prepared)| principal_for(host, prepared, &presented.forwarding));
            authorize_token_peer(
                record,
                identity.clone(),
                &presented.required,
                Peer {
                    client: record.and_then(|(_, prepared)| {
                        client_for(host, prepared, &presented.forwarding)
                    }),
                    principal: principal.as_deref(),
                    country: presented.forwarding.country,
                },
                now_s,
            )
        }
    }
}

/// Reads the principal into `forwarding` when the record binds the key to workloads (so the
/// decision and the identity header see the same one, read once).
fn note_principal(
    host: &impl Host,
    prepared: Option<&PreparedRecord>,
    forwarding: &mut Forwarding,
) {
    if forwarding.principal.is_none() && prepared.is_some_and(PreparedRecord::restricts_principals)
    {
        forwarding.principal = Some(principal_now(host, forwarding));
    }
}

/// The principal, read only when the record binds the key to workloads.
fn principal_for(
    host: &impl Host,
    prepared: &PreparedRecord,
    forwarding: &Forwarding,
) -> Option<String> {
    if prepared.restricts_principals() {
        principal_now(host, forwarding)
    } else {
        None
    }
}

fn peer<'a>(
    host: &impl Host,
    prepared: &PreparedRecord,
    forwarding: &Forwarding,
    principal: Option<&'a str>,
) -> Peer<'a> {
    Peer {
        client: client_for(host, prepared, forwarding),
        principal,
        country: forwarding.country,
    }
}

/// The client address, read only when the record restricts addresses.
fn client_for(
    host: &impl Host,
    prepared: &PreparedRecord,
    forwarding: &Forwarding,
) -> Option<IpAddr> {
    if prepared.restricts_addresses() {
        client_now(host, forwarding)
    } else {
        None
    }
}

/// Answers a paused request with a decision.
fn finish(host: &impl Host, shared: &Shared, waiter: Waiter, result: Result<Identity, DenyReason>) {
    complete(
        host,
        shared,
        waiter.context_id,
        Step::Decided(waiter.presented.forwarding, result),
    );
}

/// While the revocation feed is not live, the default policy only trusts records fetched
/// recently (a revocation may have been missed since). A record the revoked set cannot vouch
/// for (older than an id it had to evict), or that holds a role the feed has told a newer
/// version of, is never trusted from the cache.
fn is_recent_enough(shared: &Shared, entry: &CacheEntry, now: u64) -> bool {
    crate::machine::state::with_trust(shared, |trust| trust.trusts(entry, now))
}

/// The record for `id`: from this worker's copy while it is fresh, else from shared data
/// (another worker may have fetched it), keeping a fresh one for next time.
fn read_entry(host: &impl Host, shared: &Shared, id: &KeyId) -> Option<Rc<Local>> {
    let now = shared.now(host);
    let local = shared.lookups.borrow().local.get(id).cloned();
    let hint = local.as_ref().and_then(|l| l.slot);
    if let Some(entry) =
        local.filter(|e| e.freshness(now, &shared.config.cache) == Freshness::Fresh)
    {
        return Some(entry);
    }
    let placement = Placement::of(&shared.config.cache);
    let (slot, entry) = find_from(&mut HostSlots(host), &placement, id, hint)?;
    let entry = Local::new(entry, Some(slot));
    if entry.freshness(now, &shared.config.cache) == Freshness::Fresh {
        remember(shared, id, &entry);
    }
    Some(entry)
}

/// Stores a record just fetched in shared data; the slot it went to. `in_use`: the key was
/// asked for before this fetch (its entry is kept before those of keys seen once).
fn write_shared_entry(
    host: &impl Host,
    shared: &Shared,
    entry: &CacheEntry,
    in_use: bool,
) -> Option<u32> {
    let cache = &shared.config.cache;
    match store(
        &mut HostSlots(host),
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
    host: &impl Host,
    shared: &Shared,
    id: &KeyId,
    credential: &str,
    required: &Requirement,
    forwarding: &mut Forwarding,
    now: u64,
) -> Option<Result<Identity, DenyReason>> {
    let local = shared.lookups.borrow().local.get(id).cloned()?;
    if local.entry.freshness(now, &shared.config.cache) != Freshness::Fresh
        || crate::machine::state::degraded_policy(shared) == Some(FeedPolicy::FailClosed)
        || !is_recent_enough(shared, &local.entry, now)
    {
        return None;
    }
    shared.metrics.count(host, Event::CacheHit);
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
    if let Some(reason) = crate::machine::state::revocation(shared, &record.id, now) {
        return Some(Err(reason));
    }
    note_principal(host, Some(prepared), forwarding);
    let principal = principal_for(host, prepared, forwarding);
    Some(authorize_proven_peer(
        record,
        prepared,
        required,
        peer(host, prepared, forwarding, principal.as_deref()),
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
pub fn resolve(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    presented: Presented,
) -> Outcome {
    let now = shared.now(host);
    let id = presented.key_id;
    let policy = crate::machine::state::degraded_policy(shared);
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
        shared.metrics.count(host, Event::CacheHit);
        return Outcome::Now(presented.forwarding, Err(DenyReason::UnknownKey));
    }
    let cached = read_entry(host, shared, &id).filter(|e| is_recent_enough(shared, e, now));
    let stale = match cached
        .as_ref()
        .map(|e| (e, e.freshness(now, &shared.config.cache)))
    {
        Some((entry, Freshness::Fresh)) => {
            shared.metrics.count(host, Event::CacheHit);
            let mut presented = presented;
            note_principal(host, entry.prepared.as_ref(), &mut presented.forwarding);
            let result = decide(host, shared, entry, &presented, now);
            return Outcome::Now(presented.forwarding, result);
        }
        Some((_, Freshness::Stale)) => cached,
        _ => None,
    };
    shared.metrics.count(host, Event::CacheMiss);

    let mut presented = presented;
    resolve_client(host, &mut presented.forwarding);
    let waiter = Waiter {
        context_id,
        presented,
    };
    let begun = {
        let mut lookups = shared.lookups.borrow_mut();
        let Some(waiter) = lookups.machine.join(&id, waiter) else {
            return Outcome::Wait;
        };
        let pending = Pending::new(target_of(&waiter.presented), waiter, now, stale);
        lookups.machine.start(
            host,
            context(shared),
            &mut shared.callouts.borrow_mut(),
            id,
            pending,
            now,
            |entry| is_recent_enough(shared, entry, now),
        )
    };
    match begun {
        Begun::Waiting => Outcome::Wait,
        Begun::Filled(entry, mut pending) => {
            let entry = Local::new(entry, None);
            let Some(waiter) = pending.waiters.pop() else {
                return Outcome::Wait;
            };
            let result = decide(host, shared, &entry, &waiter.presented, now);
            Outcome::Now(waiter.presented.forwarding, result)
        }
        Begun::Failed(reason, mut pending) => {
            let Some(waiter) = pending.waiters.pop() else {
                return Outcome::Wait;
            };
            let result = fallback(
                host,
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

/// What a lookup for this request asks the key service for.
fn target_of(presented: &Presented) -> Target {
    match (&presented.proof, presented.legacy) {
        (Proof::Opaque(digest), true) => Target::LegacyDigest(digest.to_hex()),
        _ => Target::Id,
    }
}

fn context(shared: &Shared) -> LookupContext<'_> {
    LookupContext {
        config: &shared.config,
        service_token: &shared.secrets.service_token,
    }
}

/// Creates every lease key, so that taking a lease is always a compare-and-swap.
pub fn create_leases(host: &impl Host) {
    crate::machine::lookup::create_leases(host);
}

/// When the key service cannot answer: a stale record within the staleness bound still
/// decides; otherwise the request fails closed with `reason` (503).
fn fallback(
    host: &impl Host,
    shared: &Shared,
    stale: Option<&Rc<Local>>,
    presented: &Presented,
    now: u64,
    reason: DenyReason,
) -> Result<Identity, DenyReason> {
    let held = stale.map(|e| (e.fetched_at_ms, e.freshness(now, &shared.config.cache)));
    let choice = crate::machine::state::with_trust(shared, |trust| trust.fallback(held, now));
    match (choice, stale) {
        (Fallback::UseStale, Some(entry)) => {
            shared.metrics.count(host, Event::StaleUsed);
            decide(host, shared, entry, presented, now)
        }
        _ => Err(reason),
    }
}

/// A lookup answered: cache it and answer everyone who waited for it.
pub fn on_response(host: &impl Host, shared: &Shared, id: KeyId, legacy: bool, body_size: usize) {
    let now = shared.now(host);
    let answered = shared.lookups.borrow_mut().machine.on_response(
        host,
        &shared.config,
        id,
        legacy,
        body_size,
    );
    let Some((pending, answer)) = answered else {
        return;
    };
    match answer {
        // An unknown legacy digest: remembered apart, so that it evicts no record.
        Answer::Record(None) if pending.target.is_legacy() => {
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
                finish(host, shared, waiter, Err(DenyReason::UnknownKey));
            }
        }
        Answer::Record(record) => {
            let entry = CacheEntry {
                id: id.to_string(),
                fetched_at_ms: now,
                record,
            };
            let in_use = pending.stale.is_some() || shared.lookups.borrow().local.contains_key(&id);
            let stored_at = write_shared_entry(host, shared, &entry, in_use);
            let entry = Local::new(entry, stored_at);
            remember(shared, &id, &entry);
            for waiter in pending.waiters {
                let result = decide(host, shared, &entry, &waiter.presented, now);
                finish(host, shared, waiter, result);
            }
        }
        Answer::Failed => fail_all(host, shared, pending, now, DenyReason::ServiceUnavailable),
    }
}

/// Answers every waiter of a lookup that could not be done from the fallback.
fn fail_all(
    host: &impl Host,
    shared: &Shared,
    pending: Pending<Waiter, Rc<Local>>,
    now: u64,
    reason: DenyReason,
) {
    for waiter in pending.waiters {
        let result = fallback(
            host,
            shared,
            pending.stale.as_ref(),
            &waiter.presented,
            now,
            reason.clone(),
        );
        finish(host, shared, waiter, result);
    }
}

/// Answers every waiter of a lookup from the record that arrived.
fn decide_all(
    host: &impl Host,
    shared: &Shared,
    pending: Pending<Waiter, Rc<Local>>,
    entry: &Local,
    now: u64,
) {
    for waiter in pending.waiters {
        let result = decide(host, shared, entry, &waiter.presented, now);
        finish(host, shared, waiter, result);
    }
}

/// Polls lookups another worker is doing: answer from the cache once it fills, take over
/// when the lease lapses, give up after twice the lookup timeout.
pub fn on_tick(host: &impl Host, shared: &Shared) {
    let now = shared.now(host);
    let remote = shared.lookups.borrow().machine.remote_waits();
    for (id, since_ms) in remote {
        if let Some(entry) =
            read_entry(host, shared, &id).filter(|e| e.fetched_at_ms + 1 >= since_ms)
        {
            if let Some(pending) = shared.lookups.borrow_mut().machine.remove(&id) {
                decide_all(host, shared, pending, &entry, now);
            }
            continue;
        }
        let begun = shared.lookups.borrow_mut().machine.retry(
            host,
            context(shared),
            &mut shared.callouts.borrow_mut(),
            id,
            now,
            |entry| is_recent_enough(shared, entry, now),
        );
        match begun {
            None | Some(Begun::Waiting) => {}
            Some(Begun::Filled(entry, pending)) => {
                decide_all(host, shared, pending, &Local::new(entry, None), now);
            }
            Some(Begun::Failed(reason, pending)) => fail_all(host, shared, pending, now, reason),
        }
    }
}

/// Looks the key record up (cache or callout) and decides from it.
pub fn resolve_record(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    presented: Presented,
) -> Step {
    match resolve(host, shared, context_id, presented) {
        Outcome::Wait => Step::Wait,
        Outcome::Now(forwarding, result) => Step::Decided(forwarding, result),
    }
}
