//! Fleet-wide limits: the types of `POST /v1/leases` and the arithmetic both sides share.
//!
//! A key (or an owner's pool) may carry a *global* limit, enforced across every Envoy of the
//! fleet. Each Envoy (a *gateway*: one worker set, one random id in shared data) spends from a
//! local **lease** of tokens, taken in batches from the key service, which holds the global
//! count (in Redis, or in memory for a single service). A bucket is named by its kind and
//! subject: `key:<id>` (the key's global rate limit), `quota:<id>` (the key's quota, counted
//! per window) and `pool:<owner>` (one rate limit shared by all of an owner's keys).
//!
//! Tokens are taken out of the bucket when granted, so while the key service answers the
//! fleet never spends more than the bucket allows plus what is leased out at the start of a
//! window: at most `gateways × lease size` (see [`lease_size`]). Tokens a gateway no longer
//! needs go back with its next ask (`returned`); tokens it holds past `valid_ms` are void and
//! must not be spent (the service does not count them back, they are lost to the bucket).

use serde::{Deserialize, Serialize};

use crate::wire::RateLimit;

/// Path of the lease endpoint on the key service: `POST /v1/leases`.
pub const LEASES_PATH: &str = "/v1/leases";
/// Largest body the key service takes on `/v1/leases` (larger: 413).
pub const LEASES_BODY_LIMIT: usize = 64 * 1024;
/// Most entries in one lease request (more: 400).
pub const LEASES_MAX_ENTRIES: usize = 256;
/// Longest gateway id (more: 400).
pub const GATEWAY_ID_MAX_LEN: usize = 64;
/// Longest bucket name (more: 400).
pub const BUCKET_MAX_LEN: usize = 200;

/// A key's quota (credits): `limit` units per window of `period_s` seconds. Windows are
/// `[window_start + k × period_s, window_start + (k + 1) × period_s)`; `window_start` is the
/// anchor of the first one (Unix seconds), fixed when the quota is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub limit: u64,
    pub period_s: u64,
    pub window_start: u64,
}

impl Quota {
    /// Valid when the limit and the period are positive (period at most ten years).
    pub fn is_valid(&self) -> bool {
        self.limit >= 1 && self.period_s >= 1 && self.period_s <= MAX_QUOTA_PERIOD_S
    }

    /// Start of the window `now_s` falls in (the anchor itself for any time before it).
    pub fn window_at(&self, now_s: u64) -> u64 {
        if now_s <= self.window_start || self.period_s == 0 {
            return self.window_start;
        }
        let elapsed = now_s - self.window_start;
        self.window_start + (elapsed - elapsed % self.period_s)
    }

    /// End (exclusive) of the window `now_s` falls in.
    pub fn window_end_at(&self, now_s: u64) -> u64 {
        self.window_at(now_s).saturating_add(self.period_s)
    }
}

/// Longest quota period: ten years of seconds.
pub const MAX_QUOTA_PERIOD_S: u64 = 10 * 366 * 86_400;

/// Named quota periods, in seconds. A month is 30 days.
pub const PERIOD_DAY_S: u64 = 86_400;
pub const PERIOD_WEEK_S: u64 = 7 * PERIOD_DAY_S;
pub const PERIOD_MONTH_S: u64 = 30 * PERIOD_DAY_S;

/// Parses a quota period: `day`, `week`, `month` (30 days), or a number of seconds (`3600`,
/// `3600s`), or hours/days (`12h`, `7d`).
pub fn parse_period(text: &str) -> Option<u64> {
    let text = text.trim();
    let seconds = match text {
        "day" | "daily" => PERIOD_DAY_S,
        "week" | "weekly" => PERIOD_WEEK_S,
        "month" | "monthly" => PERIOD_MONTH_S,
        _ => {
            let (digits, unit) = match text.char_indices().last() {
                Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
                _ => (text, 's'),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = digits.parse().ok()?;
            let unit = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => PERIOD_DAY_S,
                _ => return None,
            };
            n.checked_mul(unit)?
        }
    };
    (1..=MAX_QUOTA_PERIOD_S)
        .contains(&seconds)
        .then_some(seconds)
}

/// The anchor of a quota set at `now_s`: windows of a day or longer start at midnight UTC of
/// that day; shorter ones at a multiple of the period since the Unix epoch.
pub fn quota_anchor(now_s: u64, period_s: u64) -> u64 {
    let align = period_s.clamp(1, PERIOD_DAY_S);
    now_s - now_s % align
}

/// An owner's pooled limit: one token bucket shared by all of the owner's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRef {
    pub owner: String,
    pub limit: RateLimit,
}

/// What a bucket counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// A key's global rate limit: `key:<id>`.
    Key(String),
    /// A key's quota: `quota:<id>`.
    Quota(String),
    /// An owner's pooled limit: `pool:<owner>`.
    Pool(String),
}

impl Bucket {
    /// Parses `key:<id>`, `quota:<id>` or `pool:<owner>` (subject non-empty, at most
    /// [`BUCKET_MAX_LEN`] bytes in all, no control characters).
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > BUCKET_MAX_LEN || text.chars().any(char::is_control) {
            return None;
        }
        let (kind, subject) = text.split_once(':')?;
        if subject.is_empty() {
            return None;
        }
        let subject = subject.to_owned();
        match kind {
            "key" => Some(Self::Key(subject)),
            "quota" => Some(Self::Quota(subject)),
            "pool" => Some(Self::Pool(subject)),
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Self::Key(id) => format!("key:{id}"),
            Self::Quota(id) => format!("quota:{id}"),
            Self::Pool(owner) => format!("pool:{owner}"),
        }
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// One bucket of a lease request: take `want` tokens, give back `returned` unspent ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAsk {
    pub bucket: String,
    #[serde(default)]
    pub want: u32,
    #[serde(default)]
    pub returned: u32,
}

/// `POST /v1/leases` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Random id of the asking gateway (one per Envoy worker set, from shared data).
    pub gateway: String,
    pub leases: Vec<LeaseAsk>,
}

/// The answer for one bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub bucket: String,
    /// Tokens taken for the gateway (0: the bucket is empty; deny until the next ask).
    pub granted: u32,
    /// Milliseconds after which unspent granted tokens are void.
    pub valid_ms: u32,
    /// Distinct gateways seen on this bucket in the last window (at least 1 once asked):
    /// the divisor of the fallback limit.
    pub gateways: u32,
    /// Quotas: units left in the current window after this grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

/// `POST /v1/leases` answer: one grant per ask, in the order asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub leases: Vec<LeaseGrant>,
}

/// Lease size for a token bucket of `limit` shared by `gateways` gateways, which should each
/// come back about every `interval_ms`: `ceil(rate × interval / gateways)`, at least 1 and at
/// most `burst / gateways` (so that every gateway can hold a lease at once), never above
/// `burst`.
pub fn lease_size(limit: &RateLimit, gateways: u32, interval_ms: u32) -> u32 {
    let gateways = gateways.max(1);
    let per_interval = limit.requests_per_second * f64::from(interval_ms) / 1000.0;
    let share = (per_interval / f64::from(gateways)).ceil();
    let cap = (limit.burst / gateways).max(1);
    if share.is_finite() && share >= 1.0 {
        (share.min(f64::from(cap))) as u32
    } else {
        1
    }
}

/// Lease size for a quota with `remaining` units shared by `gateways` gateways: an eighth of
/// each gateway's share of what is left, between 1 and [`QUOTA_LEASE_MAX`], so that little is
/// stranded in idle gateways as the quota runs out.
pub fn quota_lease_size(remaining: u64, gateways: u32) -> u32 {
    let share = remaining.div_ceil(8 * u64::from(gateways.max(1)));
    share.clamp(1, u64::from(QUOTA_LEASE_MAX)) as u32
}

/// Largest quota lease.
pub const QUOTA_LEASE_MAX: u32 = 1_000;

/// The local limit a gateway enforces when it cannot get leases: its share of the global
/// limit, `limit ÷ gateways` (rate and burst, each at least 1 burst token).
pub fn fallback_limit(limit: &RateLimit, gateways: u32) -> RateLimit {
    let gateways = gateways.max(1);
    RateLimit {
        requests_per_second: limit.requests_per_second / f64::from(gateways),
        burst: (limit.burst / gateways).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rps: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
        }
    }

    #[test]
    fn buckets_parse_and_print() {
        for text in ["key:abc", "quota:abc", "pool:acme"] {
            let bucket = Bucket::parse(text).unwrap();
            assert_eq!(bucket.name(), text);
        }
        assert_eq!(Bucket::parse("key:a:b"), Some(Bucket::Key("a:b".into())));
        for bad in ["", "key", "key:", "other:x", "key:\n", ":x"] {
            assert_eq!(Bucket::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Bucket::parse(&format!("pool:{}", "x".repeat(300))), None);
    }

    #[test]
    fn lease_size_adapts_to_rate_and_gateways() {
        assert_eq!(lease_size(&limit(100.0, 100), 1, 500), 50);
        assert_eq!(lease_size(&limit(100.0, 100), 3, 500), 17);
        // Capped by each gateway's share of the burst.
        assert_eq!(lease_size(&limit(1000.0, 20), 4, 500), 5);
        // Never below one.
        assert_eq!(lease_size(&limit(0.1, 1), 50, 500), 1);
        assert_eq!(lease_size(&limit(100.0, 100), 0, 500), 50);
    }

    #[test]
    fn quota_lease_shrinks_as_the_quota_runs_out() {
        assert_eq!(quota_lease_size(1000, 3), 42);
        assert_eq!(quota_lease_size(10, 3), 1);
        assert_eq!(quota_lease_size(0, 3), 1);
        assert_eq!(quota_lease_size(10_000_000, 1), QUOTA_LEASE_MAX);
    }

    #[test]
    fn fallback_divides_the_limit() {
        assert_eq!(fallback_limit(&limit(100.0, 30), 3), limit(100.0 / 3.0, 10));
        assert_eq!(fallback_limit(&limit(100.0, 2), 3), limit(100.0 / 3.0, 1));
        assert_eq!(fallback_limit(&limit(100.0, 2), 0), limit(100.0, 2));
    }

    #[test]
    fn periods_parse() {
        assert_eq!(parse_period("day"), Some(86_400));
        assert_eq!(parse_period("week"), Some(604_800));
        assert_eq!(parse_period("month"), Some(2_592_000));
        assert_eq!(parse_period("3600"), Some(3600));
        assert_eq!(parse_period("60s"), Some(60));
        assert_eq!(parse_period("2m"), Some(120));
        assert_eq!(parse_period("12h"), Some(43_200));
        assert_eq!(parse_period("7d"), Some(604_800));
        for bad in [
            "",
            "0",
            "-1",
            "x",
            "1y",
            "99999999999999999999",
            "1.5h",
            "d",
        ] {
            assert_eq!(parse_period(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quota_windows_follow_the_anchor() {
        let quota = Quota {
            limit: 10,
            period_s: 100,
            window_start: 1_000,
        };
        assert_eq!(quota.window_at(500), 1_000);
        assert_eq!(quota.window_at(1_000), 1_000);
        assert_eq!(quota.window_at(1_099), 1_000);
        assert_eq!(quota.window_at(1_100), 1_100);
        assert_eq!(quota.window_end_at(1_150), 1_200);
        assert_eq!(quota_anchor(90_000, PERIOD_MONTH_S), 86_400);
        assert_eq!(quota_anchor(3_725, 3_600), 3_600);
    }

    #[test]
    fn wire_shapes() {
        let request: LeaseRequest = serde_json::from_str(
            r#"{"gateway":"g1","leases":[{"bucket":"key:a","want":5,"returned":1},{"bucket":"quota:a","want":2}]}"#,
        )
        .unwrap();
        assert_eq!(request.leases[1].returned, 0);
        let response = LeaseResponse {
            leases: vec![LeaseGrant {
                bucket: "quota:a".into(),
                granted: 2,
                valid_ms: 2000,
                gateways: 1,
                remaining: Some(7),
            }],
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(
            text,
            r#"{"leases":[{"bucket":"quota:a","granted":2,"valid_ms":2000,"gateways":1,"remaining":7}]}"#
        );
        assert_eq!(
            serde_json::from_str::<LeaseResponse>(&text).unwrap(),
            response
        );
    }
}
