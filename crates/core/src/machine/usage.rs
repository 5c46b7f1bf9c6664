//! The usage outbox: every worker counts per key, minute and route in memory and hands its
//! rows over to shared data, encoded once, in the wire format: every second while it holds at
//! most [`HAND_OVER_ROWS`], else once an interval (`usage.flush_seconds`, or sooner when it
//! holds `usage.max_rows` rows). One flusher per Envoy (a lease) sends them to the key service
//! every interval, in batches built from whole chunks without decoding a row (see
//! [`log_len`]). So a row costs one encoding however many keys are in use; counts reach the key
//! service within a second and an interval, or two intervals while a worker has many keys.
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
//! - With `geo` configured, a row also carries the countries its allowed requests came from
//!   (read from the header map the filter holds anyway: no host call), at most
//!   [`crate::country_set::MAX_ROW_COUNTRIES`] per row; a further country is dropped and counted
//!   (`keygate.usage.countries_dropped`). The key service raises `key.new_country` from them.

use std::collections::BTreeMap;

use crate::machine::fast_map::FastMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{KeyService, UsageSettings};
use crate::country_set::CountrySet;
use crate::decision::DenyReason;
use crate::geo::Country;
use crate::host::{Event, Host, LogLevel};
use crate::machine::lease::{Reentry, SharedLease, Take};
use crate::wire::{UsageBatch, UsageCounts, UsageRow, USAGE_MAX_ROWS};

/// The rows waiting, as a log (see [`log_len`]).
const LOG_KEY: &str = "keygate.usage.log";
/// Where filters before the log kept the rows waiting, as one JSON array: drained into the
/// next batch, so nothing an older filter in this Envoy counted is stranded by an upgrade.
const LEGACY_PENDING_KEY: &str = "keygate.usage.pending";
const OUTBOX_KEY: &str = "keygate.usage.outbox";
const LEASE_KEY: &str = "keygate.usage.lease";
const TIMEOUT_MS: u64 = 5_000;
/// How often a worker with few rows hands them over: counts then reach the key service
/// within a second and an interval.
const HAND_OVER_EVERY_MS: u64 = 1_000;
/// Most rows a worker hands over every second; with more (many keys in use), it keeps them
/// for an interval, so each key is one row per interval rather than one per second, and its
/// counts reach the key service within two intervals.
pub const HAND_OVER_ROWS: usize = 1_000;
/// Most rows in one batch: half of what the key service takes.
pub const MAX_BATCH_ROWS: usize = USAGE_MAX_ROWS / 2;
/// Room kept in a batch for its envelope (`{"batch_id": ..., "rows": [...]}`).
const ENVELOPE_BYTES: usize = 256;
/// Most distinct routes one key has rows for in one minute; the requests of further routes
/// are counted under [`OTHER_ROUTE`].
pub const MAX_ROUTES_PER_KEY_MINUTE: usize = 16;
/// The route of the requests past [`MAX_ROUTES_PER_KEY_MINUTE`].
pub const OTHER_ROUTE: &str = "other";
/// Most keys whose client address one worker remembers for the minute (about 80 bytes
/// each); past it the worker forgets them all and reads each key's address again.
pub const MAX_ADDRESSES: usize = 65_536;
/// Longest route name reported; a longer one is counted under [`OTHER_ROUTE`].
pub const MAX_ROUTE_LEN: usize = 128;

/// One row's data: counts, last use (Unix seconds, 0: none), the client address then, and
/// the countries of its allowed requests.
type Cell = (UsageCounts, u64, Option<String>, CountrySet);
/// Rows by (key id, minute, route; "" when a row names none).
type Rows = BTreeMap<(String, u64, String), Cell>;

/// Where and how usage is reported: the filter's usage settings and the key service.
#[derive(Clone, Copy, Debug)]
pub struct Reporting<'a> {
    pub settings: &'a UsageSettings,
    pub key_service: &'a KeyService,
    /// The bearer token of `POST /v1/usage`.
    pub service_token: &'a str,
    /// This gateway's name (Envoy's `node.id`), sent with every batch.
    pub gateway: Option<&'a str>,
}

/// One route's counts in one minute on this worker.
#[derive(Default)]
struct LocalCell {
    counts: UsageCounts,
    /// The last allowed request since the last hand-over (Unix seconds; 0: none).
    last_used: u64,
    /// The client address of the last allowed request.
    address: Option<IpAddr>,
    /// The countries of the allowed requests since the last hand-over.
    countries: CountrySet,
}

/// One worker's counts since its last hand-over, and its flusher state.
#[derive(Default)]
pub struct Usage {
    /// key id → minute → route → cell: looked up by `&str`, so counting a request for a key
    /// and route seen since the last hand-over allocates nothing.
    local: FastMap<String, FastMap<u64, FastMap<Arc<str>, LocalCell>>>,
    /// Rows in `local`.
    local_rows: usize,
    last_hand_over_ms: u64,
    last_flush_ms: u64,
    /// A flush is in flight (this worker is the flusher).
    sending: bool,
    /// The last batch taken left rows waiting: send the next one once it is answered.
    backlog: bool,
    batches: u64,
    worker: String,
    /// The minute (Unix minutes) of `addresses`.
    addresses_minute: u64,
    /// Per key, the client address its first allowed request in that minute read (`None`:
    /// not known), at most [`MAX_ADDRESSES`] keys: kept across hand-overs, so the address is
    /// read once per key and minute on each worker.
    addresses: FastMap<String, Option<IpAddr>>,
    /// Countries not held because a row had [`crate::country_set::MAX_ROW_COUNTRIES`] already (counted on the
    /// next hand-over).
    countries_dropped: u64,
}

/// The route a row is counted under: `route`, or [`OTHER_ROUTE`] when the key already has
/// [`MAX_ROUTES_PER_KEY_MINUTE`] routes in the minute (or the name is too long).
fn route_slot<'a, V>(routes: &FastMap<Arc<str>, V>, route: &'a str) -> &'a str {
    if route.is_empty() {
        route
    } else if route.len() > MAX_ROUTE_LEN
        || (!routes.contains_key(route) && routes.len() >= MAX_ROUTES_PER_KEY_MINUTE)
    {
        OTHER_ROUTE
    } else {
        route
    }
}

impl Usage {
    pub fn new(worker: String) -> Self {
        Self {
            worker,
            ..Self::default()
        }
    }

    /// Counts into the row of `key_id`, the minute of `now_ms` and `route`; `used_at` (Unix
    /// seconds) moves the row's last use (with its `address`), 0 leaves it. `count` answers
    /// how many countries the row could not hold.
    fn update(
        &mut self,
        key_id: &str,
        route: &str,
        now_ms: u64,
        used: (u64, Option<IpAddr>),
        count: impl FnOnce(&mut UsageCounts, &mut CountrySet) -> u64,
    ) {
        let minute = now_ms / 60_000 * 60;
        let per_key = match self.local.get_mut(key_id) {
            Some(per_key) => per_key,
            None => self.local.entry(key_id.to_owned()).or_default(),
        };
        let routes = per_key.entry(minute).or_default();
        let slot = route_slot(routes, route);
        let row = match routes.get_mut(slot) {
            Some(row) => row,
            None => {
                self.local_rows += 1;
                routes.entry(Arc::from(slot)).or_default()
            }
        };
        let dropped = count(&mut row.counts, &mut row.countries);
        if used.0 > 0 && used.0 >= row.last_used {
            row.last_used = used.0;
            if used.1.is_some() {
                row.address = used.1;
            }
        }
        self.countries_dropped += dropped;
    }

    /// Whether this worker knows no client address of `key_id` in the minute of `now_ms`:
    /// the address costs a host call, so it is read by a key's first allowed request in each
    /// minute on each worker (unless the filter computed it anyway), and remembered.
    pub fn wants_address(&self, key_id: &str, now_ms: u64) -> bool {
        now_ms / 60_000 != self.addresses_minute || !self.addresses.contains_key(key_id)
    }

    /// The client address of an allowed request of `key_id`: `read` now, or else the one
    /// remembered for the key in this minute.
    fn remember_address(
        &mut self,
        key_id: &str,
        read: Option<IpAddr>,
        now_ms: u64,
    ) -> Option<IpAddr> {
        let minute = now_ms / 60_000;
        if minute != self.addresses_minute || self.addresses.len() >= MAX_ADDRESSES {
            self.addresses.clear();
            self.addresses_minute = minute;
        }
        match self.addresses.get_mut(key_id) {
            Some(known) => {
                if read.is_some() {
                    *known = read;
                }
                *known
            }
            None => {
                self.addresses.insert(key_id.to_owned(), read);
                read
            }
        }
    }

    /// An allowed request on `route`, from `address` and `country` (as far as the filter
    /// knows them): the only kind that moves the key's last use and reports a country.
    pub fn allowed(
        &mut self,
        key_id: &str,
        route: &str,
        address: Option<IpAddr>,
        country: Option<Country>,
        now_ms: u64,
    ) {
        let address = self.remember_address(key_id, address, now_ms);
        self.update(key_id, route, now_ms, (now_ms / 1000, address), |c, set| {
            c.allowed += 1;
            u64::from(!country.is_none_or(|country| set.insert(country)))
        });
    }

    /// A refused request of a proven key (see [`counts_under_key`]); not broken down by route.
    pub fn denied(&mut self, key_id: &str, reason: &str, now_ms: u64) {
        self.update(key_id, "", now_ms, (0, None), |c, _| {
            bump(&mut c.denied, reason);
            0
        });
    }

    /// An upstream response on `route`, and its latency in ms when measured.
    pub fn status(
        &mut self,
        key_id: &str,
        route: &str,
        status: u32,
        latency_ms: Option<u64>,
        now_ms: u64,
    ) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.update(key_id, route, now_ms, (0, None), |c, _| {
            bump(&mut c.status, class);
            if let Some(ms) = latency_ms {
                c.observe_latency(ms);
            }
            0
        });
    }

    /// Puts rows back (shared data was too contended to take them).
    fn restore(&mut self, rows: Vec<UsageRow>) {
        for row in rows {
            let address = row.client_address.as_deref().and_then(|a| a.parse().ok());
            let route = row.route.as_deref().unwrap_or_default();
            self.update(
                &row.key_id,
                route,
                row.minute * 1000,
                (row.last_used_at, address),
                |c, set| {
                    c.merge(&row.counts);
                    set.merge_codes(&row.countries)
                },
            );
        }
    }

    /// Takes the counts so far, as rows.
    fn take_rows(&mut self) -> Rows {
        self.local_rows = 0;
        let mut rows = Rows::new();
        for (key_id, minutes) in self.local.drain() {
            for (minute, routes) in minutes {
                for (route, cell) in routes {
                    rows.insert(
                        (key_id.clone(), minute, route.to_string()),
                        (
                            cell.counts,
                            cell.last_used,
                            cell.address.map(|a| a.to_string()),
                            cell.countries,
                        ),
                    );
                }
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
            | DenyReason::PrincipalNotAllowed
            | DenyReason::RateLimited { .. }
            | DenyReason::QuotaExhausted { .. }
            | DenyReason::InsufficientScope(_)
            | DenyReason::BadSignature(_)
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

/// What [`merge`] had to drop: rows (the queue was full), and countries (a row held
/// [`crate::country_set::MAX_ROW_COUNTRIES`] already, or a code was malformed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Dropped {
    rows: u64,
    countries: u64,
}

/// Merges `rows` into `into`, keeping at most `max_rows` (key, minute, route) rows and
/// [`MAX_ROUTES_PER_KEY_MINUTE`] routes per key and minute (more go under [`OTHER_ROUTE`]);
/// returns what had to be dropped.
fn merge(into: &mut Rows, rows: impl IntoIterator<Item = UsageRow>, max_rows: usize) -> Dropped {
    let mut dropped = Dropped::default();
    for row in rows {
        let mut slot = (row.key_id, row.minute, row.route.unwrap_or_default());
        if !slot.2.is_empty() && !into.contains_key(&slot) {
            let start = (slot.0.clone(), slot.1, String::new());
            let end = (slot.0.clone(), slot.1 + 1, String::new());
            let routes = into
                .range(start..end)
                .filter(|((_, _, r), _)| !r.is_empty())
                .count();
            if routes >= MAX_ROUTES_PER_KEY_MINUTE || slot.2.len() > MAX_ROUTE_LEN {
                slot.2 = OTHER_ROUTE.to_owned();
            }
        }
        let full = into.len() >= max_rows;
        match into.get_mut(&slot) {
            Some(existing) => {
                existing.0.merge(&row.counts);
                if row.last_used_at > 0 && row.last_used_at >= existing.1 {
                    existing.1 = row.last_used_at;
                    if row.client_address.is_some() {
                        existing.2 = row.client_address;
                    }
                }
                dropped.countries += existing.3.merge_codes(&row.countries);
            }
            None if !full => {
                let mut countries = CountrySet::default();
                dropped.countries += countries.merge_codes(&row.countries);
                let cell = (row.counts, row.last_used_at, row.client_address, countries);
                into.insert(slot, cell);
            }
            None => dropped.rows += 1,
        }
    }
    dropped
}

fn to_rows(rows: Rows) -> Vec<UsageRow> {
    rows.into_iter()
        .map(
            |((key_id, minute, route), (counts, last_used_at, client_address, countries))| {
                UsageRow {
                    key_id,
                    minute,
                    counts,
                    last_used_at,
                    route: (!route.is_empty()).then_some(route),
                    client_address,
                    countries: countries.codes(),
                }
            },
        )
        .collect()
}

impl Usage {
    /// Every tick: hand this worker's counts over to shared data once a second while it holds
    /// at most [`HAND_OVER_ROWS`] rows, else once an interval (or as soon as it holds
    /// `usage.max_rows`); the flusher sends a batch. Returns the token of a batch sent now
    /// (its answer goes to [`Usage::on_response`]).
    pub fn on_tick(&mut self, host: &impl Host, reporting: &Reporting) -> Option<u32> {
        let settings = reporting.settings;
        if !settings.enabled {
            return None;
        }
        let now = host.now_ms();
        let since = now.saturating_sub(self.last_hand_over_ms);
        if since >= settings.flush_ms
            || (since >= HAND_OVER_EVERY_MS && self.local_rows <= HAND_OVER_ROWS)
            || self.local_rows >= settings.max_rows
        {
            self.hand_over(host, settings, now);
        }
        if self.sending {
            return None;
        }
        if now.saturating_sub(self.last_flush_ms) >= settings.flush_ms {
            return self.flush(host, reporting, now);
        }
        None
    }

    /// Appends this worker's rows to the log in shared data, as chunks in the wire format.
    fn hand_over(&mut self, host: &impl Host, settings: &UsageSettings, now: u64) {
        self.last_hand_over_ms = now;
        let local = to_rows(self.take_rows());
        if local.is_empty() {
            return;
        }
        let max_rows = settings.max_rows;
        let mine = chunks(&local, settings.max_batch_bytes);
        for _ in 0..8 {
            let (current, cas) = host.get_shared(LOG_KEY);
            let current = current.unwrap_or_default();
            let (log, dropped) = match log_len(&current) {
                Some(held) if held + local.len() <= max_rows => (
                    append(&current, held + local.len(), mine.iter().map(Chunk::line)),
                    Dropped::default(),
                ),
                _ => {
                    // Full (or unreadable): fold what waits and these rows into a row per
                    // key, minute and route, dropping new rows past `max_rows`.
                    let mut rows = Rows::new();
                    merge(&mut rows, log_rows(&current), usize::MAX);
                    let dropped = merge(&mut rows, local.iter().cloned(), max_rows);
                    let folded = to_rows(rows);
                    let folded_chunks = chunks(&folded, settings.max_batch_bytes);
                    let log = append(b"", folded.len(), folded_chunks.iter().map(Chunk::line));
                    (log, dropped)
                }
            };
            if host.set_shared(LOG_KEY, &log, cas).is_ok() {
                if dropped.rows > 0 {
                    host.count(Event::UsageDropped, dropped.rows);
                }
                let countries = dropped.countries + std::mem::take(&mut self.countries_dropped);
                if countries > 0 {
                    host.count(Event::UsageCountriesDropped, countries);
                }
                return;
            }
        }
        // Contention beyond reason: keep the counts for the next tick.
        self.restore(local);
    }
}

/// A JSON array of rows in the wire format that fits one batch, and how many rows it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chunk {
    rows: usize,
    json: Vec<u8>,
}

impl Chunk {
    /// As a line of the log holds it.
    fn line(&self) -> (usize, &[u8]) {
        (self.rows, &self.json)
    }
}

/// `rows` as chunks of at most `max_bytes` of JSON (less a batch's envelope) and
/// [`MAX_BATCH_ROWS`] rows; each row is encoded once, and a chunk holds one row at least.
fn chunks(rows: &[UsageRow], max_bytes: usize) -> Vec<Chunk> {
    let budget = max_bytes.saturating_sub(ENVELOPE_BYTES);
    let mut out = Vec::new();
    let mut current = Chunk {
        rows: 0,
        json: b"[".to_vec(),
    };
    let mut encoded = Vec::new();
    for row in rows {
        encoded.clear();
        if serde_json::to_writer(&mut encoded, row).is_err() {
            continue;
        }
        // The row, the comma before it and the closing bracket.
        let fits = current.json.len() + encoded.len() + 2 <= budget;
        if current.rows > 0 && (!fits || current.rows >= MAX_BATCH_ROWS) {
            current.json.push(b']');
            out.push(std::mem::replace(
                &mut current,
                Chunk {
                    rows: 0,
                    json: b"[".to_vec(),
                },
            ));
        }
        if current.rows > 0 {
            current.json.push(b',');
        }
        current.json.extend_from_slice(&encoded);
        current.rows += 1;
    }
    if current.rows > 0 {
        current.json.push(b']');
        out.push(current);
    }
    out
}

/// Writes an empty log unless one exists, so every hand-over is a compare-and-swap (Envoy
/// takes any write to a missing key: two workers' first hand-overs would race).
pub fn create_log(host: &impl Host) {
    if host.get_shared(LOG_KEY).1.is_none() {
        let _ = host.set_shared(LOG_KEY, b"0", None);
    }
}

/// How many rows the log `log` holds, from its first line (`None`: not a log).
///
/// The rows waiting in shared data are a log: a first line with how many rows it holds, then
/// one [`Chunk`] per line, as `<rows> <JSON array>` in the wire format
/// (`3\n2 [{..},{..}]\n1 [{..}]`). A hand-over appends its chunks without reading what waits;
/// the flusher sends whole chunks, so a batch is built without decoding a row (the key
/// service adds up rows of the same key, minute and route). The log is folded (a row per key,
/// minute and route) only when a hand-over would pass `usage.max_rows`. JSON holds no raw
/// newline, so lines split the chunks.
fn log_len(log: &[u8]) -> Option<usize> {
    if log.is_empty() {
        return Some(0);
    }
    let first = log.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(first).ok()?.parse().ok()
}

/// The chunks of `log`, in order; a malformed line is skipped.
fn log_chunks(log: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    log.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let space = line.iter().position(|&b| b == b' ')?;
        let rows = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
        let json = &line[space + 1..];
        (json.first() == Some(&b'[')).then_some((rows, json))
    })
}

/// The log of `held` rows: the chunks of `log` (or none: `b""`), then `more`.
fn append<'a>(
    log: &[u8],
    held: usize,
    more: impl IntoIterator<Item = (usize, &'a [u8])>,
) -> Vec<u8> {
    let body = log
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&[][..], |at| &log[at..]);
    let mut out = held.to_string().into_bytes();
    out.extend_from_slice(body);
    for (rows, json) in more {
        out.extend_from_slice(format!("\n{rows} ").as_bytes());
        out.extend_from_slice(json);
    }
    out
}

/// Every row in `log` (decoded: only to fold a full log).
fn log_rows(log: &[u8]) -> Vec<UsageRow> {
    log_chunks(log)
        .flat_map(|(_, json)| serde_json::from_slice::<Vec<UsageRow>>(json).unwrap_or_default())
        .collect()
}

/// Takes the rows an older filter in this Envoy left under [`LEGACY_PENDING_KEY`].
fn take_legacy(host: &impl Host) -> Vec<UsageRow> {
    let (current, cas) = host.get_shared(LEGACY_PENDING_KEY);
    let rows: Vec<UsageRow> = current
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    if rows.is_empty() || host.set_shared(LEGACY_PENDING_KEY, b"[]", cas).is_err() {
        return Vec::new();
    }
    rows
}

/// How many of `chunks` (from the first) go in one batch: at most `max_bytes` of JSON (less
/// the envelope) and [`MAX_BATCH_ROWS`] rows, and one chunk at least.
fn batch_size<'a>(chunks: impl IntoIterator<Item = (usize, &'a [u8])>, max_bytes: usize) -> usize {
    let budget = max_bytes.saturating_sub(ENVELOPE_BYTES);
    let (mut bytes, mut rows, mut taken) = (0usize, 0usize, 0usize);
    for (n, json) in chunks {
        let (more_bytes, more_rows) = (bytes + json.len(), rows + n);
        if taken > 0 && (more_bytes > budget || more_rows > MAX_BATCH_ROWS) {
            break;
        }
        (bytes, rows, taken) = (more_bytes, more_rows, taken + 1);
    }
    taken
}

/// The body of a batch: its id, the rows of `chunks`, and the gateway.
fn batch_body(batch_id: &str, chunks: &[&[u8]], gateway: Option<&str>) -> Vec<u8> {
    let quoted = |text: &str| serde_json::to_vec(text).unwrap_or_default();
    let mut body = b"{\"batch_id\":".to_vec();
    body.extend_from_slice(&quoted(batch_id));
    body.extend_from_slice(b",\"rows\":[");
    let mut first = true;
    for json in chunks {
        // A chunk's rows, without its brackets.
        let rows = &json[1..json.len().saturating_sub(1).max(1)];
        if rows.is_empty() {
            continue;
        }
        if !first {
            body.push(b',');
        }
        body.extend_from_slice(rows);
        first = false;
    }
    body.push(b']');
    if let Some(gateway) = gateway {
        body.extend_from_slice(b",\"gateway\":");
        body.extend_from_slice(&quoted(gateway));
    }
    body.push(b'}');
    body
}

/// Takes one batch's chunks out of the log in shared data (compare-and-swap), with the rows
/// an older filter left; answers them and whether chunks were left.
fn take_pending(host: &impl Host, max_bytes: usize) -> Option<(Vec<Vec<u8>>, bool)> {
    let legacy = chunks(&take_legacy(host), max_bytes);
    for _ in 0..8 {
        let (current, cas) = host.get_shared(LOG_KEY);
        let current = current.unwrap_or_default();
        let waiting: Vec<(usize, &[u8])> = legacy
            .iter()
            .map(Chunk::line)
            .chain(log_chunks(&current))
            .collect();
        if waiting.is_empty() {
            return None;
        }
        let taken = batch_size(waiting.iter().copied(), max_bytes);
        let (batch, rest) = waiting.split_at(taken);
        let held = rest.iter().map(|(n, _)| n).sum();
        let left = append(b"", held, rest.iter().copied());
        if host.set_shared(LOG_KEY, &left, cas).is_ok() {
            let batch = batch.iter().map(|(_, json)| json.to_vec()).collect();
            return Some((batch, !rest.is_empty()));
        }
    }
    None
}

impl Usage {
    /// Takes the flusher lease; moves a batch of waiting chunks into the outbox (unless a
    /// failed batch waits there) and sends the outbox.
    fn flush(&mut self, host: &impl Host, reporting: &Reporting, now: u64) -> Option<u32> {
        let until = now + reporting.settings.flush_ms + TIMEOUT_MS + 5_000;
        match SharedLease::new(LEASE_KEY).take(host, &self.worker, until, now, Reentry::Renew) {
            Take::Taken => {}
            Take::Held(_) => {
                self.last_flush_ms = now;
                return None;
            }
            Take::Lost => return None,
        }

        // The outbox holds the body of the batch in flight or failed (`{}`: none).
        let outbox = host.get_shared(OUTBOX_KEY).0.filter(|body| body.len() > 2);
        self.last_flush_ms = now;
        let body = match outbox {
            Some(body) => body,
            None => {
                let max_bytes = reporting.settings.max_batch_bytes;
                let Some((chunks, more)) = take_pending(host, max_bytes) else {
                    self.backlog = false;
                    return None;
                };
                self.backlog = more;
                self.batches += 1;
                let batch_id = format!("{}-{now}-{}", self.worker, self.batches);
                let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                let body = batch_body(&batch_id, &chunks, reporting.gateway);
                let _ = host.set_shared(OUTBOX_KEY, &body, None);
                body
            }
        };
        self.send(host, reporting, &body)
    }

    fn send(&mut self, host: &impl Host, reporting: &Reporting, body: &[u8]) -> Option<u32> {
        let key_service = reporting.key_service;
        let authorization = format!("Bearer {}", reporting.service_token);
        let length = body.len().to_string();
        let headers = [
            (":method", "POST"),
            (":path", reporting.settings.path.as_str()),
            (":authority", key_service.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("content-type", "application/json"),
            ("content-length", length.as_str()),
        ];
        match host.dispatch_http_call(
            &key_service.cluster,
            &headers,
            Some(body),
            Duration::from_millis(TIMEOUT_MS),
        ) {
            Ok(token) => {
                self.sending = true;
                Some(token)
            }
            Err(err) => {
                host.count(Event::UsageFlushFailure, 1);
                host.log(
                    LogLevel::Warn,
                    &format!("usage: cannot send a batch: {err:?}; it stays queued"),
                );
                None
            }
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

impl Usage {
    /// A batch answered: clear the outbox when it was taken or refused for good; otherwise
    /// it stays for the next flush. When rows are waiting behind it, the next batch goes now
    /// (its token is returned).
    pub fn on_response(&mut self, host: &impl Host, reporting: &Reporting) -> Option<u32> {
        self.sending = false;
        let status = host.call_response_status();
        let outcome = verdict(status);
        match outcome {
            Verdict::Taken => {
                let _ = host.set_shared(OUTBOX_KEY, b"{}", None);
                host.count(Event::UsageFlushed, 1);
            }
            Verdict::Reject => {
                let rows = host
                    .get_shared(OUTBOX_KEY)
                    .0
                    .and_then(|bytes| serde_json::from_slice::<UsageBatch>(&bytes).ok())
                    .map_or(0, |batch| batch.rows.len());
                let _ = host.set_shared(OUTBOX_KEY, b"{}", None);
                host.count(Event::UsageRejected, 1);
                host.log(
                    LogLevel::Error,
                    &format!(
                        "usage: the key service refused a batch of {rows} rows (status {}); \
                         it is dropped, reporting goes on with the next batch",
                        status.unwrap_or_default()
                    ),
                );
            }
            Verdict::Retry => {
                host.count(Event::UsageFlushFailure, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "usage: the key service did not take a batch ({}); it will be resent",
                        status.map_or_else(|| "no answer".to_owned(), |s| format!("status {s}"))
                    ),
                );
            }
        }
        if outcome != Verdict::Retry && self.backlog {
            return self.flush(host, reporting, host.now_ms());
        }
        None
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
            route: None,
            client_address: None,
            countries: Vec::new(),
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
            )
            .rows,
            0
        );
        assert_eq!(rows[&("a".to_owned(), 60, String::new())].0.allowed, 5);
        assert_eq!(
            merge(&mut rows, vec![row("c", 60, 1), row("a", 120, 1)], 2).rows,
            2
        );
        assert_eq!(
            merge(&mut rows, vec![row("b", 60, 4)], 2).rows,
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
        usage.allowed("k", "r", None, None, 61_000);
        usage.status("k", "r", 204, Some(3), 61_500);
        usage.status("k", "r", 503, Some(7_000), 119_999);
        usage.denied("k", "rate_limited", 120_000);
        let rows = to_rows(usage.take_rows());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].minute, 60);
        assert_eq!(rows[0].counts.status["2xx"], 1);
        assert_eq!(rows[0].counts.status["5xx"], 1);
        assert_eq!(rows[1].counts.denied["rate_limited"], 1);
        assert_eq!(rows[0].route.as_deref(), Some("r"));
        assert_eq!(rows[1].route, None, "denials are not broken down by route");
        let mut latency = vec![0; crate::wire::LATENCY_BUCKETS];
        latency[2] = 1; // 3 ms: above 2, at most 5
        latency[12] = 1; // 7 s: above the last bound
        assert_eq!(rows[0].counts.latency, latency);
    }

    #[test]
    fn only_allowed_requests_move_the_last_use() {
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        let mut usage = Usage::new("w1".into());
        usage.allowed("k", "r", Some(address), None, 61_000);
        usage.denied("k", "insufficient_scope", 65_000);
        usage.status("k", "r", 403, None, 66_000);
        usage.denied("k", "expired", 125_000);
        usage.status("k", "r", 401, None, 126_000);
        let rows = to_rows(usage.take_rows());
        let find = |minute: u64, route: Option<&str>| {
            rows.iter()
                .find(|r| r.minute == minute && r.route.as_deref() == route)
                .unwrap()
        };
        assert_eq!(
            find(60, Some("r")).last_used_at,
            61,
            "denials after the last allowed one"
        );
        assert_eq!(
            find(60, Some("r")).client_address.as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(find(60, None).last_used_at, 0, "denials only");
        assert_eq!(find(120, None).last_used_at, 0, "a minute of denials only");
        assert_eq!(find(120, Some("r")).last_used_at, 0);
        assert_eq!(find(120, Some("r")).client_address, None);
        // Put back after contention, a row keeps its last use and address.
        let mut usage = Usage::new("w1".into());
        usage.restore(rows.clone());
        let again = to_rows(usage.take_rows());
        assert_eq!(again, rows);
    }

    #[test]
    fn routes_per_key_and_minute_are_capped() {
        let mut usage = Usage::new("w1".into());
        for i in 0..MAX_ROUTES_PER_KEY_MINUTE + 5 {
            usage.allowed("k", &format!("route-{i}"), None, None, 61_000);
        }
        usage.allowed("k", &"x".repeat(MAX_ROUTE_LEN + 1), None, None, 61_000);
        usage.allowed("j", "route-99", None, None, 61_000);
        let rows = to_rows(usage.take_rows());
        let of_k: Vec<&UsageRow> = rows.iter().filter(|r| r.key_id == "k").collect();
        assert_eq!(of_k.len(), MAX_ROUTES_PER_KEY_MINUTE + 1);
        let other = of_k
            .iter()
            .find(|r| r.route.as_deref() == Some(OTHER_ROUTE))
            .unwrap();
        assert_eq!(other.counts.allowed, 6, "5 past the cap and one too long");
        assert_eq!(of_k.iter().map(|r| r.counts.allowed).sum::<u64>(), 22);
        assert!(rows
            .iter()
            .any(|r| r.key_id == "j" && r.route.as_deref() == Some("route-99")));
        // The shared queue caps them the same way across workers.
        let mut shared = Rows::new();
        let many = (0..MAX_ROUTES_PER_KEY_MINUTE + 3).map(|i| UsageRow {
            route: Some(format!("w2-{i}")),
            ..row("k", 60, 1)
        });
        assert_eq!(merge(&mut shared, many, 1_000), Dropped::default());
        assert_eq!(shared.len(), MAX_ROUTES_PER_KEY_MINUTE + 1);
        assert_eq!(
            shared[&("k".to_owned(), 60, OTHER_ROUTE.to_owned())]
                .0
                .allowed,
            3
        );
    }

    #[test]
    fn denials_that_name_a_chosen_id_are_not_counted_under_it() {
        use crate::credential::CredentialError;
        for anonymous in [
            DenyReason::MalformedKey,
            DenyReason::ForgedKey,
            DenyReason::UnknownKey,
            DenyReason::DigestMismatch,
            DenyReason::MissingCredential,
            DenyReason::BadRequest(CredentialError::TooLong),
            DenyReason::InvalidToken(crate::jwt::JwtError::Expired),
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
            DenyReason::QuotaExhausted { retry_after_s: 1 },
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
        assert!(total > crate::wire::USAGE_BODY_LIMIT);
        let max = crate::config::DEFAULT_USAGE_BATCH_BYTES;
        let all = chunks(&rows, max);
        assert!(all
            .iter()
            .all(|c| c.rows <= MAX_BATCH_ROWS && c.json.len() < max));
        let mut rest: Vec<(usize, &[u8])> = all.iter().map(Chunk::line).collect();
        let (mut batches, mut sent) = (0, Vec::new());
        while !rest.is_empty() {
            let taken = batch_size(rest.iter().copied(), max);
            assert!(taken > 0);
            let parts: Vec<&[u8]> = rest[..taken].iter().map(|(_, json)| *json).collect();
            let body = batch_body(&"w".repeat(128), &parts, Some(&"g".repeat(128)));
            assert!(body.len() <= max, "{} > {max}", body.len());
            let batch: UsageBatch = serde_json::from_slice(&body).unwrap();
            assert!(!batch.rows.is_empty() && batch.rows.len() <= MAX_BATCH_ROWS);
            assert_eq!(batch.gateway.as_deref(), Some("g".repeat(128).as_str()));
            sent.extend(batch.rows);
            batches += 1;
            rest.drain(..taken);
        }
        assert_eq!(sent, rows, "every row goes in some batch, once, in order");
        assert!(batches >= 8, "{batches}");
        // A small limit still sends one row per chunk and batch at least.
        let two = chunks(&[row("a", 60, 1), row("b", 60, 1)], 10);
        assert_eq!(two.iter().map(|c| c.rows).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(batch_size(two.iter().map(Chunk::line), 10), 1);
        let one = chunks(&[row("a", 60, 1)], 4096);
        assert_eq!(one.len(), 1);
        // Without a gateway, the body is what the wire type writes.
        let body = batch_body("b-1", &[one[0].json.as_slice()], None);
        let expected = UsageBatch {
            batch_id: "b-1".into(),
            rows: vec![row("a", 60, 1)],
            gateway: None,
        };
        assert_eq!(body, serde_json::to_vec(&expected).unwrap());
    }

    #[test]
    fn the_log_keeps_its_count_and_chunks() {
        let rows = [row("a", 60, 1), row("b", 60, 2), row("c", 60, 3)];
        let first = chunks(&rows[..2], 4096);
        let log = append(b"", 2, first.iter().map(Chunk::line));
        assert_eq!(log_len(&log), Some(2));
        let second = chunks(&rows[2..], 4096);
        let log = append(&log, 3, second.iter().map(Chunk::line));
        assert_eq!(log_len(&log), Some(3));
        assert_eq!(log_chunks(&log).count(), 2);
        assert_eq!(log_rows(&log), rows);
        assert_eq!(log_len(b""), Some(0));
        assert_eq!(log_len(b"[]"), None, "not a log: folded");
        // A malformed line is skipped, the rest still reads.
        let mut broken = log.clone();
        broken.extend_from_slice(b"\nx [1]\n2 {}");
        assert_eq!(log_rows(&broken), rows);
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

    // The outbox through the fake host: two workers, one flusher, scripted answers.

    use crate::config::KeyService;
    use crate::host::fake::{Effect, FakeHost};

    const T0: u64 = 1_800_000_000_000;

    fn settings(max_rows: usize) -> UsageSettings {
        UsageSettings {
            enabled: true,
            path: "/v1/usage".into(),
            flush_ms: 10_000,
            max_rows,
            max_batch_bytes: crate::config::DEFAULT_USAGE_BATCH_BYTES,
        }
    }

    struct Setup {
        settings: UsageSettings,
        key_service: KeyService,
    }

    impl Setup {
        fn new(max_rows: usize) -> Self {
            Self {
                settings: settings(max_rows),
                key_service: KeyService::default(),
            }
        }

        fn reporting(&self) -> Reporting<'_> {
            Reporting {
                settings: &self.settings,
                key_service: &self.key_service,
                service_token: "svc",
                gateway: Some("gw-1"),
            }
        }
    }

    /// The log is made when a worker starts only where usage is counted: with usage off,
    /// nothing is written under its key.
    #[test]
    fn the_log_is_made_at_start_only_with_usage_on() {
        for (enabled, log) in [(true, Some(b"0".to_vec())), (false, None)] {
            let host = FakeHost::at(T0);
            let config = serde_json::json!({
                "routes": [{"prefix": "/", "scopes": ["a"]}],
                "usage": {"enabled": enabled},
            });
            crate::machine::test_support::start_with(&host, &config);
            assert_eq!(host.shared(LOG_KEY), log, "usage.enabled = {enabled}");
        }
    }

    /// The batch a dispatch carried.
    fn sent_batch(effect: &Effect) -> UsageBatch {
        let Effect::Dispatch { body, headers, .. } = effect else {
            panic!("not a dispatch: {effect:?}");
        };
        assert!(headers.contains(&("authorization".into(), "Bearer svc".into())));
        assert!(headers.contains(&(":method".into(), "POST".into())));
        serde_json::from_slice(body.as_deref().unwrap()).unwrap()
    }

    fn allowed_total(batch: &UsageBatch) -> u64 {
        batch.rows.iter().map(|r| r.counts.allowed).sum()
    }

    #[test]
    fn one_flusher_sends_the_counts_of_every_worker() {
        let setup = Setup::new(1_000);
        let host_one = FakeHost::at(T0);
        let host_two = host_one.worker();
        let (mut one, mut two) = (Usage::new("w1".into()), Usage::new("w2".into()));
        one.allowed("k1", "r", None, None, T0);
        two.allowed("k1", "r", None, None, T0);
        two.allowed("k2", "r", None, None, T0);
        // Worker two merges first and becomes the flusher; worker one merges, finds the
        // lease held and sends nothing.
        let token = two.on_tick(&host_two, &setup.reporting());
        assert!(token.is_some());
        assert_eq!(one.on_tick(&host_one, &setup.reporting()), None);
        assert!(host_one.dispatched().is_empty());
        let batch = sent_batch(&host_two.dispatched()[0]);
        assert_eq!(allowed_total(&batch), 2, "worker one's count merged later");
        assert_eq!(batch.gateway.as_deref(), Some("gw-1"));
        // Answered: the outbox clears, and the rows worker one merged meanwhile go next time.
        host_two.answer(Some(200), None);
        assert_eq!(two.on_response(&host_two, &setup.reporting()), None);
        assert_eq!(host_two.counted(Event::UsageFlushed), 1);
        host_two.advance(10_000);
        host_two.take_effects();
        assert!(two.on_tick(&host_two, &setup.reporting()).is_some());
        let batch = sent_batch(&host_two.dispatched()[0]);
        assert_eq!(allowed_total(&batch), 1);
        assert_eq!(batch.rows[0].key_id, "k1");
    }

    #[test]
    fn a_failed_batch_is_resent_as_is_and_a_refused_one_dropped() {
        let setup = Setup::new(1_000);
        let host = FakeHost::at(T0);
        let mut usage = Usage::new("w1".into());
        usage.allowed("k1", "r", None, None, T0);
        assert!(usage.on_tick(&host, &setup.reporting()).is_some());
        let first = sent_batch(&host.take_effects()[0]);
        for failure in [Some(503), None, Some(429)] {
            host.answer(failure, None);
            assert_eq!(usage.on_response(&host, &setup.reporting()), None);
            usage.allowed("k2", "r", None, None, host.now_ms());
            host.advance(10_000);
            assert!(usage.on_tick(&host, &setup.reporting()).is_some());
            let effects = host.take_effects();
            let again = effects
                .iter()
                .find(|e| matches!(e, Effect::Dispatch { .. }))
                .map(sent_batch)
                .unwrap();
            assert_eq!(again, first, "the same batch, same id, after {failure:?}");
            assert!(effects.contains(&Effect::Count(Event::UsageFlushFailure, 1)));
        }
        // Refused for what it is: dropped and counted; the rows behind it go next.
        host.answer(Some(400), None);
        assert_eq!(usage.on_response(&host, &setup.reporting()), None);
        assert_eq!(host.counted(Event::UsageRejected), 1);
        assert_eq!(host.logged(LogLevel::Error).len(), 1);
        host.advance(10_000);
        assert!(usage.on_tick(&host, &setup.reporting()).is_some());
        let next = sent_batch(host.dispatched().last().unwrap());
        assert_ne!(next.batch_id, first.batch_id);
        assert_eq!(next.rows[0].key_id, "k2");
    }

    #[test]
    fn a_refused_dispatch_keeps_the_batch_queued() {
        let setup = Setup::new(1_000);
        let host = FakeHost::at(T0);
        let mut usage = Usage::new("w1".into());
        usage.allowed("k1", "r", None, None, T0);
        host.refuse_next_dispatch(crate::host::HostError::Refused("BadArgument"));
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        assert_eq!(host.counted(Event::UsageFlushFailure), 1);
        assert!(host.logged(LogLevel::Warn)[0].contains("stays queued"));
        host.advance(10_000);
        assert!(usage.on_tick(&host, &setup.reporting()).is_some());
        assert_eq!(allowed_total(&sent_batch(&host.dispatched()[0])), 1);
    }

    #[test]
    fn a_backlog_goes_out_batch_after_batch() {
        let mut setup = Setup::new(100_000);
        setup.settings.max_batch_bytes = 600;
        let host = FakeHost::at(T0);
        let mut usage = Usage::new("w1".into());
        for i in 0..10 {
            usage.allowed(&format!("key{i:013}"), "r", None, None, T0);
        }
        let mut sent = 0;
        let mut token = usage.on_tick(&host, &setup.reporting());
        while token.is_some() {
            sent += 1;
            assert!(sent < 20, "the backlog drains");
            host.answer(Some(204), None);
            token = usage.on_response(&host, &setup.reporting());
        }
        let batches: Vec<UsageBatch> = host.dispatched().iter().map(sent_batch).collect();
        assert!(batches.len() > 1, "{} batches", batches.len());
        assert_eq!(batches.iter().map(allowed_total).sum::<u64>(), 10);
    }

    #[test]
    fn contention_keeps_counts_and_a_full_queue_drops_and_counts() {
        let setup = Setup::new(1);
        let host = FakeHost::at(T0);
        let mut usage = Usage::new("w1".into());
        // Someone else is the flusher: this worker only merges.
        SharedLease::new(LEASE_KEY).take(&host.worker(), "w9", T0 + 60_000, T0, Reentry::Renew);
        host.put_shared(LOG_KEY, b"0");
        usage.allowed("k1", "r", None, None, T0);
        host.conflict_next_writes(8);
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        assert_eq!(host.shared(LOG_KEY), Some(b"0".to_vec()), "nothing merged");
        host.advance(1_000);
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        let pending = log_rows(&host.shared(LOG_KEY).unwrap());
        assert_eq!(pending.len(), 1, "the counts were kept, merged next tick");
        // One row at most may wait: a second key's row is dropped, and counted.
        usage.allowed("k2", "r", None, None, host.now_ms());
        host.advance(1_000);
        usage.on_tick(&host, &setup.reporting());
        assert_eq!(host.counted(Event::UsageDropped), 1);
        assert_eq!(log_rows(&host.shared(LOG_KEY).unwrap()).len(), 1);
    }

    #[test]
    fn rows_carry_the_countries_of_allowed_requests_bounded_and_counted() {
        let country = |code: &str| Country::parse(code.as_bytes());
        let setup = Setup::new(1_000);
        let host = FakeHost::at(T0);
        // Someone else is the flusher: these workers only hand their rows over.
        SharedLease::new(LEASE_KEY).take(&host.worker(), "w9", T0 + 60_000, T0, Reentry::Renew);
        let (mut one, mut two) = (Usage::new("w1".into()), Usage::new("w2".into()));
        for code in ["DE", "US", "DE", "FR", "JP", "BR", "CN"] {
            one.allowed("k", "r", None, country(code), T0);
        }
        one.allowed("k", "r", None, None, T0);
        one.allowed("j", "r", None, None, T0);
        // A denial reports no country.
        one.denied("k", "expired", T0);
        two.allowed("k", "r", None, country("AT"), T0);
        two.allowed("k", "r2", None, country("AT"), T0);
        assert_eq!(one.on_tick(&host, &setup.reporting()), None);
        assert_eq!(host.counted(Event::UsageCountriesDropped), 2, "BR and CN");
        let worker_two = host.worker();
        assert_eq!(two.on_tick(&worker_two, &setup.reporting()), None);
        // The lease runs out: worker one flushes the rows both handed over, as they are (the
        // key service adds up rows of the same key, minute and route).
        host.advance(61_000);
        assert!(one.on_tick(&host, &setup.reporting()).is_some());
        assert_eq!(host.counted(Event::UsageCountriesDropped), 2, "no more");
        let batch = sent_batch(&host.dispatched()[0]);
        let rows_of = |key: &str, route: Option<&str>| -> Vec<&UsageRow> {
            batch
                .rows
                .iter()
                .filter(|r| r.key_id == key && r.route.as_deref() == route)
                .collect()
        };
        let find = |key: &str, route: Option<&str>| rows_of(key, route)[0];
        let k_r = rows_of("k", Some("r"));
        assert_eq!(k_r.len(), 2, "one row from each worker");
        assert_eq!(k_r[0].countries, ["DE", "US", "FR", "JP"]);
        assert_eq!(k_r[0].counts.allowed, 8);
        assert_eq!(k_r[1].countries, ["AT"]);
        assert_eq!(find("k", Some("r2")).countries, ["AT"]);
        assert!(find("k", None).countries.is_empty());
        assert!(find("j", Some("r")).countries.is_empty());
        // Without countries the row is what it was (no field), and an older row decodes.
        let json = serde_json::to_string(find("j", Some("r"))).unwrap();
        assert!(!json.contains("countries"), "{json}");
        let old: UsageRow =
            serde_json::from_str(r#"{"key_id":"k","minute":60,"allowed":1,"last_used_at":61}"#)
                .unwrap();
        assert!(old.countries.is_empty());
    }

    #[test]
    fn disabled_usage_does_nothing() {
        let mut setup = Setup::new(10);
        setup.settings.enabled = false;
        let host = FakeHost::at(T0);
        let mut usage = Usage::new("w1".into());
        usage.allowed("k1", "r", None, None, T0);
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        assert!(host.take_effects().is_empty());
        assert!(host.writes().is_empty());
    }

    /// The log in shared data: how many rows it holds, and its lines.
    fn log_state(host: &FakeHost) -> (Option<usize>, usize) {
        let log = host.shared(LOG_KEY).unwrap_or_default();
        (log_len(&log), log.split(|&b| b == b'\n').count())
    }

    #[test]
    fn hand_overs_append_chunks_that_the_flusher_sends_without_reading_them() {
        let setup = Setup::new(1_000);
        let host = FakeHost::at(T0);
        SharedLease::new(LEASE_KEY).take(&host.worker(), "w9", T0 + 5_000, T0, Reentry::Renew);
        let worker_two = host.worker();
        let (mut one, mut two) = (Usage::new("w1".into()), Usage::new("w2".into()));
        let address: IpAddr = "203.0.113.7".parse().unwrap();
        one.allowed("k", "r", Some(address), None, T0);
        two.allowed("k", "r", None, None, T0);
        two.allowed("j", "r", None, None, T0);
        assert_eq!(one.on_tick(&host, &setup.reporting()), None);
        assert_eq!(two.on_tick(&worker_two, &setup.reporting()), None);
        assert_eq!(log_state(&host), (Some(3), 3), "two chunks, three rows");
        // With few rows a worker hands them over every second: one row for both requests.
        host.advance(1_000);
        one.allowed("k", "r", None, None, host.now_ms());
        one.allowed("k", "r", None, None, host.now_ms());
        assert_eq!(one.on_tick(&host, &setup.reporting()), None);
        assert_eq!(log_state(&host), (Some(4), 4));
        // Within the second it keeps them.
        host.advance(500);
        one.allowed("j", "r", None, None, host.now_ms());
        assert_eq!(one.on_tick(&host, &setup.reporting()), None);
        assert_eq!(log_state(&host), (Some(4), 4));
        // The interval: worker one hands over, and (the lease ran out) flushes every chunk in
        // one batch, without reading a row.
        host.advance(8_500);
        assert!(one.on_tick(&host, &setup.reporting()).is_some());
        let batch = sent_batch(&host.dispatched()[0]);
        assert_eq!(batch.rows.len(), 5);
        let of_k: Vec<&UsageRow> = batch.rows.iter().filter(|r| r.key_id == "k").collect();
        assert_eq!(
            of_k.iter().map(|r| r.counts.allowed).collect::<Vec<_>>(),
            [1, 1, 2]
        );
        assert_eq!(
            of_k[2].client_address.as_deref(),
            Some("203.0.113.7"),
            "the address worker one remembered for the minute"
        );
        assert_eq!(log_state(&host), (Some(0), 1));
    }

    #[test]
    fn a_worker_with_many_keys_hands_them_over_once_an_interval() {
        let setup = Setup::new(100_000);
        let host = FakeHost::at(T0);
        SharedLease::new(LEASE_KEY).take(&host.worker(), "w9", T0 + 60_000, T0, Reentry::Renew);
        let mut usage = Usage::new("w1".into());
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        for i in 0..=HAND_OVER_ROWS {
            usage.allowed(&format!("key{i}"), "r", None, None, T0);
        }
        host.advance(1_000);
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        assert_eq!(log_state(&host).0, Some(0), "kept past the second");
        host.advance(9_000);
        assert_eq!(usage.on_tick(&host, &setup.reporting()), None);
        assert_eq!(
            log_state(&host).0,
            Some(HAND_OVER_ROWS + 1),
            "handed over at the interval"
        );
    }

    #[test]
    fn a_full_log_is_folded_by_the_hand_over_that_would_pass_the_limit() {
        let mut setup = Setup::new(3);
        setup.settings.flush_ms = 1_000;
        let host = FakeHost::at(T0);
        SharedLease::new(LEASE_KEY).take(&host.worker(), "w9", T0 + 60_000, T0, Reentry::Renew);
        let mut usage = Usage::new("w1".into());
        for _ in 0..3 {
            usage.allowed("k1", "r", None, None, host.now_ms());
            usage.on_tick(&host, &setup.reporting());
            host.advance(1_000);
        }
        assert_eq!(log_state(&host), (Some(3), 4));
        usage.allowed("k1", "r", None, None, host.now_ms());
        usage.on_tick(&host, &setup.reporting());
        assert_eq!(log_state(&host), (Some(1), 2), "folded into one row");
        host.advance(1_000);
        usage.allowed("k2", "r", None, None, host.now_ms());
        usage.allowed("k3", "r", None, None, host.now_ms());
        usage.on_tick(&host, &setup.reporting());
        assert_eq!(log_state(&host), (Some(3), 3));
        host.advance(1_000);
        usage.allowed("k4", "r", None, None, host.now_ms());
        usage.allowed("k1", "r", None, None, host.now_ms());
        usage.on_tick(&host, &setup.reporting());
        assert_eq!(host.counted(Event::UsageDropped), 1, "k4: a fourth row");
        let rows = log_rows(&host.shared(LOG_KEY).unwrap());
        assert_eq!(rows.len(), 3);
        let k1 = rows.iter().find(|r| r.key_id == "k1").unwrap();
        assert_eq!(k1.counts.allowed, 5, "an existing row still merges");
    }

    #[test]
    fn rows_an_older_filter_left_join_the_next_batch() {
        let setup = Setup::new(1_000);
        let host = FakeHost::at(T0);
        let older = serde_json::to_vec(&vec![row("old", 60, 4)]).unwrap();
        host.put_shared(LEGACY_PENDING_KEY, &older);
        let mut usage = Usage::new("w1".into());
        usage.allowed("new", "r", None, None, T0);
        assert!(usage.on_tick(&host, &setup.reporting()).is_some());
        let batch = sent_batch(&host.dispatched()[0]);
        assert_eq!(allowed_total(&batch), 5);
        assert!(batch.rows.iter().any(|r| r.key_id == "old"));
        assert_eq!(host.shared(LEGACY_PENDING_KEY), Some(b"[]".to_vec()));
    }

    #[test]
    fn the_address_is_read_once_per_key_and_minute_and_rows_carry_it() {
        let address: IpAddr = "198.51.100.2".parse().unwrap();
        let mut usage = Usage::new("w1".into());
        assert!(usage.wants_address("k", T0));
        usage.allowed("k", "r", Some(address), None, T0);
        assert!(!usage.wants_address("k", T0));
        assert!(usage.wants_address("j", T0), "per key");
        let first = to_rows(usage.take_rows());
        assert!(
            !usage.wants_address("k", T0 + 1_000),
            "kept across a hand-over"
        );
        usage.allowed("k", "r", None, None, T0 + 1_000);
        let second = to_rows(usage.take_rows());
        assert_eq!(first[0].client_address.as_deref(), Some("198.51.100.2"));
        assert_eq!(second[0].client_address, first[0].client_address);
        assert!(usage.wants_address("k", T0 + 60_000), "the next minute");
        // Bounded: past MAX_ADDRESSES keys the worker forgets them and reads again.
        for i in 0..MAX_ADDRESSES {
            usage.allowed(&format!("k{i}"), "r", None, None, T0 + 60_000);
        }
        assert!(!usage.wants_address("k1", T0 + 60_000));
        usage.allowed("one-more", "r", None, None, T0 + 60_000);
        assert!(usage.wants_address("k1", T0 + 60_000));
        assert!(usage.addresses.len() <= MAX_ADDRESSES);
    }
}
