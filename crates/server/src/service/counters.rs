//! The global counts of fleet-wide limits behind one trait, [`Counters`]: [`MemoryCounters`]
//! for a single key service (the default), [`super::redis_counters::RedisCounters`] for
//! several replicas sharing one Redis. Tokens leave a bucket when granted and come back only
//! when a gateway returns them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use keygate_core::fleet::{lease_size, quota_lease_size};
use keygate_core::wire::RateLimit;

/// Most tokens one ask may want or return.
pub const MAX_WANT: u32 = 1_000_000;

/// How leases are sized and how long they and gateway sightings last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How often each gateway should come back for a rate bucket (`--lease-interval-ms`):
    /// the lease is `rate × interval ÷ gateways`.
    pub interval_ms: u32,
    /// How long granted tokens may be spent (`valid_ms` of the answer).
    pub valid_ms: u32,
    /// A gateway counts towards a bucket's `gateways` this long after its last ask.
    pub gateway_window_ms: u32,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            interval_ms: 500,
            valid_ms: 2_000,
            gateway_window_ms: 10_000,
        }
    }
}

/// What a bucket counts, as the counters need it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CounterLimit {
    /// A token bucket.
    Rate(RateLimit),
    /// A quota window: `limit` units from `window_start` (Unix seconds) to `window_end`.
    Quota {
        limit: u64,
        window_start: u64,
        window_end: u64,
    },
}

/// One bucket of a lease request, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterAsk {
    /// The bucket's name (`key:<id>` ...).
    pub bucket: String,
    pub limit: CounterLimit,
    pub want: u32,
    pub returned: u32,
}

/// What the counters granted for one ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterGrant {
    pub granted: u32,
    pub gateways: u32,
    /// Quotas: units left in the window after the grant.
    pub remaining: Option<u64>,
}

/// Why the counters could not answer: the lease endpoint answers 503, the filters fall back.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CounterError(pub String);

pub type CounterFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CounterError>> + Send + 'a>>;

/// Where the global counts live. `take` applies every ask of one request atomically (all or
/// nothing), in order.
pub trait Counters: Send + Sync {
    fn take<'a>(
        &'a self,
        gateway: &'a str,
        asks: &'a [CounterAsk],
        settings: LeaseSettings,
        now_ms: u64,
    ) -> CounterFuture<'a, Vec<CounterGrant>>;

    /// Units of a quota used in the window that starts at `window_start`.
    fn quota_used<'a>(&'a self, bucket: &'a str, window_start: u64) -> CounterFuture<'a, u64>;

    /// `memory` or `redis`, for logs.
    fn kind(&self) -> &'static str;
}

/// Grants from a token bucket holding `tokens` (refilled and topped up by the caller).
pub fn grant_rate(
    tokens: &mut f64,
    limit: &RateLimit,
    want: u32,
    gateways: u32,
    interval_ms: u32,
) -> u32 {
    let lease = lease_size(limit, gateways, interval_ms);
    let whole = if tokens.is_finite() && *tokens >= 1.0 {
        tokens.floor().min(f64::from(u32::MAX)) as u32
    } else {
        0
    };
    let granted = want.min(lease).min(whole);
    *tokens -= f64::from(granted);
    granted
}

/// Grants from a quota of `limit` with `used` units spent; answers (granted, remaining).
pub fn grant_quota(used: &mut u64, limit: u64, want: u32, gateways: u32) -> (u32, u64) {
    let remaining = limit.saturating_sub(*used);
    let lease = quota_lease_size(remaining, gateways);
    let granted = u64::from(want.min(lease)).min(remaining);
    *used += granted;
    // At most `want`, a u32.
    (
        u32::try_from(granted).unwrap_or(0),
        limit.saturating_sub(*used),
    )
}

/// Most buckets the in-memory counters keep; beyond, idle rate buckets and ended quota
/// windows are dropped, and if none can be, the request is refused (503).
pub const MEMORY_MAX_BUCKETS: usize = 100_000;
/// Most gateways remembered per bucket (later ones still get leases, but do not count).
pub const MAX_GATEWAYS_PER_BUCKET: usize = 1_024;

#[derive(Debug, Default)]
struct BucketState {
    /// Rate buckets: tokens left and when they were last refilled.
    tokens: f64,
    at_ms: u64,
    /// Quotas: units used in the window that starts at `window_start`.
    used: u64,
    window_start: u64,
    /// Rate buckets: when it is full again without asks; quotas: the end of the window.
    idle_from_ms: u64,
    gateways: HashMap<String, u64>,
}

/// The counts of a single key service, in memory (lost on restart: buckets start full,
/// quota windows start unused).
#[derive(Debug, Default)]
pub struct MemoryCounters {
    buckets: Mutex<HashMap<String, BucketState>>,
}

impl MemoryCounters {
    pub fn new() -> Self {
        Self::default()
    }

    fn take_now(
        &self,
        gateway: &str,
        asks: &[CounterAsk],
        settings: LeaseSettings,
        now_ms: u64,
    ) -> Result<Vec<CounterGrant>, CounterError> {
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| CounterError("the in-memory counters were poisoned".into()))?;
        let new = asks
            .iter()
            .filter(|ask| !buckets.contains_key(&ask.bucket))
            .count();
        if buckets.len() + new > MEMORY_MAX_BUCKETS {
            buckets.retain(|_, state| state.idle_from_ms > now_ms);
            if buckets.len() + new > MEMORY_MAX_BUCKETS {
                return Err(CounterError("too many buckets in memory".into()));
            }
        }
        let window = u64::from(settings.gateway_window_ms);
        let mut grants = Vec::with_capacity(asks.len());
        for ask in asks {
            let fresh = !buckets.contains_key(&ask.bucket);
            let state = buckets.entry(ask.bucket.clone()).or_default();
            state
                .gateways
                .retain(|_, seen| seen.saturating_add(window) > now_ms);
            if state.gateways.len() < MAX_GATEWAYS_PER_BUCKET
                || state.gateways.contains_key(gateway)
            {
                state.gateways.insert(gateway.to_owned(), now_ms);
            }
            let gateways = u32::try_from(state.gateways.len())
                .unwrap_or(u32::MAX)
                .max(1);
            let grant = match ask.limit {
                CounterLimit::Rate(limit) => {
                    let burst = f64::from(limit.burst);
                    if fresh {
                        state.tokens = burst;
                        state.at_ms = now_ms;
                    }
                    let elapsed = now_ms.saturating_sub(state.at_ms) as f64;
                    state.at_ms = state.at_ms.max(now_ms);
                    state.tokens = (state.tokens
                        + elapsed * limit.requests_per_second / 1000.0
                        + f64::from(ask.returned))
                    .min(burst);
                    let granted = grant_rate(
                        &mut state.tokens,
                        &limit,
                        ask.want,
                        gateways,
                        settings.interval_ms,
                    );
                    let refill_ms =
                        (burst - state.tokens).max(0.0) * 1000.0 / limit.requests_per_second;
                    state.idle_from_ms = now_ms
                        .saturating_add(refill_ms.min(1e15) as u64)
                        .saturating_add(window);
                    CounterGrant {
                        granted,
                        gateways,
                        remaining: None,
                    }
                }
                CounterLimit::Quota {
                    limit,
                    window_start,
                    window_end,
                } => {
                    if fresh || window_start > state.window_start {
                        state.window_start = window_start;
                        state.used = 0;
                    }
                    state.used = state.used.saturating_sub(u64::from(ask.returned));
                    let (granted, remaining) =
                        grant_quota(&mut state.used, limit, ask.want, gateways);
                    state.idle_from_ms = window_end.saturating_mul(1000);
                    CounterGrant {
                        granted,
                        gateways,
                        remaining: Some(remaining),
                    }
                }
            };
            grants.push(grant);
        }
        Ok(grants)
    }
}

impl Counters for MemoryCounters {
    fn take<'a>(
        &'a self,
        gateway: &'a str,
        asks: &'a [CounterAsk],
        settings: LeaseSettings,
        now_ms: u64,
    ) -> CounterFuture<'a, Vec<CounterGrant>> {
        let result = self.take_now(gateway, asks, settings, now_ms);
        Box::pin(async move { result })
    }

    fn quota_used<'a>(&'a self, bucket: &'a str, window_start: u64) -> CounterFuture<'a, u64> {
        let result = self
            .buckets
            .lock()
            .map_err(|_| CounterError("the in-memory counters were poisoned".into()))
            .map(|buckets| {
                buckets
                    .get(bucket)
                    .filter(|state| state.window_start == window_start)
                    .map_or(0, |state| state.used)
            });
        Box::pin(async move { result })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: LeaseSettings = LeaseSettings {
        interval_ms: 500,
        valid_ms: 2_000,
        gateway_window_ms: 10_000,
    };

    fn rate(bucket: &str, rps: f64, burst: u32, want: u32, returned: u32) -> CounterAsk {
        CounterAsk {
            bucket: bucket.into(),
            limit: CounterLimit::Rate(RateLimit {
                requests_per_second: rps,
                burst,
            }),
            want,
            returned,
        }
    }

    fn quota(bucket: &str, limit: u64, window_start: u64, want: u32, returned: u32) -> CounterAsk {
        CounterAsk {
            bucket: bucket.into(),
            limit: CounterLimit::Quota {
                limit,
                window_start,
                window_end: window_start + 100,
            },
            want,
            returned,
        }
    }

    fn take(
        counters: &MemoryCounters,
        gateway: &str,
        ask: CounterAsk,
        now_ms: u64,
    ) -> CounterGrant {
        counters
            .take_now(gateway, &[ask], SETTINGS, now_ms)
            .unwrap()[0]
    }

    #[test]
    fn a_rate_bucket_grants_leases_then_refills() {
        let counters = MemoryCounters::new();
        // 100 r/s, burst 100, one gateway: leases of 50.
        let first = take(&counters, "g1", rate("key:a", 100.0, 100, 80, 0), 0);
        assert_eq!((first.granted, first.gateways), (50, 1));
        assert_eq!(
            take(&counters, "g1", rate("key:a", 100.0, 100, 80, 0), 0).granted,
            50
        );
        assert_eq!(
            take(&counters, "g1", rate("key:a", 100.0, 100, 80, 0), 0).granted,
            0
        );
        // 100 ms later: 10 tokens.
        assert_eq!(
            take(&counters, "g1", rate("key:a", 100.0, 100, 80, 0), 100).granted,
            10
        );
        // Returned tokens come back (up to the burst).
        assert_eq!(
            take(&counters, "g1", rate("key:a", 100.0, 100, 80, 7), 100).granted,
            7
        );
    }

    #[test]
    fn leases_shrink_with_more_gateways() {
        let counters = MemoryCounters::new();
        take(&counters, "g1", rate("key:a", 100.0, 100, 1, 0), 0);
        take(&counters, "g2", rate("key:a", 100.0, 100, 1, 0), 0);
        let third = take(&counters, "g3", rate("key:a", 100.0, 100, 100, 0), 0);
        assert_eq!((third.granted, third.gateways), (17, 3));
        // Gateways unseen for the window no longer count.
        let later = take(&counters, "g3", rate("key:a", 100.0, 100, 1, 0), 20_000);
        assert_eq!(later.gateways, 1);
    }

    #[test]
    fn a_quota_never_grants_more_than_its_limit_and_resets_per_window() {
        let counters = MemoryCounters::new();
        let mut total = 0;
        for _ in 0..100 {
            let grant = take(&counters, "g1", quota("quota:a", 100, 1_000, 30, 0), 0);
            total += grant.granted;
            assert_eq!(grant.remaining, Some(100 - u64::from(total)));
        }
        assert_eq!(total, 100);
        assert_eq!(counters.take_now("g1", &[], SETTINGS, 0).unwrap(), vec![]);
        let back = take(&counters, "g1", quota("quota:a", 100, 1_000, 0, 5), 0);
        assert_eq!(back.remaining, Some(5));
        let next = take(&counters, "g1", quota("quota:a", 100, 1_100, 1, 0), 0);
        assert_eq!((next.granted, next.remaining), (1, Some(99)));
    }

    #[test]
    fn concurrent_asks_never_take_more_than_the_bucket_holds() {
        let counters = std::sync::Arc::new(MemoryCounters::new());
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    let mut got = 0u64;
                    for _ in 0..200 {
                        let asks = [
                            rate("key:a", 0.001, 500, 7, 0),
                            quota("quota:a", 300, 0, 5, 0),
                        ];
                        let grants = counters
                            .take_now(&format!("g{n}"), &asks, SETTINGS, 0)
                            .unwrap();
                        got += u64::from(grants[0].granted) << 32 | u64::from(grants[1].granted);
                    }
                    got
                })
            })
            .collect();
        let (mut rate_total, mut quota_total) = (0, 0);
        for thread in threads {
            let got = thread.join().unwrap();
            rate_total += got >> 32;
            quota_total += got & 0xffff_ffff;
        }
        assert_eq!(rate_total, 500);
        assert_eq!(quota_total, 300);
    }
}
