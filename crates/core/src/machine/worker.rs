//! One worker (one Envoy VM), from the contexts' side: its start, its tick, the callout
//! answers it routes, and a request's headers, response and end. The filter's contexts call
//! these and nothing else.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use siphasher::sip128::SipHasher24;

use crate::config::{FilterConfig, Secrets};
use crate::fingerprint::Fingerprinter;
use crate::host::{Host, LogLevel};
use crate::machine::answer::{apply, complete, deny};
use crate::machine::callouts::{Callout, Callouts};
use crate::machine::edits::Gathered;
use crate::machine::fast_map::FastMap;
use crate::machine::fleet::Fleet;
use crate::machine::follower::{FeedContext, FeedView};
use crate::machine::host_crypto::HostCrypto;
use crate::machine::metrics::Metrics;
use crate::machine::request::{evaluate, Headers};
use crate::machine::state::{FleetWaiter, JwtState, Lookups, Shared, Step};
use crate::machine::usage::{Reporting, Usage};
use crate::machine::{cached_token, rate, records, threat, token};

/// How often a worker looks at shared data while a request waits on another worker (and,
/// on a host without shared queues, while it follows the revocation feed).
pub const FAST_TICK: Duration = Duration::from_millis(10);
/// How often a worker does its periodic work (JWKS refresh) otherwise.
pub const SLOW_TICK: Duration = Duration::from_millis(1000);
/// How often a worker told of new revoked sets on its queue still looks for one itself: the
/// bound on a revocation's delay should a message be lost.
pub const FEED_TICK: Duration = Duration::from_millis(100);

/// Starts a worker with a configuration: creates the shared-data leases and slots, loads what
/// other workers already shared, and sets the tick.
pub fn start(
    host: &impl Host,
    config: FilterConfig,
    secrets: Secrets,
    fingerprint_key: [u8; 16],
) -> Rc<Shared> {
    records::create_leases(host);
    rate::create_slots(host);
    if config.usage.enabled {
        crate::machine::usage::create_log(host);
    }
    threat::create_slots(host, &config.threat);
    let threat_key = secrets.gateway_key.derive_16(b"keygate threat table");
    let nonce_key = secrets.gateway_key.derive_16(b"keygate signature nonces");
    let shared_threat_settings = config.threat.clone();
    let worker = crate::machine::follower::next_worker_id(host);
    let jwt = JwtState::new(&config.jwt);
    let host_crypto = config.jwt.host_crypto;
    let lookups = Lookups::new(&config);
    let cached_tokens = cached_token::applies(&config);
    let fleet = Fleet::new(host, gateway_candidate(&fingerprint_key)).deferred();
    let shared = Rc::new(Shared {
        config,
        secrets,
        metrics: Metrics::default(),
        fingerprints: Fingerprinter::new(fingerprint_key),
        lookups: RefCell::new(lookups),
        jwt: RefCell::new(jwt),
        feed: RefCell::new(FeedView::new(worker.clone())),
        usage: RefCell::new(Usage::new(worker)),
        fleet: RefCell::new(fleet),
        callouts: RefCell::new(Callouts::default()),
        notes: RefCell::new(FastMap::default()),
        tick: Cell::new(Duration::ZERO),
        clock: Cell::new(None),
        gateway: std::cell::OnceCell::new(),
        signature_crypto: host_crypto.then(HostCrypto::default),
        resumed: RefCell::default(),
        threat: threat::ThreatState::new(threat_key, &shared_threat_settings),
        nonce_key,
        cached_tokens,
    });
    if shared.config.routes.any_signature() || shared.config.signatures.route_metadata {
        crate::machine::nonce::create_slots(host, shared.config.signatures.nonce_layout());
    }
    crate::machine::blocking::on_tick(host, &shared);
    token::on_start(host, &shared);
    shared
        .feed
        .borrow_mut()
        .on_start(host, &feed_context(&shared));
    reschedule(host, &shared);
    shared
}

/// The periodic work: the feed, usage, lookups waiting on other workers, JWKS, fleet asks
/// and the requests that wait for a lease.
pub fn on_tick(host: &impl Host, shared: &Shared) {
    shared.begin_callback();
    // Read once, on the first tick (in the root context): the name this gateway gives
    // itself in usage batches and feed requests.
    if shared.config.usage.enabled || shared.config.revocation_feed.enabled {
        shared.gateway.get_or_init(|| {
            // `xds.node` in recent Envoys; `node` in older ones.
            let raw = host
                .property(&["xds", "node", "id"])
                .or_else(|| host.property(&["node", "id"]));
            let name = gateway_name(raw.as_deref());
            if name.is_none() {
                host.log(
                    LogLevel::Info,
                    &format!(
                        "Envoy's node.id is absent or not 1 to 128 printable ASCII characters \
                         ({:?}): this gateway stays anonymous in usage batches and feed requests",
                        raw.as_deref()
                            .map(|r| String::from_utf8_lossy(&r[..r.len().min(64)]))
                    ),
                );
            }
            name
        });
    }
    // Before anything below resumes a request (which makes its context the effective one).
    fleet_flush(host, shared);
    let token = shared
        .feed
        .borrow_mut()
        .on_tick(host, &feed_context(shared));
    register(shared, token, Callout::Feed);
    let token = shared.usage.borrow_mut().on_tick(host, &reporting(shared));
    register(shared, token, Callout::Usage);
    records::on_tick(host, shared);
    token::on_tick(host, shared);
    crate::machine::blocking::on_tick(host, shared);
    fleet_on_tick(host, shared);
    shared.metrics.flush(host);
    reschedule(host, shared);
}

/// Sets the tick period the current state needs: fast while requests wait on another
/// worker (or while following the revocation feed without a queue to be told of new sets
/// on), slow when only periodic work is due (counts to flush, the feed's lease and a lost
/// message among it), off otherwise.
pub fn reschedule(host: &impl Host, shared: &Shared) {
    let feed = shared.config.revocation_feed.enabled;
    let waiting = (feed && !shared.feed.borrow().listens())
        || shared.lookups.borrow().has_remote_waits()
        || shared.jwt.borrow().has_waiters()
        || shared.fleet.borrow().has_waiters()
        || shared.fleet.borrow().has_queued();
    let wanted = if waiting {
        FAST_TICK
    } else if feed {
        FEED_TICK
    } else if shared.jwt.borrow().has_remote_issuers()
        || shared.config.usage.enabled
        || shared.metrics.has_pending()
        || shared.fleet.borrow().has_stash()
        || shared.config.threat.enabled
        || !shared.threat.borrow().view.is_empty()
    {
        SLOW_TICK
    } else {
        Duration::ZERO
    };
    if shared.tick.replace(wanted) != wanted {
        host.set_tick_period(wanted);
    }
}

/// A message on one of this worker's queues: the follower tells of a new revoked set (and
/// the operator blocks that came with it), or another worker of a block it added. This
/// worker loads both now rather than on its next tick.
pub fn on_queue_ready(host: &impl Host, shared: &Shared, queue: u32) {
    shared.begin_callback();
    let feed = shared
        .feed
        .borrow_mut()
        .on_queue_ready(host, &feed_context(shared), queue);
    if feed {
        crate::machine::blocking::on_tick(host, shared);
    }
}

/// Routes a callout answer to what waits on it (one map for every kind of callout).
pub fn on_call_response(host: &impl Host, shared: &Shared, token_id: u32, body_size: usize) {
    shared.begin_callback();
    let callout = shared.callouts.borrow_mut().take(token_id);
    match callout {
        Some(Callout::Lookup { id, legacy }) => {
            records::on_response(host, shared, id, legacy, body_size);
        }
        Some(Callout::Jwks(issuer)) => token::on_response(host, shared, issuer, body_size),
        Some(Callout::Feed) => {
            let token =
                shared
                    .feed
                    .borrow_mut()
                    .on_response(host, &feed_context(shared), body_size);
            register(shared, token, Callout::Feed);
        }
        Some(Callout::Usage) => {
            let token = shared
                .usage
                .borrow_mut()
                .on_response(host, &reporting(shared));
            register(shared, token, Callout::Usage);
        }
        Some(Callout::Lease) => {
            let woken = shared
                .fleet
                .borrow_mut()
                .on_response(host, token_id, body_size);
            for waiter in woken {
                resume(host, shared, waiter);
            }
        }
        None => {}
    }
    reschedule(host, shared);
}

/// A request's headers arrived: evaluates them and applies the answer. Returns true when
/// the request goes on now, false when it is paused (waiting, or answered by the filter).
pub fn on_request_headers(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    headers: &Headers,
) -> bool {
    shared.begin_callback();
    if let Some(went_on) = cached_token::decide(host, shared, headers) {
        // It changed nothing but counts, which need the tick only if it was off.
        if shared.tick.get().is_zero() {
            reschedule(host, shared);
        }
        return went_on;
    }
    decide_in_full(host, shared, context_id, headers)
}

/// [`on_request_headers`] for a request the one-pass path handed back: the general path,
/// which decides every request (the tests hold the one-pass path to it).
pub(crate) fn decide_in_full(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    headers: &Headers,
) -> bool {
    let gathered = Gathered::new(host, context_id);
    let go_on = match evaluate(&gathered, shared, context_id, headers) {
        Step::Continue => true,
        Step::Wait => false,
        Step::Decided(forwarding, result) => {
            apply(&gathered, shared, context_id, &forwarding, result)
        }
        Step::Deny(reason, label, mode) => {
            crate::machine::blocking::after_denial(&gathered, shared, &reason, || {
                threat::client_from_headers(&gathered, &shared.config, headers)
            });
            deny(&gathered, shared, &reason, label.as_deref(), mode)
        }
    };
    gathered.apply();
    reschedule(host, shared);
    go_on
}

/// Whether a request that has a body must be read whole before it is decided: its route
/// requires a signature, whose `Content-Digest` is checked against the body. No host call
/// unless some route requires signatures.
pub fn wants_body(host: &impl Host, shared: &Shared, headers: &Headers) -> bool {
    shared.begin_callback();
    crate::machine::signed::route_wants_body(host, shared, headers)
}

/// A request whose body was read whole (after [`wants_body`]): decided as
/// [`on_request_headers`] decides one, with its body. Returns true when it goes on.
pub fn on_request_body(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    headers: &Headers,
    body: &[u8],
) -> bool {
    shared.begin_callback();
    let gathered = Gathered::new(host, context_id);
    let step = crate::machine::request::evaluate_with_body(
        &gathered,
        shared,
        context_id,
        headers,
        Some(body),
    );
    let go_on = match step {
        Step::Continue => true,
        Step::Wait => false,
        Step::Decided(forwarding, result) => {
            apply(&gathered, shared, context_id, &forwarding, result)
        }
        Step::Deny(reason, label, mode) => deny(&gathered, shared, &reason, label.as_deref(), mode),
    };
    gathered.apply();
    reschedule(host, shared);
    go_on
}

/// A signed route's body is over `signatures.max_body_bytes`: refused (413).
pub fn on_body_too_large(host: &impl Host, shared: &Shared) {
    shared.begin_callback();
    deny(
        host,
        shared,
        &crate::decision::DenyReason::BodyTooLarge,
        None,
        crate::route::Mode::Enforce,
    );
}

/// The upstream's response headers: the rate-limit headers, and the status for usage.
pub fn on_response_headers(host: &impl Host, shared: &Shared, context_id: u32) {
    shared.begin_callback();
    let Some(note) = shared.notes.borrow_mut().remove(&context_id) else {
        return;
    };
    if let Some((policy, state)) = &note.ratelimit {
        host.set_response_header("ratelimit-policy", policy);
        host.set_response_header("ratelimit", state);
    }
    // A note names a key only where usage is on.
    let Some(key_id) = note.key_id else {
        return;
    };
    if let Some(status) = host.response_status() {
        let now = shared.now(host);
        let latency = now.saturating_sub(note.sent_ms);
        shared
            .usage
            .borrow_mut()
            .status(&key_id, &note.route, status, Some(latency), now);
    }
}

/// The request ended: forget whatever it left.
pub fn on_log(shared: &Shared, context_id: u32) {
    shared.notes.borrow_mut().remove(&context_id);
    shared.resumed.borrow_mut().forget(context_id);
    shared.lookups.borrow_mut().forget(context_id);
    shared.jwt.borrow_mut().forget(context_id);
    shared
        .fleet
        .borrow_mut()
        .forget(|waiter| waiter.context_id == context_id);
}

/// This Envoy's gateway id if this worker is its first: a keyed hash of the worker's random
/// fingerprint key (which it does not reveal), so no other random draw is needed.
fn gateway_candidate(fingerprint_key: &[u8; 16]) -> String {
    let id = SipHasher24::new_with_key(fingerprint_key)
        .hash(b"keygate fleet gateway")
        .as_u128();
    format!("{id:032x}")
}

/// On the tick, in the root context and before any request is resumed: the queued asks go
/// out (an ask dispatched from a request's context is dropped with the request, and its grant
/// lost).
fn fleet_flush(host: &impl Host, shared: &Shared) {
    let token = shared
        .fleet
        .borrow_mut()
        .flush(host, &shared.fleet_asking());
    register(shared, token, Callout::Lease);
}

/// On the tick: batches of tokens whose lease voided go back; requests that wait for a lease
/// are decided again (another worker's ask may have been answered), those past their wait by
/// the fallback.
fn fleet_on_tick(host: &impl Host, shared: &Shared) {
    if shared.fleet.borrow().has_stash() {
        shared.fleet.borrow_mut().sweep(host, shared.now(host));
    }
    if !shared.fleet.borrow().has_waiters() {
        return;
    }
    let woken = shared.fleet.borrow_mut().on_tick(shared.now(host));
    // Asks these requests queue go with the next tick: resuming them made their contexts
    // the effective one, and an ask must be sent from the root's.
    for (mut waiter, may_wait) in woken {
        waiter.forwarding.fleet_may_wait = may_wait;
        resume(host, shared, waiter);
    }
}

/// A request that waited for a lease, decided again in its own context.
fn resume(host: &impl Host, shared: &Shared, waiter: Box<FleetWaiter>) {
    let waiter = *waiter;
    let step = Step::Decided(waiter.forwarding, Ok(waiter.identity));
    complete(host, shared, waiter.context_id, step);
}

fn register(shared: &Shared, token: Option<u32>, callout: Callout) {
    if let Some(token) = token {
        shared.callouts.borrow_mut().insert(token, callout);
    }
}

fn feed_context(shared: &Shared) -> FeedContext<'_> {
    FeedContext {
        settings: &shared.config.revocation_feed,
        cache: &shared.config.cache,
        key_service: &shared.config.key_service,
        service_token: &shared.secrets.service_token,
        gateway: shared.gateway.get().and_then(Option::as_deref),
        threat: Some(&shared.threat),
    }
}

fn reporting(shared: &Shared) -> Reporting<'_> {
    Reporting {
        settings: &shared.config.usage,
        key_service: &shared.config.key_service,
        service_token: &shared.secrets.service_token,
        gateway: shared.gateway.get().and_then(Option::as_deref),
    }
}

/// Envoy's `node.id` as a gateway name: 1 to 128 printable ASCII characters, else none.
pub fn gateway_name(node_id: Option<&[u8]>) -> Option<String> {
    let id = std::str::from_utf8(node_id?).ok()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_owned())
}
