//! Rate-limit slots as kept in shared data (written by every worker, so read as untrusted
//! bytes): a set of token buckets, each with its owner.
//!
//! Calls `keygate_core::limits::{BucketSet::{decode, encode, take, get, len}, BucketOwner::key,
//! ratelimit_headers}`.
//! Input: one byte (the limit and the time step), one byte (which owner takes), then a slot.
//! Properties: decoding reads back what encoding wrote; a slot never holds more than
//! `BUCKET_WAYS` buckets; taking for one owner never changes another owner's bucket that is
//! still refilling (collision safety); an allowed take leaves fewer tokens than the burst.
#![no_main]

use keygate_core::limits::{ratelimit_headers, BucketOwner, BucketSet, Take, BUCKET_WAYS};
use keygate_core::wire::RateLimit;
use libfuzzer_sys::fuzz_target;

const LIMITS: [(f64, u32); 4] = [(1.0, 1), (50.0, 100), (0.001, 3), (1_000_000.0, 1_000_000)];
const OWNERS: [&str; 4] = [
    "aaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbb",
    "cccccccccccccccc",
    "dddddddddddddddd",
];

fuzz_target!(|data: &[u8]| {
    let [choice, who, bytes @ ..] = data else {
        return;
    };
    let (requests_per_second, burst) = LIMITS[usize::from(choice & 3)];
    let limit = RateLimit {
        requests_per_second,
        burst,
    };
    let mut set = BucketSet::decode(bytes);
    assert!(set.len() <= BUCKET_WAYS);
    assert_eq!(BucketSet::decode(&set.encode()), set);
    let owner = BucketOwner::key(OWNERS[usize::from(who & 3)]);
    let step = u64::from(choice >> 2) * 97;
    let mut now = u64::from(*who) * 1_000_003;
    for _ in 0..4 {
        now = now.saturating_add(step);
        let before = set.clone();
        let outcome = set.take(owner, &limit, now);
        assert!(set.len() <= BUCKET_WAYS);
        for other in OWNERS.iter().map(|id| BucketOwner::key(id)) {
            if other == owner {
                continue;
            }
            if let Some(bucket) = before.get(&other) {
                if !bucket.is_idle(now) {
                    assert_eq!(
                        set.get(&other),
                        Some(bucket),
                        "another owner's bucket changed"
                    );
                }
            }
        }
        match outcome {
            Ok(Take::Allowed { remaining }) => assert!(remaining < u64::from(limit.burst)),
            Ok(Take::Limited { retry_after_ms }) => assert!(retry_after_ms >= 1),
            Err(full) => {
                assert!(full.retry_after_ms >= 1);
                assert_eq!(set, before, "a full slot changed");
            }
        }
        if let Some(bucket) = set.get(&owner) {
            assert!(bucket.milli_tokens <= u64::from(limit.burst) * 1000);
            let _ = ratelimit_headers(&limit, bucket.milli_tokens / 1000, step / 1000);
        }
    }
});
