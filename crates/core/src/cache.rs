//! Key records cached in proxy-wasm shared data.
//!
//! Shared data cannot be enumerated or deleted, so the cache is direct-mapped: a key id
//! hashes to one of `max_entries` slots and a newer record for another id simply replaces
//! the slot. The number of entries is bounded by construction; every entry carries the time
//! it was fetched, from which freshness and usable staleness follow.

use serde::{Deserialize, Serialize};

use crate::key::KeyId;
use crate::wire::KeyLookup;

/// How long cached answers live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl_ms: u64,
    pub negative_ttl_ms: u64,
    /// How old an entry may be and still be used while the key service cannot be reached.
    pub max_stale_ms: u64,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub id: String,
    pub fetched_at_ms: u64,
    pub record: Option<KeyLookup>,
}

impl CacheEntry {
    pub fn freshness(&self, now_ms: u64, policy: &CachePolicy) -> Freshness {
        let age = now_ms.saturating_sub(self.fetched_at_ms);
        let ttl = if self.record.is_some() {
            policy.ttl_ms
        } else {
            policy.negative_ttl_ms
        };
        if age < ttl {
            Freshness::Fresh
        } else if age < ttl.max(policy.max_stale_ms) {
            Freshness::Stale
        } else {
            Freshness::Dead
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an entry and checks it is for `id` (the slot may hold another key's entry).
    pub fn decode_for(bytes: &[u8], id: &KeyId) -> Option<Self> {
        let entry: Self = serde_json::from_slice(bytes).ok()?;
        (entry.id == id.as_str()).then_some(entry)
    }
}

/// FNV-1a: stable across workers and builds, which is all a slot index needs.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The slot a key id lives in.
pub fn slot_of(id: &KeyId, policy: &CachePolicy) -> u32 {
    fnv1a(id.as_str().as_bytes()) % policy.max_entries.max(1)
}

/// Shared-data key of the record slot.
pub fn record_key(slot: u32) -> String {
    format!("keygate.rec.{slot}")
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
                id: id(1).to_string(),
                digest: "00".repeat(32),
                subject: "s".into(),
                scopes: vec![],
                status: KeyStatus::Active,
                expires_at: None,
                rate_limit: None,
                allowed_cidrs: Vec::new(),
                not_before: None,
                not_after: None,
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
        for n in 0..=255u8 {
            assert!(slot_of(&id(n), &POLICY) < 1000);
        }
        assert_eq!(slot_of(&id(7), &POLICY), slot_of(&id(7), &POLICY));
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
