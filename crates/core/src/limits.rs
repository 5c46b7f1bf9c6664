//! Per-key limits: where a request may come from (CIDR allow-lists, the client address
//! behind trusted proxies) and how often (a token bucket kept in shared data).

use std::net::IpAddr;

use sha2::{Digest as _, Sha256};

use crate::wire::RateLimit;

/// An IPv4 or IPv6 network such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` (or a bare address, meaning one host).
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        // An IPv4 client may reach an IPv6 listener as ::ffff:a.b.c.d.
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

/// True when `client` is inside one of `cidrs` (strings from the key record; an unparsable
/// entry matches nothing). An empty list allows every address.
pub fn address_allowed(cidrs: &[String], client: Option<IpAddr>) -> bool {
    AllowList::parse(cidrs).allows(client)
}

/// A key record's address allow-list, parsed once (when the record is prepared) rather than
/// on every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// The record lists addresses: only those are allowed (even when none of them parses).
    restricted: bool,
    cidrs: Vec<Cidr>,
}

impl AllowList {
    /// Parses a record's `allowed_cidrs`; an unparsable entry matches nothing.
    pub fn parse(cidrs: &[String]) -> Self {
        Self {
            restricted: !cidrs.is_empty(),
            cidrs: cidrs.iter().filter_map(|c| Cidr::parse(c)).collect(),
        }
    }

    /// Does the list restrict addresses at all (so the client's address must be read)?
    pub fn is_restricted(&self) -> bool {
        self.restricted
    }

    /// Is `client` allowed? An empty list allows every address, an unknown one none.
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        if !self.restricted {
            return true;
        }
        client.is_some_and(|client| self.cidrs.iter().any(|c| c.contains(client)))
    }
}

/// The client's address: the TCP peer when no proxy is trusted; otherwise the address
/// `trusted_hops` entries from the right of `X-Forwarded-For` as it reached Envoy (each
/// trusted proxy appended one). Fewer entries than trusted hops, or an unparsable one:
/// unknown (`None`), so an allow-list refuses rather than trusting a spoofable value.
///
/// `source` is Envoy's `source.address` property (`address:port`), which is the TCP peer only
/// sometimes. Without `use_remote_address` on the connection manager, Envoy puts the rightmost
/// `X-Forwarded-For` entry there, a value the client chose, with port 0; a real TCP peer never
/// has port 0. So `source` counts as the peer only with a port other than 0, whatever the
/// connection manager's settings, and `trusted_hops: 0` never takes an address from a header.
///
/// With `use_remote_address: true`, Envoy appends an entry of its own to `X-Forwarded-For`
/// before any filter runs: the peer's address, or Envoy's own address when the peer is on
/// loopback. That entry is not a hop in front of Envoy and is skipped: it is recognised as the
/// last entry while `source` is a real peer whose address equals it or is a loopback address
/// (without `use_remote_address`, Envoy would have given a valid last entry port 0).
pub fn client_address(
    source: Option<&str>,
    forwarded_for: Option<&str>,
    trusted_hops: u32,
) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return source.and_then(parse_peer);
    }
    ForwardedFor::read(forwarded_for, trusted_hops).client(source)
}

/// What `X-Forwarded-For` can tell about the client for `trusted_hops` ≥ 1, read from the
/// header alone (no allocation), so that Envoy's `source.address` (a host call) is read only
/// when an allow-list needs the address: see [`client_address`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardedFor {
    /// The rightmost entry, when it is an address.
    last: Option<IpAddr>,
    /// The entry `trusted_hops` from the right: the client when Envoy appended nothing.
    hop: Option<IpAddr>,
    /// The entry one further left: the client when Envoy appended the rightmost entry.
    hop_before_appended: Option<IpAddr>,
}

impl ForwardedFor {
    /// Reads the header (`None`: absent) for `trusted_hops` proxies (0 is read as 1).
    pub fn read(forwarded_for: Option<&str>, trusted_hops: u32) -> Self {
        let Some(header) = forwarded_for else {
            return Self::default();
        };
        let hops = (trusted_hops as usize).max(1);
        let entry = |from_right: usize| {
            header
                .rsplit(',')
                .nth(from_right)
                .and_then(|e| e.trim().parse().ok())
        };
        Self {
            last: entry(0),
            hop: entry(hops - 1),
            hop_before_appended: entry(hops),
        }
    }

    /// The client, given Envoy's `source.address`: the entry Envoy appended itself (with
    /// `use_remote_address`) is skipped, recognised as a parsable last entry while `source` is
    /// a real peer (port other than 0) whose address equals it or is on loopback.
    pub fn client(&self, source: Option<&str>) -> Option<IpAddr> {
        // Envoy took the source from `X-Forwarded-For` (port 0) but not from its last entry:
        // Envoy trusts hops of its own (`xff_num_trusted_hops` > 0, Istio's
        // `numTrustedProxies`) and may have appended the peer after them. Which entry is
        // whose cannot be told, so the client is unknown (an allow-listed key is refused)
        // rather than possibly the front proxy's address.
        if let Some(from_header) = source
            .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
            .filter(|s| s.port() == 0)
        {
            if self
                .last
                .is_none_or(|last| !same_address(last, from_header.ip()))
            {
                return None;
            }
        }
        let peer = source.and_then(parse_peer);
        let appended_by_envoy = match (peer, self.last) {
            (Some(peer), Some(last)) => same_address(last, peer) || unmapped(peer).is_loopback(),
            _ => false,
        };
        if appended_by_envoy {
            self.hop_before_appended
        } else {
            self.hop
        }
    }
}

/// An IPv4 address reached over IPv6 (`::ffff:a.b.c.d`) as IPv4.
fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

fn same_address(a: IpAddr, b: IpAddr) -> bool {
    unmapped(a) == unmapped(b)
}

/// Parses `1.2.3.4:5678` or `[::1]:5678` as Envoy reports a connection's address. An address
/// with port 0 (Envoy took it from a header, not from a connection), a bare address without
/// a port, or anything else: `None`.
fn parse_peer(source: &str) -> Option<IpAddr> {
    let address: std::net::SocketAddr = source.parse().ok()?;
    (address.port() != 0).then_some(address.ip())
}

/// Ways per rate-limit slot: the buckets of up to this many owners share one shared-data value.
pub const BUCKET_WAYS: usize = 8;
/// Rate-limit slots in shared data. All are created at start, so that every later write is a
/// compare-and-swap; with [`BUCKET_WAYS`] buckets each, up to 32,768 owners can be mid-refill at
/// once per Envoy process.
pub const RATE_SLOTS: u32 = 4096;
/// Compare-and-swap rounds a request tries before it gives up on its bucket.
pub const MAX_CAS_ROUNDS: usize = 16;

/// Whose bucket: 16 bytes of SHA-256 over the owner's kind and names, so two owners never
/// share a bucket (and an owner's slot can be computed by anyone: collisions are expected
/// and handled, see [`BucketSet::take`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketOwner([u8; 16]);

impl BucketOwner {
    /// The bucket of a Keygate key (opaque, legacy, or a JWT whose `jti` is a Keygate key id).
    pub fn key(key_id: &str) -> Self {
        Self::digest(&[b"key", key_id.as_bytes()])
    }

    /// The bucket of a credential without a Keygate key id: a JWT's issuer and subject.
    pub fn subject(issuer: &str, subject: &str) -> Self {
        Self::digest(&[b"sub", issuer.as_bytes(), subject.as_bytes()])
    }

    fn digest(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut owner = [0u8; 16];
        owner.copy_from_slice(&digest[..16]);
        Self(owner)
    }

    /// The rate-limit slot this owner's bucket lives in.
    pub fn slot(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) % RATE_SLOTS
    }

    /// Lower-case hex of the 16 bytes.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for BucketOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketOwner({})", self.to_hex())
    }
}

/// Shared-data key of a rate-limit slot.
pub fn bucket_key(slot: u32) -> String {
    format!("keygate.rl2.{slot}")
}

/// A token bucket's state (tokens in thousandths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub owner: BucketOwner,
    pub milli_tokens: u64,
    pub updated_ms: u64,
    /// When the bucket is full again if nobody takes from it. From then on, forgetting the
    /// bucket loses nothing: its owner would get a full one anyway.
    pub full_at_ms: u64,
}

/// The outcome of taking one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Allowed; whole tokens left.
    Allowed { remaining: u64 },
    /// Refused; a token is back in this many milliseconds.
    Limited { retry_after_ms: u64 },
}

impl Bucket {
    /// A full bucket for `owner`.
    pub fn full(owner: BucketOwner, limit: &RateLimit, now_ms: u64) -> Self {
        Self {
            owner,
            milli_tokens: u64::from(limit.burst) * 1000,
            updated_ms: now_ms,
            full_at_ms: now_ms,
        }
    }

    /// Refills for the time passed, then takes one token if there is one.
    pub fn take(&mut self, limit: &RateLimit, now_ms: u64) -> Take {
        let capacity = u64::from(limit.burst) * 1000;
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        // tokens per ms * 1000 (milli-tokens) = rps
        let refill = (elapsed as f64 * limit.requests_per_second) as u64;
        let filled = self.milli_tokens.saturating_add(refill);
        if filled >= capacity {
            self.milli_tokens = capacity;
            self.updated_ms = self.updated_ms.max(now_ms);
        } else {
            // Only the time that bought whole milli-tokens is used up: a slow bucket asked
            // every few milliseconds still refills (the remainder is credited later).
            self.milli_tokens = filled;
            let used_ms = (refill as f64 / limit.requests_per_second).ceil() as u64;
            self.updated_ms = self.updated_ms.saturating_add(used_ms.min(elapsed));
        }
        let outcome = if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            Take::Allowed {
                remaining: self.milli_tokens / 1000,
            }
        } else {
            let missing = 1000 - self.milli_tokens;
            let retry_after_ms = (missing as f64 / limit.requests_per_second).ceil() as u64;
            Take::Limited {
                retry_after_ms: retry_after_ms.max(1),
            }
        };
        let missing = capacity.saturating_sub(self.milli_tokens);
        let to_full_ms = (missing as f64 / limit.requests_per_second).ceil() as u64;
        self.full_at_ms = self.updated_ms.saturating_add(to_full_ms);
        outcome
    }

    /// True when the bucket has refilled completely by `now_ms` (see `full_at_ms`).
    pub fn is_idle(&self, now_ms: u64) -> bool {
        now_ms >= self.full_at_ms
    }
}

/// Bytes of one encoded bucket: owner, milli-tokens, updated, full at (little-endian).
const BUCKET_LEN: usize = 16 + 8 + 8 + 8;

/// The buckets of one rate-limit slot: at most [`BUCKET_WAYS`], each with its owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketSet {
    buckets: Vec<Bucket>,
}

/// Every way of a slot holds another owner's bucket that is still refilling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotFull {
    /// When the first of them will be full (and its way free), in milliseconds.
    pub retry_after_ms: u64,
}

impl BucketSet {
    /// Decodes a slot's value. Anything that is not whole buckets (an empty slot, a value of
    /// another format) decodes to the buckets it holds whole, at most [`BUCKET_WAYS`].
    pub fn decode(bytes: &[u8]) -> Self {
        let buckets = bytes
            .chunks_exact(BUCKET_LEN)
            .take(BUCKET_WAYS)
            .map(|chunk| {
                let mut owner = [0u8; 16];
                owner.copy_from_slice(&chunk[..16]);
                let word = |at: usize| {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(&chunk[at..at + 8]);
                    u64::from_le_bytes(bytes)
                };
                Bucket {
                    owner: BucketOwner(owner),
                    milli_tokens: word(16),
                    updated_ms: word(24),
                    full_at_ms: word(32),
                }
            })
            .collect();
        Self { buckets }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buckets.len() * BUCKET_LEN);
        for bucket in &self.buckets {
            out.extend_from_slice(&bucket.owner.0);
            out.extend_from_slice(&bucket.milli_tokens.to_le_bytes());
            out.extend_from_slice(&bucket.updated_ms.to_le_bytes());
            out.extend_from_slice(&bucket.full_at_ms.to_le_bytes());
        }
        out
    }

    pub fn get(&self, owner: &BucketOwner) -> Option<&Bucket> {
        self.buckets.iter().find(|b| b.owner == *owner)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one token from `owner`'s bucket. An owner without a bucket here gets a full one
    /// in a free way; a way is free when it is empty or its bucket has refilled completely
    /// (dropping that bucket changes nothing for its owner). Another owner's bucket that is
    /// still refilling is never touched: when every way holds one, the answer is
    /// [`SlotFull`] and nothing changes.
    pub fn take(
        &mut self,
        owner: BucketOwner,
        limit: &RateLimit,
        now_ms: u64,
    ) -> Result<Take, SlotFull> {
        if let Some(bucket) = self.buckets.iter_mut().find(|b| b.owner == owner) {
            return Ok(bucket.take(limit, now_ms));
        }
        self.buckets.retain(|b| !b.is_idle(now_ms));
        if self.buckets.len() >= BUCKET_WAYS {
            let first_free = self
                .buckets
                .iter()
                .map(|b| b.full_at_ms.saturating_sub(now_ms))
                .min()
                .unwrap_or(1);
            return Err(SlotFull {
                retry_after_ms: first_free.max(1),
            });
        }
        let mut bucket = Bucket::full(owner, limit, now_ms);
        let outcome = bucket.take(limit, now_ms);
        self.buckets.push(bucket);
        Ok(outcome)
    }
}

/// The shared data that rate-limit slots live in (proxy-wasm shared data in the filter).
pub trait SharedSlots {
    /// The slot's value and version (`None`, `None` when it does not exist).
    fn read(&self, name: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value` if the slot is still at version `cas`; false when it is not (or the
    /// write failed).
    fn write(&self, name: &str, value: &[u8], cas: Option<u32>) -> bool;
}

/// What taking a token decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    /// Allowed; whole tokens left.
    Allowed { remaining: u64 },
    /// Over the limit (429); a token is back in this many milliseconds.
    Limited { retry_after_ms: u64 },
    /// Every way of the owner's slot holds another owner's bucket that is still refilling:
    /// refused (fail closed), a way frees in this many milliseconds.
    SlotFull { retry_after_ms: u64 },
    /// [`MAX_CAS_ROUNDS`] compare-and-swap rounds all lost to concurrent writers: refused
    /// (fail closed) rather than allowed without counting.
    Contended,
}

/// Takes one token from `owner`'s bucket in shared data: read the slot, take, write it back
/// with compare-and-swap; on a lost race, read again (at most [`MAX_CAS_ROUNDS`] times).
pub fn take_token(
    slots: &impl SharedSlots,
    owner: BucketOwner,
    limit: &RateLimit,
    now_ms: u64,
) -> RateDecision {
    let name = bucket_key(owner.slot());
    for _ in 0..MAX_CAS_ROUNDS {
        let (current, cas) = slots.read(&name);
        let mut set = current
            .as_deref()
            .map(BucketSet::decode)
            .unwrap_or_default();
        let outcome = match set.take(owner, limit, now_ms) {
            Ok(outcome) => outcome,
            Err(full) => {
                return RateDecision::SlotFull {
                    retry_after_ms: full.retry_after_ms,
                }
            }
        };
        if slots.write(&name, &set.encode(), cas) {
            return match outcome {
                Take::Allowed { remaining } => RateDecision::Allowed { remaining },
                Take::Limited { retry_after_ms } => RateDecision::Limited { retry_after_ms },
            };
        }
    }
    RateDecision::Contended
}

/// What a token bucket has left after an allowed request. Its `RateLimit-Policy` and
/// `RateLimit` headers are written only for a response that carries them
/// ([`RateLeft::headers`]; with `rate_limit_headers: "refusals"` none does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLeft {
    pub limit: RateLimit,
    pub remaining: u64,
    /// Seconds until a token is back (0 while some are left).
    pub reset_s: u64,
}

impl RateLeft {
    /// `RateLimit-Policy` and `RateLimit` (see [`ratelimit_headers`]).
    pub fn headers(&self) -> (String, String) {
        ratelimit_headers(&self.limit, self.remaining, self.reset_s)
    }
}

/// The IETF rate-limit headers (draft-ietf-httpapi-ratelimit-headers):
/// `RateLimit-Policy: "keygate";q=<burst>;w=<window>` and
/// `RateLimit: "keygate";r=<remaining>;t=<seconds until a token is back>`.
pub fn ratelimit_headers(limit: &RateLimit, remaining: u64, reset_s: u64) -> (String, String) {
    let window = (f64::from(limit.burst) / limit.requests_per_second)
        .ceil()
        .max(1.0) as u64;
    (
        format!("\"keygate\";q={};w={window}", limit.burst),
        format!("\"keygate\";r={remaining};t={reset_s}"),
    )
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidrs_match_v4_v6_and_mapped_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.255.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn allow_lists_refuse_unknown_clients() {
        let list = vec!["127.0.0.0/8".to_owned()];
        assert!(address_allowed(&list, Some(ip("127.0.0.1"))));
        assert!(!address_allowed(&list, Some(ip("192.0.2.1"))));
        assert!(!address_allowed(&list, None));
        assert!(address_allowed(&[], None));
        // Parsed once: the same answers from the prepared list.
        let prepared = AllowList::parse(&list);
        assert!(prepared.is_restricted());
        assert!(prepared.allows(Some(ip("127.0.0.1"))));
        assert!(!prepared.allows(Some(ip("192.0.2.1"))));
        assert!(!prepared.allows(None));
        assert!(!AllowList::parse(&[]).is_restricted());
        assert!(AllowList::parse(&[]).allows(None));
        // A list of nothing but garbage still restricts: it allows no address.
        let garbage = AllowList::parse(&["not-a-cidr".to_owned()]);
        assert!(garbage.is_restricted());
        assert!(!garbage.allows(Some(ip("127.0.0.1"))));
    }

    #[test]
    fn client_address_honours_only_trusted_hops() {
        assert_eq!(
            client_address(Some("127.0.0.1:5000"), Some("6.6.6.6"), 0),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(client_address(Some("[::1]:5000"), None, 0), Some(ip("::1")));
        // One trusted proxy appended the real client; anything left of it is the client's word.
        assert_eq!(
            client_address(None, Some("6.6.6.6, 203.0.113.7"), 1),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(None, Some("6.6.6.6, 203.0.113.7, 10.0.0.2"), 2),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(client_address(None, Some("203.0.113.7"), 2), None);
        assert_eq!(client_address(None, None, 1), None);
        assert_eq!(client_address(None, Some("junk"), 1), None);
    }

    fn limit(rps: f64, burst: u32) -> RateLimit {
        RateLimit {
            requests_per_second: rps,
            burst,
        }
    }

    #[test]
    fn an_address_envoy_took_from_a_header_is_never_the_peer() {
        // Without use_remote_address Envoy reports the rightmost XFF entry, with port 0.
        assert_eq!(
            client_address(Some("10.9.9.9:0"), Some("10.9.9.9"), 0),
            None
        );
        assert_eq!(client_address(Some("[2001:db8::9]:0"), None, 0), None);
        assert_eq!(client_address(Some("10.9.9.9"), None, 0), None);
        assert_eq!(client_address(Some("garbage"), None, 0), None);
        assert_eq!(client_address(None, Some("10.9.9.9"), 0), None);
        // Without use_remote_address nothing was appended: the rightmost entry is the hop's.
        assert_eq!(
            client_address(Some("10.9.9.9:0"), Some("6.6.6.6, 10.9.9.9"), 1),
            Some(ip("10.9.9.9"))
        );
        assert_eq!(
            client_address(
                Some("10.9.9.9:0"),
                Some("6.6.6.6, 203.0.113.7, 10.9.9.9"),
                2
            ),
            Some(ip("203.0.113.7"))
        );
    }

    /// The rule of [`client_address`] spelled out over a list of entries, to check the
    /// allocation-free [`ForwardedFor`] against.
    fn reference(source: Option<&str>, xff: Option<&str>, hops: u32) -> Option<IpAddr> {
        let peer = source.and_then(parse_peer);
        if hops == 0 {
            return peer;
        }
        let mut entries: Vec<&str> = xff.unwrap_or_default().split(',').map(str::trim).collect();
        let last = entries.last().and_then(|e| e.parse::<IpAddr>().ok());
        // A source Envoy took from a header (port 0) that is not the last entry: unknown.
        let from_header = source
            .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
            .filter(|s| s.port() == 0);
        if from_header.is_some_and(|s| last.is_none_or(|last| !same_address(last, s.ip()))) {
            return None;
        }
        xff?;
        if let (Some(peer), Some(last)) = (peer, last) {
            if same_address(last, peer) || unmapped(peer).is_loopback() {
                entries.pop();
            }
        }
        let index = entries.len().checked_sub(hops as usize)?;
        entries.get(index)?.parse().ok()
    }

    #[test]
    fn forwarded_for_read_before_the_peer_decides_as_the_rule_says() {
        let sources = [
            None,
            Some("198.51.100.4:40000"),
            Some("[::ffff:198.51.100.4]:40000"),
            Some("127.0.0.1:40000"),
            Some("[::1]:40000"),
            Some("10.9.9.9:0"),
            Some("junk"),
        ];
        let headers = [
            None,
            Some(""),
            Some(" "),
            Some("junk"),
            Some("198.51.100.4"),
            Some("10.9.9.9, 198.51.100.4"),
            Some("6.6.6.6,203.0.113.7 , 198.51.100.4"),
            Some("6.6.6.6, junk, 192.0.2.2"),
            Some("6.6.6.6, 203.0.113.7, junk"),
            Some(",,10.9.9.9,"),
            Some("2001:db8::1, 10.9.9.9, 127.0.0.1"),
        ];
        for hops in 1..=4 {
            for xff in headers {
                let read = ForwardedFor::read(xff, hops);
                for source in sources {
                    assert_eq!(
                        read.client(source),
                        reference(source, xff, hops),
                        "{source:?} {xff:?} {hops}"
                    );
                    assert_eq!(
                        client_address(source, xff, hops),
                        reference(source, xff, hops)
                    );
                }
            }
        }
    }

    #[test]
    fn envoys_own_trusted_hops_make_the_client_unknown() {
        // xff_num_trusted_hops: 1 with use_remote_address: Envoy's source is the second entry
        // from the right (port 0) and the last one is the peer it appended.
        let xff = "6.6.6.6, 10.0.0.9, 198.51.100.4";
        for hops in 1..=3 {
            assert_eq!(client_address(Some("10.0.0.9:0"), Some(xff), hops), None);
        }
        // Envoy's default (no hops of its own): a port-0 source is the last entry, as before.
        assert_eq!(
            client_address(Some("198.51.100.4:0"), Some("6.6.6.6, 198.51.100.4"), 1),
            Some(ip("198.51.100.4"))
        );
        assert_eq!(client_address(Some("10.0.0.9:0"), Some(xff), 0), None);
    }

    #[test]
    fn the_entry_envoy_appended_is_not_a_hop() {
        // use_remote_address: Envoy appended the peer (198.51.100.4) after the proxy's entry.
        let xff = "6.6.6.6, 203.0.113.7, 198.51.100.4";
        assert_eq!(
            client_address(Some("198.51.100.4:40000"), Some(xff), 0),
            Some(ip("198.51.100.4"))
        );
        assert_eq!(
            client_address(Some("198.51.100.4:40000"), Some(xff), 1),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(Some("198.51.100.4:40000"), Some(xff), 2),
            Some(ip("6.6.6.6"))
        );
        assert_eq!(
            client_address(Some("[::ffff:198.51.100.4]:40000"), Some(xff), 1),
            Some(ip("203.0.113.7"))
        );
        // A loopback peer: Envoy appends its own address instead of the peer's.
        assert_eq!(
            client_address(Some("127.0.0.1:40000"), Some("203.0.113.7, 192.0.2.2"), 1),
            Some(ip("203.0.113.7"))
        );
        // Only the appended entry, nothing a proxy added: unknown.
        assert_eq!(
            client_address(Some("198.51.100.4:40000"), Some("198.51.100.4"), 1),
            None
        );
        // A last entry that is not the peer was not appended by Envoy.
        assert_eq!(
            client_address(Some("198.51.100.4:40000"), Some("6.6.6.6, 203.0.113.7"), 1),
            Some(ip("203.0.113.7"))
        );
        assert_eq!(
            client_address(Some("198.51.100.4:40000"), Some("6.6.6.6, junk"), 1),
            None
        );
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_the_rate() {
        let limit = limit(10.0, 10);
        let mut bucket = Bucket::full(BucketOwner::key("k"), &limit, 0);
        for left in (0..10).rev() {
            assert_eq!(bucket.take(&limit, 0), Take::Allowed { remaining: left });
        }
        assert_eq!(bucket.full_at_ms, 1000);
        assert!(!bucket.is_idle(999));
        assert!(bucket.is_idle(1000));
        assert_eq!(
            bucket.take(&limit, 0),
            Take::Limited {
                retry_after_ms: 100
            }
        );
        assert_eq!(
            bucket.take(&limit, 50),
            Take::Limited { retry_after_ms: 50 }
        );
        assert!(matches!(bucket.take(&limit, 100), Take::Allowed { .. }));
        // A long pause refills only up to the burst.
        assert_eq!(bucket.take(&limit, 100_000), Take::Allowed { remaining: 9 });
        assert_eq!(bucket.full_at_ms, 100_100);
    }

    #[test]
    fn a_slow_bucket_asked_often_still_refills() {
        // 0.1 token/s is 0.1 milli-token per ms: asked every 5 ms, each ask alone buys none.
        let limit = limit(0.1, 1);
        let mut bucket = Bucket::full(BucketOwner::key("slow"), &limit, 0);
        assert!(matches!(bucket.take(&limit, 0), Take::Allowed { .. }));
        let mut allowed_at = None;
        for now in (5..=20_000).step_by(5) {
            if let Take::Allowed { .. } = bucket.take(&limit, now) {
                allowed_at.get_or_insert(now);
            }
        }
        // One token back after 10 s, and one more after 20 s: no more, no less.
        assert_eq!(allowed_at, Some(10_000));
        assert_eq!(bucket.milli_tokens, 0);
        let mut again = Bucket::full(BucketOwner::key("slow"), &limit, 0);
        let taken = (0..=20_000)
            .step_by(5)
            .filter(|now| matches!(again.take(&limit, *now), Take::Allowed { .. }))
            .count();
        assert_eq!(taken, 3);
    }

    #[test]
    fn owners_are_distinct_per_kind_issuer_and_subject() {
        let id = "pqiwdlk7mv5ft2xr";
        let key = BucketOwner::key(id);
        assert_eq!(key, BucketOwner::key(id));
        assert_ne!(key, BucketOwner::key("pqiwdlk7mv5ft2xs"));
        // An outside token whose subject (or issuer) spells a key id is not that key.
        assert_ne!(key, BucketOwner::subject("https://idp/", id));
        assert_ne!(key, BucketOwner::subject(id, ""));
        assert_ne!(
            BucketOwner::subject("https://a/", "bob"),
            BucketOwner::subject("https://b/", "bob")
        );
        // Length-prefixed parts: no ambiguity between where the issuer ends and the subject starts.
        assert_ne!(
            BucketOwner::subject("ab", "c"),
            BucketOwner::subject("a", "bc")
        );
        assert!(key.slot() < RATE_SLOTS);
        assert_eq!(key.to_hex().len(), 32);
    }

    /// Owners whose buckets share slot 0 (found by trying subjects; slot numbers are public).
    fn colliding_owners(count: usize) -> Vec<BucketOwner> {
        let target = BucketOwner::key("target").slot();
        let mut found = vec![BucketOwner::key("target")];
        let mut n = 0u64;
        while found.len() < count {
            let owner = BucketOwner::key(&format!("k{n}"));
            if owner.slot() == target {
                found.push(owner);
            }
            n += 1;
        }
        found
    }

    #[test]
    fn colliding_owners_never_reset_each_other() {
        let limit = limit(1.0, 2);
        let owners = colliding_owners(2);
        let (a, b) = (owners[0], owners[1]);
        let mut set = BucketSet::default();
        // Alternating the two keys: each gets exactly its own burst, then 429s.
        let mut allowed = [0, 0];
        for round in 0..10 {
            for (i, owner) in [a, b].into_iter().enumerate() {
                if let Ok(Take::Allowed { .. }) = set.take(owner, &limit, round) {
                    allowed[i] += 1;
                }
                // The value survives the trip through shared data.
                set = BucketSet::decode(&set.encode());
            }
        }
        assert_eq!(allowed, [2, 2]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(&a).map(|b| b.milli_tokens), Some(9));
    }

    #[test]
    fn a_full_slot_refuses_newcomers_without_touching_others() {
        let limit = limit(1.0, 1);
        let owners = colliding_owners(BUCKET_WAYS + 1);
        let mut set = BucketSet::default();
        for (i, owner) in owners[..BUCKET_WAYS].iter().enumerate() {
            assert_eq!(
                set.take(*owner, &limit, i as u64),
                Ok(Take::Allowed { remaining: 0 })
            );
        }
        let before = set.clone();
        // Owner 0 is full again at 1000 ms: until then the newcomer is refused.
        let newcomer = owners[BUCKET_WAYS];
        assert_eq!(
            set.take(newcomer, &limit, 400),
            Err(SlotFull {
                retry_after_ms: 600
            })
        );
        assert_eq!(set, before);
        // The owners already there still draw from their own buckets.
        assert!(matches!(
            set.take(owners[3], &limit, 400),
            Ok(Take::Limited { .. })
        ));
        // Once a bucket has refilled completely its way is free, and dropping it loses
        // nothing: its owner comes back to a full bucket, as it would have had.
        assert_eq!(
            set.take(newcomer, &limit, 1000),
            Ok(Take::Allowed { remaining: 0 })
        );
        assert!(set.get(&owners[0]).is_none());
        assert_eq!(set.len(), BUCKET_WAYS);
        assert!(matches!(
            set.take(owners[1], &limit, 1001),
            Ok(Take::Allowed { .. })
        ));
    }

    #[test]
    fn slot_values_decode_whole_buckets_only() {
        assert!(BucketSet::decode(b"").is_empty());
        // The old JSON format (or any garbage) holds no whole bucket of this one... or
        // decodes to buckets that are simply somebody else's: never a panic.
        let _ = BucketSet::decode(br#"{"key_id":"k","milli_tokens":1,"updated_ms":2}"#);
        let limit = limit(1.0, 1);
        let owners = colliding_owners(BUCKET_WAYS + 2);
        let mut set = BucketSet::default();
        for owner in &owners[..BUCKET_WAYS] {
            let _ = set.take(*owner, &limit, 0);
        }
        let mut bytes = set.encode();
        assert_eq!(bytes.len(), BUCKET_WAYS * BUCKET_LEN);
        bytes.extend_from_slice(&[7; BUCKET_LEN + 3]);
        assert_eq!(BucketSet::decode(&bytes), set);
    }

    /// Shared data as the host keeps it, with a way to make the next writes lose their race.
    #[derive(Default)]
    struct FakeSlots {
        values: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        lose_next: Cell<usize>,
        writes: Cell<usize>,
    }

    impl SharedSlots for FakeSlots {
        fn read(&self, name: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.values.borrow().get(name) {
                Some((value, version)) => (Some(value.clone()), Some(*version)),
                None => (None, None),
            }
        }

        fn write(&self, name: &str, value: &[u8], cas: Option<u32>) -> bool {
            self.writes.set(self.writes.get() + 1);
            let mut values = self.values.borrow_mut();
            let current = values.get(name).map(|(_, v)| *v);
            if self.lose_next.get() > 0 {
                // Another worker wrote in between: the version moved on.
                self.lose_next.set(self.lose_next.get() - 1);
                let (old, version) = values.get(name).cloned().unwrap_or_default();
                values.insert(name.to_owned(), (old, version + 1));
                return false;
            }
            if cas.is_some() && cas != current {
                return false;
            }
            values.insert(name.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
            true
        }
    }

    #[test]
    fn take_token_covers_every_branch() {
        let limit = limit(1.0, 2);
        let slots = FakeSlots::default();
        let owner = BucketOwner::key("k");
        // Allowed, twice (the burst), then limited: each written back.
        assert_eq!(
            take_token(&slots, owner, &limit, 0),
            RateDecision::Allowed { remaining: 1 }
        );
        assert_eq!(
            take_token(&slots, owner, &limit, 0),
            RateDecision::Allowed { remaining: 0 }
        );
        assert_eq!(
            take_token(&slots, owner, &limit, 500),
            RateDecision::Limited {
                retry_after_ms: 500
            }
        );
        assert_eq!(slots.writes.get(), 3);
        // Lost races are retried on a fresh read...
        slots.lose_next.set(MAX_CAS_ROUNDS - 1);
        assert_eq!(
            take_token(&slots, owner, &limit, 1000),
            RateDecision::Allowed { remaining: 0 }
        );
        // ...but after MAX_CAS_ROUNDS lost races the request is refused, and nothing taken.
        slots.lose_next.set(MAX_CAS_ROUNDS);
        let before = slots.read(&bucket_key(owner.slot())).0;
        assert_eq!(
            take_token(&slots, owner, &limit, 5000),
            RateDecision::Contended
        );
        assert_eq!(slots.read(&bucket_key(owner.slot())).0, before);
        // A slot whose every way is another owner's refilling bucket refuses a newcomer.
        let owners = colliding_owners(BUCKET_WAYS + 1);
        for other in &owners[..BUCKET_WAYS] {
            assert!(matches!(
                take_token(&slots, *other, &limit, 10_000),
                RateDecision::Allowed { .. }
            ));
        }
        assert_eq!(
            take_token(&slots, owners[BUCKET_WAYS], &limit, 10_000),
            RateDecision::SlotFull {
                retry_after_ms: 1000
            }
        );
        assert_eq!(
            take_token(&slots, owners[BUCKET_WAYS], &limit, 11_000),
            RateDecision::Allowed { remaining: 1 }
        );
    }

    #[test]
    fn headers_follow_the_ietf_draft() {
        let limit = RateLimit {
            requests_per_second: 10.0,
            burst: 20,
        };
        let (policy, state) = ratelimit_headers(&limit, 7, 1);
        assert_eq!(policy, "\"keygate\";q=20;w=2");
        assert_eq!(state, "\"keygate\";r=7;t=1");
    }
}
