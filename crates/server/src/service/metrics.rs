//! Prometheus metrics: `GET /metrics` in the text exposition format 0.0.4, written by hand.
//!
//! HTTP requests are counted by a middleware around every route (by route template, method
//! and status class); key lifecycle counters are derived from the same answers, so handlers
//! need not know about metrics (the middleware and `GET /metrics` are in
//! `crate::http::metrics`). Every label set is bounded whatever clients send: a method
//! outside the standard ones and a path that matches no route are both counted as `other`. Keys by status are counted in the database at most every
//! [`GAUGE_TTL`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};

use crate::service::feed::FeedCounters;
use crate::store::KeyStore;

/// How long the keys-by-status gauge is cached.
pub const GAUGE_TTL: Duration = Duration::from_secs(10);
/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters of the key service, shared behind an `Arc` (see
/// [`crate::service::context::Service`]).
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route template, method, status class) → requests.
    http: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    keys_created: AtomicU64,
    keys_revoked: AtomicU64,
    keys_rotated: AtomicU64,
    admin_auth_failures: AtomicU64,
    usage_applied: AtomicU64,
    usage_duplicate: AtomicU64,
    usage_rows: AtomicU64,
    usage_rows_refused: AtomicU64,
    lease_tokens: AtomicU64,
    lease_failures: AtomicU64,
    /// (when counted, [active, revoked, expired]).
    keys_by_status: Mutex<Option<(Instant, [i64; 3])>>,
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The label of anything outside a bounded set: an unknown method, an unmatched path.
pub const OTHER: &str = "other";

/// The method label: one of the standard methods (RFC 9110 and PATCH), else [`OTHER`].
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or(OTHER)
}

impl Metrics {
    /// Counts a key revoked for the first time (a repeated, idempotent revoke is not).
    pub(crate) fn count_key_revoked(&self) {
        self.keys_revoked.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request on `route` (a route template, or [`OTHER`]).
    pub fn count_request(&self, route: &str, method: &Method, status: StatusCode) {
        let class = status_class(status);
        {
            let mut http = self
                .http
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *http
                .entry((route.to_owned(), method_label(method).to_owned(), class))
                .or_default() += 1;
        }
        let counter = match (method, route, status) {
            (&Method::POST, "/api/v1/auth/keys", StatusCode::CREATED) => Some(&self.keys_created),
            (&Method::POST, "/api/v1/auth/keys/{id}/rotate", StatusCode::CREATED) => {
                Some(&self.keys_rotated)
            }
            (_, route, StatusCode::UNAUTHORIZED) if route.starts_with("/api/") => {
                Some(&self.admin_auth_failures)
            }
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one usage batch: applied now (`rows` stored, `refused` rows of unknown key ids
    /// left out), or a duplicate of an applied one.
    pub fn count_usage_batch(&self, applied: bool, rows: usize, refused: usize) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        if applied {
            self.usage_applied.fetch_add(1, Ordering::Relaxed);
            self.usage_rows.fetch_add(count(rows), Ordering::Relaxed);
            self.usage_rows_refused
                .fetch_add(count(refused), Ordering::Relaxed);
        } else {
            self.usage_duplicate.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts tokens granted by one lease request.
    pub fn count_leases(&self, tokens: u64) {
        self.lease_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts a lease request refused because the counters (Redis) could not be reached.
    pub fn count_lease_failure(&self) {
        self.lease_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn cached_keys_by_status(&self) -> Option<[i64; 3]> {
        let cached = self
            .keys_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cached
            .filter(|(at, _)| at.elapsed() < GAUGE_TTL)
            .map(|(_, counts)| counts)
    }

    fn store_keys_by_status(&self, counts: [i64; 3]) {
        let mut cached = self
            .keys_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *cached = Some((Instant::now(), counts));
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The text exposition of every metric: these counters, `lookups` lookup requests served,
/// the feed's counters, and the keys by status in `store` at `now`.
pub async fn render(
    metrics: &Metrics,
    lookups: u64,
    feed: &FeedCounters,
    store: &KeyStore,
    now: i64,
) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "keygate_http_requests_total",
        "counter",
        "HTTP requests answered, by route template, method and status class.",
    );
    {
        let http = metrics.http.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, method, class), count) in http.iter() {
            let _ = writeln!(
                out,
                "keygate_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{class}\"}} {count}",
                escape_label(route),
                escape_label(method),
            );
        }
    }
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    single(
        &mut out,
        "keygate_lookups_total",
        "counter",
        "Key lookups received from filters (GET /v1/keys/{id}).",
        lookups,
    );
    single(
        &mut out,
        "keygate_feed_requests_total",
        "counter",
        "Revocation feed requests received.",
        feed.requests(),
    );
    single(
        &mut out,
        "keygate_feed_waiting",
        "gauge",
        "Revocation feed long-polls held now.",
        feed.waiting(),
    );
    single(
        &mut out,
        "keygate_keys_created_total",
        "counter",
        "Keys created through the API.",
        load(&metrics.keys_created),
    );
    single(
        &mut out,
        "keygate_keys_revoked_total",
        "counter",
        "Successful revoke requests (a repeated revoke counts again).",
        load(&metrics.keys_revoked),
    );
    single(
        &mut out,
        "keygate_keys_rotated_total",
        "counter",
        "Keys rotated.",
        load(&metrics.keys_rotated),
    );
    single(
        &mut out,
        "keygate_admin_auth_failures_total",
        "counter",
        "Management requests refused for a missing or invalid admin key.",
        load(&metrics.admin_auth_failures),
    );
    family(
        &mut out,
        "keygate_usage_batches_total",
        "counter",
        "Usage batches received, by result (applied, or duplicate of an applied batch id).",
    );
    let _ = writeln!(
        out,
        "keygate_usage_batches_total{{result=\"applied\"}} {}",
        load(&metrics.usage_applied)
    );
    let _ = writeln!(
        out,
        "keygate_usage_batches_total{{result=\"duplicate\"}} {}",
        load(&metrics.usage_duplicate)
    );
    single(
        &mut out,
        "keygate_usage_rows_total",
        "counter",
        "Usage rows applied.",
        load(&metrics.usage_rows),
    );
    single(
        &mut out,
        "keygate_usage_rows_refused_total",
        "counter",
        "Usage rows refused because the service does not know their key id.",
        load(&metrics.usage_rows_refused),
    );
    single(
        &mut out,
        "keygate_lease_tokens_granted_total",
        "counter",
        "Tokens granted to gateways by POST /v1/leases.",
        load(&metrics.lease_tokens),
    );
    single(
        &mut out,
        "keygate_lease_counter_failures_total",
        "counter",
        "Lease requests answered 503 because the counters (Redis) could not be reached.",
        load(&metrics.lease_failures),
    );
    let counts = match metrics.cached_keys_by_status() {
        Some(counts) => Some(counts),
        None => match store.count_keys_by_status(now).await {
            Ok((active, revoked, expired)) => {
                let counts = [active, revoked, expired];
                metrics.store_keys_by_status(counts);
                Some(counts)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot count keys by status for /metrics");
                None
            }
        },
    };
    if let Some([active, revoked, expired]) = counts {
        family(
            &mut out,
            "keygate_keys",
            "gauge",
            "Keys by status (counted at most every 10 seconds).",
        );
        for (status, value) in [
            ("active", active),
            ("revoked", revoked),
            ("expired", expired),
        ] {
            let _ = writeln!(out, "keygate_keys{{status=\"{status}\"}} {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_counters_follow_the_answers() {
        let metrics = Metrics::default();
        metrics.count_request("/api/v1/auth/keys", &Method::POST, StatusCode::CREATED);
        metrics.count_request("/api/v1/auth/keys", &Method::POST, StatusCode::BAD_REQUEST);
        metrics.count_request("/api/v1/auth/keys", &Method::GET, StatusCode::UNAUTHORIZED);
        metrics.count_request("/v1/keys/{id}", &Method::GET, StatusCode::UNAUTHORIZED);
        assert_eq!(metrics.keys_created.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.admin_auth_failures.load(Ordering::Relaxed), 1);
        let http = metrics.http.lock().unwrap();
        assert_eq!(
            http[&("/api/v1/auth/keys".to_owned(), "POST".to_owned(), "4xx")],
            1
        );
    }

    #[test]
    fn unknown_methods_fold_into_other() {
        let metrics = Metrics::default();
        for i in 0..100 {
            let method = Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
            metrics.count_request(OTHER, &method, StatusCode::NOT_FOUND);
        }
        metrics.count_request("/healthz", &Method::GET, StatusCode::OK);
        let http = metrics.http.lock().unwrap();
        assert_eq!(http.len(), 2, "{http:?}");
        assert_eq!(http[&(OTHER.to_owned(), OTHER.to_owned(), "4xx")], 100);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
