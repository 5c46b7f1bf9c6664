//! Usage analytics: every worker counts per key and minute in memory, merges its counts into
//! shared data once a second, and one flusher per Envoy (a lease) sends them to the key
//! service every interval.
//!
//! - Only keys whose holder is proven are counted under their id (see [`counts_under_key`]);
//!   a denial that names an id the client chose is counted per reason only
//!   (`keygate.denied.<reason>`), so a key spray cannot fill the rows.
//! - A batch holds at most `usage.max_batch_bytes` of JSON and [`MAX_BATCH_ROWS`] rows, below
//!   the key service's limits; the rest waits in shared data and goes in the next batch, sent
//!   as soon as the previous one is answered.
//! - A batch that fails for a reason that may pass (5xx, 408, 429, no answer or a timeout)
//!   stays in an outbox and is resent with the same id, so the service counts it once; counts
//!   wait, bounded by `usage.max_rows`, while the service is down. A batch refused for what it
//!   is (any other answer, 4xx above all) would be refused again: it is dropped, logged and
//!   counted (`keygate.usage.rejected`), and reporting goes on with the next one.
//! - A row's `last_used_at` is the last *allowed* request: denials and upstream statuses count
//!   without moving it (0: no allowed request in that minute).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use keygate_core::decision::DenyReason;
use keygate_core::machine::callouts::Callout;
use keygate_core::machine::lease::{Reentry, SharedLease, Take};
use keygate_core::wire::{UsageBatch, UsageCounts, UsageRow, USAGE_MAX_ROWS};
use proxy_wasm::types::LogLevel;

use crate::filter::Shared;
use crate::host::{self, ProxyHost};
use crate::metrics::Event;

const PENDING_KEY: &str = "keygate.usage.pending";
const OUTBOX_KEY: &str = "keygate.usage.outbox";
const LEASE_KEY: &str = "keygate.usage.lease";
/// How often a worker merges its counts into shared data.
const MERGE_EVERY_MS: u64 = 1_000;
const TIMEOUT_MS: u64 = 5_000;
/// Most rows in one batch: half of what the key service takes.
pub const MAX_BATCH_ROWS: usize = USAGE_MAX_ROWS / 2;
/// Room kept in a batch for its envelope (`{"batch_id": ..., "rows": [...]}`).
const ENVELOPE_BYTES: usize = 256;

type Rows = BTreeMap<(String, u64), (UsageCounts, u64)>;

/// One worker's counts since its last merge, and its flusher state.
#[derive(Default)]
pub struct Usage {
    /// key id → minute → (counts, last used): looked up by `&str`, so counting a request for
    /// a key seen this second allocates nothing.
    local: HashMap<String, HashMap<u64, (UsageCounts, u64)>>,
    last_merge_ms: u64,
    last_flush_ms: u64,
    /// A flush is in flight (this worker is the flusher).
    sending: bool,
    /// The last batch taken left rows waiting: send the next one once it is answered.
    backlog: bool,
    batches: u64,
    worker: String,
}

impl Usage {
    pub fn new(worker: String) -> Self {
        Self {
            worker,
            ..Self::default()
        }
    }

    /// Counts into the row of `key_id` and the minute of `now_ms`; `used_at` (Unix seconds)
    /// moves the row's last use, 0 leaves it.
    fn update(
        &mut self,
        key_id: &str,
        now_ms: u64,
        used_at: u64,
        count: impl FnOnce(&mut UsageCounts),
    ) {
        let minute = now_ms / 60_000 * 60;
        if let Some(per_key) = self.local.get_mut(key_id) {
            let row = per_key.entry(minute).or_default();
            count(&mut row.0);
            row.1 = row.1.max(used_at);
            return;
        }
        let mut counts = UsageCounts::default();
        count(&mut counts);
        self.local.insert(
            key_id.to_owned(),
            HashMap::from([(minute, (counts, used_at))]),
        );
    }

    /// An allowed request: the only kind that moves the key's last use.
    pub fn allowed(&mut self, key_id: &str, now_ms: u64) {
        self.update(key_id, now_ms, now_ms / 1000, |c| c.allowed += 1);
    }

    /// A refused request of a proven key (see [`counts_under_key`]).
    pub fn denied(&mut self, key_id: &str, reason: &str, now_ms: u64) {
        self.update(key_id, now_ms, 0, |c| bump(&mut c.denied, reason));
    }

    pub fn status(&mut self, key_id: &str, status: u32, now_ms: u64) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.update(key_id, now_ms, 0, |c| bump(&mut c.status, class));
    }

    /// Puts rows back (shared data was too contended to take them).
    fn restore(&mut self, rows: Vec<UsageRow>) {
        for row in rows {
            self.update(&row.key_id, row.minute * 1000, row.last_used_at, |c| {
                c.merge(&row.counts)
            });
        }
    }

    /// Takes the counts so far, as rows.
    fn take_rows(&mut self) -> Rows {
        let mut rows = Rows::new();
        for (key_id, minutes) in self.local.drain() {
            for (minute, (counts, last_used)) in minutes {
                rows.insert((key_id.clone(), minute), (counts, last_used));
            }
        }
        rows
    }
}

/// Whether a request refused for `reason` is counted under the key id it presented. Only
/// reasons that are decided after the key's holder was proven count there: the key's digest
/// matched its record, or its tag is authentic (a key Keygate minted, refused as revoked by
/// the feed), or a JWT's signature verified. Every other denial (malformed, forged, unknown,
/// digest mismatch, invalid token, unavailable, ...) names an id the client chose: it is
/// counted per reason only (`keygate.denied.<reason>`), never as a usage row.
pub fn counts_under_key(reason: &DenyReason) -> bool {
    matches!(
        reason,
        DenyReason::Revoked
            | DenyReason::Expired
            | DenyReason::NotYetValid
            | DenyReason::AddressNotAllowed
            | DenyReason::RateLimited { .. }
            | DenyReason::InsufficientScope(_)
    )
}

fn bump(counts: &mut BTreeMap<String, u64>, name: &str) {
    match counts.get_mut(name) {
        Some(count) => *count += 1,
        None => {
            counts.insert(name.to_owned(), 1);
        }
    }
}

fn decode_rows(bytes: &[u8]) -> Vec<UsageRow> {
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// Merges `rows` into `into`, keeping at most `max_rows` (key, minute) rows; returns how many
/// rows had to be dropped.
fn merge(into: &mut Rows, rows: impl IntoIterator<Item = UsageRow>, max_rows: usize) -> u64 {
    let mut dropped = 0;
    for row in rows {
        let slot = (row.key_id, row.minute);
        let full = into.len() >= max_rows;
        match into.get_mut(&slot) {
            Some(existing) => {
                existing.0.merge(&row.counts);
                existing.1 = existing.1.max(row.last_used_at);
            }
            None if !full => {
                into.insert(slot, (row.counts, row.last_used_at));
            }
            None => dropped += 1,
        }
    }
    dropped
}

fn to_rows(rows: Rows) -> Vec<UsageRow> {
    rows.into_iter()
        .map(|((key_id, minute), (counts, last_used_at))| UsageRow {
            key_id,
            minute,
            counts,
            last_used_at,
        })
        .collect()
}

/// Every tick: merge this worker's counts into shared data; the flusher sends a batch.
pub fn on_tick(shared: &Shared) {
    let settings = &shared.config.usage;
    if !settings.enabled {
        return;
    }
    let now = host::now_ms();
    let due = {
        let usage = shared.usage.borrow();
        now.saturating_sub(usage.last_merge_ms) >= MERGE_EVERY_MS
    };
    if due {
        merge_into_shared(shared, now);
    }
    let flush_due = {
        let usage = shared.usage.borrow();
        !usage.sending && now.saturating_sub(usage.last_flush_ms) >= settings.flush_ms
    };
    if flush_due {
        flush(shared, now);
    }
}

fn merge_into_shared(shared: &Shared, now: u64) {
    let local = {
        let mut usage = shared.usage.borrow_mut();
        usage.last_merge_ms = now;
        usage.take_rows()
    };
    if local.is_empty() {
        return;
    }
    let max_rows = shared.config.usage.max_rows;
    for _ in 0..8 {
        let (current, cas) = host::get_shared(PENDING_KEY);
        let mut rows = Rows::new();
        merge(
            &mut rows,
            current.as_deref().map(decode_rows).unwrap_or_default(),
            usize::MAX,
        );
        let dropped = merge(&mut rows, to_rows(local.clone()), max_rows);
        let encoded = serde_json::to_vec(&to_rows(rows)).unwrap_or_default();
        if host::set_shared(PENDING_KEY, &encoded, cas).is_ok() {
            if dropped > 0 {
                shared.metrics.count_by(Event::UsageDropped, dropped);
            }
            return;
        }
    }
    // Contention beyond reason: keep the counts for the next tick.
    shared.usage.borrow_mut().restore(to_rows(local));
}

/// Splits `rows` into a first batch of at most `max_bytes` of JSON (less the envelope) and
/// [`MAX_BATCH_ROWS`] rows, and the rest. The first batch has at least one row when `rows`
/// has any.
fn split_batch(rows: Vec<UsageRow>, max_bytes: usize) -> (Vec<UsageRow>, Vec<UsageRow>) {
    let budget = max_bytes.saturating_sub(ENVELOPE_BYTES);
    let mut used: usize = 0;
    let mut batch = Vec::new();
    let mut rows = rows.into_iter();
    for row in rows.by_ref() {
        // The row's JSON and the comma before it.
        let size = serde_json::to_vec(&row).map_or(usize::MAX, |json| json.len() + 1);
        if !batch.is_empty()
            && (used.saturating_add(size) > budget || batch.len() >= MAX_BATCH_ROWS)
        {
            let mut rest = vec![row];
            rest.extend(rows);
            return (batch, rest);
        }
        used = used.saturating_add(size);
        batch.push(row);
    }
    (batch, Vec::new())
}

/// Takes the flusher lease; moves pending counts into the outbox (unless a failed batch
/// waits there) and sends the outbox.
fn flush(shared: &Shared, now: u64) {
    let worker = shared.usage.borrow().worker.clone();
    let until = now + shared.config.usage.flush_ms + TIMEOUT_MS + 5_000;
    match SharedLease::new(LEASE_KEY).take(&ProxyHost, &worker, until, now, Reentry::Renew) {
        Take::Taken => {}
        Take::Held(_) => {
            shared.usage.borrow_mut().last_flush_ms = now;
            return;
        }
        Take::Lost => return,
    }
    shared.usage.borrow_mut().last_flush_ms = now;

    let outbox = host::get_shared(OUTBOX_KEY)
        .0
        .and_then(|bytes| serde_json::from_slice::<UsageBatch>(&bytes).ok())
        .filter(|batch| !batch.rows.is_empty());
    let batch = match outbox {
        Some(batch) => batch,
        None => {
            let Some((rows, more)) = take_pending(shared.config.usage.max_batch_bytes) else {
                shared.usage.borrow_mut().backlog = false;
                return;
            };
            shared.usage.borrow_mut().backlog = more;
            let batch_id = {
                let mut usage = shared.usage.borrow_mut();
                usage.batches += 1;
                format!("{worker}-{now}-{}", usage.batches)
            };
            let batch = UsageBatch { batch_id, rows };
            let _ = host::set_shared(
                OUTBOX_KEY,
                &serde_json::to_vec(&batch).unwrap_or_default(),
                None,
            );
            batch
        }
    };
    send(shared, &batch);
}

/// Takes one batch of pending rows out of shared data (compare-and-swap), leaving the rest;
/// answers the batch and whether rows were left.
fn take_pending(max_bytes: usize) -> Option<(Vec<UsageRow>, bool)> {
    for _ in 0..8 {
        let (current, cas) = host::get_shared(PENDING_KEY);
        let rows = current.as_deref().map(decode_rows).unwrap_or_default();
        if rows.is_empty() {
            return None;
        }
        let (batch, rest) = split_batch(rows, max_bytes);
        let left = if rest.is_empty() {
            b"[]".to_vec()
        } else {
            serde_json::to_vec(&rest).unwrap_or_default()
        };
        if host::set_shared(PENDING_KEY, &left, cas).is_ok() {
            return Some((batch, !rest.is_empty()));
        }
    }
    None
}

fn send(shared: &Shared, batch: &UsageBatch) {
    let config = &shared.config;
    let body = serde_json::to_vec(batch).unwrap_or_default();
    let authorization = format!("Bearer {}", shared.secrets.service_token);
    let length = body.len().to_string();
    let headers = vec![
        (":method", "POST"),
        (":path", config.usage.path.as_str()),
        (":authority", config.key_service.authority.as_str()),
        ("authorization", authorization.as_str()),
        ("content-type", "application/json"),
        ("content-length", length.as_str()),
    ];
    match host::dispatch_http_call_with_body(
        &config.key_service.cluster,
        headers,
        &body,
        Duration::from_millis(TIMEOUT_MS),
    ) {
        Ok(token) => {
            shared.usage.borrow_mut().sending = true;
            shared.callouts.borrow_mut().insert(token, Callout::Usage);
        }
        Err(err) => {
            shared.metrics.count(Event::UsageFlushFailure);
            host::log(
                LogLevel::Warn,
                &format!("usage: cannot send a batch: {err:?}; it stays queued"),
            );
        }
    }
}

/// What becomes of a sent batch, from the key service's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Taken (2xx): cleared.
    Taken,
    /// May pass later (5xx, 408, 429, no answer or a timeout): kept and resent as is.
    Retry,
    /// Refused for what it is (4xx, or an answer that resending cannot change): dropped, so
    /// it never blocks the batches after it.
    Reject,
}

fn verdict(status: Option<u32>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Taken,
        None | Some(408 | 429 | 500..=599) => Verdict::Retry,
        Some(_) => Verdict::Reject,
    }
}

/// A batch answered: clear the outbox when it was taken or refused for good; otherwise it
/// stays for the next flush. When rows are waiting behind it, the next batch goes now.
pub fn on_response(shared: &Shared) {
    shared.usage.borrow_mut().sending = false;
    let status = host::call_response_status();
    let outcome = verdict(status);
    match outcome {
        Verdict::Taken => {
            let _ = host::set_shared(OUTBOX_KEY, b"{}", None);
            shared.metrics.count(Event::UsageFlushed);
        }
        Verdict::Reject => {
            let rows = host::get_shared(OUTBOX_KEY)
                .0
                .and_then(|bytes| serde_json::from_slice::<UsageBatch>(&bytes).ok())
                .map_or(0, |batch| batch.rows.len());
            let _ = host::set_shared(OUTBOX_KEY, b"{}", None);
            shared.metrics.count(Event::UsageRejected);
            host::log(
                LogLevel::Error,
                &format!(
                    "usage: the key service refused a batch of {rows} rows (status {}); \
                     it is dropped, reporting goes on with the next batch",
                    status.unwrap_or_default()
                ),
            );
        }
        Verdict::Retry => {
            shared.metrics.count(Event::UsageFlushFailure);
            host::log(
                LogLevel::Warn,
                &format!(
                    "usage: the key service did not take a batch ({}); it will be resent",
                    status.map_or_else(|| "no answer".to_owned(), |s| format!("status {s}"))
                ),
            );
        }
    }
    let backlog = shared.usage.borrow().backlog;
    if outcome != Verdict::Retry && backlog {
        flush(shared, host::now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, minute: u64, allowed: u64) -> UsageRow {
        UsageRow {
            key_id: key.into(),
            minute,
            counts: UsageCounts {
                allowed,
                ..UsageCounts::default()
            },
            last_used_at: minute + 1,
        }
    }

    #[test]
    fn merging_adds_counts_and_stays_bounded() {
        let mut rows = Rows::new();
        assert_eq!(
            merge(
                &mut rows,
                vec![row("a", 60, 2), row("a", 60, 3), row("b", 60, 1)],
                2
            ),
            0
        );
        assert_eq!(rows[&("a".to_owned(), 60)].0.allowed, 5);
        assert_eq!(
            merge(&mut rows, vec![row("c", 60, 1), row("a", 120, 1)], 2),
            2
        );
        assert_eq!(
            merge(&mut rows, vec![row("b", 60, 4)], 2),
            0,
            "existing rows still merge"
        );
        assert_eq!(
            to_rows(rows).iter().map(|r| r.counts.allowed).sum::<u64>(),
            10
        );
    }

    #[test]
    fn counts_land_in_their_minute_and_class() {
        let mut usage = Usage::new("w1".into());
        usage.allowed("k", 61_000);
        usage.status("k", 204, 61_500);
        usage.status("k", 503, 119_999);
        usage.denied("k", "rate_limited", 120_000);
        let rows = to_rows(usage.take_rows());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].minute, 60);
        assert_eq!(rows[0].counts.status["2xx"], 1);
        assert_eq!(rows[0].counts.status["5xx"], 1);
        assert_eq!(rows[1].counts.denied["rate_limited"], 1);
    }

    #[test]
    fn only_allowed_requests_move_the_last_use() {
        let mut usage = Usage::new("w1".into());
        usage.allowed("k", 61_000);
        usage.denied("k", "insufficient_scope", 65_000);
        usage.status("k", 403, 66_000);
        usage.denied("k", "expired", 125_000);
        usage.status("k", 401, 126_000);
        let rows = to_rows(usage.take_rows());
        assert_eq!(
            rows[0].last_used_at, 61,
            "denials after the last allowed one"
        );
        assert_eq!(rows[1].last_used_at, 0, "a minute of denials only");
        // Put back after contention, a row keeps its last use.
        let mut usage = Usage::new("w1".into());
        usage.restore(rows);
        let again = to_rows(usage.take_rows());
        assert_eq!(again[0].last_used_at, 61);
        assert_eq!(again[1].last_used_at, 0);
    }

    #[test]
    fn denials_that_name_a_chosen_id_are_not_counted_under_it() {
        use keygate_core::credential::CredentialError;
        for anonymous in [
            DenyReason::MalformedKey,
            DenyReason::ForgedKey,
            DenyReason::UnknownKey,
            DenyReason::DigestMismatch,
            DenyReason::MissingCredential,
            DenyReason::BadRequest(CredentialError::TooLong),
            DenyReason::InvalidToken(keygate_core::jwt::JwtError::Expired),
            DenyReason::ServiceUnavailable,
            DenyReason::Overloaded,
            DenyReason::NoRoute,
        ] {
            assert!(!counts_under_key(&anonymous), "{anonymous:?}");
        }
        for proven in [
            DenyReason::Revoked,
            DenyReason::Expired,
            DenyReason::NotYetValid,
            DenyReason::AddressNotAllowed,
            DenyReason::RateLimited { retry_after_s: 1 },
            DenyReason::InsufficientScope(vec!["demo:write".into()]),
        ] {
            assert!(counts_under_key(&proven), "{proven:?}");
        }
    }

    #[test]
    fn batches_fit_the_byte_and_row_limits() {
        // 40,000 keys in one minute: the case that once made one 4 MB batch.
        let rows: Vec<UsageRow> = (0..40_000)
            .map(|i| row(&format!("key{i:013}"), 1_800_000_000, 1))
            .collect();
        let total = serde_json::to_vec(&rows).unwrap().len();
        assert!(total > keygate_core::wire::USAGE_BODY_LIMIT);
        let max = keygate_core::config::DEFAULT_USAGE_BATCH_BYTES;
        let mut rest = rows;
        let mut batches = 0;
        let mut sent = 0;
        while !rest.is_empty() {
            let (batch, more) = split_batch(rest, max);
            assert!(!batch.is_empty());
            assert!(batch.len() <= MAX_BATCH_ROWS);
            let body = serde_json::to_vec(&UsageBatch {
                batch_id: "w".repeat(128),
                rows: batch.clone(),
            })
            .unwrap();
            assert!(body.len() <= max, "{} > {max}", body.len());
            sent += batch.len();
            batches += 1;
            rest = more;
        }
        assert_eq!(sent, 40_000, "every row goes in some batch, once");
        assert!(batches >= 8, "{batches}");
        // A small limit still sends one row per batch at least.
        let (one, rest) = split_batch(vec![row("a", 60, 1), row("b", 60, 1)], 10);
        assert_eq!((one.len(), rest.len()), (1, 1));
        let (all, none) = split_batch(vec![row("a", 60, 1)], 4096);
        assert_eq!((all.len(), none.len()), (1, 0));
    }

    #[test]
    fn client_errors_drop_a_batch_and_server_errors_keep_it() {
        assert_eq!(verdict(Some(200)), Verdict::Taken);
        assert_eq!(verdict(Some(204)), Verdict::Taken);
        for refused in [400, 401, 403, 404, 413, 422, 301] {
            assert_eq!(verdict(Some(refused)), Verdict::Reject, "{refused}");
        }
        for passing in [500, 502, 503, 504, 408, 429] {
            assert_eq!(verdict(Some(passing)), Verdict::Retry, "{passing}");
        }
        assert_eq!(verdict(None), Verdict::Retry, "timeout or no answer");
    }
}
