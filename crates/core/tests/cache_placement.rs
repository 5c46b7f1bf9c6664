//! The record cache's placement under load, simulated natively: the real `find` and `store`
//! over record slots kept in a map (versions as shared data keeps them), two workers taking
//! requests in turn, a clock that advances with every request.
//!
//! Every request reads the shared slots (the filter's per-worker copies of fresh records would
//! hide some misses; they are left out so that the placement alone is measured). A miss is a
//! request whose key has no entry (the filter makes a callout); an entry past its TTL is
//! refreshed in place and counted apart. A worker marks a stored key in use when it asked for
//! that key before, as the filter does from its bounded copy of records.
//!
//! `cargo test -p keygate-core --test cache_placement -- --nocapture` prints the curve;
//! `KEYGATE_SIM_CAPACITY=100000 cargo test --release ...` runs it at another capacity.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use keygate_core::cache::{find, store, CacheEntry, CachePolicy, Placement, RecordSlots};
use keygate_core::decision::PreparedRecord;
use keygate_core::key::KeyId;
use keygate_core::wire::{KeyLookup, KeyStatus};

/// The capacity the curve is drawn at: 10,000 unless `KEYGATE_SIM_CAPACITY` says otherwise.
fn capacity() -> u32 {
    std::env::var("KEYGATE_SIM_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn policy(capacity: u32) -> CachePolicy {
    CachePolicy {
        ttl_ms: 30_000,
        negative_ttl_ms: 5_000,
        max_stale_ms: 300_000,
        max_entries: capacity,
    }
}

#[derive(Default)]
struct MapSlots {
    slots: HashMap<u32, (Vec<u8>, u32)>,
    version: u32,
    reads: u64,
}

impl RecordSlots for MapSlots {
    fn read(&mut self, slot: u32) -> Option<(Vec<u8>, u32)> {
        self.reads += 1;
        self.slots.get(&slot).cloned()
    }

    fn write(&mut self, slot: u32, bytes: &[u8], cas: Option<u32>) -> bool {
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

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn key(n: u64) -> KeyId {
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8] = 0x5a;
    KeyId::from_bytes(bytes)
}

fn record(id: &KeyId) -> KeyLookup {
    KeyLookup {
        id: id.to_string(),
        digest: "5a".repeat(32),
        subject: "team-analytics".into(),
        scopes: vec!["demo:read".into(), "demo:write".into()],
        status: KeyStatus::Active,
        expires_at: None,
        rate_limit: None,
        allowed_cidrs: Vec::new(),
        not_before: None,
        not_after: None,
        roles: Vec::new(),
        allowed_principals: Vec::new(),
        global_limit: None,
        quota: None,
        pool: None,
        owner: None,
        metadata: Default::default(),
        signing: None,
        allowed_countries: Vec::new(),
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    requests: u64,
    misses: u64,
    refreshes: u64,
    /// Slots read by the requests that hit.
    hit_reads: u64,
}

impl Tally {
    fn miss_ratio(&self) -> f64 {
        self.misses as f64 / self.requests.max(1) as f64
    }
}

struct Sim {
    slots: MapSlots,
    placement: Placement,
    policy: CachePolicy,
    now_ms: u64,
    step_ms: u64,
    /// Keys each worker asked for, bounded as the filter's copies are (cleared when full).
    seen: [HashSet<u64>; 2],
    rng: Rng,
}

impl Sim {
    fn new(capacity: u32, step_ms: u64) -> Self {
        let policy = policy(capacity);
        Self {
            slots: MapSlots::default(),
            placement: Placement::of(&policy),
            policy,
            now_ms: 1_000_000,
            step_ms,
            seen: [HashSet::new(), HashSet::new()],
            rng: Rng(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn request(&mut self, n: u64, tally: &mut Tally) {
        self.now_ms += self.step_ms;
        let worker = self.rng.below(2) as usize;
        let id = key(n);
        tally.requests += 1;
        let reads = self.slots.reads;
        let found = find(&mut self.slots, &self.placement, &id);
        let fresh = found
            .as_ref()
            .is_some_and(|(_, e)| e.fetched_at_ms + self.policy.ttl_ms > self.now_ms);
        if fresh {
            tally.hit_reads += self.slots.reads - reads;
            self.see(worker, n);
            return;
        }
        if found.is_some() {
            tally.refreshes += 1;
        } else {
            tally.misses += 1;
        }
        let in_use = self.seen[worker].contains(&n);
        let entry = CacheEntry {
            id: id.to_string(),
            fetched_at_ms: self.now_ms,
            record: Some(record(&id)),
        };
        store(
            &mut self.slots,
            &self.placement,
            &self.policy,
            &entry,
            in_use,
        );
        self.see(worker, n);
    }

    fn see(&mut self, worker: usize, n: u64) {
        let seen = &mut self.seen[worker];
        if seen.len() >= self.policy.max_entries as usize && !seen.contains(&n) {
            seen.clear();
        }
        seen.insert(n);
    }

    /// One warm pass over `keys` keys, then `rounds × keys` uniform requests.
    fn uniform(&mut self, keys: u64, rounds: u64) -> Tally {
        let mut warm = Tally::default();
        for n in 0..keys {
            self.request(n, &mut warm);
        }
        let mut tally = Tally::default();
        for _ in 0..rounds * keys {
            let n = self.rng.below(keys);
            self.request(n, &mut tally);
        }
        tally
    }
}

#[test]
fn uniform_traffic_over_capacity_keys_misses_under_one_percent() {
    let capacity = capacity();
    println!(
        "capacity {capacity} ({} slot names), uniform traffic after one warm pass:",
        Placement::of(&policy(capacity)).slots()
    );
    println!(
        "| active keys | × capacity | misses | refreshes | slot reads per request | per hit |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut curve = Vec::new();
    for (keys, label) in [
        (capacity / 2, "0.5"),
        (capacity, "1"),
        (2 * capacity, "2"),
        (4 * capacity, "4"),
    ] {
        let mut sim = Sim::new(capacity, 1);
        let reads_before_warm = sim.slots.reads;
        let tally = sim.uniform(u64::from(keys), 4);
        let reads = (sim.slots.reads - reads_before_warm) as f64
            / (tally.requests + u64::from(keys)) as f64;
        println!(
            "| {keys} | {label} | {:.2}% | {:.2}% | {reads:.2} | {:.2} |",
            100.0 * tally.miss_ratio(),
            100.0 * tally.refreshes as f64 / tally.requests as f64,
            tally.hit_reads as f64
                / (tally.requests - tally.misses - tally.refreshes).max(1) as f64,
        );
        curve.push(tally.miss_ratio());
    }
    assert!(
        curve[0] < 0.001,
        "0.5 × capacity: {:.3}% misses",
        100.0 * curve[0]
    );
    assert!(
        curve[1] < 0.01,
        "1 × capacity: {:.3}% misses",
        100.0 * curve[1]
    );
    // Graceful beyond capacity: the table holds twice the capacity, so twice as many keys
    // still mostly hit, and four times as many keys about half.
    assert!(
        curve[2] < 0.25,
        "2 × capacity: {:.1}% misses",
        100.0 * curve[2]
    );
    assert!(
        curve[3] < 0.65,
        "4 × capacity: {:.1}% misses",
        100.0 * curve[3]
    );
    assert!(curve.windows(2).all(|w| w[0] <= w[1]), "{curve:?}");
}

/// A hot set in constant use keeps its entries while a scan of keys asked for once each
/// streams past at three times the capacity per TTL.
#[test]
fn a_hot_set_survives_a_scan() {
    const HOT: u64 = 200;
    let capacity = 1_000;
    // 5 ms a request, half of them for the scan: 100 new keys a second, 3,000 per TTL.
    let mut sim = Sim::new(capacity, 5);
    let mut next_scan = 1_000_000u64;
    let mut warm = (Tally::default(), Tally::default());
    let mut measured = (Tally::default(), Tally::default());
    for step in 0..120_000u64 {
        let tally = if step < 24_000 {
            &mut warm
        } else {
            &mut measured
        };
        if sim.rng.below(2) == 0 {
            let n = sim.rng.below(HOT);
            sim.request(n, &mut tally.0);
        } else {
            sim.request(next_scan, &mut tally.1);
            next_scan += 1;
        }
    }
    println!(
        "hot set of {HOT} keys beside a scan, capacity {capacity}: hot misses {:.2}% \
         (refreshes {:.2}%), scan misses {:.1}%; during the first 2 minutes {:.2}%",
        100.0 * measured.0.miss_ratio(),
        100.0 * measured.0.refreshes as f64 / measured.0.requests as f64,
        100.0 * measured.1.miss_ratio(),
        100.0 * warm.0.miss_ratio(),
    );
    assert_eq!(measured.1.miss_ratio(), 1.0, "scan keys are new");
    assert!(
        measured.0.miss_ratio() < 0.01,
        "hot keys missed {:.2}% of the time",
        100.0 * measured.0.miss_ratio()
    );
}

/// Counts the bytes this test binary asks the allocator for (to measure a worker's copy).
struct Counting;

thread_local! {
    /// Bytes live on this thread's account (tests run on threads of their own).
    static ALLOCATED: Cell<isize> = const { Cell::new(0) };
}

fn account(bytes: isize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get() + bytes));
}

fn allocated() -> isize {
    ALLOCATED.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What one key costs, the figures the documented memory per key comes from: the stored value
/// of a typical record (as the benches use: three scopes, an expiry) and its slot name in
/// shared data (Envoy's own per-entry overhead is estimated in the README), and the heap a
/// worker's decoded, prepared copy of it takes.
#[test]
fn a_typical_entry_is_small() {
    let id = key(7);
    let mut typical = record(&id);
    typical.scopes.push("models:list".into());
    typical.expires_at = Some(1_900_000_000);
    let entry = CacheEntry {
        id: id.to_string(),
        fetched_at_ms: 1_800_000_000_000,
        record: Some(typical.clone()),
    };
    let bytes = entry.encode();
    let value = bytes.len();
    let json = serde_json::to_vec(&typical).map_or(0, |v| v.len());
    let name = keygate_core::cache::record_key(2 * 1_000_000 - 1).len();

    let before = allocated();
    let copy = CacheEntry::decode_for(&bytes, &id).map(|e| {
        let prepared = e.record.as_ref().map(PreparedRecord::of);
        (Box::new(e), prepared.map(Box::new))
    });
    let heap = allocated() - before;
    assert!(copy.is_some());
    drop(copy);
    println!(
        "typical entry: value {value} bytes (the record as JSON: {json}), slot name up to \
         {name} bytes; a worker's decoded and prepared copy: {heap} bytes of heap"
    );
    assert!(value < 200, "{value}");
    assert!(value < json);
    // Roles, principals, the bound attributes (owner, metadata), fleet limits and countries
    // each add inline fields to the record and its prepared form, though a typical key holds
    // none of them (1,156 bytes measured; the README's per-worker figures come from it).
    assert!(heap < 1216, "{heap}");
}
