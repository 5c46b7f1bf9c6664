//! Types that cross the wire between the filter and the key service.

use serde::{Deserialize, Serialize};

/// Path prefix of the lookup endpoint on the key service: `GET /v1/keys/{id}`.
pub const LOOKUP_PATH_PREFIX: &str = "/v1/keys/";

/// Status of a key record as the key service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// The answer to `GET /v1/keys/{id}` (200). A 404 means no such key.
///
/// `expires_at` is the effective end of validity in Unix seconds: the key's own expiry,
/// or the end of its rotation grace period, whichever comes first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLookup {
    pub id: String,
    /// Hex SHA-256 of the whole key text.
    pub digest: String,
    pub subject: String,
    pub scopes: Vec<String>,
    pub status: KeyStatus,
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Per-key rate limit; absent: the route's default, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// CIDRs the client address must fall in; empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<String>,
    /// Validity window beside expiry (Unix seconds): refused before `not_before` ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// ... and from `not_after` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
    /// The roles whose scopes are in `scopes`, at the version they had when the record was
    /// read: a cached record holding a role the revocation feed says is newer is looked up
    /// again before it decides. Absent from older key services: no role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleRef>,
    /// Workload identities (principals or `.../*` patterns) the request's verified peer
    /// principal must match; empty: any request (see [`crate::principal`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_principals: Vec<String>,
    /// Fleet-wide rate limit, enforced through leases (`crate::fleet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_limit: Option<RateLimit>,
    /// Quota (credits) per window, enforced through leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<crate::fleet::Quota>,
    /// The owner's pooled limit, shared by all of the owner's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Box<crate::fleet::PoolRef>>,
    /// The key's owner, for routes that bind a path parameter to it (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The key's string metadata fields, for routes that bind `metadata.<field>` (bounded by
    /// the key service's metadata limits: 32 fields, 4 KiB).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The material the key's request signatures (RFC 9421) are verified with, for routes
    /// that require them (absent: none registered; such routes refuse the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Box<SigningMaterial>>,
    /// ISO 3166-1 alpha-2 codes of the countries the key may be used from (the geoip
    /// filter's country, see [`crate::geo`]); empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_countries: Vec<String>,
}

#[cfg(test)]
impl KeyLookup {
    /// For tests: an active record of `id` with `digest`, subject `team-a`, scope `a`, nothing
    /// else set (change fields with struct update syntax).
    pub fn active(id: &str, digest: String) -> Self {
        Self {
            id: id.into(),
            digest,
            subject: "team-a".into(),
            scopes: vec!["a".into()],
            status: KeyStatus::Active,
            expires_at: None,
            rate_limit: None,
            allowed_cidrs: Vec::new(),
            not_before: None,
            not_after: None,
            roles: Vec::new(),
            allowed_principals: Vec::new(),
            global_limit: None,
            quota: None,
            pool: None,
            owner: None,
            metadata: Default::default(),
            signing: None,
            allowed_countries: Vec::new(),
        }
    }
}

/// A key's signing material as key records carry it: a public key, or for `hmac-sha256`
/// the generation of the secret both sides derive from the gateway key (never the secret).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningMaterial {
    /// `ed25519`, `ecdsa-p256-sha256` or `hmac-sha256`.
    pub alg: String,
    /// Base64url (unpadded) of the raw public key: 32 bytes for Ed25519, a SEC1 point for
    /// P-256. Absent for HMAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// For HMAC: which derived secret (a new one with each new registration).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// A role a key holds, at one version (a number that only grows with each change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRef {
    pub name: String,
    pub version: u64,
}

/// A token bucket: `requests_per_second` refill, up to `burst` requests at once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

impl Eq for RateLimit {}

impl RateLimit {
    /// Valid when both are positive and finite (at most 1,000,000 per second).
    pub fn is_valid(&self) -> bool {
        self.requests_per_second.is_finite()
            && self.requests_per_second > 0.0
            && self.requests_per_second <= 1_000_000.0
            && self.burst >= 1
            && self.burst <= 1_000_000
    }
}

/// Path of the usage endpoint on the key service: `POST /v1/usage`.
pub const USAGE_PATH: &str = "/v1/usage";
/// The key service's default limit on a usage batch body (`--usage-max-body-bytes`): a larger
/// batch is refused with 413.
pub const USAGE_BODY_LIMIT: usize = 1024 * 1024;
/// Most rows the key service takes in one usage batch: more is refused with 400.
pub const USAGE_MAX_ROWS: usize = 10_000;

/// Counts for one key in one minute, as the filter reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounts {
    /// Requests that presented this key and were allowed.
    pub allowed: u64,
    /// Requests refused, by reason (metric names: `revoked`, `rate_limited`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub denied: std::collections::BTreeMap<String, u64>,
    /// Upstream responses by class: `2xx`, `3xx`, `4xx`, `5xx`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub status: std::collections::BTreeMap<String, u64>,
    /// Upstream latency (request let on → response headers) of the responses in `status`:
    /// counts per bucket of [`LATENCY_BOUNDS_MS`] (index `i`: at most `LATENCY_BOUNDS_MS[i]`
    /// ms and more than the bound before it; the last entry is above the last bound). Empty:
    /// none measured (older filters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
}

/// Upper bounds (milliseconds, inclusive) of the latency histogram's buckets; one more bucket
/// holds everything above the last one (`+inf`). Fixed: the filter and the key service agree
/// on them, and histograms merge by adding bucket by bucket.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];
/// Buckets in a latency histogram: one per bound and `+inf`.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket of a latency of `ms` milliseconds.
pub fn latency_bucket(ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The name of bucket `index`: its upper bound in ms, or `inf`.
pub fn latency_bucket_name(index: usize) -> String {
    LATENCY_BOUNDS_MS
        .get(index)
        .map_or_else(|| "inf".to_owned(), |bound| bound.to_string())
}

impl UsageCounts {
    pub fn merge(&mut self, other: &UsageCounts) {
        self.allowed += other.allowed;
        for (k, v) in &other.denied {
            *self.denied.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.status {
            *self.status.entry(k.clone()).or_default() += v;
        }
        if self.latency.len() < other.latency.len() {
            self.latency
                .resize(other.latency.len().min(LATENCY_BUCKETS), 0);
        }
        for (into, n) in self.latency.iter_mut().zip(&other.latency) {
            *into += n;
        }
    }

    /// Counts one upstream latency of `ms` milliseconds.
    pub fn observe_latency(&mut self, ms: u64) {
        if self.latency.len() < LATENCY_BUCKETS {
            self.latency.resize(LATENCY_BUCKETS, 0);
        }
        if let Some(bucket) = self.latency.get_mut(latency_bucket(ms)) {
            *bucket += 1;
        }
    }

    pub fn total(&self) -> u64 {
        self.allowed + self.denied.values().sum::<u64>()
    }
}

/// One row of a usage batch: a key, a minute (Unix seconds, a multiple of 60), its counts,
/// and when it was last used in that minute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    pub key_id: String,
    pub minute: u64,
    #[serde(flatten)]
    pub counts: UsageCounts,
    pub last_used_at: u64,
    /// The route the requests took: the filter's route `name`, or Envoy's route name
    /// (`xds.route_name`), or `other` past the filter's per key and minute cap. Absent (older
    /// filters): not broken down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The trusted client address of the last allowed request counted in `last_used_at`
    /// (absent: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// The countries (ISO 3166-1 alpha-2, upper case) the row's allowed requests came from, as
    /// Envoy's geoip filter reported them: at most [`USAGE_MAX_ROW_COUNTRIES`], in the order
    /// first seen. Empty (absent): `geo` is not configured, no country was known, or an older
    /// filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
}

/// Most countries the key service takes in one usage row (the filter sends at most
/// [`crate::country_set::MAX_ROW_COUNTRIES`]); more is refused with 400.
pub const USAGE_MAX_ROW_COUNTRIES: usize = 16;

/// `POST /v1/usage` body. `batch_id` makes retries idempotent: the service applies a batch
/// id once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBatch {
    pub batch_id: String,
    pub rows: Vec<UsageRow>,
    /// The gateway that sent it: Envoy's `node.id` (absent: older filters, or no node id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The request header that names the gateway on the revocation feed's requests (Envoy's
/// `node.id`), as `gateway` does in a usage batch.
pub const GATEWAY_HEADER: &str = "x-keygate-gateway";
