//! Usage analytics: the filter reports per-minute counts per key (`POST /v1/usage`), the
//! management API answers them per step (`GET /api/v1/auth/keys/{id}/usage`).
//!
//! A batch is checked whole (a malformed one is refused with 400 and the filter drops it);
//! then its rows for key ids the service does not know are refused one by one: they are not
//! stored, the rest of the batch counts, and the answer says how many were refused
//! (`{"applied": true, "rows": <stored>, "refused": <refused>}`). So no client-chosen id ever
//! gets a usage row, and one stray row never costs the batch. A key's `last_used_at` moves
//! only with rows that counted allowed requests.
//!
//! A row's `countries` (the geoip filter's countries of its allowed requests) are recorded per
//! key and announced as `key.new_country` (see [`crate::service::countries`]); the usage
//! report lists the countries a key was seen from.

use std::collections::BTreeMap;

use keygate_core::wire::{
    latency_bucket_name, UsageBatch, UsageRow, LATENCY_BOUNDS_MS, LATENCY_BUCKETS,
    USAGE_BODY_LIMIT, USAGE_MAX_ROWS, USAGE_MAX_ROW_COUNTRIES,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::country::valid_country;
use crate::model::{GatewayRow, UsageCell, UsageDelta};
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::timestamp::{format_rfc3339, parse_rfc3339};

/// Largest usage batch body, unless `--usage-max-body-bytes` says otherwise.
pub const MAX_USAGE_BODY_BYTES: usize = USAGE_BODY_LIMIT;
/// Most rows in one usage batch.
pub const MAX_USAGE_ROWS: usize = USAGE_MAX_ROWS;
/// Most points in one usage answer.
pub const MAX_POINTS: i64 = 1000;
/// The steps a usage query may ask for, in seconds.
pub const STEPS: [i64; 4] = [60, 300, 3600, 86_400];
const DEFAULT_STEP: i64 = 3600;
const DEFAULT_RANGE: i64 = 86_400;
/// Largest count one row may carry for one kind (far above a minute of real traffic).
const MAX_ROW_COUNT: u64 = 1_000_000_000_000;
const MAX_NAMES_PER_ROW: usize = 64;
const MAX_NAME_LEN: usize = 64;
const MAX_KEY_ID_LEN: usize = 128;
const MAX_BATCH_ID_LEN: usize = 128;
/// Longest route name stored; a longer one, or one not printable ASCII, is stored as
/// [`OTHER_ROUTE`].
pub const MAX_ROUTE_LEN: usize = 128;
/// Where routes past the filter's cap (and unprintable ones) are counted.
pub const OTHER_ROUTE: &str = "other";
/// Longest gateway name (Envoy node id) remembered; a longer one is not recorded.
pub const MAX_GATEWAY_LEN: usize = 128;

/// A gateway name: 1 to 128 printable ASCII characters.
pub fn valid_gateway(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_GATEWAY_LEN && text.bytes().all(|b| b.is_ascii_graphic())
}

/// The route a row is stored under: its name when printable (spaces allowed) and short.
fn route_name(route: &str) -> &str {
    let printable = route.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if route.is_empty() || route.len() > MAX_ROUTE_LEN || !printable {
        OTHER_ROUTE
    } else {
        route
    }
}

/// A usage key id: short printable text (whether the service knows it is checked apart).
pub fn valid_key_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_KEY_ID_LEN && text.bytes().all(|b| b.is_ascii_graphic())
}

/// A reason or status class name: `rate_limited`, `2xx`, ...
fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Checks a batch and merges its rows by (key, minute, kind, name).
pub fn merge_batch(batch: &UsageBatch) -> Result<UsageDelta, ApiError> {
    let id = &batch.batch_id;
    if id.is_empty() || id.len() > MAX_BATCH_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadBatchId);
    }
    if batch.rows.len() > MAX_USAGE_ROWS {
        return Err(ApiError::TooManyUsageRows);
    }
    let mut delta = UsageDelta::default();
    for (index, row) in batch.rows.iter().enumerate() {
        let bad = |reason| ApiError::BadUsageRow { index, reason };
        if !valid_key_id(&row.key_id) {
            return Err(bad("key_id must be 1 to 128 printable ASCII characters"));
        }
        if row.minute % 60 != 0 || i64::try_from(row.minute).is_err() {
            return Err(bad("minute must be Unix seconds at the start of a minute"));
        }
        if i64::try_from(row.last_used_at).is_err() {
            return Err(bad("last_used_at must be Unix seconds"));
        }
        let counts = &row.counts;
        if counts.denied.len() > MAX_NAMES_PER_ROW || counts.status.len() > MAX_NAMES_PER_ROW {
            return Err(bad(
                "at most 64 denied reasons and 64 status classes per row",
            ));
        }
        let named = counts
            .denied
            .iter()
            .map(|(name, n)| ("denied", name, *n))
            .chain(counts.status.iter().map(|(name, n)| ("status", name, *n)));
        let mut cells = vec![("allowed", String::new(), counts.allowed)];
        for (kind, name, n) in named {
            if !valid_name(name) {
                return Err(bad(
                    "reason and status names are 1 to 64 of a-z A-Z 0-9 _ - . :",
                ));
            }
            cells.push((kind, name.clone(), n));
        }
        if counts.latency.len() > LATENCY_BUCKETS {
            return Err(bad("latency has at most 13 buckets"));
        }
        if row.countries.len() > USAGE_MAX_ROW_COUNTRIES
            || !row.countries.iter().all(|c| valid_country(c))
        {
            return Err(bad(
                "countries are at most 16 ISO 3166-1 alpha-2 codes in upper case",
            ));
        }
        if let Some(route) = &row.route {
            cells.push(("route", route_name(route).to_owned(), counts.allowed));
        }
        for (index, n) in counts.latency.iter().enumerate() {
            cells.push(("latency", latency_bucket_name(index), *n));
        }
        let minute = to_i64(row.minute);
        for (kind, name, n) in cells {
            if n > MAX_ROW_COUNT {
                return Err(bad("a count is larger than 10^12"));
            }
            if n == 0 {
                continue;
            }
            let cell = delta
                .counts
                .entry((row.key_id.clone(), minute, kind, name))
                .or_default();
            *cell = cell.saturating_add(to_i64(n));
        }
        // Only allowed requests are a use: a row of denials never moves `last_used_at`.
        if row.last_used_at > 0 && counts.allowed > 0 {
            let at = to_i64(row.last_used_at);
            let last = delta.last_used.entry(row.key_id.clone()).or_insert(at);
            *last = (*last).max(at);
            // An address that does not parse is not stored (the rest of the row counts).
            let address = row
                .client_address
                .as_deref()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok());
            if let Some(address) = address {
                let entry = delta
                    .last_used_address
                    .entry(row.key_id.clone())
                    .or_insert((at, address.to_string()));
                if at > entry.0 {
                    *entry = (at, address.to_string());
                }
            }
        }
    }
    Ok(delta)
}

/// Applies a usage batch once (its `batch_id` says whether it was applied before); answers
/// what the filter is told.
pub async fn ingest(service: &Service, mut batch: UsageBatch) -> Result<Value, ApiError> {
    // Checked whole first: a malformed batch is refused before anything is looked up.
    merge_batch(&batch)?;
    let refused = retain_known_keys(service, &mut batch.rows).await?;
    let delta = merge_batch(&batch)?;
    let applied = service
        .store()
        .apply_usage(&batch.batch_id, &delta, service.now())
        .await?;
    service
        .metrics()
        .count_usage_batch(applied, batch.rows.len(), refused);
    if let Some(gateway) = batch.gateway.as_deref().filter(|g| valid_gateway(g)) {
        let rows = i64::try_from(batch.rows.len() + refused).unwrap_or(i64::MAX);
        service
            .store()
            .gateway_reported(gateway, rows, service.now())
            .await?;
    }
    if refused > 0 {
        // Outside issuers' token ids land here too: worth a count, not a warning.
        tracing::info!(
            batch_id = %batch.batch_id,
            refused,
            "usage rows for unknown key ids refused"
        );
    }
    // Idempotent (a country is recorded once): a resent batch notes what a failure missed.
    crate::service::countries::note(service, &batch.rows).await;
    if applied && service.events().has_subscribers() {
        let ids: Vec<&str> = batch.rows.iter().map(|row| row.key_id.as_str()).collect();
        let owners = service.store().key_owners(&ids).await?;
        let owner_of = |id: &str| owners.get(id).map_or("", String::as_str);
        service.events().usage(&batch.rows, owner_of);
    }
    if applied {
        tracing::debug!(batch_id = %batch.batch_id, rows = batch.rows.len(), "usage batch applied");
        Ok(serde_json::json!({
            "applied": true,
            "rows": batch.rows.len(),
            "refused": refused,
        }))
    } else {
        tracing::info!(batch_id = %batch.batch_id, "usage batch already applied; ignored");
        Ok(serde_json::json!({"applied": false}))
    }
}

/// Keeps the rows whose key id the service knows; answers how many were refused.
async fn retain_known_keys(service: &Service, rows: &mut Vec<UsageRow>) -> Result<usize, ApiError> {
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.key_id.as_str()).collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let known = service.store().known_key_ids(&ids).await?;
    let before = rows.len();
    rows.retain(|row| known.contains(&row.key_id));
    Ok(before - rows.len())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub allowed: u64,
    pub denied: BTreeMap<String, u64>,
    pub status: BTreeMap<String, u64>,
    /// Allowed requests per route (absent: none reported a route).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, u64>,
    /// Upstream latency histogram: responses per bucket, by upper bound in ms (`inf`: above
    /// the last bound). Absent: none measured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latency: BTreeMap<String, u64>,
    /// Percentiles of the latency histogram (absent: none measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Percentiles>,
}

/// Latency percentiles from a histogram: each is the upper bound (ms) of the bucket that
/// holds it, or `null` when it lies above the last bound (5000 ms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
}

/// The percentiles of a histogram given as counts per bucket (the index of
/// [`LATENCY_BOUNDS_MS`], then `+inf`); `None` when it is empty.
pub fn percentiles(histogram: &[u64]) -> Option<Percentiles> {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return None;
    }
    // The smallest bucket whose cumulative count reaches `q` of the total.
    let at = |per_mille: u64| {
        let rank = (u128::from(total) * u128::from(per_mille)).div_ceil(1000);
        let mut seen: u128 = 0;
        for (index, n) in histogram.iter().enumerate() {
            seen += u128::from(*n);
            if seen >= rank {
                return LATENCY_BOUNDS_MS.get(index).copied();
            }
        }
        None
    };
    Some(Percentiles {
        p50: at(500),
        p95: at(950),
        p99: at(990),
    })
}

/// The bucket index of a latency bucket name (`5`, `inf`).
fn latency_index(name: &str) -> Option<usize> {
    (0..LATENCY_BUCKETS).find(|index| latency_bucket_name(*index) == name)
}

impl UsageTotals {
    fn add(&mut self, kind: &str, name: &str, count: u64) {
        let into = match kind {
            "allowed" => {
                self.allowed = self.allowed.saturating_add(count);
                return;
            }
            "denied" => &mut self.denied,
            "route" => &mut self.routes,
            "latency" => &mut self.latency,
            _ => &mut self.status,
        };
        let cell = into.entry(name.to_owned()).or_default();
        *cell = cell.saturating_add(count);
    }

    /// Computes `latency_ms` from `latency`.
    fn finish(&mut self) {
        let mut histogram = [0u64; LATENCY_BUCKETS];
        for (name, n) in &self.latency {
            if let Some(index) = latency_index(name) {
                histogram[index] = histogram[index].saturating_add(*n);
            }
        }
        self.latency_ms = percentiles(&histogram);
    }

    /// Requests counted: allowed plus denied.
    pub fn requests(&self) -> u64 {
        self.allowed.saturating_add(self.denied.values().sum())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePoint {
    /// Start of the step, RFC 3339.
    pub start: String,
    #[serde(flatten)]
    pub counts: UsageTotals,
}

/// The answer of `GET /api/v1/auth/keys/{id}/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub key_id: String,
    pub from: String,
    pub to: String,
    pub step: i64,
    pub points: Vec<UsagePoint>,
    pub totals: UsageTotals,
    /// The countries the key was ever used from (with the geoip filter configured), first
    /// seen first; absent: none recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<UsageCountry>,
}

/// A country a key was used from, and when first (RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCountry {
    pub country: String,
    pub first_seen_at: String,
}

/// The range and step a usage query asks for: `from` aligned down to the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRange {
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

impl UsageRange {
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        step: Option<&str>,
        now: i64,
    ) -> Result<Self, ApiError> {
        let step = match step {
            None => DEFAULT_STEP,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|s| STEPS.contains(s))
                .ok_or(ApiError::BadUsageQuery(
                    "step must be one of 60, 300, 3600, 86400",
                ))?,
        };
        let time = |text: &str, field: &'static str| {
            parse_rfc3339(text).ok_or(ApiError::BadTimestamp(field))
        };
        let to = to.map(|t| time(t, "to")).transpose()?.unwrap_or(now);
        let from = from
            .map(|t| time(t, "from"))
            .transpose()?
            .unwrap_or(to.saturating_sub(DEFAULT_RANGE));
        if from >= to {
            return Err(ApiError::BadUsageQuery("from must be earlier than to"));
        }
        let from = from - from.rem_euclid(step);
        let range = Self { from, to, step };
        if range.points() > MAX_POINTS {
            return Err(ApiError::BadUsageQuery(
                "the range holds more than 1000 steps: narrow it or use a larger step",
            ));
        }
        Ok(range)
    }

    pub fn points(&self) -> i64 {
        (self.to - self.from).saturating_add(self.step - 1) / self.step
    }

    /// One point per step, zeros where nothing was counted.
    pub fn report(&self, key_id: String, cells: &[UsageCell]) -> UsageReport {
        let mut buckets: BTreeMap<i64, UsageTotals> = (0..self.points())
            .map(|i| (self.from + i * self.step, UsageTotals::default()))
            .collect();
        let mut totals = UsageTotals::default();
        for cell in cells {
            let count = u64::try_from(cell.count).unwrap_or(0);
            if let Some(bucket) = buckets.get_mut(&cell.bucket) {
                bucket.add(&cell.kind, &cell.name, count);
                totals.add(&cell.kind, &cell.name, count);
            }
        }
        totals.finish();
        for bucket in buckets.values_mut() {
            bucket.finish();
        }
        UsageReport {
            key_id,
            from: format_rfc3339(self.from).unwrap_or_default(),
            to: format_rfc3339(self.to).unwrap_or_default(),
            step: self.step,
            points: buckets
                .into_iter()
                .map(|(start, counts)| UsagePoint {
                    start: format_rfc3339(start).unwrap_or_default(),
                    counts,
                })
                .collect(),
            totals,
            countries: Vec::new(),
        }
    }
}

/// The usage of key `id` over `range`.
pub async fn report(
    service: &Service,
    id: String,
    range: UsageRange,
) -> Result<UsageReport, ApiError> {
    let store = service.store();
    // Usage is stored only for known keys; rows kept from before that rule still answer.
    if store.get_key(&id).await?.is_none() && !store.has_usage(&id).await? {
        return Err(ApiError::KeyNotFound);
    }
    let cells = store
        .usage_cells(&id, range.from, range.to, range.step)
        .await?;
    let countries = store.key_countries(&id).await?;
    let mut report = range.report(id, &cells);
    report.countries = countries
        .into_iter()
        .map(|seen| UsageCountry {
            country: seen.country,
            first_seen_at: format_rfc3339(seen.first_seen).unwrap_or_default(),
        })
        .collect();
    Ok(report)
}

/// The gateways seen lately, most recently seen first.
pub async fn fleet(service: &Service) -> Result<Vec<GatewayRow>, ApiError> {
    Ok(service.store().gateways(service.now()).await?)
}

/// Notes that `gateway` asked the revocation feed from `since` (a name that is not 1 to 128
/// printable ASCII characters is not recorded).
pub async fn gateway_polled(service: &Service, gateway: &str, since: u64) -> Result<(), ApiError> {
    if !valid_gateway(gateway) {
        return Ok(());
    }
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    Ok(service
        .store()
        .gateway_polled(gateway, since, service.now())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::wire::{UsageCounts, UsageRow};

    fn row(key: &str, minute: u64, allowed: u64, denied: &[(&str, u64)]) -> UsageRow {
        UsageRow {
            key_id: key.into(),
            minute,
            counts: UsageCounts {
                allowed,
                denied: denied.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                status: BTreeMap::new(),
                latency: Vec::new(),
            },
            last_used_at: minute + 30,
            route: None,
            client_address: None,
            countries: Vec::new(),
        }
    }

    #[test]
    fn rows_merge_by_key_minute_and_name() {
        let batch = UsageBatch {
            batch_id: "b1".into(),
            rows: vec![
                row("k", 60, 2, &[("revoked", 1)]),
                row("k", 60, 3, &[("revoked", 2)]),
                row("j", 120, 0, &[]),
            ],
            gateway: None,
        };
        let delta = merge_batch(&batch).unwrap();
        assert_eq!(delta.counts[&("k".into(), 60, "allowed", String::new())], 5);
        assert_eq!(
            delta.counts[&("k".into(), 60, "denied", "revoked".into())],
            3
        );
        assert_eq!(delta.counts.len(), 2);
        assert_eq!(delta.last_used["k"], 90);
        assert!(
            !delta.last_used.contains_key("j"),
            "a row without allowed requests is not a use"
        );
    }

    #[test]
    fn routes_latency_and_addresses_merge_into_the_delta() {
        let mut first = row("k", 60, 2, &[]);
        first.route = Some("hello".into());
        first.counts.latency = vec![1, 0, 2];
        first.client_address = Some("203.0.113.7".into());
        let mut second = row("k", 60, 1, &[]);
        second.route = Some("bad\u{7f}route".into());
        second.last_used_at = 95;
        second.client_address = Some("2001:db8::1".into());
        let mut third = row("k", 120, 0, &[]);
        third.route = Some("hello".into());
        third.client_address = Some("not an address".into());
        third.counts.latency = vec![0; LATENCY_BUCKETS];
        third.counts.latency[LATENCY_BUCKETS - 1] = 4;
        let batch = UsageBatch {
            batch_id: "b".into(),
            rows: vec![first, second, third],
            gateway: Some("edge-1".into()),
        };
        let delta = merge_batch(&batch).unwrap();
        let cell = |minute, kind, name: &str| {
            delta
                .counts
                .get(&("k".to_owned(), minute, kind, name.to_owned()))
                .copied()
        };
        assert_eq!(cell(60, "route", "hello"), Some(2));
        assert_eq!(cell(60, "route", OTHER_ROUTE), Some(1), "unprintable");
        assert_eq!(cell(60, "allowed", ""), Some(3));
        assert_eq!(cell(60, "latency", "1"), Some(1));
        assert_eq!(cell(60, "latency", "5"), Some(2));
        assert_eq!(cell(60, "latency", "2"), None, "zeros are not stored");
        assert_eq!(cell(120, "latency", "inf"), Some(4));
        assert_eq!(cell(120, "route", "hello"), None, "no allowed requests");
        assert_eq!(delta.last_used["k"], 95);
        assert_eq!(delta.last_used_address["k"], (95, "2001:db8::1".to_owned()));
        let mut too_long = row("k", 60, 1, &[]);
        too_long.counts.latency = vec![0; LATENCY_BUCKETS + 1];
        let batch = UsageBatch {
            batch_id: "b".into(),
            rows: vec![too_long],
            gateway: None,
        };
        assert!(merge_batch(&batch).is_err());
    }

    #[test]
    fn percentiles_come_from_the_merged_histogram() {
        assert_eq!(percentiles(&[0; LATENCY_BUCKETS]), None);
        // 100 responses: 50 at <=1 ms, 45 at <=10 ms, 4 at <=100 ms, 1 above 5 s.
        let mut histogram = [0u64; LATENCY_BUCKETS];
        histogram[0] = 50;
        histogram[3] = 45;
        histogram[6] = 4;
        histogram[12] = 1;
        let p = percentiles(&histogram).unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (Some(1), Some(10), Some(100)));
        // 102 responses, 2 above the last bound: p99 lies above it.
        histogram[12] = 2;
        let p = percentiles(&histogram).unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (Some(10), Some(100), None));
        // A report merges the points' histograms for the totals.
        let range = UsageRange {
            from: 0,
            to: 120,
            step: 60,
        };
        let cell = |bucket, kind: &str, name: &str, count| UsageCell {
            bucket,
            kind: kind.into(),
            name: name.into(),
            count,
        };
        let report = range.report(
            "k".into(),
            &[
                cell(0, "latency", "5", 9),
                cell(0, "route", "hello", 9),
                cell(60, "latency", "500", 1),
                cell(60, "route", "other", 1),
            ],
        );
        let first = report.points[0].counts.latency_ms.unwrap();
        assert_eq!((first.p50, first.p99), (Some(5), Some(5)));
        let totals = report.totals.latency_ms.unwrap();
        assert_eq!(
            (totals.p50, totals.p95, totals.p99),
            (Some(5), Some(500), Some(500))
        );
        assert_eq!(report.totals.routes["hello"], 9);
        assert_eq!(report.totals.routes["other"], 1);
    }

    #[test]
    fn bad_rows_are_named() {
        let batch = UsageBatch {
            batch_id: "b".into(),
            rows: vec![row("k", 60, 1, &[]), row("k", 61, 1, &[])],
            gateway: None,
        };
        assert!(matches!(
            merge_batch(&batch),
            Err(ApiError::BadUsageRow { index: 1, .. })
        ));
        let bad_name = UsageBatch {
            batch_id: "b".into(),
            rows: vec![row("k", 60, 1, &[("has space", 1)])],
            gateway: None,
        };
        assert!(merge_batch(&bad_name).is_err());
        let no_id = UsageBatch {
            batch_id: String::new(),
            rows: vec![],
            gateway: None,
        };
        assert!(matches!(merge_batch(&no_id), Err(ApiError::BadBatchId)));
        // Countries: upper-case ISO 3166-1 alpha-2 codes, at most 16 in a row.
        let with = |countries: Vec<String>| UsageBatch {
            batch_id: "b".into(),
            rows: vec![UsageRow {
                countries,
                ..row("k", 60, 1, &[])
            }],
            gateway: None,
        };
        assert!(merge_batch(&with(vec!["DE".into(), "US".into()])).is_ok());
        for bad in [vec!["de".to_owned()], vec!["DEU".into()], vec!["".into()]] {
            assert!(
                matches!(
                    merge_batch(&with(bad.clone())),
                    Err(ApiError::BadUsageRow { index: 0, .. })
                ),
                "{bad:?}"
            );
        }
        let many = (0..17u8)
            .map(|i| format!("A{}", char::from(b'A' + i)))
            .collect();
        assert!(merge_batch(&with(many)).is_err());
    }

    #[test]
    fn ranges_align_and_fill_empty_steps() {
        let range = UsageRange::parse(
            Some("1970-01-01T01:30:00Z"),
            Some("1970-01-01T04:00:00Z"),
            Some("3600"),
            0,
        )
        .unwrap();
        assert_eq!((range.from, range.to, range.points()), (3600, 14_400, 3));
        let cells = [UsageCell {
            bucket: 7200,
            kind: "allowed".into(),
            name: String::new(),
            count: 4,
        }];
        let report = range.report("k".into(), &cells);
        let allowed: Vec<u64> = report.points.iter().map(|p| p.counts.allowed).collect();
        assert_eq!(allowed, [0, 4, 0]);
        assert_eq!(report.totals.allowed, 4);
        assert!(UsageRange::parse(None, None, Some("7"), 100_000).is_err());
        assert!(UsageRange::parse(
            Some("1970-01-01T00:00:00Z"),
            Some("1970-01-02T00:00:00Z"),
            Some("60"),
            0
        )
        .is_err());
    }
}
