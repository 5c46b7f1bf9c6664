//! Key records: the key service's lookup answer (over the network) and the cache entries and
//! leases kept in shared data.
//!
//! Calls `keygate_core::cache::{CacheEntry::{decode_for, encode, freshness}, Lease::{decode,
//! encode, is_held_for}}`, `serde_json::from_slice::<keygate_core::wire::KeyLookup>` (as
//! `crates/core/src/machine/lookup.rs` reads an answer) and `keygate_core::decision::authorize_record`.
#![no_main]

use keygate_core::binding::Requirement;
use keygate_core::cache::{CacheEntry, CachePolicy, Lease};
use keygate_core::decision::authorize_record;
use keygate_core::key::{KeyDigest, KeyId};
use keygate_core::scope::parse_scopes;
use keygate_core::wire::KeyLookup;
use libfuzzer_sys::fuzz_target;

const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(id) = KeyId::parse("aaaaaaaaaaaaaaaa") else {
        return;
    };
    let policy = CachePolicy {
        ttl_ms: 60_000,
        negative_ttl_ms: 5_000,
        max_stale_ms: 3_600_000,
        max_entries: 1024,
    };
    if let Some(entry) = CacheEntry::decode_for(data, &id) {
        assert_eq!(entry.id, id.as_str());
        let _ = entry.freshness(NOW_MS, &policy);
        // Compared without the rate limit: serde_json may read a float back one unit off.
        let fields = |e: &CacheEntry| {
            let record = e.record.as_ref();
            let record =
                record.map(|r| (r.id.clone(), r.digest.clone(), r.status, r.scopes.clone()));
            (e.id.clone(), e.fetched_at_ms, record)
        };
        let back = CacheEntry::decode_for(&entry.encode(), &id);
        assert_eq!(back.as_ref().map(fields), Some(fields(&entry)));
    }
    if let Some(lease) = Lease::decode(data) {
        let _ = (lease.is_held_for(&id, NOW_MS), lease.is_held(NOW_MS));
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
    }
    if let Ok(record) = serde_json::from_slice::<KeyLookup>(data) {
        let presented = KeyDigest::of(b"kg_test_presented");
        let Ok(scopes) = parse_scopes(&["demo:read"]) else {
            return;
        };
        let required = Requirement::from(std::sync::Arc::<[_]>::from(scopes));
        let client = "10.1.2.3".parse().ok();
        let decided = authorize_record(&record, &presented, &required, client, NOW_MS / 1000);
        if decided.is_ok() {
            assert_eq!(KeyDigest::from_hex(&record.digest), Some(presented));
        }
    }
});
