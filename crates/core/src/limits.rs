//! Per-key limits: where a request may come from (CIDR allow-lists, the client address
//! behind trusted proxies) and how often (a token bucket kept in shared data).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
    if cidrs.is_empty() {
        return true;
    }
    let Some(client) = client else {
        return false;
    };
    cidrs
        .iter()
        .filter_map(|c| Cidr::parse(c))
        .any(|c| c.contains(client))
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

/// A token bucket's state, kept per key in shared data (tokens in thousandths).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub key_id: String,
    pub milli_tokens: u64,
    pub updated_ms: u64,
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
    /// A full bucket for `key_id`.
    pub fn full(key_id: &str, limit: &RateLimit, now_ms: u64) -> Self {
        Self {
            key_id: key_id.to_owned(),
            milli_tokens: u64::from(limit.burst) * 1000,
            updated_ms: now_ms,
        }
    }

    /// Refills for the time passed, then takes one token if there is one.
    pub fn take(&mut self, limit: &RateLimit, now_ms: u64) -> Take {
        let capacity = u64::from(limit.burst) * 1000;
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        // tokens per ms * 1000 (milli-tokens) = rps
        let refill = (elapsed as f64 * limit.requests_per_second) as u64;
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(capacity);
        self.updated_ms = self.updated_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
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
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a bucket and checks it is `key_id`'s (the slot may hold another key's).
    pub fn decode_for(bytes: &[u8], key_id: &str) -> Option<Self> {
        let bucket: Self = serde_json::from_slice(bytes).ok()?;
        (bucket.key_id == key_id).then_some(bucket)
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
        let mut entries: Vec<&str> = xff?.split(',').map(str::trim).collect();
        let last = entries.last().and_then(|e| e.parse::<IpAddr>().ok());
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
        let limit = RateLimit {
            requests_per_second: 10.0,
            burst: 10,
        };
        let mut bucket = Bucket::full("k", &limit, 0);
        for left in (0..10).rev() {
            assert_eq!(bucket.take(&limit, 0), Take::Allowed { remaining: left });
        }
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
        let round = Bucket::decode_for(&bucket.encode(), "k").unwrap();
        assert_eq!(round, bucket);
        assert!(Bucket::decode_for(&bucket.encode(), "other").is_none());
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
