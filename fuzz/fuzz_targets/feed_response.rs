//! The revocation feed: answers of the key service (over the network), and the revoked set
//! and follower status as kept in shared data.
//!
//! Calls `keygate_core::feed::{parse_feed_response, SetLimits, RevokedSet::{apply, encode,
//! decode, is_revoked, vouches_for, len}, FollowerStatus::{decode, encode, state}}`.
//! Input: one byte (the id limit), then a feed answer.
//! Properties: decoders read back what encoders wrote; a refused answer changes nothing; the
//! set never holds more than its limit; without eviction every revocation in force is
//! refused and the same answer again changes nothing; with eviction the set stops vouching
//! for older records (they are looked up again, never accepted on the set's word).
#![no_main]

use keygate_core::feed::{parse_feed_response, FollowerStatus, RevokedSet, SetLimits};
use libfuzzer_sys::fuzz_target;

const NOW_S: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, body)) = data.split_first() else {
        return;
    };
    let max_ids = usize::from(limit);
    // A window long enough that every event in the answer still matters.
    let limits = SetLimits {
        max_ids,
        window_s: 1 << 40,
        in_flight_s: 1,
    };

    // The shared-data decoders see the same bytes (a worker reads what another wrote).
    if let Some(set) = RevokedSet::decode(body) {
        assert_eq!(RevokedSet::decode(&set.encode()), Some(set));
    }
    if let Some(status) = FollowerStatus::decode(body) {
        let _ = status.state(NOW_S * 1000, 60_000);
        assert_eq!(FollowerStatus::decode(&status.encode()), Some(status));
    }

    let Ok(answer) = parse_feed_response(body) else {
        return;
    };
    let mut set = RevokedSet::default();
    let before = set.clone();
    match set.apply(&answer, NOW_S, &limits) {
        Ok(applied) => {
            assert!(set.len() <= max_ids);
            assert_eq!(set.seq(), answer.seq);
            assert_eq!(RevokedSet::decode(&set.encode()).as_ref(), Some(&set));
            if applied.evicted > 0 {
                assert!(
                    !set.vouches_for(0),
                    "ids were evicted but older records are still vouched for"
                );
                return;
            }
            for event in &answer.events {
                let kept = event.until.is_none_or(|until| until >= NOW_S);
                if kept && event.effective_at <= NOW_S {
                    assert!(
                        set.is_revoked(&event.id, NOW_S),
                        "{} was not revoked",
                        event.id
                    );
                }
            }
            // The same answer again changes nothing.
            let again = set.clone();
            if !answer.reset {
                assert!(set.apply(&answer, NOW_S, &limits).is_ok());
                assert_eq!(set, again);
            }
        }
        Err(_) => assert_eq!(set, before, "a refused answer changed the set"),
    }
});
