//! The rate limiter: one token bucket per owner (a key, or a token's issuer and subject) in
//! shared data, so every worker of an Envoy draws from the same bucket. It fails closed: a
//! request whose bucket cannot be read and written back (its slot full of other owners'
//! refilling buckets, or every compare-and-swap round lost) is refused, not let through
//! uncounted.

use crate::host::Host;
use crate::limits::{
    bucket_key, ratelimit_headers, take_token, BucketOwner, RateDecision, RateLeft, SharedSlots,
    RATE_SLOTS,
};
use crate::wire::RateLimit;

/// Rate-limit slots in the host's shared data.
pub struct HostSlots<'a, H>(pub &'a H);

impl<H: Host> SharedSlots for HostSlots<'_, H> {
    fn read(&self, name: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.0.get_shared(name)
    }

    fn write(&self, name: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.0.set_shared(name, value, cas).is_ok()
    }
}

/// Creates every rate-limit slot, so that every write to one is a compare-and-swap.
pub fn create_slots(host: &impl Host) {
    for slot in 0..RATE_SLOTS {
        let name = bucket_key(slot);
        if host.get_shared(&name).1.is_none() {
            let _ = host.set_shared(&name, &[], None);
        }
    }
}

/// What the limiter decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateOutcome {
    /// Allowed; what the bucket has left, for the response's `RateLimit` headers.
    Allowed(RateLeft),
    /// Over the limit: refused (429) with these headers (`retry-after` in whole seconds,
    /// at least 1).
    Limited {
        retry_after_s: u64,
        policy: String,
        state: String,
    },
    /// The bucket could not be updated: refused (fail closed, 503).
    Contended,
}

/// Takes one token from `owner`'s bucket.
pub fn take(host: &impl Host, owner: BucketOwner, limit: &RateLimit, now_ms: u64) -> RateOutcome {
    match take_token(&HostSlots(host), owner, limit, now_ms) {
        RateDecision::Allowed { remaining } => {
            let reset_s = if remaining > 0 {
                0
            } else {
                (1.0 / limit.requests_per_second).ceil() as u64
            };
            RateOutcome::Allowed(RateLeft {
                limit: *limit,
                remaining,
                reset_s,
            })
        }
        RateDecision::Limited { retry_after_ms } => {
            let retry_after_s = retry_after_ms.div_ceil(1000).max(1);
            let (policy, state) = ratelimit_headers(limit, 0, retry_after_s);
            RateOutcome::Limited {
                retry_after_s,
                policy,
                state,
            }
        }
        RateDecision::SlotFull { .. } | RateDecision::Contended => RateOutcome::Contended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::limits::MAX_CAS_ROUNDS;

    fn limit(requests_per_second: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second,
            burst,
        }
    }

    /// The headers of an allowed request's outcome (`None`: not allowed).
    fn headers(outcome: RateOutcome) -> Option<(String, String)> {
        match outcome {
            RateOutcome::Allowed(left) => Some(left.headers()),
            _ => None,
        }
    }

    fn allowed(policy: &str, state: &str) -> Option<(String, String)> {
        Some((policy.into(), state.into()))
    }

    #[test]
    fn two_workers_draw_from_one_bucket() {
        let one = FakeHost::at(1_000_000);
        let two = one.worker();
        create_slots(&one);
        let owner = BucketOwner::key("k1");
        let limit = limit(1.0, 2);
        assert_eq!(
            headers(take(&one, owner, &limit, 1_000_000)),
            allowed("\"keygate\";q=2;w=2", "\"keygate\";r=1;t=0")
        );
        // The bucket is empty after the other worker's take: a token is back in 1 s.
        assert_eq!(
            headers(take(&two, owner, &limit, 1_000_000)),
            allowed("\"keygate\";q=2;w=2", "\"keygate\";r=0;t=1")
        );
        assert_eq!(
            take(&one, owner, &limit, 1_000_100),
            RateOutcome::Limited {
                retry_after_s: 1,
                policy: "\"keygate\";q=2;w=2".into(),
                state: "\"keygate\";r=0;t=1".into(),
            }
        );
        assert!(matches!(
            take(&two, owner, &limit, 1_001_000),
            RateOutcome::Allowed(_)
        ));
    }

    #[test]
    fn a_slow_refill_rounds_retry_after_up() {
        let host = FakeHost::at(0);
        create_slots(&host);
        let owner = BucketOwner::key("slow");
        let limit = limit(0.25, 1);
        assert!(matches!(
            take(&host, owner, &limit, 0),
            RateOutcome::Allowed(_)
        ));
        assert!(matches!(
            take(&host, owner, &limit, 1),
            RateOutcome::Limited {
                retry_after_s: 4,
                ..
            }
        ));
    }

    #[test]
    fn lost_races_are_retried_then_refused_closed() {
        let host = FakeHost::at(0);
        create_slots(&host);
        let owner = BucketOwner::key("busy");
        let limit = limit(10.0, 10);
        host.conflict_next_writes(MAX_CAS_ROUNDS - 1);
        assert!(matches!(
            take(&host, owner, &limit, 0),
            RateOutcome::Allowed(_)
        ));
        host.conflict_next_writes(MAX_CAS_ROUNDS);
        let before = host.shared(&bucket_key(owner.slot()));
        assert_eq!(take(&host, owner, &limit, 0), RateOutcome::Contended);
        assert_eq!(
            host.shared(&bucket_key(owner.slot())),
            before,
            "nothing taken"
        );
    }

    #[test]
    fn a_slot_full_of_other_owners_refuses_closed() {
        let host = FakeHost::at(0);
        let target = BucketOwner::key("newcomer");
        let colliding: Vec<BucketOwner> = (0..)
            .map(|i| BucketOwner::key(&format!("other{i}")))
            .filter(|o| o.slot() == target.slot())
            .take(crate::limits::BUCKET_WAYS)
            .collect();
        let limit = limit(1.0, 5);
        for owner in colliding {
            assert!(matches!(
                take(&host, owner, &limit, 0),
                RateOutcome::Allowed(_)
            ));
        }
        assert_eq!(take(&host, target, &limit, 0), RateOutcome::Contended);
        // Once the others' buckets have refilled, their ways are free again.
        assert!(matches!(
            take(&host, target, &limit, 5_000),
            RateOutcome::Allowed(_)
        ));
    }
}
