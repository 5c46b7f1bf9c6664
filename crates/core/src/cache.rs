//! Key records cached in proxy-wasm shared data.
//!
//! Shared data cannot be enumerated or deleted, and a key costs memory only once written. The
//! cache is therefore a fixed table of `2 × max_entries` slot names, each holding at most one
//! entry, and a key id may live in any of its [`PROBES`] candidate slots (random probing). An
//! id is looked for in its candidates in order, up to the first slot never written (entries are
//! replaced, never removed, so an id is never stored past an empty candidate). A new entry goes
//! to the id's own slot if it has one, else to the first empty candidate, else it replaces the
//! candidate least worth keeping ([`victim_rank`]): an entry that could not be read, then one
//! nobody refreshed (past its TTL; for a key in use, past twice its TTL), then a fresh one for
//! a key seen only once, then one for a key in use; the oldest first within each class. A key
//! is in use when it was asked for again after its first fetch (a refresh, or a worker that
//! had it before). Twice as many names as entries keeps the table at most half full with
//! `max_entries` keys, so that eight candidates almost always include a free one; beyond that,
//! keys in use keep their slots and one-off keys (a scan) replace each other.
//!
//! Writes are compare-and-swap against the version read, retried a few times, so that two
//! workers storing different ids at once do not silently overwrite each other's entries (a
//! slot never written has no version: two first writes may race there, and the loser is
//! looked up again later). Entries are a compact binary encoding whose header (id, fetch time,
//! flags) is read before anything else, so a probe of another id's slot decodes 27 bytes.
//!
//! Every entry carries the time it was fetched, from which freshness and usable staleness
//! follow.

use crate::key::KeyId;
use crate::wire::{KeyLookup, KeyStatus, RateLimit, RoleRef};

/// How long cached answers live, and how many keys the cache is sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl_ms: u64,
    pub negative_ttl_ms: u64,
    /// How old an entry may be and still be used while the key service cannot be reached.
    pub max_stale_ms: u64,
    /// Keys the cache holds with (almost) no misses; it has `SLOTS_PER_ENTRY` times as many
    /// slot names, and so at most that many entries.
    pub max_entries: u32,
}

/// What a cached entry is good for at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Use it.
    Fresh,
    /// Refresh it; use it only if the refresh fails.
    Stale,
    /// Ignore it.
    Dead,
}

/// One slot's content: the key service's answer for `id` (or `None`: no such key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub id: String,
    pub fetched_at_ms: u64,
    pub record: Option<KeyLookup>,
}

fn ttl_of(has_record: bool, policy: &CachePolicy) -> u64 {
    if has_record {
        policy.ttl_ms
    } else {
        policy.negative_ttl_ms
    }
}

fn freshness_of(
    fetched_at_ms: u64,
    has_record: bool,
    now_ms: u64,
    policy: &CachePolicy,
) -> Freshness {
    let age = now_ms.saturating_sub(fetched_at_ms);
    let ttl = ttl_of(has_record, policy);
    if age < ttl {
        Freshness::Fresh
    } else if age < ttl.max(policy.max_stale_ms) {
        Freshness::Stale
    } else {
        Freshness::Dead
    }
}

impl CacheEntry {
    pub fn freshness(&self, now_ms: u64, policy: &CachePolicy) -> Freshness {
        freshness_of(self.fetched_at_ms, self.record.is_some(), now_ms, policy)
    }

    /// The stored form of a key seen once so far.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(false)
    }

    /// The stored form; `in_use`: the key was asked for again since it was first fetched.
    pub fn encode_as(&self, in_use: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(FORMAT);
        let mut flags = 0;
        if in_use {
            flags |= FLAG_IN_USE;
        }
        if let Some(record) = &self.record {
            flags |= FLAG_RECORD | sections_of(record);
        }
        out.push(flags);
        put_str8(&mut out, &self.id);
        out.extend_from_slice(&self.fetched_at_ms.to_le_bytes());
        if let Some(record) = &self.record {
            put_record(&mut out, record);
        }
        out
    }

    /// Decodes an entry and checks it is for `id` (the slot may hold another key's entry).
    /// Only the header is read when it is not.
    pub fn decode_for(bytes: &[u8], id: &KeyId) -> Option<Self> {
        let (header, mut rest) = EntryHeader::read(bytes)?;
        if header.id != id.as_str().as_bytes() {
            return None;
        }
        let record = if header.has_record {
            Some(get_record(&mut rest, header.sections)?)
        } else {
            None
        };
        if !rest.is_empty() {
            return None;
        }
        Some(Self {
            id: id.to_string(),
            fetched_at_ms: header.fetched_at_ms,
            record,
        })
    }
}

/// First byte of an encoded entry (never `{`: entries were JSON once, and such a slot reads as
/// another id's).
const FORMAT: u8 = 0xB1;
const FLAG_IN_USE: u8 = 1;
const FLAG_RECORD: u8 = 2;
/// The record ends with the roles the key holds (entries without are what filters that
/// predate roles read).
const FLAG_ROLES: u8 = 4;
/// The record's fleet-wide limits follow it (global limit, quota, pool); entries without any
/// are written as before this flag existed.
const FLAG_FLEET: u8 = 8;
/// The record ends with the workload identities the key is bound to.
const FLAG_PRINCIPALS: u8 = 16;
/// The record holds the key's owner and metadata (for routes that bind them).
const FLAG_BINDING: u8 = 32;
/// The record ends with the countries the key may be used from.
const FLAG_COUNTRIES: u8 = 64;
/// The flags that say which optional sections follow a record.
const SECTIONS: u8 =
    FLAG_ROLES | FLAG_BINDING | FLAG_FLEET | FLAG_PRINCIPALS | FLAG_SIGNING | FLAG_COUNTRIES;
/// The record ends with the key's signing material (request signatures).
const FLAG_SIGNING: u8 = 128;

fn has_binding(record: &KeyLookup) -> bool {
    record.owner.is_some() || !record.metadata.is_empty()
}

/// The optional sections `record` is written with: each only when it has something to say,
/// so a record without them is stored as filters that predate them read it. They follow
/// the record in this order: roles, binding, fleet, principals, countries.
fn sections_of(record: &KeyLookup) -> u8 {
    let mut sections = 0;
    if !record.roles.is_empty() {
        sections |= FLAG_ROLES;
    }
    if has_binding(record) {
        sections |= FLAG_BINDING;
    }
    if has_fleet(record) {
        sections |= FLAG_FLEET;
    }
    if record.signing.is_some() {
        sections |= FLAG_SIGNING;
    }
    if !record.allowed_principals.is_empty() {
        sections |= FLAG_PRINCIPALS;
    }
    if !record.allowed_countries.is_empty() {
        sections |= FLAG_COUNTRIES;
    }
    sections
}

/// What a probe reads of an entry before deciding whether it is the one looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryHeader<'a> {
    id: &'a [u8],
    fetched_at_ms: u64,
    in_use: bool,
    has_record: bool,
    /// Which optional sections follow the record ([`SECTIONS`]).
    sections: u8,
}

impl<'a> EntryHeader<'a> {
    fn read(bytes: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let mut rest = bytes;
        if take(&mut rest, 1)? != [FORMAT] {
            return None;
        }
        let flags = take(&mut rest, 1)?[0];
        let id_len = usize::from(take(&mut rest, 1)?[0]);
        let id = take(&mut rest, id_len)?;
        let fetched_at_ms = get_u64(&mut rest)?;
        Some((
            Self {
                id,
                fetched_at_ms,
                in_use: flags & FLAG_IN_USE != 0,
                has_record: flags & FLAG_RECORD != 0,
                sections: flags & SECTIONS,
            },
            rest,
        ))
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn get_u64(rest: &mut &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = take(rest, 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn get_u32(rest: &mut &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = take(rest, 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn get_u16(rest: &mut &[u8]) -> Option<u16> {
    let bytes: [u8; 2] = take(rest, 2)?.try_into().ok()?;
    Some(u16::from_le_bytes(bytes))
}

/// A string of at most 255 bytes (longer ones are cut at a character boundary: only key ids,
/// which are 16 characters, are written this way).
fn put_str8(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u8::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// A string of up to 65,535 bytes; longer ones are written empty (a lookup answer is at most
/// 64 KiB, so no field of a record reaches that).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = if s.len() > usize::from(u16::MAX) {
        ""
    } else {
        s
    };
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn get_str(rest: &mut &[u8]) -> Option<String> {
    let len = usize::from(get_u16(rest)?);
    let bytes = take(rest, len)?;
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

fn put_strs(out: &mut Vec<u8>, items: &[String]) {
    let count = items.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(count as u16).to_le_bytes());
    for item in &items[..count] {
        put_str(out, item);
    }
}

fn get_strs(rest: &mut &[u8]) -> Option<Vec<String>> {
    let count = usize::from(get_u16(rest)?);
    // Each string takes at least its two length bytes: a count the bytes cannot hold is
    // refused before anything is allocated for it.
    if rest.len() < count * 2 {
        return None;
    }
    (0..count).map(|_| get_str(rest)).collect()
}

fn put_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
}

fn get_opt_u64(rest: &mut &[u8]) -> Option<Option<u64>> {
    match take(rest, 1)?[0] {
        0 => Some(None),
        1 => Some(Some(get_u64(rest)?)),
        _ => None,
    }
}

fn put_record(out: &mut Vec<u8>, record: &KeyLookup) {
    put_str(out, &record.id);
    put_str(out, &record.digest);
    put_str(out, &record.subject);
    put_strs(out, &record.scopes);
    out.push(match record.status {
        KeyStatus::Active => 0,
        KeyStatus::Revoked => 1,
        KeyStatus::Expired => 2,
    });
    put_opt_u64(out, record.expires_at);
    match record.rate_limit {
        Some(limit) => {
            out.push(1);
            out.extend_from_slice(&limit.requests_per_second.to_bits().to_le_bytes());
            out.extend_from_slice(&limit.burst.to_le_bytes());
        }
        None => out.push(0),
    }
    put_strs(out, &record.allowed_cidrs);
    put_opt_u64(out, record.not_before);
    put_opt_u64(out, record.not_after);
    // The optional sections, each flagged in the header ([`sections_of`]).
    let sections = sections_of(record);
    if sections & FLAG_ROLES != 0 {
        let count = record.roles.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(count as u16).to_le_bytes());
        for role in &record.roles[..count] {
            put_str(out, &role.name);
            out.extend_from_slice(&role.version.to_le_bytes());
        }
    }
    if sections & FLAG_BINDING != 0 {
        match &record.owner {
            Some(owner) => {
                out.push(1);
                put_str(out, owner);
            }
            None => out.push(0),
        }
        let pairs: Vec<String> = record
            .metadata
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect();
        put_strs(out, &pairs);
    }
    if sections & FLAG_FLEET != 0 {
        put_fleet(out, record);
    }
    if sections & FLAG_PRINCIPALS != 0 {
        put_strs(out, &record.allowed_principals);
    }
    if let (true, Some(signing)) = (sections & FLAG_SIGNING != 0, &record.signing) {
        put_str(out, &signing.alg);
        put_str(out, signing.public_key.as_deref().unwrap_or_default());
        out.extend_from_slice(&signing.generation.to_le_bytes());
    }
    if sections & FLAG_COUNTRIES != 0 {
        put_strs(out, &record.allowed_countries);
    }
}

/// The roles at the end of a record whose header says it has some.
fn get_roles(rest: &mut &[u8]) -> Option<Vec<RoleRef>> {
    let count = usize::from(get_u16(rest)?);
    // Each role takes at least its name's two length bytes and its version's eight.
    if rest.len() < count * 10 {
        return None;
    }
    (0..count)
        .map(|_| {
            let name = get_str(rest)?;
            let version = get_u64(rest)?;
            Some(RoleRef { name, version })
        })
        .collect()
}

fn get_record(rest: &mut &[u8], sections: u8) -> Option<KeyLookup> {
    let id = get_str(rest)?;
    let digest = get_str(rest)?;
    let subject = get_str(rest)?;
    let scopes = get_strs(rest)?;
    let status = match take(rest, 1)?[0] {
        0 => KeyStatus::Active,
        1 => KeyStatus::Revoked,
        2 => KeyStatus::Expired,
        _ => return None,
    };
    let expires_at = get_opt_u64(rest)?;
    let rate_limit = match take(rest, 1)?[0] {
        0 => None,
        1 => Some(RateLimit {
            requests_per_second: f64::from_bits(get_u64(rest)?),
            burst: get_u32(rest)?,
        }),
        _ => return None,
    };
    let allowed_cidrs = get_strs(rest)?;
    let not_before = get_opt_u64(rest)?;
    let not_after = get_opt_u64(rest)?;
    let roles = if sections & FLAG_ROLES != 0 {
        get_roles(rest)?
    } else {
        Vec::new()
    };
    let (owner, metadata) = if sections & FLAG_BINDING != 0 {
        let owner = match take(rest, 1)?[0] {
            0 => None,
            1 => Some(get_str(rest)?),
            _ => return None,
        };
        let pairs = get_strs(rest)?;
        if pairs.len() % 2 != 0 {
            return None;
        }
        let metadata = pairs
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect();
        (owner, metadata)
    } else {
        (None, std::collections::BTreeMap::new())
    };
    let mut record = KeyLookup {
        id,
        digest,
        subject,
        scopes,
        status,
        expires_at,
        rate_limit,
        allowed_cidrs,
        not_before,
        not_after,
        roles,
        allowed_principals: Vec::new(),
        global_limit: None,
        quota: None,
        pool: None,
        owner,
        metadata,
        signing: None,
        allowed_countries: Vec::new(),
    };
    if sections & FLAG_FLEET != 0 {
        get_fleet(rest, &mut record)?;
    }
    if sections & FLAG_PRINCIPALS != 0 {
        record.allowed_principals = get_strs(rest)?;
    }
    if sections & FLAG_SIGNING != 0 {
        let alg = get_str(rest)?;
        let public_key = get_str(rest)?;
        record.signing = Some(Box::new(crate::wire::SigningMaterial {
            alg,
            public_key: (!public_key.is_empty()).then_some(public_key),
            generation: get_u32(rest)?,
        }));
    }
    if sections & FLAG_COUNTRIES != 0 {
        record.allowed_countries = get_strs(rest)?;
    }
    Some(record)
}

fn has_fleet(record: &KeyLookup) -> bool {
    record.global_limit.is_some() || record.quota.is_some() || record.pool.is_some()
}

const FLEET_GLOBAL: u8 = 1;
const FLEET_QUOTA: u8 = 2;
const FLEET_POOL: u8 = 4;

fn put_rate_limit(out: &mut Vec<u8>, limit: &RateLimit) {
    out.extend_from_slice(&limit.requests_per_second.to_bits().to_le_bytes());
    out.extend_from_slice(&limit.burst.to_le_bytes());
}

fn get_rate_limit(rest: &mut &[u8]) -> Option<RateLimit> {
    Some(RateLimit {
        requests_per_second: f64::from_bits(get_u64(rest)?),
        burst: get_u32(rest)?,
    })
}

/// The fleet-wide limits of a record: a byte of which follow, then each one present.
fn put_fleet(out: &mut Vec<u8>, record: &KeyLookup) {
    let mut present = 0;
    if record.global_limit.is_some() {
        present |= FLEET_GLOBAL;
    }
    if record.quota.is_some() {
        present |= FLEET_QUOTA;
    }
    if record.pool.is_some() {
        present |= FLEET_POOL;
    }
    out.push(present);
    if let Some(limit) = &record.global_limit {
        put_rate_limit(out, limit);
    }
    if let Some(quota) = &record.quota {
        out.extend_from_slice(&quota.limit.to_le_bytes());
        out.extend_from_slice(&quota.period_s.to_le_bytes());
        out.extend_from_slice(&quota.window_start.to_le_bytes());
    }
    if let Some(pool) = &record.pool {
        put_str(out, &pool.owner);
        put_rate_limit(out, &pool.limit);
    }
}

fn get_fleet(rest: &mut &[u8], record: &mut KeyLookup) -> Option<()> {
    let present = take(rest, 1)?[0];
    if present & !(FLEET_GLOBAL | FLEET_QUOTA | FLEET_POOL) != 0 {
        return None;
    }
    if present & FLEET_GLOBAL != 0 {
        record.global_limit = Some(get_rate_limit(rest)?);
    }
    if present & FLEET_QUOTA != 0 {
        record.quota = Some(crate::fleet::Quota {
            limit: get_u64(rest)?,
            period_s: get_u64(rest)?,
            window_start: get_u64(rest)?,
        });
    }
    if present & FLEET_POOL != 0 {
        record.pool = Some(Box::new(crate::fleet::PoolRef {
            owner: get_str(rest)?,
            limit: get_rate_limit(rest)?,
        }));
    }
    Some(())
}

/// FNV-1a: stable across workers and builds, which is all a slot index needs.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// 64-bit FNV-1a, for the candidate slots.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finalizer: spreads every bit of its input over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Slot names per key of capacity.
pub const SLOTS_PER_ENTRY: u32 = 2;

/// Candidate slots of a key id.
pub const PROBES: u32 = 8;

/// Compare-and-swap rounds a store tries before it gives up (the entry is then only in the
/// worker's own copy, and looked up again by the other workers).
const STORE_ROUNDS: usize = 3;

/// The table of record slots: how many, and which ones a key id may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    slots: u32,
}

impl Placement {
    pub fn of(policy: &CachePolicy) -> Self {
        Self {
            slots: policy.max_entries.max(1).saturating_mul(SLOTS_PER_ENTRY),
        }
    }

    /// Slot names in the table (`record_key(0)` to `record_key(slots - 1)`): the most entries
    /// the cache ever holds.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The slots `id` may live in, most preferred first, all below `slots()` (in a large table
    /// two may rarely coincide: that slot is then read twice).
    pub fn candidates(&self, id: &KeyId) -> Candidates {
        Candidates {
            hash: mix(fnv1a64(id.as_str().as_bytes())),
            slots: self.slots,
            next: 0,
            count: PROBES.min(self.slots),
        }
    }
}

/// The candidate slots of one key id (see [`Placement::candidates`]).
#[derive(Clone, Debug)]
pub struct Candidates {
    hash: u64,
    slots: u32,
    next: u32,
    count: u32,
}

impl Iterator for Candidates {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.next >= self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let slots = u64::from(self.slots);
        // A small table is probed in order from the first candidate, so that all of it is
        // reachable; a large one at independent positions (random probing, which keeps the
        // probes of a hit fewest).
        let first = self.hash % slots;
        let slot = if self.slots <= 4 * PROBES {
            (first + u64::from(i)) % slots
        } else if i == 0 {
            first
        } else {
            mix(self.hash ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)) % slots
        };
        Some(slot as u32)
    }
}

/// The first candidate slot of `id`, which names its lease stripe.
pub fn slot_of(id: &KeyId, policy: &CachePolicy) -> u32 {
    Placement::of(policy).candidates(id).next().unwrap_or(0)
}

/// Shared-data key of the record slot.
pub fn record_key(slot: u32) -> String {
    format!("keygate.rec.{slot}")
}

/// The record slots as the cache sees them: shared data in the filter, a map in tests.
pub trait RecordSlots {
    /// The bytes in `slot` and their compare-and-swap version; `None` for a slot never written.
    fn read(&mut self, slot: u32) -> Option<(Vec<u8>, u32)>;
    /// Writes `bytes` to `slot` if its version is still `cas` (`None`: a slot never written,
    /// written unconditionally). False when another writer came first.
    fn write(&mut self, slot: u32, bytes: &[u8], cas: Option<u32>) -> bool;
}

/// The entry for `id` and the slot it is in, if the cache holds one.
pub fn find(
    slots: &mut impl RecordSlots,
    placement: &Placement,
    id: &KeyId,
) -> Option<(u32, CacheEntry)> {
    find_from(slots, placement, id, None)
}

/// As [`find`], reading first the slot `id` was last seen in (`hint`), where it almost always
/// still is: one read for a record refreshed in place.
pub fn find_from(
    slots: &mut impl RecordSlots,
    placement: &Placement,
    id: &KeyId,
    hint: Option<u32>,
) -> Option<(u32, CacheEntry)> {
    let hint = hint.filter(|&slot| slot < placement.slots());
    if let Some(slot) = hint {
        let entry = slots
            .read(slot)
            .and_then(|(bytes, _)| CacheEntry::decode_for(&bytes, id));
        if let Some(entry) = entry {
            return Some((slot, entry));
        }
    }
    for slot in placement.candidates(id) {
        if Some(slot) == hint {
            continue;
        }
        let (bytes, _) = slots.read(slot)?;
        if let Some(entry) = CacheEntry::decode_for(&bytes, id) {
            return Some((slot, entry));
        }
    }
    None
}

/// How worth keeping a slot's content is when a new entry needs room: the lowest is
/// replaced. An unreadable entry, then one nobody refreshed (past its TTL, or past twice its
/// TTL for a key in use), then a fresh one for a key seen once, then one for a key in use;
/// the oldest first within each.
pub fn victim_rank(bytes: &[u8], now_ms: u64, policy: &CachePolicy) -> (u8, u64) {
    let Some((header, _)) = EntryHeader::read(bytes) else {
        return (0, 0);
    };
    let age = now_ms.saturating_sub(header.fetched_at_ms);
    let ttl = ttl_of(header.has_record, policy);
    // A key in use is refreshed at its next request after its TTL: it is kept for one more
    // TTL to get there.
    let class = match (header.in_use, age < ttl) {
        (true, _) if age < ttl.saturating_mul(2) => 3,
        (false, true) => 2,
        _ => 1,
    };
    (class, header.fetched_at_ms)
}

/// Where [`store`] put an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// In this slot; `replaced`: it took the place of another id's entry.
    At { slot: u32, replaced: bool },
    /// Nowhere: every round lost its compare-and-swap to another writer.
    Lost,
}

/// The slot a store writes to.
#[derive(Clone, Copy)]
struct Target {
    slot: u32,
    /// The version read (`None`: never written).
    cas: Option<u32>,
    /// It holds another id's entry.
    replaces: bool,
    rank: (u8, u64),
}

/// Stores `entry` (fetched just now) in its id's slot, or a free candidate, or in place of
/// the candidate least worth keeping. `in_use`: the key was asked for before this fetch (its
/// entry is protected from one-off keys while fresh).
pub fn store(
    slots: &mut impl RecordSlots,
    placement: &Placement,
    policy: &CachePolicy,
    entry: &CacheEntry,
    in_use: bool,
) -> Stored {
    let Ok(id) = KeyId::parse(&entry.id) else {
        return Stored::Lost;
    };
    let now_ms = entry.fetched_at_ms;
    for _ in 0..STORE_ROUNDS {
        let mut target: Option<Target> = None;
        let mut refresh = false;
        for slot in placement.candidates(&id) {
            let Some((bytes, cas)) = slots.read(slot) else {
                target = Some(Target {
                    slot,
                    cas: None,
                    replaces: false,
                    rank: (0, 0),
                });
                break;
            };
            if EntryHeader::read(&bytes).is_some_and(|(h, _)| h.id == entry.id.as_bytes()) {
                // A refresh: the key was asked for again after its entry went stale.
                target = Some(Target {
                    slot,
                    cas: Some(cas),
                    replaces: false,
                    rank: (0, 0),
                });
                refresh = true;
                break;
            }
            let rank = victim_rank(&bytes, now_ms, policy);
            if target.is_none_or(|best| rank < best.rank) {
                target = Some(Target {
                    slot,
                    cas: Some(cas),
                    replaces: true,
                    rank,
                });
            }
        }
        let Some(target) = target else {
            return Stored::Lost;
        };
        if slots.write(target.slot, &entry.encode_as(in_use || refresh), target.cas) {
            return Stored::At {
                slot: target.slot,
                replaced: target.replaces,
            };
        }
    }
    Stored::Lost
}

/// Number of lease keys. Shared data can only compare-and-swap a key that exists, so the
/// filter creates all of them at start; a fixed count keeps that cheap.
pub const LEASE_STRIPES: u32 = 1024;

/// Shared-data key of the lease that marks a lookup in flight for a slot's stripe.
pub fn lease_key(slot: u32) -> String {
    format!("keygate.lease.{}", slot % LEASE_STRIPES)
}

/// A lease: which key id is being fetched, and until when the lease holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub until_ms: u64,
}

impl Lease {
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.id, self.until_ms).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (id, until) = text.split_once(':')?;
        Some(Self {
            id: id.to_owned(),
            until_ms: until.parse().ok()?,
        })
    }

    /// True when someone else holds this lease for `id` right now.
    pub fn is_held_for(&self, id: &KeyId, now_ms: u64) -> bool {
        self.id == id.as_str() && now_ms < self.until_ms
    }

    /// True when the lease is held right now, for any key id.
    pub fn is_held(&self, now_ms: u64) -> bool {
        !self.id.is_empty() && now_ms < self.until_ms
    }

    /// The value of a free lease.
    pub fn released() -> Self {
        Self {
            id: String::new(),
            until_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::KeyStatus;

    const POLICY: CachePolicy = CachePolicy {
        ttl_ms: 30_000,
        negative_ttl_ms: 5_000,
        max_stale_ms: 300_000,
        max_entries: 1000,
    };

    fn id(n: u8) -> KeyId {
        KeyId::from_bytes([n; 10])
    }

    fn entry(record: bool) -> CacheEntry {
        CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 1_000,
            record: record.then(|| KeyLookup {
                subject: "s".into(),
                scopes: vec![],
                ..KeyLookup::active(&id(1).to_string(), "00".repeat(32))
            }),
        }
    }

    #[test]
    fn positive_entries_go_fresh_stale_dead() {
        let e = entry(true);
        assert_eq!(e.freshness(1_000, &POLICY), Freshness::Fresh);
        assert_eq!(e.freshness(30_999, &POLICY), Freshness::Fresh);
        assert_eq!(e.freshness(31_000, &POLICY), Freshness::Stale);
        assert_eq!(e.freshness(301_000, &POLICY), Freshness::Dead);
        // A clock that went backwards never makes an entry older.
        assert_eq!(e.freshness(0, &POLICY), Freshness::Fresh);
    }

    #[test]
    fn negative_entries_use_the_shorter_ttl() {
        let e = entry(false);
        assert_eq!(e.freshness(5_999, &POLICY), Freshness::Fresh);
        assert_eq!(e.freshness(6_000, &POLICY), Freshness::Stale);
    }

    #[test]
    fn entries_round_trip_and_belong_to_one_id() {
        let e = entry(true);
        let bytes = e.encode();
        assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(e));
        assert_eq!(CacheEntry::decode_for(&bytes, &id(2)), None);
        assert_eq!(CacheEntry::decode_for(b"garbage", &id(1)), None);
    }

    #[test]
    fn slots_are_bounded_and_stable() {
        let placement = Placement::of(&POLICY);
        assert_eq!(placement.slots(), 2000);
        for n in 0..=255u8 {
            assert!(slot_of(&id(n), &POLICY) < placement.slots());
            let candidates: Vec<u32> = placement.candidates(&id(n)).collect();
            assert_eq!(candidates.len(), PROBES as usize);
            assert_eq!(candidates[0], slot_of(&id(n), &POLICY));
            assert!(candidates.iter().all(|&slot| slot < placement.slots()));
        }
        assert_eq!(slot_of(&id(7), &POLICY), slot_of(&id(7), &POLICY));
    }

    #[test]
    fn a_small_table_is_probed_whole() {
        for capacity in [1, 2, 3, 16] {
            let placement = Placement::of(&CachePolicy {
                max_entries: capacity,
                ..POLICY
            });
            let mut candidates: Vec<u32> = placement.candidates(&id(3)).collect();
            candidates.sort_unstable();
            candidates.dedup();
            let expected = (capacity * SLOTS_PER_ENTRY).min(PROBES);
            assert_eq!(candidates.len() as u32, expected, "capacity {capacity}");
            assert!(candidates.iter().all(|&slot| slot < placement.slots()));
        }
    }

    fn full_record() -> KeyLookup {
        KeyLookup {
            id: id(1).to_string(),
            digest: "ab".repeat(32),
            subject: "team-ü".into(),
            scopes: vec!["demo:read".into(), "demo:write".into()],
            status: KeyStatus::Revoked,
            expires_at: Some(1_900_000_000),
            rate_limit: Some(RateLimit {
                requests_per_second: 0.1,
                burst: 7,
            }),
            allowed_cidrs: vec!["10.0.0.0/8".into(), "::1/128".into()],
            not_before: Some(1),
            not_after: Some(u64::MAX),
            roles: vec![RoleRef {
                name: "analyst".into(),
                version: 42,
            }],
            allowed_principals: vec!["spiffe://cluster.local/ns/a/sa/b".into()],
            global_limit: Some(RateLimit {
                requests_per_second: 100.0,
                burst: 50,
            }),
            quota: Some(crate::fleet::Quota {
                limit: 100_000,
                period_s: 2_592_000,
                window_start: 1_700_000_000,
            }),
            pool: Some(Box::new(crate::fleet::PoolRef {
                owner: "team-ü".into(),
                limit: RateLimit {
                    requests_per_second: 2.5,
                    burst: 3,
                },
            })),
            owner: Some("acme".into()),
            metadata: [("tier".to_owned(), "gold".to_owned())]
                .into_iter()
                .collect(),
            signing: None,
            allowed_countries: vec!["DE".into(), "FR".into()],
        }
    }

    #[test]
    fn signing_material_round_trips_last_and_older_entries_decode_without_it() {
        // Without the countries, which follow the signing material.
        let base = KeyLookup {
            allowed_countries: Vec::new(),
            ..full_record()
        };
        let older = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 7,
            record: Some(base.clone()),
        };
        for signing in [
            crate::wire::SigningMaterial {
                alg: "ed25519".into(),
                public_key: Some("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs".into()),
                generation: 0,
            },
            crate::wire::SigningMaterial {
                alg: "hmac-sha256".into(),
                public_key: None,
                generation: 3,
            },
        ] {
            let mut record = base.clone();
            record.signing = Some(Box::new(signing));
            let signed = CacheEntry {
                record: Some(record),
                ..older.clone()
            };
            let bytes = signed.encode();
            assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(signed.clone()));
            let old_bytes = older.encode();
            assert_eq!(old_bytes[1] & FLAG_SIGNING, 0);
            assert_ne!(bytes[1] & FLAG_SIGNING, 0);
            assert_eq!(&bytes[2..old_bytes.len()], &old_bytes[2..]);
            assert_eq!(
                CacheEntry::decode_for(&old_bytes, &id(1)),
                Some(older.clone())
            );
            for end in old_bytes.len()..bytes.len() {
                assert_eq!(
                    CacheEntry::decode_for(&bytes[..end], &id(1)),
                    None,
                    "cut at {end}"
                );
            }
        }
    }

    #[test]
    fn records_without_fleet_limits_keep_the_old_form() {
        let mut record = full_record();
        record.global_limit = None;
        record.quota = None;
        record.pool = None;
        let e = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 9,
            record: Some(record.clone()),
        };
        let bytes = e.encode();
        assert_eq!(bytes[1] & FLAG_FLEET, 0);
        assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(e.clone()));
        // Each fleet field alone round-trips too.
        let full = full_record();
        for pick in 0..3 {
            let mut one = record.clone();
            match pick {
                0 => one.global_limit = full.global_limit,
                1 => one.quota = full.quota,
                _ => one.pool.clone_from(&full.pool),
            }
            let e = CacheEntry {
                record: Some(one),
                ..e.clone()
            };
            let bytes = e.encode();
            assert_ne!(bytes[1] & FLAG_FLEET, 0);
            assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(e));
        }
    }

    #[test]
    fn a_record_without_roles_is_the_format_older_filters_read() {
        let record = KeyLookup {
            roles: Vec::new(),
            ..full_record()
        };
        let e = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 1,
            record: Some(record),
        };
        let bytes = e.encode();
        assert_eq!(bytes[1] & FLAG_ROLES, 0);
        assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(e.clone()));
        let with_roles = CacheEntry {
            record: Some(full_record()),
            ..e
        }
        .encode();
        assert_ne!(with_roles[1] & FLAG_ROLES, 0);
        // A header that promises roles the bytes lack is refused.
        let mut lying = bytes.clone();
        lying[1] |= FLAG_ROLES;
        assert_eq!(CacheEntry::decode_for(&lying, &id(1)), None);
    }

    #[test]
    fn owner_and_metadata_round_trip_behind_their_flag() {
        // A record whose binding section would be its last.
        let base = KeyLookup {
            owner: None,
            metadata: Default::default(),
            global_limit: None,
            quota: None,
            pool: None,
            allowed_principals: Vec::new(),
            ..full_record()
        };
        let plain = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 1,
            record: Some(base.clone()),
        };
        let mut record = base;
        record.owner = Some("acme".into());
        record.metadata.insert("tenant".into(), "t-1".into());
        record.metadata.insert("region".into(), "eu".into());
        let bound = CacheEntry {
            record: Some(record),
            ..plain.clone()
        };
        let bytes = bound.encode();
        assert_ne!(bytes[1] & FLAG_BINDING, 0);
        assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(bound.clone()));
        // Without owner or metadata: no flag, and the format of entries written before.
        let old = plain.encode();
        assert_eq!(old[1] & FLAG_BINDING, 0);
        assert_eq!(CacheEntry::decode_for(&old, &id(1)), Some(plain));
        // Cut inside the binding section: refused.
        for end in old.len()..bytes.len() {
            assert_eq!(CacheEntry::decode_for(&bytes[..end], &id(1)), None, "{end}");
        }
        // A header that promises the section the bytes lack, or an unknown owner tag: refused.
        let mut lying = old.clone();
        lying[1] |= FLAG_BINDING;
        assert_eq!(CacheEntry::decode_for(&lying, &id(1)), None);
        let mut odd = lying.clone();
        odd.extend_from_slice(&[2, 0, 0, 0, 0]);
        assert_eq!(CacheEntry::decode_for(&odd, &id(1)), None);
        // Principals stay last, after the binding section.
        let mut both = bound.clone();
        if let Some(record) = both.record.as_mut() {
            record.allowed_principals = vec!["spiffe://example.org/ns/a/sa/b".into()];
        }
        assert_eq!(CacheEntry::decode_for(&both.encode(), &id(1)), Some(both));
    }

    #[test]
    fn every_field_of_a_record_round_trips() {
        let e = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 123_456,
            record: Some(full_record()),
        };
        for in_use in [false, true] {
            let bytes = e.encode_as(in_use);
            assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(e.clone()));
            // Cut anywhere, it is refused.
            for end in 0..bytes.len() {
                assert_eq!(
                    CacheEntry::decode_for(&bytes[..end], &id(1)),
                    None,
                    "cut at {end}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(CacheEntry::decode_for(&longer, &id(1)), None);
        }
    }

    #[test]
    fn countries_round_trip_behind_their_flag_and_older_entries_decode_without_them() {
        let mut record = full_record();
        record.allowed_countries = Vec::new();
        let older = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 7,
            record: Some(record.clone()),
        };
        record.allowed_countries = vec!["DE".into()];
        let restricted = CacheEntry {
            record: Some(record),
            ..older.clone()
        };
        let bytes = restricted.encode();
        assert_eq!(
            CacheEntry::decode_for(&bytes, &id(1)),
            Some(restricted.clone())
        );
        let old_bytes = older.encode();
        assert_eq!(old_bytes[1] & FLAG_COUNTRIES, 0);
        assert_ne!(bytes[1] & FLAG_COUNTRIES, 0);
        assert_eq!(&bytes[2..old_bytes.len()], &old_bytes[2..]);
        assert_eq!(CacheEntry::decode_for(&old_bytes, &id(1)), Some(older));
        for end in old_bytes.len()..bytes.len() {
            assert_eq!(CacheEntry::decode_for(&bytes[..end], &id(1)), None);
        }
    }

    #[test]
    fn workload_bindings_round_trip_and_older_entries_decode_without_them() {
        let mut record = full_record();
        record.allowed_principals = Vec::new();
        record.allowed_countries = Vec::new();
        let older = CacheEntry {
            id: id(1).to_string(),
            fetched_at_ms: 7,
            record: Some(record.clone()),
        };
        record.allowed_principals = vec![
            "spiffe://td/ns/a/sa/x".into(),
            "spiffe://td/ns/b/sa/*".into(),
        ];
        let bound = CacheEntry {
            record: Some(record),
            ..older.clone()
        };
        let bytes = bound.encode();
        assert_eq!(CacheEntry::decode_for(&bytes, &id(1)), Some(bound.clone()));
        // An entry without bindings is encoded as before them, and decodes with none.
        let old_bytes = older.encode();
        assert!(old_bytes.len() < bytes.len());
        assert_eq!(old_bytes[1] & FLAG_PRINCIPALS, 0);
        assert_ne!(bytes[1] & FLAG_PRINCIPALS, 0);
        assert_eq!(&bytes[2..old_bytes.len()], &old_bytes[2..]);
        assert_eq!(CacheEntry::decode_for(&old_bytes, &id(1)), Some(older));
        // Cut anywhere in or before the list, it is refused: the header promises it.
        for end in old_bytes.len()..bytes.len() {
            assert_eq!(
                CacheEntry::decode_for(&bytes[..end], &id(1)),
                None,
                "cut at {end}"
            );
        }
    }

    #[test]
    fn a_json_entry_of_an_older_build_is_another_ids() {
        let json = br#"{"id":"aeaqcaibaeaqcaib","fetched_at_ms":1000,"record":null}"#;
        assert_eq!(CacheEntry::decode_for(json, &id(1)), None);
        assert_eq!(victim_rank(json, 0, &POLICY), (0, 0));
    }

    /// Record slots in a map, with versions as shared data keeps them.
    #[derive(Default)]
    struct MapSlots {
        slots: std::collections::HashMap<u32, (Vec<u8>, u32)>,
        version: u32,
        reads: usize,
        /// Written by "another worker" just before our next write.
        interleave: Vec<(u32, Vec<u8>)>,
    }

    impl RecordSlots for MapSlots {
        fn read(&mut self, slot: u32) -> Option<(Vec<u8>, u32)> {
            self.reads += 1;
            self.slots.get(&slot).cloned()
        }

        fn write(&mut self, slot: u32, bytes: &[u8], cas: Option<u32>) -> bool {
            for (other_slot, other) in std::mem::take(&mut self.interleave) {
                self.version += 1;
                self.slots.insert(other_slot, (other, self.version));
            }
            if let (Some(cas), Some((_, current))) = (cas, self.slots.get(&slot)) {
                if cas != *current {
                    return false;
                }
            }
            self.version += 1;
            self.slots.insert(slot, (bytes.to_vec(), self.version));
            true
        }
    }

    fn entry_for(key: &KeyId, fetched_at_ms: u64) -> CacheEntry {
        CacheEntry {
            id: key.to_string(),
            fetched_at_ms,
            record: None,
        }
    }

    fn ids_sharing_a_first_slot(placement: &Placement, count: usize) -> Vec<KeyId> {
        let mut by_first: std::collections::HashMap<u32, Vec<KeyId>> = Default::default();
        for n in 0..u32::MAX {
            let mut bytes = [0u8; 10];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            let key = KeyId::from_bytes(bytes);
            let group = by_first
                .entry(placement.candidates(&key).next().unwrap())
                .or_default();
            group.push(key);
            if group.len() == count {
                return group.clone();
            }
        }
        unreachable!()
    }

    #[test]
    fn ids_of_one_slot_live_side_by_side() {
        let placement = Placement::of(&POLICY);
        let mut slots = MapSlots::default();
        let ids = ids_sharing_a_first_slot(&placement, 3);
        for (n, key) in ids.iter().enumerate() {
            let stored = store(
                &mut slots,
                &placement,
                &POLICY,
                &entry_for(key, 1_000),
                false,
            );
            assert!(
                matches!(
                    stored,
                    Stored::At {
                        replaced: false,
                        ..
                    }
                ),
                "{n}: {stored:?}"
            );
        }
        for key in &ids {
            let (_, found) = find(&mut slots, &placement, key).unwrap();
            assert_eq!(found, entry_for(key, 1_000));
        }
        // A hit in an id's first candidate reads one slot.
        slots.reads = 0;
        assert!(find(&mut slots, &placement, &ids[0]).is_some());
        assert_eq!(slots.reads, 1);
        // A miss stops at the first slot never written.
        slots.reads = 0;
        assert!(find(&mut slots, &placement, &id(200)).is_none());
        assert!(slots.reads <= PROBES as usize);
    }

    #[test]
    fn a_hint_saves_the_probes() {
        let placement = Placement::of(&POLICY);
        let mut slots = MapSlots::default();
        let ids = ids_sharing_a_first_slot(&placement, 3);
        let mut stored_at = Vec::new();
        for key in &ids {
            let stored = store(
                &mut slots,
                &placement,
                &POLICY,
                &entry_for(key, 1_000),
                false,
            );
            let Stored::At { slot, .. } = stored else {
                panic!("{stored:?}");
            };
            stored_at.push(slot);
        }
        slots.reads = 0;
        let (slot, found) = find_from(&mut slots, &placement, &ids[2], Some(stored_at[2])).unwrap();
        assert_eq!((slot, found), (stored_at[2], entry_for(&ids[2], 1_000)));
        assert_eq!(slots.reads, 1);
        // A wrong or stale hint costs one read more, never a miss.
        for hint in [stored_at[0], u32::MAX] {
            let (slot, _) = find_from(&mut slots, &placement, &ids[2], Some(hint)).unwrap();
            assert_eq!(slot, stored_at[2]);
        }
        assert_eq!(
            find_from(&mut slots, &placement, &id(200), Some(stored_at[1])),
            None
        );
    }

    #[test]
    fn a_refresh_stays_in_its_slot_and_marks_the_key_in_use() {
        let placement = Placement::of(&POLICY);
        let mut slots = MapSlots::default();
        let first = store(
            &mut slots,
            &placement,
            &POLICY,
            &entry_for(&id(1), 1_000),
            false,
        );
        let again = store(
            &mut slots,
            &placement,
            &POLICY,
            &entry_for(&id(1), 40_000),
            false,
        );
        let (Stored::At { slot: a, .. }, Stored::At { slot: b, replaced }) = (first, again) else {
            panic!("{first:?} {again:?}");
        };
        assert_eq!((a, replaced), (b, false));
        let bytes = &slots.slots[&a].0;
        assert_eq!(victim_rank(bytes, 40_000, &POLICY), (3, 40_000));
        assert_eq!(
            find(&mut slots, &placement, &id(1))
                .unwrap()
                .1
                .fetched_at_ms,
            40_000
        );
    }

    #[test]
    fn the_victim_is_the_candidate_least_worth_keeping() {
        let policy = CachePolicy {
            max_entries: 4,
            ..POLICY
        };
        let placement = Placement::of(&policy);
        assert_eq!(placement.slots(), PROBES);
        let now = 100_000;
        // Eight slots, all candidates of every id: fill them with fresh in-use entries, one
        // fresh entry seen once, and one past its TTL.
        let mut slots = MapSlots::default();
        for slot in 0..PROBES {
            let e = entry_for(&id(100 + slot as u8), now - 1_000 - u64::from(slot));
            slots.write(slot, &e.encode_as(true), None);
        }
        slots.write(5, &entry_for(&id(50), now - 10).encode_as(false), None);
        // Past twice its (negative) TTL: nobody refreshed it.
        slots.write(6, &entry_for(&id(60), now - 11_000).encode_as(true), None);
        let stored = store(
            &mut slots,
            &placement,
            &policy,
            &entry_for(&id(1), now),
            false,
        );
        assert_eq!(
            stored,
            Stored::At {
                slot: 6,
                replaced: true
            }
        );
        let stored = store(
            &mut slots,
            &placement,
            &policy,
            &entry_for(&id(2), now),
            false,
        );
        assert_eq!(
            stored,
            Stored::At {
                slot: 5,
                replaced: true
            }
        );
        // Then the one-off keys stored just now, before any key in use.
        for n in 3..6 {
            let stored = store(
                &mut slots,
                &placement,
                &policy,
                &entry_for(&id(n), now),
                false,
            );
            let Stored::At {
                slot,
                replaced: true,
            } = stored
            else {
                panic!("{stored:?}");
            };
            assert!(slot == 5 || slot == 6, "{n} replaced slot {slot}");
        }
        // Among keys in use, the one fetched longest ago (slot 7).
        let mut slots = MapSlots::default();
        for slot in 0..PROBES {
            let e = entry_for(&id(100 + slot as u8), now - 1_000 - u64::from(slot));
            slots.write(slot, &e.encode_as(true), None);
        }
        let stored = store(
            &mut slots,
            &placement,
            &policy,
            &entry_for(&id(1), now),
            true,
        );
        assert_eq!(
            stored,
            Stored::At {
                slot: 7,
                replaced: true
            }
        );
    }

    #[test]
    fn a_write_that_loses_its_compare_and_swap_is_retried() {
        let placement = Placement::of(&POLICY);
        let mut slots = MapSlots::default();
        let ids = ids_sharing_a_first_slot(&placement, 2);
        let first = placement.candidates(&ids[0]).next().unwrap();
        // Our slot was written once; another worker stores the other id there between our
        // read and our write.
        slots.write(first, &entry_for(&id(9), 0).encode(), None);
        slots.interleave = vec![(first, entry_for(&ids[1], 1_000).encode())];
        let stored = store(
            &mut slots,
            &placement,
            &POLICY,
            &entry_for(&ids[0], 1_000),
            false,
        );
        assert!(matches!(stored, Stored::At { .. }), "{stored:?}");
        // Both entries are there: the retry did not overwrite the other worker's.
        assert!(find(&mut slots, &placement, &ids[0]).is_some());
        assert!(find(&mut slots, &placement, &ids[1]).is_some());
    }

    #[test]
    fn a_store_that_always_loses_gives_up() {
        struct Contended;
        impl RecordSlots for Contended {
            fn read(&mut self, _: u32) -> Option<(Vec<u8>, u32)> {
                Some((b"other".to_vec(), 1))
            }
            fn write(&mut self, _: u32, _: &[u8], _: Option<u32>) -> bool {
                false
            }
        }
        let placement = Placement::of(&POLICY);
        let stored = store(
            &mut Contended,
            &placement,
            &POLICY,
            &entry_for(&id(1), 0),
            false,
        );
        assert_eq!(stored, Stored::Lost);
    }

    #[test]
    fn leases_round_trip_and_expire() {
        let lease = Lease {
            id: id(1).to_string(),
            until_ms: 500,
        };
        let back = Lease::decode(&lease.encode()).unwrap();
        assert_eq!(back, lease);
        assert!(back.is_held_for(&id(1), 499));
        assert!(!back.is_held_for(&id(1), 500));
        assert!(!back.is_held_for(&id(2), 0));
        assert_eq!(Lease::decode(b"nonsense"), None);
        assert!(back.is_held(499));
        let free = Lease::decode(&Lease::released().encode()).unwrap();
        assert!(!free.is_held(0));
        assert!(lease_key(LEASE_STRIPES + 3) == lease_key(3));
    }
}
