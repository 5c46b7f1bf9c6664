//! Fleet-wide limits: `POST /v1/leases` hands each gateway (Envoy) a batch of tokens from a
//! key's global token bucket, its quota or its owner's pool (see [`keygate_core::fleet`]).
//!
//! The counts live behind [`Counters`]: [`MemoryCounters`] for a single key service (the
//! default), [`super::redis_counters::RedisCounters`] for several replicas sharing one Redis.
//! Tokens leave a bucket when granted and come back only when a gateway returns them, so
//! while the counters answer the fleet spends at most what the bucket allows, plus what was
//! leased out before a window began (at most one lease per gateway).

use keygate_core::fleet::{
    Bucket, LeaseGrant, LeaseRequest, LeaseResponse, BUCKET_MAX_LEN, GATEWAY_ID_MAX_LEN,
    LEASES_MAX_ENTRIES,
};

use crate::service::context::Service;
pub use crate::service::counters::{
    CounterAsk, CounterError, CounterGrant, CounterLimit, Counters, LeaseSettings, MemoryCounters,
    MAX_WANT,
};
use crate::service::error::ApiError;

/// The name of a key's quota bucket.
pub fn quota_bucket(key_id: &str) -> String {
    Bucket::Quota(key_id.to_owned()).name()
}

/// Checks a lease request's shape: the gateway id, the number of asks, each bucket name and
/// count.
pub fn validate_request(request: &LeaseRequest) -> Result<Vec<Bucket>, ApiError> {
    let gateway = &request.gateway;
    if gateway.is_empty()
        || gateway.len() > GATEWAY_ID_MAX_LEN
        || !gateway.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::BadLease(format!(
            "gateway must be 1 to {GATEWAY_ID_MAX_LEN} printable ASCII characters"
        )));
    }
    if request.leases.len() > LEASES_MAX_ENTRIES {
        return Err(ApiError::BadLease(format!(
            "a lease request has at most {LEASES_MAX_ENTRIES} entries"
        )));
    }
    request
        .leases
        .iter()
        .enumerate()
        .map(|(index, ask)| {
            if ask.want > MAX_WANT || ask.returned > MAX_WANT {
                return Err(ApiError::BadLease(format!(
                    "leases[{index}]: want and returned must be at most {MAX_WANT}"
                )));
            }
            Bucket::parse(&ask.bucket).ok_or_else(|| {
                ApiError::BadLease(format!(
                    "leases[{index}]: bucket must be key:<id>, quota:<id> or pool:<owner> \
                     (at most {BUCKET_MAX_LEN} bytes)"
                ))
            })
        })
        .collect()
}

/// How one bucket of a request is answered.
enum Resolved {
    /// Counted by the counters.
    Counted(CounterLimit),
    /// No such limit is set (or the key has none): everything asked is granted.
    Unlimited,
    /// No such key: nothing is granted.
    Closed,
}

async fn resolve(service: &Service, bucket: &Bucket, now: u64) -> Result<Resolved, ApiError> {
    Ok(match bucket {
        Bucket::Key(id) => match service.store().get_key(id).await? {
            None => Resolved::Closed,
            Some(record) => record
                .limits
                .global_limit
                .map_or(Resolved::Unlimited, |limit| {
                    Resolved::Counted(CounterLimit::Rate(limit))
                }),
        },
        Bucket::Quota(id) => match service.store().get_key(id).await? {
            None => Resolved::Closed,
            Some(record) => record.limits.quota.map_or(Resolved::Unlimited, |quota| {
                let quota = quota.wire();
                Resolved::Counted(CounterLimit::Quota {
                    limit: quota.limit,
                    window_start: quota.window_at(now),
                    window_end: quota.window_end_at(now),
                })
            }),
        },
        Bucket::Pool(owner) => match service.store().get_pool(owner).await? {
            None => Resolved::Unlimited,
            Some(pool) => Resolved::Counted(CounterLimit::Rate(pool.limit)),
        },
    })
}

/// `POST /v1/leases`: takes what each ask wants (as far as its bucket allows) and gives back
/// what it returns, in one atomic step of the counters.
pub async fn lease(service: &Service, request: LeaseRequest) -> Result<LeaseResponse, ApiError> {
    let buckets = validate_request(&request)?;
    let now = u64::try_from(service.now()).unwrap_or(0);
    let now_ms = u64::try_from(service.clock().now_ms()).unwrap_or(0);
    let settings = service.lease_settings();
    let mut asks = Vec::new();
    let mut answers: Vec<Result<usize, LeaseGrant>> = Vec::with_capacity(buckets.len());
    for (bucket, ask) in buckets.iter().zip(&request.leases) {
        let answer = match resolve(service, bucket, now).await? {
            Resolved::Counted(limit) => {
                asks.push(CounterAsk {
                    bucket: ask.bucket.clone(),
                    limit,
                    want: ask.want,
                    returned: ask.returned,
                });
                Ok(asks.len() - 1)
            }
            Resolved::Unlimited => Err(LeaseGrant {
                bucket: ask.bucket.clone(),
                granted: ask.want,
                valid_ms: settings.valid_ms,
                gateways: 1,
                remaining: None,
            }),
            Resolved::Closed => Err(LeaseGrant {
                bucket: ask.bucket.clone(),
                granted: 0,
                valid_ms: settings.valid_ms,
                gateways: 1,
                remaining: None,
            }),
        };
        answers.push(answer);
    }
    let grants = if asks.is_empty() {
        Vec::new()
    } else {
        service
            .counters()
            .take(&request.gateway, &asks, settings, now_ms)
            .await
            .map_err(|error| {
                service.metrics().count_lease_failure();
                ApiError::CountersUnavailable(format!(
                    "{} counters: {}",
                    service.counters().kind(),
                    error.0
                ))
            })?
    };
    let mut leases = Vec::with_capacity(answers.len());
    for answer in answers {
        leases.push(match answer {
            Err(grant) => grant,
            Ok(index) => {
                let (ask, grant) = asks
                    .get(index)
                    .zip(grants.get(index))
                    .ok_or_else(|| ApiError::Internal("the counters answered too few".into()))?;
                LeaseGrant {
                    bucket: ask.bucket.clone(),
                    granted: grant.granted,
                    valid_ms: settings.valid_ms,
                    gateways: grant.gateways,
                    remaining: grant.remaining,
                }
            }
        });
    }
    service
        .metrics()
        .count_leases(leases.iter().map(|grant| u64::from(grant.granted)).sum());
    Ok(LeaseResponse { leases })
}

/// What is left of key `id`'s quota in the current window, if it has one; `None` also when
/// the counters cannot be read (logged).
pub async fn quota_remaining(
    service: &Service,
    id: &str,
    quota: &crate::model::KeyQuota,
) -> Option<u64> {
    let now = u64::try_from(service.now()).unwrap_or(0);
    let quota = quota.wire();
    match service
        .counters()
        .quota_used(&quota_bucket(id), quota.window_at(now))
        .await
    {
        Ok(used) => Some(quota.limit.saturating_sub(used)),
        Err(error) => {
            tracing::warn!(key_id = %id, error = %error, "quota counters unavailable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = |gateway: &str, buckets: &[&str]| {
            validate_request(&LeaseRequest {
                gateway: gateway.into(),
                leases: buckets
                    .iter()
                    .map(|b| keygate_core::fleet::LeaseAsk {
                        bucket: (*b).into(),
                        want: 1,
                        returned: 0,
                    })
                    .collect(),
            })
            .is_ok()
        };
        assert!(ok("g1", &["key:a", "quota:a", "pool:acme"]));
        assert!(!ok("", &["key:a"]));
        assert!(!ok("g 1", &["key:a"]));
        assert!(!ok(&"g".repeat(65), &["key:a"]));
        assert!(!ok("g1", &["nope:a"]));
        assert!(!ok("g1", &vec!["key:a"; 257]));
        let huge = LeaseRequest {
            gateway: "g".into(),
            leases: vec![keygate_core::fleet::LeaseAsk {
                bucket: "key:a".into(),
                want: MAX_WANT + 1,
                returned: 0,
            }],
        };
        assert!(validate_request(&huge).is_err());
    }
}
