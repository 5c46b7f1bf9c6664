//! Usage analytics: per-minute counts per key, their breakdown per route and latency bucket,
//! and the gateways that report.

use std::collections::BTreeMap;

/// How long an applied batch id is remembered (a retry later than this counts again).
pub const BATCH_ID_RETENTION_S: i64 = 86_400;
/// Most gateways remembered: past it, the least recently seen is forgotten.
pub const MAX_GATEWAYS: i64 = 1_000;
/// A gateway not seen for this long is forgotten.
pub const GATEWAY_RETENTION_S: i64 = 7 * 86_400;

/// One batch, merged and checked by the caller: counts by (key id, minute, kind, name), and
/// the latest use of each key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDelta {
    /// `kind` is `allowed` (name empty), `denied` (name = reason), `status` (`2xx` ...),
    /// `route` (name = route, allowed requests) or `latency` (name = bucket bound or `inf`).
    pub counts: BTreeMap<(String, i64, &'static str, String), i64>,
    pub last_used: BTreeMap<String, i64>,
    /// The client address of each key's latest use that names one, and that use's time.
    pub last_used_address: BTreeMap<String, (i64, String)>,
}

/// The kinds of [`UsageDelta::counts`] stored in `usage_breakdown` rather than
/// `usage_counts`.
pub fn is_breakdown(kind: &str) -> bool {
    matches!(kind, "route" | "latency")
}

/// One aggregated cell of a usage query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageCell {
    /// Start of the step (Unix seconds, a multiple of the step).
    pub bucket: i64,
    pub kind: String,
    pub name: String,
    pub count: i64,
}

/// A gateway (an Envoy, by its node id) as last seen by the key service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRow {
    pub gateway: String,
    pub last_seen_at: i64,
    pub last_feed_sequence: Option<i64>,
    pub last_feed_at: Option<i64>,
    pub last_usage_batch_at: Option<i64>,
    pub last_usage_rows: Option<i64>,
}
