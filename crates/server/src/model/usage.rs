//! Usage analytics: per-minute counts per key.

use std::collections::BTreeMap;

/// How long an applied batch id is remembered (a retry later than this counts again).
pub const BATCH_ID_RETENTION_S: i64 = 86_400;
/// One batch, merged and checked by the caller: counts by (key id, minute, kind, name), and
/// the latest use of each key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageDelta {
    /// `kind` is `allowed` (name empty), `denied` (name = reason) or `status` (`2xx` ...).
    pub counts: BTreeMap<(String, i64, &'static str, String), i64>,
    pub last_used: BTreeMap<String, i64>,
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
