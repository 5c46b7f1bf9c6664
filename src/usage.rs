//! Usage analytics: every worker counts per key and minute in memory, merges its counts into
//! shared data once a second, and one flusher per Envoy (a lease) sends them to the key
//! service in one batch per interval. A batch that fails stays in an outbox and is resent
//! with the same id, so the service counts it once; counts wait, bounded, while the service
//! is down.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use keygate_core::cache::Lease;
use keygate_core::wire::{UsageBatch, UsageCounts, UsageRow};
use proxy_wasm::types::LogLevel;

use crate::filter::Shared;
use crate::host;
use crate::metrics::Event;

const PENDING_KEY: &str = "keygate.usage.pending";
const OUTBOX_KEY: &str = "keygate.usage.outbox";
const LEASE_KEY: &str = "keygate.usage.lease";
/// How often a worker merges its counts into shared data.
const MERGE_EVERY_MS: u64 = 1_000;
const TIMEOUT_MS: u64 = 5_000;

type Rows = BTreeMap<(String, u64), (UsageCounts, u64)>;

/// One worker's counts since its last merge, and its flusher state.
#[derive(Default)]
pub struct Usage {
    /// key id → minute → (counts, last used): looked up by `&str`, so counting a request for
    /// a key seen this second allocates nothing.
    local: HashMap<String, HashMap<u64, (UsageCounts, u64)>>,
    last_merge_ms: u64,
    last_flush_ms: u64,
    /// The flush in flight when this worker is the flusher.
    sending: Option<u32>,
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

    fn update(&mut self, key_id: &str, now_ms: u64, count: impl FnOnce(&mut UsageCounts)) {
        let minute = now_ms / 60_000 * 60;
        let second = now_ms / 1000;
        if let Some(per_key) = self.local.get_mut(key_id) {
            let row = per_key.entry(minute).or_default();
            count(&mut row.0);
            row.1 = row.1.max(second);
            return;
        }
        let mut counts = UsageCounts::default();
        count(&mut counts);
        self.local.insert(
            key_id.to_owned(),
            HashMap::from([(minute, (counts, second))]),
        );
    }

    pub fn allowed(&mut self, key_id: &str, now_ms: u64) {
        self.update(key_id, now_ms, |c| c.allowed += 1);
    }

    pub fn denied(&mut self, key_id: &str, reason: &str, now_ms: u64) {
        self.update(key_id, now_ms, |c| bump(&mut c.denied, reason));
    }

    pub fn status(&mut self, key_id: &str, status: u32, now_ms: u64) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.update(key_id, now_ms, |c| bump(&mut c.status, class));
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
        usage.sending.is_none() && now.saturating_sub(usage.last_flush_ms) >= settings.flush_ms
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
    let mut usage = shared.usage.borrow_mut();
    for row in to_rows(local) {
        usage.update(&row.key_id, row.minute * 1000, |c| c.merge(&row.counts));
    }
}

/// Takes the flusher lease; moves pending counts into the outbox (unless a failed batch
/// waits there) and sends the outbox.
fn flush(shared: &Shared, now: u64) {
    let worker = shared.usage.borrow().worker.clone();
    let (lease, cas) = host::get_shared(LEASE_KEY);
    if lease
        .as_deref()
        .and_then(Lease::decode)
        .is_some_and(|l| l.id != worker && l.is_held(now))
    {
        shared.usage.borrow_mut().last_flush_ms = now;
        return;
    }
    let mine = Lease {
        id: worker.clone(),
        until_ms: now + shared.config.usage.flush_ms + TIMEOUT_MS + 5_000,
    };
    if host::set_shared(LEASE_KEY, &mine.encode(), cas).is_err() {
        return;
    }
    shared.usage.borrow_mut().last_flush_ms = now;

    let outbox = host::get_shared(OUTBOX_KEY)
        .0
        .and_then(|bytes| serde_json::from_slice::<UsageBatch>(&bytes).ok())
        .filter(|batch| !batch.rows.is_empty());
    let batch = match outbox {
        Some(batch) => batch,
        None => {
            let Some(rows) = take_pending() else {
                return;
            };
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

/// Swaps the pending rows out of shared data (compare-and-swap).
fn take_pending() -> Option<Vec<UsageRow>> {
    for _ in 0..8 {
        let (current, cas) = host::get_shared(PENDING_KEY);
        let rows = current.as_deref().map(decode_rows).unwrap_or_default();
        if rows.is_empty() {
            return None;
        }
        if host::set_shared(PENDING_KEY, b"[]", cas).is_ok() {
            return Some(rows);
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
        Ok(token) => shared.usage.borrow_mut().sending = Some(token),
        Err(err) => {
            shared.metrics.count(Event::UsageFlushFailure);
            host::log(
                LogLevel::Warn,
                &format!("usage: cannot send a batch: {err:?}; it stays queued"),
            );
        }
    }
}

/// A batch answered: clear the outbox on success; on failure it stays for the next flush.
/// Returns false when `token` is not a usage flush.
pub fn on_response(shared: &Shared, token: u32) -> bool {
    {
        let mut usage = shared.usage.borrow_mut();
        if usage.sending != Some(token) {
            return false;
        }
        usage.sending = None;
    }
    match host::call_response_status() {
        Some(200..=299) => {
            let _ = host::set_shared(OUTBOX_KEY, b"{}", None);
            shared.metrics.count(Event::UsageFlushed);
        }
        status => {
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
    true
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
        assert_eq!(rows[1].last_used_at, 120);
    }
}
