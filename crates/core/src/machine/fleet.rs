//! Fleet-wide limits: global rate limits, quotas and owner pools, enforced locally from
//! token **leases** taken in batches from the key service (`POST /v1/leases`).
//!
//! - Every bucket (`key:<id>`, `quota:<id>`, `pool:<owner>`) has one state per Envoy in
//!   shared data, so every worker spends from the same lease. States live in
//!   [`FLEET_SLOTS`] hashed slots of [`FLEET_WAYS`] ways each: the memory is bounded, and a
//!   full slot evicts its least recently used bucket (its unspent tokens are lost, which
//!   can only undercount).
//! - A request spends `cost` tokens (1 for rate buckets, the route's `cost` for a quota)
//!   from the lease with one read and one compare-and-swap write; it never waits for a
//!   callout while the lease has tokens.
//! - Asks are coalesced: one ask per bucket per Envoy is in flight at a time, marked in the
//!   bucket's state by an ask lease (`ask_until_ms`, lapsing like [`crate::cache::Lease`]
//!   when its worker dies). The worker that takes it asks ahead, when the lease falls below
//!   its low-water mark (half the last grant) or nears its end; one callout carries every
//!   bucket a request needs.
//! - A request whose bucket has no tokens and no information waits (bounded by
//!   [`FleetSettings::max_wait_ms`], at most [`MAX_WAITERS`] per worker) for the ask in
//!   flight; past the bound it is decided by the fallback. A bucket the service said is
//!   empty (`granted: 0`) refuses at once (429) until its answer's `valid_ms` has passed.
//! - Unspent tokens of a lease void at its `valid_ms`: they are never spent after it, and go
//!   back to the key service with the next ask (`returned`), so the fleet's count stays exact.
//!   Tokens still valid when a grant arrives are kept beside it (so a request that costs more
//!   than one lease can still be paid for by a few asks).
//! - When an ask fails (no answer, timeout, non-2xx, unreadable body) each Envoy falls back
//!   to a local bucket of `limit ÷ gateways` (the last known number of gateways on the
//!   bucket): `keygate.fleet_fallback` counts the requests decided so; asks go on every
//!   [`FALLBACK_RETRY_MS`] and the first answer ends the fallback.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::KeyService;
use crate::decision::DenyReason;
use crate::host::{Event, Host, LogLevel};
use crate::limits::{ratelimit_headers, RateLeft};
use crate::wire::RateLimit;

/// Shared-data slots holding bucket states.
pub const FLEET_SLOTS: u32 = 1024;
/// Bucket states per slot.
pub const FLEET_WAYS: usize = 8;
/// Requests one worker keeps waiting for a lease at most; more are decided at once.
pub const MAX_WAITERS: usize = 1024;
/// After a failed ask, the next one goes this much later (the fallback decides meanwhile).
pub const FALLBACK_RETRY_MS: u64 = 1_000;
/// Most tokens one worker takes from its Envoy's lease in one compare-and-swap beyond what the
/// request spends: a batch is an eighth of the last grant, at most this. The tokens are already
/// the Envoy's, so the fleet's bound is unchanged; a worker's requests spend them without a
/// shared-data read or write.
pub const STASH_BATCH_MAX: u64 = 64;
/// Buckets one worker keeps a batch of tokens for at most; beyond, requests spend from the
/// lease one by one.
pub const STASH_MAX_BUCKETS: usize = 256;
/// Longest bucket name kept (`pool:<owner>` with a long owner): longer ones are not limited
/// fleet-wide (logged).
pub const MAX_BUCKET_NAME: usize = crate::fleet::BUCKET_MAX_LEN;
/// Extra time an ask lease is held beyond the callout's timeout.
const ASK_GRACE_MS: u64 = 500;
const CAS_ROUNDS: usize = 16;
const GATEWAY_KEY: &str = "keygate.fleet.gateway";

pub use crate::fleet::{LeaseAsk, LeaseGrant, LeaseRequest, LeaseResponse};

/// What one bucket limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketLimit {
    /// A fleet-wide token bucket (a key's global limit or an owner's pool).
    Rate(RateLimit),
    /// A budget of `limit` per `period_s`, the current window starting at `window_start`.
    Quota {
        limit: u64,
        period_s: u64,
        window_start: u64,
    },
}

/// One bucket a request spends from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetBucket {
    pub name: Arc<str>,
    pub limit: BucketLimit,
}

impl FleetBucket {
    /// What a rate bucket has left, `remaining` tokens, for its `RateLimit` headers (`None`
    /// for a quota, whose headers are its own).
    fn rate_left(&self, remaining: u64) -> Option<RateLeft> {
        match &self.limit {
            BucketLimit::Rate(limit) => Some(RateLeft {
                limit: *limit,
                remaining,
                reset_s: 0,
            }),
            BucketLimit::Quota { .. } => None,
        }
    }
}

/// Every fleet-wide bucket of a key, worked out once per record: at most
/// [`MAX_KEY_BUCKETS`] (its global limit, its owner's pool, its quota).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetLimits {
    buckets: Vec<FleetBucket>,
}

/// Most buckets one key spends from (see [`FleetLimits::new`]).
const MAX_KEY_BUCKETS: usize = 3;

impl FleetLimits {
    /// The buckets of key `key_id`: its global limit, its quota and its owner's pool (each
    /// optional; invalid limits and over-long names are left out).
    pub fn new(
        key_id: &str,
        global: Option<RateLimit>,
        quota: Option<(u64, u64, u64)>,
        pool: Option<(&str, RateLimit)>,
    ) -> Option<Arc<Self>> {
        let mut buckets = Vec::new();
        if let Some(limit) = global.filter(RateLimit::is_valid) {
            buckets.push(FleetBucket {
                name: format!("key:{key_id}").into(),
                limit: BucketLimit::Rate(limit),
            });
        }
        if let Some((pool_owner, limit)) = pool.filter(|(_, l)| l.is_valid()) {
            buckets.push(FleetBucket {
                name: format!("pool:{pool_owner}").into(),
                limit: BucketLimit::Rate(limit),
            });
        }
        if let Some((limit, period_s, window_start)) = quota.filter(|q| q.0 > 0 && q.1 > 0) {
            buckets.push(FleetBucket {
                name: format!("quota:{key_id}").into(),
                limit: BucketLimit::Quota {
                    limit,
                    period_s,
                    window_start,
                },
            });
        }
        buckets.retain(|b| b.name.len() <= MAX_BUCKET_NAME);
        (!buckets.is_empty()).then(|| Arc::new(Self { buckets }))
    }
}

impl FleetLimits {
    /// The fleet-wide buckets a key record names.
    pub fn of(record: &crate::wire::KeyLookup) -> Option<Arc<Self>> {
        if record.global_limit.is_none() && record.quota.is_none() && record.pool.is_none() {
            return None;
        }
        Self::new(
            &record.id,
            record.global_limit,
            record
                .quota
                .filter(crate::fleet::Quota::is_valid)
                .map(|q| (q.limit, q.period_s, q.window_start)),
            record.pool.as_deref().map(|p| (p.owner.as_str(), p.limit)),
        )
    }
}

/// Where asks go and how long a request may wait for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSettings {
    /// Path of the lease endpoint (`/v1/leases`).
    pub path: String,
    /// Longest a request waits for a lease before the fallback decides it.
    pub max_wait_ms: u64,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            path: crate::fleet::LEASES_PATH.into(),
            max_wait_ms: 1_000,
        }
    }
}

/// Where asks go: the settings, the key service and its service token.
#[derive(Clone, Copy, Debug)]
pub struct Asking<'a> {
    pub settings: &'a FleetSettings,
    pub key_service: &'a KeyService,
    pub service_token: &'a str,
}

/// What the fleet buckets decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; what the first rate bucket has left, for its `RateLimit` headers.
    Allowed { ratelimit: Option<RateLeft> },
    /// Refused (429): a rate or quota denial and its headers.
    Limited {
        reason: DenyReason,
        headers: Vec<(&'static str, String)>,
    },
    /// No tokens yet: an ask is in flight; park the request (see [`Fleet::park`]).
    Wait,
}

/// One bucket's state in shared data.
#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    name: String,
    /// Unspent tokens of the lease.
    tokens: u64,
    valid_until_ms: u64,
    lease_ms: u64,
    last_grant: u32,
    /// Tokens of a voided lease, never spent, given back in the next ask.
    to_return: u64,
    gateways: u32,
    /// A quota's remaining budget as last told (`u64::MAX`: unknown).
    remaining: u64,
    /// An ask is in flight until then (0: none).
    ask_until_ms: u64,
    /// The service said empty: refuse until then.
    empty_until_ms: u64,
    /// Asks failed: the fallback decides until an ask succeeds.
    fallback: bool,
    /// Next ask not before (after a failure).
    retry_at_ms: u64,
    fb_tokens: f64,
    fb_last_ms: u64,
    last_used_ms: u64,
}

const STATE_FIXED: usize = 8 * 12 + 4 * 2 + 1;

impl State {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            gateways: 1,
            remaining: u64::MAX,
            ..Self::default()
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let name = self.name.as_bytes();
        out.push(name.len().min(255) as u8);
        out.extend_from_slice(&name[..name.len().min(255)]);
        for value in [
            self.tokens,
            self.valid_until_ms,
            self.lease_ms,
            self.to_return,
            self.remaining,
            self.ask_until_ms,
            self.empty_until_ms,
            self.retry_at_ms,
            self.fb_tokens.to_bits(),
            self.fb_last_ms,
            self.last_used_ms,
            0,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.last_grant.to_le_bytes());
        out.extend_from_slice(&self.gateways.to_le_bytes());
        out.push(u8::from(self.fallback));
    }

    fn decode(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let (&len, rest) = bytes.split_first()?;
        let len = usize::from(len);
        if rest.len() < len + STATE_FIXED {
            return None;
        }
        let name = std::str::from_utf8(&rest[..len]).ok()?.to_owned();
        let fixed = &rest[len..len + STATE_FIXED];
        let u = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&fixed[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let w = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&fixed[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let state = Self {
            name,
            tokens: u(0),
            valid_until_ms: u(1),
            lease_ms: u(2),
            to_return: u(3),
            remaining: u(4),
            ask_until_ms: u(5),
            empty_until_ms: u(6),
            retry_at_ms: u(7),
            fb_tokens: f64::from_bits(u(8)),
            fb_last_ms: u(9),
            last_used_ms: u(10),
            last_grant: w(96),
            gateways: w(100).max(1),
            fallback: fixed[104] != 0,
        };
        Some((state, &rest[len + STATE_FIXED..]))
    }
}

fn decode_slot(bytes: &[u8]) -> Vec<State> {
    let mut states = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() && states.len() < FLEET_WAYS {
        match State::decode(rest) {
            Some((state, more)) => {
                states.push(state);
                rest = more;
            }
            None => break,
        }
    }
    states
}

fn encode_slot(states: &[State]) -> Vec<u8> {
    let mut out = Vec::with_capacity(states.len() * (STATE_FIXED + 40));
    for state in states {
        state.encode(&mut out);
    }
    out
}

/// The shared-data key of the slot a bucket lives in (FNV-1a of its name).
pub fn slot_key(name: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("keygate.fleet.{}", hash % FLEET_SLOTS)
}

/// Creates every slot, so that every write to one is a compare-and-swap.
pub fn create_slots(host: &impl Host) {
    for slot in 0..FLEET_SLOTS {
        let key = format!("keygate.fleet.{slot}");
        if host.get_shared(&key).1.is_none() {
            let _ = host.set_shared(&key, &[], None);
        }
    }
}

/// Reads a bucket's state, lets `change` work on it, writes it back (compare-and-swap,
/// retried); `None` when every round was lost.
fn update<T>(
    host: &impl Host,
    name: &str,
    now: u64,
    mut change: impl FnMut(&mut State) -> T,
) -> Option<T> {
    let key = slot_key(name);
    for _ in 0..CAS_ROUNDS {
        let (value, cas) = host.get_shared(&key);
        let mut states = value.as_deref().map(decode_slot).unwrap_or_default();
        let index = match states.iter().position(|s| s.name == name) {
            Some(index) => index,
            None => {
                if states.len() >= FLEET_WAYS {
                    // The least recently used bucket makes room.
                    if let Some(oldest) = states
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, s)| s.last_used_ms)
                        .map(|(i, _)| i)
                    {
                        states.remove(oldest);
                    }
                }
                states.push(State::new(name));
                states.len() - 1
            }
        };
        let state = &mut states[index];
        let out = change(state);
        state.last_used_ms = state.last_used_ms.max(now);
        if host.set_shared(&key, &encode_slot(&states), cas).is_ok() {
            return Some(out);
        }
    }
    None
}

/// How one bucket was spent from.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Spent {
    /// From the lease; tokens left.
    Lease(u64),
    /// From the local fallback bucket; tokens left.
    Fallback(u64),
    /// Refused: the lease is empty (or the fallback share spent); ms until it may refill.
    Refused(u64),
    /// Nothing to spend yet: an ask is in flight.
    Wait,
}

/// One worker's side of the fleet limits: its gateway id, its asks in flight and the
/// requests parked on them.
pub struct Fleet<W> {
    gateway: String,
    /// Asks in flight by callout token: the buckets each carried.
    asks: HashMap<u32, Vec<FleetBucket>>,
    /// Requests waiting for a lease: (deadline, waiter).
    waiters: Vec<(u64, W)>,
    /// Asks are queued for [`Fleet::flush`] instead of sent from the request (see
    /// [`Fleet::deferred`]).
    defer: bool,
    queued: Vec<(LeaseAsk, FleetBucket)>,
    /// Tokens this worker took from its Envoy's leases ahead of its requests, by bucket name.
    stash: HashMap<Arc<str>, Stash>,
}

/// Tokens one worker took from a bucket's lease in one batch (see [`STASH_BATCH_MAX`]): its
/// requests spend them without touching shared data, until they run out or the lease they
/// came from voids (then they go back, see [`Fleet::sweep`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stash {
    tokens: u64,
    /// The lease's end: the tokens void then.
    valid_until_ms: u64,
    /// Spent from until then: the lease's last quarter, when an ask goes out ahead, is spent
    /// through shared data (the asks are decided there).
    use_until_ms: u64,
    /// The lease's tokens left in shared data when these were taken (for `RateLimit`'s
    /// remaining count).
    shared_left: u64,
}

impl<W> Fleet<W> {
    /// This Envoy's gateway id: the first worker's `candidate` (a random id), kept in shared
    /// data so every worker of the Envoy uses the same one.
    pub fn new(host: &impl Host, candidate: String) -> Self {
        create_slots(host);
        if host.get_shared(GATEWAY_KEY).0.is_none() {
            let _ = host.set_shared(GATEWAY_KEY, candidate.as_bytes(), None);
        }
        let gateway = host
            .get_shared(GATEWAY_KEY)
            .0
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|id| !id.is_empty())
            .unwrap_or(candidate);
        Self {
            gateway,
            asks: HashMap::new(),
            waiters: Vec::new(),
            defer: false,
            queued: Vec::new(),
            stash: HashMap::new(),
        }
    }

    /// Asks wait in a queue until [`Fleet::flush`], to be sent from a context that outlives
    /// the request that asked (proxy-wasm drops the answer to a callout whose stream ended,
    /// and the tokens granted by it would be lost).
    pub fn deferred(mut self) -> Self {
        self.defer = true;
        self
    }

    /// Are asks waiting to be sent?
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Sends the queued asks in one callout (at most [`crate::fleet::LEASES_MAX_ENTRIES`]
    /// buckets; more wait for the next flush).
    pub fn flush(&mut self, host: &impl Host, asking: &Asking) -> Option<u32> {
        if self.queued.is_empty() {
            return None;
        }
        let take = self.queued.len().min(crate::fleet::LEASES_MAX_ENTRIES);
        let batch: Vec<(LeaseAsk, FleetBucket)> = self.queued.drain(..take).collect();
        let asks = batch
            .iter()
            .map(|(ask, bucket)| (ask.clone(), bucket))
            .collect();
        self.send(host, asking, asks)
    }

    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Spends from every bucket of `limits` for one request (`cost` from a quota, 1 from a
    /// rate bucket). `may_wait`: false once the request has waited its time, so that the
    /// fallback decides instead. Returns the verdict and the token of an ask sent now (to
    /// register as [`crate::machine::callouts::Callout::Lease`]).
    pub fn check(
        &mut self,
        host: &impl Host,
        asking: &Asking,
        limits: &FleetLimits,
        cost: u32,
        may_wait: bool,
    ) -> (Verdict, Option<u32>) {
        self.check_at(host, asking, limits, cost, may_wait, host.now_ms())
    }

    /// [`Fleet::check`] at `now` (the time the caller read for this callback).
    pub fn check_at(
        &mut self,
        host: &impl Host,
        asking: &Asking,
        limits: &FleetLimits,
        cost: u32,
        may_wait: bool,
        now: u64,
    ) -> (Verdict, Option<u32>) {
        let ask_until = now + asking.key_service.timeout_ms + ASK_GRACE_MS;
        let mut to_ask: Vec<(LeaseAsk, &FleetBucket)> = Vec::new();
        // What each bucket gave, to give back if a later one refuses (on the stack: nothing
        // is allocated for a request its worker's batches decide).
        let mut spent: [Option<(&FleetBucket, u64, Took)>; MAX_KEY_BUCKETS] =
            [None; MAX_KEY_BUCKETS];
        let mut ratelimit = None;
        let mut verdict = None;
        for (i, bucket) in limits.buckets.iter().take(MAX_KEY_BUCKETS).enumerate() {
            let amount = match bucket.limit {
                BucketLimit::Rate(_) => 1,
                BucketLimit::Quota { .. } => u64::from(cost.max(1)),
            };
            if let Some(left) = self.spend_stashed(&bucket.name, amount, now) {
                spent[i] = Some((bucket, amount, Took::Stash));
                ratelimit = ratelimit.or_else(|| bucket.rate_left(left));
                continue;
            }
            // What is left of this worker's batch goes back into the lease with this write.
            let held = self.stash.remove(&bucket.name);
            let room = self.stash.len() < STASH_MAX_BUCKETS;
            let result = update(host, &bucket.name, now, |state| {
                if let Some(held) = held {
                    fold_back(state, &held, now);
                }
                let (spent, ask) = spend(state, &bucket.limit, amount, may_wait, now, ask_until);
                let batch = match spent {
                    Spent::Lease(_) if room => take_batch(state),
                    _ => 0,
                };
                let use_until = state.valid_until_ms.saturating_sub(state.lease_ms / 4);
                (spent, ask, batch, (state.valid_until_ms, use_until))
            });
            let Some((outcome, ask, batch, (valid_until_ms, use_until_ms))) = result else {
                if let Some(held) = held {
                    // Not written back: still this worker's.
                    self.stash.insert(bucket.name.clone(), held);
                }
                host.count(Event::RateLimitContention, 1);
                verdict = Some(Verdict::Limited {
                    reason: DenyReason::Overloaded,
                    headers: Vec::new(),
                });
                break;
            };
            if let Some(ask) = ask {
                to_ask.push((ask, bucket));
            }
            if batch > 0 {
                let left = match outcome {
                    Spent::Lease(left) => left,
                    _ => 0,
                };
                self.stash.insert(
                    bucket.name.clone(),
                    Stash {
                        tokens: batch,
                        valid_until_ms,
                        use_until_ms,
                        shared_left: left,
                    },
                );
            }
            match outcome {
                Spent::Lease(left) => {
                    let left = left + batch;
                    spent[i] = Some((bucket, amount, Took::Lease { batch }));
                    ratelimit = ratelimit.or_else(|| bucket.rate_left(left));
                }
                Spent::Fallback(left) => {
                    host.count(Event::FleetFallback, 1);
                    spent[i] = Some((bucket, amount, Took::Fallback));
                    ratelimit = ratelimit.or_else(|| bucket.rate_left(left));
                }
                Spent::Refused(wait_ms) => {
                    verdict = Some(limited(&bucket.limit, wait_ms, now));
                    break;
                }
                Spent::Wait => {
                    verdict = Some(Verdict::Wait);
                    break;
                }
            }
        }
        let verdict = match verdict {
            None => Verdict::Allowed { ratelimit },
            Some(verdict) => {
                // Not allowed: what was spent from the buckets before goes back.
                for (bucket, amount, took) in spent.into_iter().flatten() {
                    if took == Took::Stash {
                        if let Some(stash) = self.stash.get_mut(&bucket.name) {
                            stash.tokens += amount;
                        }
                        continue;
                    }
                    // A batch taken for this request goes back too.
                    let batch = match took {
                        Took::Lease { batch } if batch > 0 => self.stash.remove(&bucket.name),
                        _ => None,
                    };
                    let _ = update(host, &bucket.name, now, |state| {
                        if took == Took::Fallback {
                            state.fb_tokens += amount as f64;
                        } else if state.valid_until_ms > now {
                            state.tokens += amount;
                        }
                        if let Some(batch) = &batch {
                            fold_back(state, batch, now);
                        }
                    });
                }
                verdict
            }
        };
        if self.defer {
            self.queued.extend(
                to_ask
                    .into_iter()
                    .map(|(ask, bucket)| (ask, bucket.clone())),
            );
            return (verdict, None);
        }
        let token = self.send(host, asking, to_ask);
        (verdict, token)
    }

    /// Spends `amount` from this worker's batch of `bucket`'s tokens when it holds enough
    /// that are still valid; the tokens left (in the batch and, as last seen, in the lease).
    fn spend_stashed(&mut self, bucket: &str, amount: u64, now: u64) -> Option<u64> {
        let stash = self.stash.get_mut(bucket)?;
        if stash.use_until_ms <= now || stash.tokens < amount {
            return None;
        }
        stash.tokens -= amount;
        Some(stash.tokens + stash.shared_left)
    }

    /// On the tick: batches whose lease voided give their tokens back to their bucket's state
    /// (returned to the key service with its next ask), so that none is lost; empty ones are
    /// dropped.
    pub fn sweep(&mut self, host: &impl Host, now: u64) {
        let void: Vec<(Arc<str>, u64)> = self
            .stash
            .iter()
            .filter(|(_, stash)| stash.valid_until_ms <= now || stash.tokens == 0)
            .map(|(name, stash)| (name.clone(), stash.tokens))
            .collect();
        for (name, tokens) in void {
            self.stash.remove(&name);
            if tokens == 0 {
                continue;
            }
            let held = Stash {
                tokens,
                ..Stash::default()
            };
            let returned = update(host, &name, now, |state| fold_back(state, &held, now));
            if returned.is_none() {
                // Lost to contention: counted by the key service as spent (never an overshoot).
                host.count(Event::RateLimitContention, 1);
            }
        }
    }

    /// Does this worker hold batches of tokens (which [`Fleet::sweep`] must see on the tick)?
    pub fn has_stash(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Sends one ask for `leases`; on failure every bucket in it goes to the fallback.
    fn send(
        &mut self,
        host: &impl Host,
        asking: &Asking,
        asks: Vec<(LeaseAsk, &FleetBucket)>,
    ) -> Option<u32> {
        if asks.is_empty() {
            return None;
        }
        let buckets: Vec<FleetBucket> = asks.iter().map(|(_, b)| (*b).clone()).collect();
        let leases: Vec<LeaseAsk> = asks.into_iter().map(|(ask, _)| ask).collect();
        let body = serde_json::to_vec(&LeaseRequest {
            gateway: self.gateway.clone(),
            leases,
        })
        .unwrap_or_default();
        let key_service = asking.key_service;
        let authorization = format!("Bearer {}", asking.service_token);
        let length = body.len().to_string();
        let headers = [
            (":method", "POST"),
            (":path", asking.settings.path.as_str()),
            (":authority", key_service.authority.as_str()),
            ("authorization", authorization.as_str()),
            ("content-type", "application/json"),
            ("content-length", length.as_str()),
        ];
        match host.dispatch_http_call(
            &key_service.cluster,
            &headers,
            Some(&body),
            Duration::from_millis(key_service.timeout_ms),
        ) {
            Ok(token) => {
                self.asks.insert(token, buckets);
                Some(token)
            }
            Err(err) => {
                host.log(
                    LogLevel::Warn,
                    &format!("fleet: cannot ask for leases: {err:?}; falling back"),
                );
                fail(host, &buckets);
                None
            }
        }
    }

    /// An ask answered (or failed: no status, non-2xx, unreadable). Returns every parked
    /// request, to be decided again (see [`Fleet::check`]).
    pub fn on_response(&mut self, host: &impl Host, token: u32, body_size: usize) -> Vec<W> {
        let Some(buckets) = self.asks.remove(&token) else {
            return Vec::new();
        };
        let now = host.now_ms();
        let status = host.call_response_status();
        let answer = match status {
            Some(200..=299) => host
                .call_response_body(body_size, 256 * 1024)
                .and_then(|body| serde_json::from_slice::<LeaseResponse>(&body).ok()),
            _ => None,
        };
        match answer {
            Some(answer) => {
                for bucket in &buckets {
                    match answer.leases.iter().find(|g| *g.bucket == *bucket.name) {
                        Some(grant) => {
                            let _ = update(host, &bucket.name, now, |state| {
                                grant_into(state, &bucket.limit, grant, now)
                            });
                        }
                        None => fail(host, std::slice::from_ref(bucket)),
                    }
                }
            }
            None => {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "fleet: the key service did not grant leases ({}); falling back",
                        status.map_or_else(|| "no answer".to_owned(), |s| format!("status {s}"))
                    ),
                );
                fail(host, &buckets);
            }
        }
        self.wake_all()
    }

    /// Parks a request until a lease arrives or `max_wait_ms` passes; `false` (the request
    /// must be decided now, without waiting) when too many wait already.
    pub fn park(&mut self, waiter: W, now_ms: u64, settings: &FleetSettings) -> Result<(), W> {
        if self.waiters.len() >= MAX_WAITERS {
            return Err(waiter);
        }
        self.waiters.push((now_ms + settings.max_wait_ms, waiter));
        Ok(())
    }

    /// Every tick while requests wait: all of them, to be decided again (an ask on another
    /// worker may have been answered), each with whether it may still wait.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<(W, bool)> {
        self.waiters
            .drain(..)
            .map(|(deadline, waiter)| (waiter, now_ms < deadline))
            .collect()
    }

    fn wake_all(&mut self) -> Vec<W> {
        self.waiters.drain(..).map(|(_, waiter)| waiter).collect()
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Drops parked requests that ended.
    pub fn forget(&mut self, gone: impl Fn(&W) -> bool) {
        self.waiters.retain(|(_, waiter)| !gone(waiter));
    }
}

/// Marks `names` failed: the fallback decides for them until an ask succeeds.
fn fail(host: &impl Host, buckets: &[FleetBucket]) {
    let now = host.now_ms();
    host.count(Event::FleetAskFailure, 1);
    for bucket in buckets {
        let _ = update(host, &bucket.name, now, |state| {
            if !state.fallback {
                state.fallback = true;
                state.fb_tokens = f64::NAN; // filled on first use, from the limit
                state.fb_last_ms = now;
            }
            state.ask_until_ms = 0;
            state.retry_at_ms = now + FALLBACK_RETRY_MS;
        });
    }
}

/// An empty rate bucket is asked again after the time one token takes to come back, not
/// less than this (a quota stays empty for the answer's `valid_ms`).
pub const MIN_EMPTY_MS: u64 = 50;

/// A grant lands in a bucket's state.
fn grant_into(state: &mut State, limit: &BucketLimit, grant: &LeaseGrant, now: u64) {
    if state.valid_until_ms <= now {
        state.to_return = state.to_return.saturating_add(state.tokens);
        state.tokens = 0;
    }
    state.tokens = state.tokens.saturating_add(u64::from(grant.granted));
    state.last_grant = grant.granted;
    state.lease_ms = u64::from(grant.valid_ms);
    state.valid_until_ms = now + u64::from(grant.valid_ms);
    state.gateways = grant.gateways.max(1);
    if let Some(remaining) = grant.remaining {
        state.remaining = remaining;
    }
    state.ask_until_ms = 0;
    state.fallback = false;
    state.retry_at_ms = 0;
    let empty_ms = match limit {
        BucketLimit::Rate(limit) => {
            ((1000.0 / limit.requests_per_second).ceil() as u64).min(u64::from(grant.valid_ms))
        }
        BucketLimit::Quota { .. } => u64::from(grant.valid_ms),
    };
    state.empty_until_ms = if grant.granted == 0 {
        now + empty_ms.max(MIN_EMPTY_MS)
    } else {
        0
    };
}

/// The tokens one ask wants for a bucket: generous, since the key service sizes the lease
/// from the bucket's rate, what is left of a quota and the number of gateways; at least
/// what the request costs.
fn want(limit: &BucketLimit, amount: u64) -> u32 {
    let base = match limit {
        // Half a second of the bucket's rate, at most its burst.
        BucketLimit::Rate(limit) => {
            ((limit.requests_per_second / 2.0).ceil() as u64).clamp(1, u64::from(limit.burst))
        }
        BucketLimit::Quota { .. } => u64::from(crate::fleet::QUOTA_LEASE_MAX),
    };
    base.max(amount).min(u64::from(u32::MAX)) as u32
}

/// Spends `amount` from one bucket's state at `now`; also answers the ask this worker takes
/// now (if it takes one).
fn spend(
    state: &mut State,
    limit: &BucketLimit,
    amount: u64,
    may_wait: bool,
    now: u64,
    ask_until: u64,
) -> (Spent, Option<LeaseAsk>) {
    if state.valid_until_ms <= now && state.tokens > 0 {
        // The lease is void: its unspent tokens are never spent, and go back with the next ask.
        state.to_return = state.to_return.saturating_add(state.tokens);
        state.tokens = 0;
    }
    let asking = state.ask_until_ms > now;
    let outcome = if state.tokens >= amount {
        state.tokens -= amount;
        Spent::Lease(state.tokens)
    } else if state.fallback || (!may_wait && state.empty_until_ms <= now) {
        if !state.fallback {
            // Waited its time for an ask that did not come back: decided locally.
            state.fallback = true;
            state.fb_tokens = f64::NAN;
            state.fb_last_ms = now;
        }
        fallback_take(state, limit, amount, now)
    } else if state.empty_until_ms > now {
        Spent::Refused(state.empty_until_ms - now)
    } else {
        Spent::Wait
    };
    let low_water = u64::from(state.last_grant / 2);
    let ending = state.valid_until_ms.saturating_sub(now) < state.lease_ms / 4;
    let wants_more = match outcome {
        Spent::Lease(left) => (left <= low_water || ending) && now >= state.retry_at_ms,
        Spent::Fallback(_) => now >= state.retry_at_ms,
        Spent::Refused(_) => false,
        Spent::Wait => true,
    };
    let ask = (wants_more && !asking).then(|| {
        state.ask_until_ms = ask_until;
        let returned = state.to_return.min(u64::from(u32::MAX)) as u32;
        state.to_return -= u64::from(returned);
        LeaseAsk {
            bucket: state.name.clone(),
            want: want(limit, amount),
            returned,
        }
    });
    (outcome, ask)
}

/// Where a request's tokens came from (to give them back if a later bucket refuses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Took {
    Stash,
    /// From the lease, with a batch of `batch` tokens taken for the worker beside.
    Lease {
        batch: u64,
    },
    Fallback,
}

/// A worker's batch goes back into its bucket's state: into the lease it came from while that
/// is still running, otherwise to be returned to the key service with the next ask (a void
/// lease's tokens are never spent).
fn fold_back(state: &mut State, held: &Stash, now: u64) {
    if held.valid_until_ms > now && held.valid_until_ms == state.valid_until_ms {
        state.tokens = state.tokens.saturating_add(held.tokens);
    } else {
        state.to_return = state.to_return.saturating_add(held.tokens);
    }
}

/// A worker's batch from a lease it just spent from: an eighth of the last grant, at most
/// [`STASH_BATCH_MAX`], never more than the lease has left (and none from a small lease, so
/// that a key's few tokens are not held by one worker while the other is refused).
fn take_batch(state: &mut State) -> u64 {
    let batch = (u64::from(state.last_grant) / 8)
        .min(STASH_BATCH_MAX)
        .min(state.tokens);
    if batch < 2 {
        return 0;
    }
    state.tokens -= batch;
    batch
}

/// The local fallback: a token bucket of `limit ÷ gateways`, or for a quota a share of the
/// last known remaining budget (`remaining ÷ gateways`) that does not refill.
fn fallback_take(state: &mut State, limit: &BucketLimit, amount: u64, now: u64) -> Spent {
    let gateways = f64::from(state.gateways.max(1));
    match limit {
        BucketLimit::Rate(limit) => {
            let share = crate::fleet::fallback_limit(limit, state.gateways);
            let rate = share.requests_per_second;
            let burst = f64::from(share.burst);
            if state.fb_tokens.is_nan() {
                state.fb_tokens = burst;
            } else {
                let elapsed = now.saturating_sub(state.fb_last_ms) as f64 / 1000.0;
                state.fb_tokens = (state.fb_tokens + elapsed * rate).min(burst);
            }
            state.fb_last_ms = now;
            let amount = amount as f64;
            if state.fb_tokens >= amount {
                state.fb_tokens -= amount;
                Spent::Fallback(state.fb_tokens as u64)
            } else {
                let wait_s = (amount - state.fb_tokens) / rate;
                Spent::Refused((wait_s * 1000.0).ceil() as u64)
            }
        }
        BucketLimit::Quota {
            limit,
            period_s,
            window_start,
        } => {
            if state.fb_tokens.is_nan() {
                let known = if state.remaining == u64::MAX {
                    *limit
                } else {
                    state.remaining
                };
                state.fb_tokens = (known as f64 / gateways).floor();
            }
            let amount = amount as f64;
            if state.fb_tokens >= amount {
                state.fb_tokens -= amount;
                Spent::Fallback(state.fb_tokens as u64)
            } else {
                Spent::Refused(window_left_s(*period_s, *window_start, now / 1000) * 1000)
            }
        }
    }
}

/// Seconds until the quota window that holds `now_s` ends.
fn window_left_s(period_s: u64, window_start: u64, now_s: u64) -> u64 {
    let period = period_s.max(1);
    if now_s < window_start {
        return window_start - now_s;
    }
    period - (now_s - window_start) % period
}

/// The 429 for a bucket refused `wait_ms` before it may refill.
fn limited(limit: &BucketLimit, wait_ms: u64, now: u64) -> Verdict {
    match limit {
        BucketLimit::Rate(limit) => {
            let retry_after_s = wait_ms.div_ceil(1000).max(1);
            let (policy, state) = ratelimit_headers(limit, 0, retry_after_s);
            Verdict::Limited {
                reason: DenyReason::RateLimited { retry_after_s },
                headers: vec![
                    ("retry-after", retry_after_s.to_string()),
                    ("ratelimit-policy", policy),
                    ("ratelimit", state),
                ],
            }
        }
        BucketLimit::Quota {
            limit,
            period_s,
            window_start,
        } => {
            let reset_s = window_left_s(*period_s, *window_start, now / 1000).max(1);
            let (policy, state) = quota_headers(*limit, *period_s, 0, reset_s);
            Verdict::Limited {
                reason: DenyReason::QuotaExhausted {
                    retry_after_s: reset_s,
                },
                headers: vec![
                    ("retry-after", reset_s.to_string()),
                    ("ratelimit-policy", policy),
                    ("ratelimit", state),
                ],
            }
        }
    }
}

/// The IETF rate-limit headers of a quota: `RateLimit-Policy: "quota";q=<limit>;w=<period>`
/// and `RateLimit: "quota";r=<remaining>;t=<seconds until the window ends>`.
pub fn quota_headers(limit: u64, period_s: u64, remaining: u64, reset_s: u64) -> (String, String) {
    (
        format!("\"quota\";q={limit};w={period_s}"),
        format!("\"quota\";r={remaining};t={reset_s}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Effect, FakeHost};

    const T0: u64 = 1_800_000_000_000;
    /// The body size handed with every scripted answer (the fake cuts the body to it).
    const BODY: usize = 64 * 1024;

    fn rate(rps: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
        }
    }

    struct Setup {
        settings: FleetSettings,
        key_service: KeyService,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                settings: FleetSettings::default(),
                key_service: KeyService::default(),
            }
        }

        fn asking(&self) -> Asking<'_> {
            Asking {
                settings: &self.settings,
                key_service: &self.key_service,
                service_token: "svc",
            }
        }
    }

    fn global(rps: f64, burst: u32) -> Arc<FleetLimits> {
        FleetLimits::new("k1", Some(rate(rps, burst)), None, None).unwrap()
    }

    fn sent(host: &FakeHost) -> Vec<LeaseRequest> {
        host.dispatched()
            .iter()
            .map(|effect| {
                let Effect::Dispatch { body, headers, .. } = effect else {
                    panic!("{effect:?}");
                };
                assert!(headers.contains(&("authorization".into(), "Bearer svc".into())));
                assert!(headers.contains(&(":path".into(), "/v1/leases".into())));
                serde_json::from_slice(body.as_deref().unwrap()).unwrap()
            })
            .collect()
    }

    fn grant(bucket: &str, granted: u32, valid_ms: u32, gateways: u32) -> LeaseGrant {
        LeaseGrant {
            bucket: bucket.into(),
            granted,
            valid_ms,
            gateways,
            remaining: None,
        }
    }

    fn answer(host: &FakeHost, grants: Vec<LeaseGrant>) {
        let body = serde_json::to_vec(&LeaseResponse { leases: grants }).unwrap();
        host.answer(Some(200), Some(&body));
    }

    fn allowed(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Allowed { .. })
    }

    #[test]
    fn limits_of_a_record() {
        assert_eq!(FleetLimits::new("k", None, None, None), None);
        let all = FleetLimits::new(
            "k",
            Some(rate(10.0, 5)),
            Some((1_000, 3_600, 0)),
            Some(("acme", rate(50.0, 10))),
        )
        .unwrap();
        let names: Vec<&str> = all.buckets.iter().map(|b| &*b.name).collect();
        assert_eq!(names, ["key:k", "pool:acme", "quota:k"]);
        // Invalid limits and over-long names are left out.
        let long = "o".repeat(MAX_BUCKET_NAME);
        assert_eq!(
            FleetLimits::new(
                "k",
                Some(rate(0.0, 5)),
                Some((0, 60, 0)),
                Some((&long, rate(1.0, 1)))
            ),
            None
        );
    }

    #[test]
    fn a_record_names_its_buckets() {
        let mut record: crate::wire::KeyLookup = serde_json::from_value(serde_json::json!({
            "id": "abc", "digest": "00", "subject": "s", "scopes": [], "status": "active"
        }))
        .unwrap();
        assert_eq!(FleetLimits::of(&record), None);
        record.global_limit = Some(rate(5.0, 5));
        record.quota = Some(crate::fleet::Quota {
            limit: 100,
            period_s: 60,
            window_start: 0,
        });
        record.pool = Some(Box::new(crate::fleet::PoolRef {
            owner: "acme".into(),
            limit: rate(50.0, 50),
        }));
        let limits = FleetLimits::of(&record).unwrap();
        let names: Vec<&str> = limits.buckets.iter().map(|b| &*b.name).collect();
        assert_eq!(names, ["key:abc", "pool:acme", "quota:abc"]);
        // The identity a record decides carries them.
        let prepared = crate::decision::PreparedRecord::of(&record);
        let identity = crate::decision::authorize_proven(
            &record,
            &prepared,
            &crate::binding::Requirement::from(std::sync::Arc::from(Vec::new())),
            None,
            0,
        )
        .unwrap();
        assert_eq!(identity.fleet, Some(limits));
        // An invalid quota is left out.
        record.quota = Some(crate::fleet::Quota {
            limit: 0,
            period_s: 60,
            window_start: 0,
        });
        assert_eq!(FleetLimits::of(&record).unwrap().buckets.len(), 2);
    }

    #[test]
    fn slots_round_trip_and_stay_bounded() {
        let mut a = State::new("key:a");
        a.tokens = 7;
        a.fb_tokens = f64::NAN;
        a.fallback = true;
        a.gateways = 3;
        let b = State::new("pool:someone");
        let bytes = encode_slot(&[a.clone(), b.clone()]);
        let back = decode_slot(&bytes);
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].tokens, 7);
        assert!(back[0].fallback && back[0].fb_tokens.is_nan());
        assert_eq!(back[1], b);
        assert!(decode_slot(b"garbage").is_empty());
        assert!(
            decode_slot(&bytes[..bytes.len() - 1]).len() == 1,
            "a cut state is dropped"
        );
        // A full slot evicts its least recently used bucket.
        let host = FakeHost::at(T0);
        let target = "key:target";
        let colliding: Vec<String> = (0..)
            .map(|i| format!("key:other{i}"))
            .filter(|n| slot_key(n) == slot_key(target))
            .take(FLEET_WAYS)
            .collect();
        for (i, name) in colliding.iter().enumerate() {
            update(&host, name, T0 + i as u64, |s| s.tokens = 1).unwrap();
        }
        update(&host, target, T0 + 100, |s| s.tokens = 2).unwrap();
        let states = decode_slot(&host.shared(&slot_key(target)).unwrap());
        assert_eq!(states.len(), FLEET_WAYS);
        assert!(
            !states.iter().any(|s| s.name == colliding[0]),
            "oldest evicted"
        );
        assert!(states.iter().any(|s| s.name == target));
    }

    #[test]
    fn a_first_request_waits_for_one_ask_and_spends_the_grant() {
        let setup = Setup::new();
        let one = FakeHost::at(T0);
        let two = one.worker();
        let mut f1: Fleet<u32> = Fleet::new(&one, "gw-a".into());
        let mut f2: Fleet<u32> = Fleet::new(&two, "gw-b".into());
        assert_eq!(f2.gateway(), "gw-a", "one gateway id per Envoy");
        let limits = global(100.0, 50);
        let (verdict, token) = f1.check(&one, &setup.asking(), &limits, 1, true);
        assert_eq!(verdict, Verdict::Wait);
        let token = token.unwrap();
        assert!(f1.park(1, T0, &setup.settings).is_ok());
        // Worker two: the ask is in flight already, it waits without asking again.
        let (verdict, none) = f2.check(&two, &setup.asking(), &limits, 1, true);
        assert_eq!((verdict, none), (Verdict::Wait, None));
        assert!(f2.park(2, T0, &setup.settings).is_ok());
        let asks = sent(&one);
        assert_eq!(asks.len(), 1);
        assert_eq!(asks[0].gateway, "gw-a");
        assert_eq!(
            asks[0].leases,
            vec![LeaseAsk {
                bucket: "key:k1".into(),
                want: 50,
                returned: 0
            }]
        );
        assert!(two.dispatched().is_empty());
        answer(&one, vec![grant("key:k1", 10, 5_000, 3)]);
        assert_eq!(f1.on_response(&one, token, BODY), vec![1]);
        assert!(!f1.has_waiters());
        // Worker two finds the grant on its tick.
        let woken = f2.on_tick(T0 + 10);
        assert_eq!(woken, vec![(2, true)]);
        let mut left = Vec::new();
        for host in [&one, &two, &one, &two, &one] {
            let fleet = if std::ptr::eq(host, &one) {
                &mut f1
            } else {
                &mut f2
            };
            let (verdict, token) = fleet.check(host, &setup.asking(), &limits, 1, true);
            let Verdict::Allowed {
                ratelimit: Some(rate),
            } = verdict
            else {
                panic!("{verdict:?}");
            };
            let (policy, state) = rate.headers();
            assert_eq!(policy, "\"keygate\";q=50;w=1");
            left.push((state, token.is_some()));
        }
        // Ten tokens: at five left (the low-water mark) one ask goes ahead, once.
        assert_eq!(left[0], ("\"keygate\";r=9;t=0".into(), false));
        assert_eq!(left[4], ("\"keygate\";r=5;t=0".into(), true));
        let (verdict, token) = f2.check(&two, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        assert_eq!(token, None, "coalesced: the ask is in flight");
    }

    #[test]
    fn an_empty_bucket_refuses_until_a_token_may_be_back() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        // Two a second: a token is back in 500 ms.
        let limits = global(2.0, 2);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        answer(&host, vec![grant("key:k1", 0, 2_000, 1)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert_eq!(token, None);
        let Verdict::Limited { reason, headers } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(reason, DenyReason::RateLimited { retry_after_s: 1 });
        assert_eq!(headers[0], ("retry-after", "1".into()));
        assert_eq!(headers[2], ("ratelimit", "\"keygate\";r=0;t=1".into()));
        host.advance(499);
        assert!(matches!(
            fleet.check(&host, &setup.asking(), &limits, 1, true),
            (Verdict::Limited { .. }, None)
        ));
        host.advance(1);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert_eq!(verdict, Verdict::Wait);
        assert!(token.is_some(), "asks again once a token may be back");
        // A fast bucket is still not asked more often than every MIN_EMPTY_MS.
        let fast = FleetLimits::new("k2", Some(rate(1_000.0, 10)), None, None).unwrap();
        let (_, token) = fleet.check(&host, &setup.asking(), &fast, 1, true);
        answer(&host, vec![grant("key:k2", 0, 2_000, 1)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        host.advance(MIN_EMPTY_MS - 1);
        assert!(matches!(
            fleet.check(&host, &setup.asking(), &fast, 1, true).0,
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn a_failed_ask_falls_back_to_a_share_of_the_limit() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = global(30.0, 30);
        // A first grant tells there are three gateways.
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        answer(&host, vec![grant("key:k1", 2, 1_000, 3)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        // The ask ahead times out.
        host.answer(None, None);
        assert!(fleet.park(7, host.now_ms(), &setup.settings).is_ok());
        assert_eq!(fleet.on_response(&host, token.unwrap(), BODY), vec![7]);
        assert_eq!(host.counted(Event::FleetAskFailure), 1);
        // One lease token left, then the fallback: 30 ÷ 3 = 10 at once, 10 per second.
        let mut allowed_now = 0;
        for _ in 0..20 {
            let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
            assert_eq!(token, None, "no ask before the retry time");
            if allowed(&verdict) {
                allowed_now += 1;
            }
        }
        assert_eq!(allowed_now, 1 + 10);
        assert_eq!(host.counted(Event::FleetFallback), 10);
        host.advance(500);
        // Half a second: five more; at one second an ask is due again.
        let mut tokens = Vec::new();
        let mut more = 0;
        for _ in 0..10 {
            let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
            if allowed(&verdict) {
                more += 1;
            }
            tokens.extend(token);
        }
        assert_eq!(more, 5, "half a second of 10 per second");
        assert!(tokens.is_empty(), "the retry is 1 s after the failure");
        host.advance(500);
        for _ in 0..10 {
            let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
            if allowed(&verdict) {
                more += 1;
            }
            tokens.extend(token);
        }
        assert_eq!(more, 10);
        assert_eq!(tokens.len(), 1, "one ask at the retry time");
        // It is answered: the fallback ends.
        answer(&host, vec![grant("key:k1", 5, 1_000, 3)]);
        fleet.on_response(&host, tokens[0], BODY);
        let before = host.counted(Event::FleetFallback);
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        assert_eq!(host.counted(Event::FleetFallback), before);
    }

    #[test]
    fn a_refused_dispatch_and_an_error_status_fall_back() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = global(10.0, 4);
        host.refuse_next_dispatch(crate::host::HostError::Refused("BadArgument"));
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert_eq!((verdict, token), (Verdict::Wait, None));
        assert!(host.logged(LogLevel::Warn)[0].contains("falling back"));
        // Decided again (from the tick): the fallback, one gateway known, 4 at once.
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        host.advance(FALLBACK_RETRY_MS);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        host.answer(Some(503), Some(b"{}"));
        fleet.on_response(&host, token.unwrap(), 2);
        assert_eq!(host.counted(Event::FleetAskFailure), 2);
        // A body that is not an answer fails too; an unknown token is ignored.
        host.advance(FALLBACK_RETRY_MS);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        host.answer(Some(200), Some(b"not json"));
        fleet.on_response(&host, token.unwrap(), 8);
        assert_eq!(host.counted(Event::FleetAskFailure), 3);
        assert!(fleet.on_response(&host, 999, BODY).is_empty());
    }

    #[test]
    fn a_request_that_waited_its_time_is_decided_by_the_fallback() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = global(10.0, 2);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(token.is_some());
        fleet.park(1, T0, &setup.settings).unwrap();
        assert_eq!(fleet.on_tick(T0 + 10), vec![(1, true)]);
        fleet.park(1, T0, &setup.settings).unwrap();
        assert_eq!(fleet.on_tick(T0 + 1_000), vec![(1, false)]);
        host.advance(1_000);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, false);
        assert!(allowed(&verdict));
        assert_eq!(token, None, "the ask is still in flight");
        assert_eq!(host.counted(Event::FleetFallback), 1);
        // Parked requests that ended are forgotten; the queue is bounded.
        fleet.park(5, T0, &setup.settings).unwrap();
        fleet.forget(|w| *w == 5);
        assert!(!fleet.has_waiters());
        for i in 0..MAX_WAITERS as u32 {
            fleet.park(i, T0, &setup.settings).unwrap();
        }
        assert_eq!(fleet.park(9, T0, &setup.settings), Err(9));
    }

    #[test]
    fn a_quota_spends_the_route_cost_and_says_it_is_the_quota() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let window_start = T0 / 1000 - 100;
        let limits =
            FleetLimits::new("k1", None, Some((1_000, 3_600, window_start)), None).unwrap();
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 5, true);
        let asks = sent(&host);
        assert_eq!(asks[0].leases[0].bucket, "quota:k1");
        assert_eq!(asks[0].leases[0].want, crate::fleet::QUOTA_LEASE_MAX);
        let mut g = grant("quota:k1", 12, 60_000, 1);
        g.remaining = Some(100);
        answer(&host, vec![g]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (first, _) = fleet.check(&host, &setup.asking(), &limits, 5, true);
        let (second, _) = fleet.check(&host, &setup.asking(), &limits, 5, true);
        assert!(allowed(&first) && allowed(&second));
        assert_eq!(first, Verdict::Allowed { ratelimit: None });
        // Two tokens left, a cost of five: the ask ahead is in flight, so it waits.
        let (third, token) = fleet.check(&host, &setup.asking(), &limits, 5, true);
        assert_eq!(third, Verdict::Wait);
        assert!(token.is_none());
        // The service says the quota is spent.
        let token = *fleet.asks.keys().next().unwrap();
        let mut g = grant("quota:k1", 0, 10_000, 1);
        g.remaining = Some(0);
        answer(&host, vec![g]);
        fleet.on_response(&host, token, BODY);
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 5, true);
        let Verdict::Limited { reason, headers } = verdict else {
            panic!("{verdict:?}");
        };
        assert_eq!(
            reason,
            DenyReason::QuotaExhausted {
                retry_after_s: 3_500
            }
        );
        assert_eq!(
            headers[1],
            ("ratelimit-policy", "\"quota\";q=1000;w=3600".into())
        );
        assert_eq!(headers[2], ("ratelimit", "\"quota\";r=0;t=3500".into()));
        let body: serde_json::Value = serde_json::from_str(&reason.problem_json()).unwrap();
        assert_eq!(body["type"], "urn:keygate:problem:quota-exhausted");
        assert_eq!(body["status"], 429);
        // The two tokens left void with the lease: never spent, they go back with the next ask.
        host.advance(10_000);
        fleet.check(&host, &setup.asking(), &limits, 5, true);
        let asks = sent(&host);
        assert_eq!(asks.last().unwrap().leases[0].returned, 2);
    }

    #[test]
    fn a_request_that_costs_more_than_a_lease_is_paid_by_a_few_asks() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = FleetLimits::new("k1", None, Some((1_000, 60, T0 / 1000)), None).unwrap();
        for _ in 0..2 {
            let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 10, true);
            assert_eq!(verdict, Verdict::Wait);
            answer(&host, vec![grant("quota:k1", 4, 2_000, 3)]);
            fleet.on_response(&host, token.unwrap(), BODY);
        }
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 10, true);
        assert_eq!(verdict, Verdict::Wait, "8 of 10");
        answer(&host, vec![grant("quota:k1", 4, 2_000, 3)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 10, true);
        assert!(allowed(&verdict), "{verdict:?}");
        let state = &decode_slot(&host.shared(&slot_key("quota:k1")).unwrap())[0];
        assert_eq!(state.tokens, 2);
        assert_eq!(host.counted(Event::FleetFallback), 0);
    }

    #[test]
    fn a_quota_falls_back_to_its_share_of_the_known_remaining() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = FleetLimits::new("k1", None, Some((1_000, 60, T0 / 1000)), None).unwrap();
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        let mut g = grant("quota:k1", 1, 60_000, 4);
        g.remaining = Some(40);
        answer(&host, vec![g]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        host.answer(Some(502), None);
        fleet.on_response(&host, token.unwrap(), BODY);
        let allowed_count = (0..50)
            .filter(|_| allowed(&fleet.check(&host, &setup.asking(), &limits, 1, true).0))
            .count();
        assert_eq!(allowed_count, 10, "40 remaining ÷ 4 gateways");
    }

    #[test]
    fn a_denial_by_a_later_bucket_gives_the_earlier_tokens_back() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = FleetLimits::new(
            "k1",
            Some(rate(100.0, 100)),
            Some((10, 60, T0 / 1000)),
            None,
        )
        .unwrap();
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert_eq!(verdict, Verdict::Wait);
        let asks = sent(&host);
        assert_eq!(
            asks[0].leases.len(),
            1,
            "the first bucket stops the request"
        );
        answer(&host, vec![grant("key:k1", 40, 10_000, 1)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert_eq!(verdict, Verdict::Wait, "the quota has no lease yet");
        answer(&host, vec![grant("quota:k1", 0, 10_000, 1)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(matches!(
            verdict,
            Verdict::Limited {
                reason: DenyReason::QuotaExhausted { .. },
                ..
            }
        ));
        let key = decode_slot(&host.shared(&slot_key("key:k1")).unwrap());
        assert_eq!(key[0].tokens, 40, "nothing kept from the key's lease");
    }

    /// A worker with a granted lease, `grant` tokens valid 10 s.
    fn granted(setup: &Setup, host: &FakeHost, limits: &FleetLimits, grant_of: u32) -> Fleet<u32> {
        let mut fleet: Fleet<u32> = Fleet::new(host, "gw".into());
        let (_, token) = fleet.check(host, &setup.asking(), limits, 1, true);
        answer(host, vec![grant("key:k1", grant_of, 10_000, 1)]);
        fleet.on_response(host, token.unwrap(), BODY);
        host.take_calls();
        fleet
    }

    fn lease_tokens(host: &FakeHost) -> u64 {
        decode_slot(&host.shared(&slot_key("key:k1")).unwrap())[0].tokens
    }

    #[test]
    fn a_worker_spends_a_batch_without_touching_shared_data() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let limits = global(1_000.0, 1_000);
        let mut fleet = granted(&setup, &host, &limits, 800);
        // The first request spends one token and takes a batch of 800 / 8 = 100, at most 64.
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        assert_eq!(host.take_calls(), ["now_ms", "get_shared", "set_shared"]);
        assert_eq!(lease_tokens(&host), 800 - 1 - STASH_BATCH_MAX);
        host.take_calls();
        // The next 64 come from the batch: no shared-data read or write.
        for _ in 0..STASH_BATCH_MAX {
            let (verdict, token) = fleet.check_at(&host, &setup.asking(), &limits, 1, true, T0);
            assert!(allowed(&verdict));
            assert_eq!(token, None);
        }
        assert_eq!(host.take_calls(), Vec::<&str>::new());
        // The batch is spent: the next request goes to the lease again.
        fleet.check_at(&host, &setup.asking(), &limits, 1, true, T0);
        assert_eq!(host.take_calls(), ["get_shared", "set_shared"]);
        assert_eq!(lease_tokens(&host), 800 - 2 - 2 * STASH_BATCH_MAX);
    }

    #[test]
    fn two_workers_never_spend_more_than_the_lease() {
        let setup = Setup::new();
        let one = FakeHost::at(T0);
        let two = one.worker();
        let limits = global(1_000.0, 1_000);
        let mut f1 = granted(&setup, &one, &limits, 100);
        let mut f2: Fleet<u32> = Fleet::new(&two, "gw".into());
        let mut allowed_total = 0;
        for round in 0..200 {
            let (fleet, host) = if round % 3 == 0 {
                (&mut f1, &one)
            } else {
                (&mut f2, &two)
            };
            let (verdict, _) = fleet.check(host, &setup.asking(), &limits, 1, false);
            if allowed(&verdict) && host.counted(Event::FleetFallback) == 0 {
                allowed_total += 1;
            }
        }
        assert_eq!(
            allowed_total, 100,
            "exactly the lease, across both workers' batches"
        );
    }

    #[test]
    fn a_void_batch_goes_back_to_the_key_service() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let limits = global(1_000.0, 1_000);
        let mut fleet = granted(&setup, &host, &limits, 80);
        fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(fleet.has_stash());
        assert_eq!(lease_tokens(&host), 80 - 1 - 10);
        // The lease ends with the batch unspent: the sweep puts it with the tokens to return.
        host.advance(10_000);
        fleet.sweep(&host, host.now_ms());
        assert!(!fleet.has_stash());
        let state = &decode_slot(&host.shared(&slot_key("key:k1")).unwrap())[0];
        assert_eq!(state.to_return, 10);
        // The next ask returns it, with the void lease's own 69.
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(token.is_some());
        let ask = sent(&host).pop().unwrap();
        assert_eq!(ask.leases[0].returned, 10 + 69);
    }

    #[test]
    fn a_batch_is_not_spent_in_its_lease_last_quarter() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let limits = global(1_000.0, 1_000);
        let mut fleet = granted(&setup, &host, &limits, 800);
        fleet.check(&host, &setup.asking(), &limits, 1, true);
        // Past three quarters of the lease the request goes through shared data, where the
        // ask ahead is decided; the batch folds back into the lease.
        host.advance(7_600);
        let before = lease_tokens(&host);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        assert!(token.is_some(), "asked ahead");
        assert_eq!(
            lease_tokens(&host),
            before + STASH_BATCH_MAX - 1 - STASH_BATCH_MAX
        );
    }

    #[test]
    fn a_lease_voids_at_its_valid_ms_and_asks_ahead_near_its_end() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        let limits = global(1_000.0, 1_000);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        answer(&host, vec![grant("key:k1", 100, 1_000, 1)]);
        fleet.on_response(&host, token.unwrap(), BODY);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert_eq!(token, None);
        host.advance(800);
        let (_, token) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(token.is_some(), "asked ahead in the lease's last quarter");
        host.answer(None, None);
        fleet.on_response(&host, token.unwrap(), BODY);
        // Past its end the lease is void: what is left of it is not spent.
        host.advance(200);
        let (verdict, _) = fleet.check(&host, &setup.asking(), &limits, 1, true);
        assert!(allowed(&verdict));
        assert_eq!(
            host.counted(Event::FleetFallback),
            1,
            "decided by the fallback"
        );
        let state = &decode_slot(&host.shared(&slot_key("key:k1")).unwrap())[0];
        assert_eq!(state.tokens, 0);
    }

    #[test]
    fn deferred_asks_are_sent_by_the_flush_in_one_callout() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into()).deferred();
        assert_eq!(fleet.flush(&host, &setup.asking()), None);
        let one = global(10.0, 10);
        let two = FleetLimits::new("k2", Some(rate(10.0, 10)), None, None).unwrap();
        assert_eq!(
            fleet.check(&host, &setup.asking(), &one, 1, true),
            (Verdict::Wait, None)
        );
        assert_eq!(
            fleet.check(&host, &setup.asking(), &two, 1, true),
            (Verdict::Wait, None)
        );
        assert!(fleet.has_queued());
        assert!(
            host.dispatched().is_empty(),
            "nothing sent from the request"
        );
        let token = fleet.flush(&host, &setup.asking()).unwrap();
        assert!(!fleet.has_queued());
        let asks = sent(&host);
        assert_eq!(asks.len(), 1);
        let buckets: Vec<&str> = asks[0].leases.iter().map(|l| l.bucket.as_str()).collect();
        assert_eq!(buckets, ["key:k1", "key:k2"]);
        // Still one ask per bucket: both are in flight.
        assert_eq!(
            fleet.check(&host, &setup.asking(), &one, 1, true),
            (Verdict::Wait, None)
        );
        assert!(!fleet.has_queued());
        answer(
            &host,
            vec![grant("key:k1", 5, 2_000, 1), grant("key:k2", 5, 2_000, 1)],
        );
        fleet.on_response(&host, token, BODY);
        assert!(allowed(
            &fleet.check(&host, &setup.asking(), &two, 1, true).0
        ));
    }

    #[test]
    fn contention_refuses_closed() {
        let setup = Setup::new();
        let host = FakeHost::at(T0);
        let mut fleet: Fleet<u32> = Fleet::new(&host, "gw".into());
        host.conflict_next_writes(CAS_ROUNDS);
        let (verdict, token) = fleet.check(&host, &setup.asking(), &global(1.0, 1), 1, true);
        assert_eq!(
            verdict,
            Verdict::Limited {
                reason: DenyReason::Overloaded,
                headers: Vec::new()
            }
        );
        assert_eq!(token, None);
        assert_eq!(host.counted(Event::RateLimitContention), 1);
    }
}
