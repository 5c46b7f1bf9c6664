//! What one worker (one Envoy VM) keeps between requests and callouts, and what a request
//! carries while it is decided or waits: the data, below the machines that work on it (the
//! record lookups, the JWT path, the answers), so none of them imports another in a circle.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::machine::fast_map::FastMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::binding::Requirement;
use crate::cache::CacheEntry;
use crate::config::{FilterConfig, JwksSource, JwtSettings, RemoteJwks, Secrets};
use crate::credential::Source;
use crate::decision::{DenyReason, Identity, PreparedRecord};
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::jwt::cache::TokenCache;
use crate::jwt::KeySet;
use crate::key::{KeyDigest, KeyId};
use crate::limits::{client_address, ForwardedFor};
use crate::machine::callouts::Callouts;
use crate::machine::fleet::{Asking, Fleet};
use crate::machine::follower::FeedView;
use crate::machine::jwks::KeyWait;
use crate::machine::lookup;
use crate::negative_cache::NegativeCache;
use crate::principal::{read_principal, PRINCIPAL_PROPERTY};
use crate::route::Mode;
use crate::wire::RateLimit;

use crate::feed::FeedPolicy;
use crate::host::Host;
use crate::machine::degraded::RecordTrust;
use crate::machine::host_crypto::HostCrypto;
use crate::machine::metrics::Metrics;
use crate::machine::usage::Usage as UsageCounts;

/// What every context of one VM (one Envoy worker) shares.
pub struct Shared {
    pub config: FilterConfig,
    pub secrets: Secrets,
    pub metrics: Metrics,
    /// Fingerprints credentials for this worker's caches, under a key drawn at start.
    pub fingerprints: Fingerprinter,
    pub lookups: RefCell<Lookups>,
    pub jwt: RefCell<JwtState>,
    pub feed: RefCell<FeedView>,
    pub usage: RefCell<UsageCounts>,
    /// Fleet-wide limits: leases, asks, parked requests.
    pub fleet: RefCell<Fleet<Box<FleetWaiter>>>,
    /// Every callout in flight on this worker, by token.
    pub callouts: RefCell<Callouts>,
    /// Per request (context id): what its response needs.
    pub notes: RefCell<FastMap<u32, Note>>,
    pub tick: Cell<Duration>,
    /// The clock as read once in the current callback (see [`Shared::now`]).
    pub clock: Cell<Option<u64>>,
    /// This gateway's name: Envoy's node id (`xds.node.id`), read once on the first tick (`None`: absent
    /// or not printable ASCII of at most 128 bytes). Sent with usage batches and feed
    /// requests.
    pub gateway: std::cell::OnceCell<Option<String>>,
    /// The host's native check of request signatures (ECDSA), when `jwt.host_crypto` allows.
    pub signature_crypto: Option<HostCrypto>,
    /// Requests resumed after a pause whose context has not yet seen its body go on.
    pub resumed: RefCell<crate::machine::gate::Resumed>,
    /// Threat detection: this worker's copy of the blocks in force, reports to send.
    pub threat: RefCell<crate::machine::threat::ThreatState>,
    /// The key of the signature nonces' fingerprints (derived from the gateway key once).
    pub nonce_key: [u8; 16],
    /// Whether the configuration lets cached tokens take the one-pass path
    /// ([`crate::machine::cached_token`]); `false` sends every request the general way.
    pub cached_tokens: bool,
}

impl Shared {
    /// What the body gate reads of this worker.
    pub fn gate(&self) -> crate::machine::gate::Gate<'_> {
        crate::machine::gate::Gate {
            resumed: &self.resumed,
            max_body_bytes: self.config.signatures.max_body_bytes,
        }
    }

    /// The host's clock, read at most once per callback: a request's evaluation, its answer
    /// and its usage count share one reading (each read is a host call).
    pub fn now(&self, host: &impl Host) -> u64 {
        match self.clock.get() {
            Some(now) => now,
            None => {
                let now = host.now_ms();
                self.clock.set(Some(now));
                now
            }
        }
    }

    /// A new callback from the host begins: the clock is read afresh when needed.
    pub fn begin_callback(&self) {
        self.clock.set(None);
    }

    /// What a fleet lease ask needs from the configuration.
    pub fn fleet_asking(&self) -> Asking<'_> {
        Asking {
            settings: &self.config.fleet,
            key_service: &self.config.key_service,
            service_token: &self.secrets.service_token,
        }
    }
}

/// How a decided request is forwarded: which credential sources to strip, and whether the
/// decision is enforced.
#[derive(Clone, Debug)]
pub struct Forwarding {
    pub mode: Mode,
    pub sources: Vec<Source>,
    /// The path to forward when the credential came in the query string.
    pub stripped_path: Option<String>,
    /// The client's address (for allow-lists), as far as it can be trusted; `None` until
    /// looked up (the peer address costs a host call, so it is read only when a key has an
    /// allow-list, or before the request is parked, while its context is still current).
    pub client: Option<Option<IpAddr>>,
    /// What `X-Forwarded-For` says, when proxies are trusted (`trusted_hops` ≥ 1).
    pub forwarded_for: Option<ForwardedFor>,
    /// The route's default rate limit, for keys without their own.
    pub route_rate_limit: Option<RateLimit>,
    /// The key id once known, for logs and usage counts.
    pub key_id: Option<KeyId>,
    /// The route forwards the client's credential upstream (`forward_credential`).
    pub forward_credential: bool,
    /// The request's workload identity (verified peer certificate URI SAN); `None` until read
    /// (a host call: read on routes that take principals, for keys bound to workloads, or
    /// before the request is parked).
    pub principal: Option<Option<String>>,
    /// What the request costs from a key's quota (the route's `cost`).
    pub cost: u32,
    /// The request may still wait for a fleet lease (false once it waited its time).
    pub fleet_may_wait: bool,
    /// The route the request matched, as usage reports it.
    pub route: RouteLabel,
    /// On a route that requires request signatures: the request as its signature covers it.
    pub signature: Option<Box<crate::machine::signed_request::SignedRequest>>,
    /// The country Envoy's geoip filter wrote into `geo.country_header` (read from the
    /// headers at the request's start; `None` when absent, malformed or `geo` is off).
    pub country: Option<crate::geo::Country>,
}

/// The route a request is counted under in usage.
#[derive(Clone, Debug)]
pub enum RouteLabel {
    /// Known without a host call: the route table entry's `name`, or the Envoy route name
    /// the table already read to match.
    Known(Arc<str>),
    /// Envoy's route name (`xds.route_name`), read after the decision and only when usage is
    /// reported; this when Envoy has none.
    Unread(Arc<str>),
}

/// A request parked until its fleet bucket has a lease; decided again when it is woken.
pub struct FleetWaiter {
    pub context_id: u32,
    pub forwarding: Forwarding,
    pub identity: Identity,
}

/// What a request leaves for its response: rate-limit headers and whose usage it is.
pub struct Note {
    /// The key usage counts the response under (`None`: no usage row).
    pub key_id: Option<Arc<str>>,
    pub ratelimit: Option<(String, String)>,
    /// The route the usage is counted under (empty when usage is off).
    pub route: Arc<str>,
    /// When the request was let on upstream (ms): its latency ends at the response headers.
    pub sent_ms: u64,
}

/// What proves the presented credential, once its key record is known.
#[derive(Debug)]
pub enum Proof {
    /// An opaque key: its digest must match the record's.
    Opaque(KeyDigest),
    /// A verified JWT whose `jti` names the record: only the record's status matters.
    Token(Identity),
}

/// A request with an authentic credential, waiting for (or decided from) its key record.
#[derive(Debug)]
pub struct Presented {
    /// The key id; for a legacy key, an id derived from its digest (the cache slot's name).
    pub key_id: KeyId,
    pub proof: Proof,
    pub required: Requirement,
    pub forwarding: Forwarding,
    /// A legacy key: looked up by digest, not by id.
    pub legacy: bool,
}

/// Where a request stands after its credential was examined.
// `Decided` carries the request's forwarding by value: a `Step` lives for one call and is
// never stored, and boxing it would allocate on every request.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// A public route: forward as is.
    Continue,
    /// Paused until a key record or a JWKS arrives.
    Wait,
    Decided(Forwarding, Result<Identity, DenyReason>),
    Deny(DenyReason, Option<String>, Mode),
}

/// The client address of the current request (its context must be the effective one).
pub fn client_now(host: &impl Host, forwarding: &Forwarding) -> Option<IpAddr> {
    forwarding.client.unwrap_or_else(|| {
        let source = host.property(&["source", "address"]);
        let source = source.as_deref().and_then(|s| std::str::from_utf8(s).ok());
        match &forwarding.forwarded_for {
            Some(forwarded_for) => forwarded_for.client(source),
            None => client_address(source, None, 0),
        }
    })
}

/// The request's principal (its context must be the effective one).
pub fn principal_now(host: &impl Host, forwarding: &Forwarding) -> Option<String> {
    match &forwarding.principal {
        Some(principal) => principal.clone(),
        None => read_principal(host.property(&PRINCIPAL_PROPERTY).as_deref()),
    }
}

/// Reads the client address and principal now, before the request is parked and its
/// context left (its key record, unknown yet, may restrict either).
pub fn resolve_client(host: &impl Host, forwarding: &mut Forwarding) {
    if forwarding.client.is_none() {
        forwarding.client = Some(client_now(host, forwarding));
    }
    if forwarding.principal.is_none() {
        forwarding.principal = Some(principal_now(host, forwarding));
    }
}

// Lookups of key records (worked on by `crate::lookup`).

pub struct Waiter {
    pub context_id: u32,
    pub presented: Presented,
}

/// Per-worker state of lookups: the callouts in flight and their waiters, unknown legacy
/// digests, and this worker's decoded copies of fresh records.
pub struct Lookups {
    /// One lookup per key id and who waits on it (see [`lookup::Lookups`]).
    pub machine: lookup::Lookups<Waiter, Rc<Local>>,
    /// Legacy digests the key service did not know (by their slot id). Kept here, never in
    /// the shared record cache, so that unknown strings evict no record.
    pub legacy_unknown: NegativeCache<KeyId>,
    /// This worker's decoded copies of fresh records (bounded by `cache.max_entries`).
    pub local: HashMap<KeyId, Rc<Local>>,
}

/// A record as this worker holds it: decoded, prepared for decisions once (digest, identity,
/// address allow-list), and with the fingerprint of the last key text proven against its
/// digest. Fresh ones are kept in [`Lookups::local`].
pub struct Local {
    pub entry: CacheEntry,
    /// The shared-data slot the record was in (read there first when this copy expires).
    pub slot: Option<u32>,
    pub prepared: Option<PreparedRecord>,
    pub proven: Cell<Option<Fingerprint>>,
}

impl Local {
    pub fn new(entry: CacheEntry, slot: Option<u32>) -> Rc<Self> {
        Rc::new(Self {
            prepared: entry.record.as_ref().map(PreparedRecord::of),
            entry,
            slot,
            proven: Cell::new(None),
        })
    }
}

impl std::ops::Deref for Local {
    type Target = CacheEntry;

    fn deref(&self) -> &CacheEntry {
        &self.entry
    }
}

impl Lookups {
    pub fn new(config: &FilterConfig) -> Self {
        let negative_entries = config
            .legacy_keys
            .as_ref()
            .map_or(1, |legacy| legacy.negative_cache_entries);
        Self {
            machine: lookup::Lookups::default(),
            legacy_unknown: NegativeCache::new(negative_entries),
            local: HashMap::new(),
        }
    }

    /// Drops a request that ended while it waited.
    pub fn forget(&mut self, context_id: u32) {
        self.machine.forget(|w| w.context_id == context_id);
    }

    /// Are requests waiting on another worker's lookup (so the tick must poll)?
    pub fn has_remote_waits(&self) -> bool {
        self.machine.has_remote_waits()
    }
}

// JWT credentials (worked on by `crate::jwt`).

/// A JWT request, kept while it waits for its issuer's keys.
pub struct TokenRequest {
    pub token: String,
    pub required: Requirement,
    pub forwarding: Forwarding,
}

pub struct TokenWaiter {
    pub context_id: u32,
    pub request: TokenRequest,
}

pub struct IssuerState {
    pub keys: KeySet,
    pub remote: Option<RemoteJwks>,
    /// Shared-data version (CAS) of the JWKS this worker last loaded.
    pub version: Option<u32>,
    /// Requests waiting for a refetch, and when this worker last started one.
    pub wait: KeyWait<TokenWaiter>,
}

/// Per-worker JWT state.
pub struct JwtState {
    pub issuers: Vec<IssuerState>,
    pub cache: TokenCache,
    /// When the periodic JWKS work last ran.
    pub last_tick_ms: u64,
    /// The host's native signature check, when configured.
    pub host_crypto: Option<HostCrypto>,
}

impl JwtState {
    pub fn new(settings: &JwtSettings) -> Self {
        let issuers = settings
            .issuers
            .iter()
            .map(|issuer| {
                let (keys, remote) = match &issuer.jwks {
                    JwksSource::Inline(keys) => (keys.clone(), None),
                    JwksSource::Remote(remote) => (KeySet::default(), Some(remote.clone())),
                };
                IssuerState {
                    keys,
                    remote,
                    version: None,
                    wait: KeyWait::default(),
                }
            })
            .collect();
        Self {
            issuers,
            cache: TokenCache::new(settings.cache_max_entries),
            last_tick_ms: 0,
            host_crypto: settings.host_crypto.then(HostCrypto::default),
        }
    }

    pub fn has_waiters(&self) -> bool {
        self.issuers.iter().any(|i| i.wait.has_waiters())
    }

    pub fn has_remote_issuers(&self) -> bool {
        self.issuers.iter().any(|i| i.remote.is_some())
    }

    /// Drops a request that ended while it waited.
    pub fn forget(&mut self, context_id: u32) {
        for issuer in &mut self.issuers {
            issuer.wait.forget(|w| w.context_id == context_id);
        }
    }
}

// The revocation feed, as the requests see it.

/// Why `id` must be refused now, if it is on the revoked list.
pub fn revocation(shared: &Shared, id: &str, now_ms: u64) -> Option<DenyReason> {
    shared
        .feed
        .borrow()
        .refusal(&shared.config.revocation_feed, id, now_ms)
}

/// What the feed lets cached records do now (see [`RecordTrust`]).
pub fn with_trust<R>(shared: &Shared, f: impl FnOnce(RecordTrust<'_>) -> R) -> R {
    f(shared.feed.borrow().trust(&shared.config.revocation_feed))
}

/// The policy in force for key records: `None` while the feed is live (or not used).
pub fn degraded_policy(shared: &Shared) -> Option<FeedPolicy> {
    with_trust(shared, |trust| trust.degraded_policy())
}
