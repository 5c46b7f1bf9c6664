//! The revocation feed: answers of the key service (over the network), and the revoked set
//! and follower status as kept in shared data.
//!
//! Calls `keygate_core::feed::{parse_feed_response, RevokedSet::{apply, encode, decode,
//! is_revoked, len}, FollowerStatus::{decode, encode, state}}`.
//! Input: one byte (the id limit), then a feed answer.
#![no_main]

use keygate_core::feed::{parse_feed_response, FollowerStatus, RevokedSet};
use libfuzzer_sys::fuzz_target;

const NOW_S: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, body)) = data.split_first() else {
        return;
    };
    let max_ids = usize::from(limit);

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
    match set.apply(&answer, NOW_S, max_ids) {
        Ok(()) => {
            assert!(set.len() <= max_ids);
            assert_eq!(set.seq(), answer.seq);
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
            assert_eq!(RevokedSet::decode(&set.encode()).as_ref(), Some(&set));
            // The same answer again changes nothing.
            let again = set.clone();
            if !answer.reset {
                assert!(set.apply(&answer, NOW_S, max_ids).is_ok());
                assert_eq!(set, again);
            }
        }
        Err(_) => assert_eq!(set, before, "a refused answer changed the set"),
    }
});
