//! Rate-limit token buckets as kept in shared data (written by every worker, so read as
//! untrusted bytes).
//!
//! Calls `keygate_core::limits::{Bucket::{decode_for, take, encode, full},
//! ratelimit_headers}`.
//! Input: one byte (the limit and the time step), then a bucket.
#![no_main]

use keygate_core::limits::{ratelimit_headers, Bucket, Take};
use keygate_core::wire::RateLimit;
use libfuzzer_sys::fuzz_target;

const KEY_ID: &str = "aaaaaaaaaaaaaaaa";
const LIMITS: [(f64, u32); 4] = [(1.0, 1), (50.0, 100), (0.001, 3), (1_000_000.0, 1_000_000)];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let (requests_per_second, burst) = LIMITS[usize::from(choice & 3)];
    let limit = RateLimit {
        requests_per_second,
        burst,
    };
    let Some(mut bucket) = Bucket::decode_for(bytes, KEY_ID) else {
        return;
    };
    assert_eq!(
        Bucket::decode_for(&bucket.encode(), KEY_ID),
        Some(bucket.clone())
    );
    let step = u64::from(choice >> 2) * 97;
    let mut now = bucket.updated_ms;
    for _ in 0..4 {
        now = now.saturating_add(step);
        match bucket.take(&limit, now) {
            Take::Allowed { remaining } => assert!(remaining < u64::from(limit.burst)),
            Take::Limited { retry_after_ms } => assert!(retry_after_ms >= 1),
        }
        assert!(bucket.milli_tokens <= u64::from(limit.burst) * 1000);
        let _ = ratelimit_headers(&limit, bucket.milli_tokens / 1000, step / 1000);
    }
    let _ = Bucket::full(KEY_ID, &limit, now);
});
