//! The floor filter: what any authorizing proxy-wasm filter must do on every request, and no
//! more. Its plugin configuration is a list of steps, separated by commas or spaces:
//!
//! - (always) read the request header map once, find `authorization`, and add one header
//!   (`x-floor-client`) whose value depends on what was read: the least a filter that decides
//!   on a credential and tells the upstream who called must do (configuration H1). The map is
//!   read as Keygate reads it: one host call, its serialised answer scanned in place (the
//!   SDK's `get_http_request_headers` would copy every name and value into a `String` of its
//!   own, which costs more than the call itself and would put the floor too high);
//! - `shared`: one shared-data read of a ~300-byte value, as a cached record lookup (H2);
//! - `rewrite`: remove the credential header and add three identity headers (H3);
//! - `status`: read the response `:status`, as usage counting does (H4);
//! - `replace`: the edits of `rewrite` (and H1's one header) made in one replacement of the
//!   whole map (H6), as Keygate made them until 2026-12-02, to weigh one call against several;
//! - `ratelimit`: set two response headers, as the `RateLimit-Policy` and `RateLimit` of a
//!   limited key's allowed response (H7);
//! - `repeat=<n>` (1–1000, default 1): make the host calls of `rewrite`, `replace` and `status`
//!   n times per request, to price them above the noise of one measurement (K4 against K3, K6
//!   against K5): each repeat after the first removes the (now absent) credential header and
//!   replaces the three identity headers with the same values (`rewrite`), or replaces the
//!   whole map with the same map again (`replace`), and reads the `:status` again, so the
//!   request keeps the same headers;
//! - `keygate=<gateway key hex>`: the work no opaque-key filter can skip, done with Keygate's own
//!   key code and the way Keygate's cached path does it: read the key id from the key's text,
//!   find the record held for it (a worker-local map, filled on first sight as a lookup
//!   would), and prove the key by a keyed fingerprint of its text against the one proven
//!   before; a key not proven yet is parsed (prefix, base32, CRC), its HMAC tag checked and
//!   its SHA-256 digest compared in constant time. Then tell the upstream the record's
//!   identity (configurations K1 and K2: Keygate's cached opaque path without anything else);
//! - `token`: the work no filter can skip for a bearer JWT it verified before: a keyed
//!   fingerprint (SipHash-2-4, 128 bits, Keygate's own) of the token's text, found in a
//!   worker-local map of the tokens seen (filled on first sight, where a filter would verify
//!   the token), its expiry checked against the host's clock (one host call: a token verified
//!   once must not outlive its `exp`), and the identity it holds told to the upstream; a
//!   request without a bearer token is refused with 401 (configuration K8: C's cached path
//!   without anything else);
//! - `lookups=<n>` (1–1000, default 1): make the `token` step (fingerprint, lookup, clock
//!   read) n times per request, to price it above the noise as `repeat` prices the edits (K9
//!   against K8).
//! - `tick=<ms>` (1–1000): set a tick of that period whose handler does nothing: what a
//!   filter's timer costs Envoy before the filter does any work on it (H8, beside Keygate's
//!   10 ms tick while it follows the revocation feed).
//!
//! An unknown step fails the configuration (Envoy refuses to start), so a typo cannot measure
//! the wrong thing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use keygate_core::fingerprint::{Fingerprint, Fingerprinter};
use keygate_core::key::{key_id_of, parse_opaque_key, GatewayKey, KeyDigest};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, Status};

/// The shared-data key read by the `shared` step; the root context stores a value there.
const SHARED_KEY: &str = "keygate-bench-floor.record";
/// The size of that value: about one cached key record.
const SHARED_BYTES: usize = 300;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { steps: Steps::default(), keys: None, tokens: None })
    });
}}

#[derive(Clone, Copy, Default, Debug)]
struct Steps {
    shared: bool,
    rewrite: bool,
    replace: bool,
    status: bool,
    ratelimit: bool,
    token: bool,
    /// How many times the `rewrite` and `status` calls are made (at least 1).
    repeat: u32,
    /// How many times the `token` step is made (at least 1).
    lookups: u32,
    /// A tick period in milliseconds (0: no tick).
    tick_ms: u32,
}

impl Steps {
    /// The steps, and the gateway key of the `keygate` step.
    fn parse(text: &str) -> Option<(Self, Option<GatewayKey>)> {
        let mut steps = Self {
            repeat: 1,
            lookups: 1,
            ..Self::default()
        };
        let mut gateway = None;
        for word in text.split(|c: char| c == ',' || c.is_whitespace()) {
            match word.split_once('=') {
                Some(("keygate", hex)) => gateway = Some(GatewayKey::from_hex(hex).ok()?),
                Some(("repeat", n)) => steps.repeat = times(n)?,
                Some(("lookups", n)) => steps.lookups = times(n)?,
                Some(("tick", n)) => steps.tick_ms = times(n)?,
                Some(_) => return None,
                None => match word {
                    "" | "floor" => {}
                    "shared" => steps.shared = true,
                    "rewrite" => steps.rewrite = true,
                    "replace" => steps.replace = true,
                    "status" => steps.status = true,
                    "ratelimit" => steps.ratelimit = true,
                    "token" => steps.token = true,
                    _ => return None,
                },
            }
        }
        Some((steps, gateway))
    }
}

/// A step's repeat count: 1 to 1000.
fn times(n: &str) -> Option<u32> {
    n.parse().ok().filter(|n| (1..=1000).contains(n))
}

/// The `keygate` step's state: the gateway key, the fingerprint key and the records seen, by
/// key id.
struct Keys {
    gateway: GatewayKey,
    fingerprints: Fingerprinter,
    records: RefCell<HashMap<String, Record>>,
}

/// What a cached record gives this floor: the digest to compare, the fingerprint of the text
/// proven against it, and the identity to send.
struct Record {
    digest: KeyDigest,
    proven: Option<Fingerprint>,
    subject: String,
    scopes: String,
    key_id: String,
}

const PREFIXES: [&str; 2] = ["kg_live_", "kg_test_"];

impl Keys {
    /// The identity of a presented `Authorization: Bearer <key>`: `None` for anything but an
    /// authentic key whose digest matches its record.
    fn check(&self, authorization: &[u8]) -> Option<(String, String, String)> {
        let text = std::str::from_utf8(authorization).ok()?;
        let presented = text.strip_prefix("Bearer ")?;
        let id = key_id_of(presented, &PREFIXES)?;
        let mut records = self.records.borrow_mut();
        if !records.contains_key(id.as_str()) {
            // First sight: what the lookup answer would bring, for an authentic key only.
            let parsed = parse_opaque_key(presented, &PREFIXES).ok()?;
            if !parsed.tag_is_authentic(&self.gateway) {
                return None;
            }
            records.insert(
                id.as_str().to_owned(),
                Record {
                    digest: parsed.digest(),
                    proven: None,
                    subject: "bench-owner".to_owned(),
                    scopes: "demo:read".to_owned(),
                    key_id: id.as_str().to_owned(),
                },
            );
        }
        let record = records.get_mut(id.as_str())?;
        let fingerprint = self.fingerprints.of(presented.as_bytes());
        if record.proven != Some(fingerprint) {
            if !record.digest.ct_eq(&KeyDigest::of(presented.as_bytes())) {
                return None;
            }
            record.proven = Some(fingerprint);
        }
        Some((
            record.subject.clone(),
            record.scopes.clone(),
            record.key_id.clone(),
        ))
    }
}

/// The `token` step's state: the fingerprint key and the tokens seen.
struct Tokens {
    fingerprints: Fingerprinter,
    seen: RefCell<HashMap<Fingerprint, Seen>>,
}

/// What a verification gave for a token: its identity and its expiry.
struct Seen {
    subject: String,
    scopes: String,
    expires: SystemTime,
}

impl Tokens {
    /// The identity of a presented `Authorization: Bearer <token>` (`None` without one, or
    /// expired): the one held for its fingerprint, or on first sight what a verification
    /// would give (a token of the bench's issuer, valid for a day).
    fn check(&self, authorization: &[u8]) -> Option<(String, String, String)> {
        let token = authorization.strip_prefix(b"Bearer ")?;
        if token.is_empty() {
            return None;
        }
        let fingerprint = self.fingerprints.of(token);
        let now = hostcalls::get_current_time().ok()?;
        let mut seen = self.seen.borrow_mut();
        let seen = seen.entry(fingerprint).or_insert_with(|| Seen {
            subject: "bench-user".to_owned(),
            scopes: "demo:read".to_owned(),
            expires: now + Duration::from_secs(86_400),
        });
        if now >= seen.expires {
            return None;
        }
        Some((
            seen.subject.clone(),
            seen.scopes.clone(),
            "https://idp.example".to_owned(),
        ))
    }
}

struct FloorRoot {
    steps: Steps,
    keys: Option<Rc<Keys>>,
    tokens: Option<Rc<Tokens>>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let Some((steps, gateway)) = Steps::parse(&text) else {
            proxy_wasm::hostcalls::log(LogLevel::Error, "unknown step in the configuration").ok();
            return false;
        };
        self.keys = gateway.map(|gateway| {
            // Keygate draws its fingerprint key at random per VM; any secret does here.
            let fingerprints = Fingerprinter::new(gateway.derive_16(b"bench floor fingerprints"));
            Rc::new(Keys {
                gateway,
                fingerprints,
                records: RefCell::new(HashMap::new()),
            })
        });
        self.tokens = steps.token.then(|| {
            // Any secret does here, as for the `keygate` step.
            Rc::new(Tokens {
                fingerprints: Fingerprinter::new([0x5a; 16]),
                seen: RefCell::new(HashMap::new()),
            })
        });
        if steps.shared {
            let value = vec![b'r'; SHARED_BYTES];
            if self
                .set_shared_data(SHARED_KEY, Some(&value), None)
                .is_err()
            {
                return false;
            }
        }
        if steps.tick_ms > 0 {
            self.set_tick_period(Duration::from_millis(u64::from(steps.tick_ms)));
        }
        self.steps = steps;
        true
    }

    fn on_tick(&mut self) {}

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            steps: self.steps,
            keys: self.keys.clone(),
            tokens: self.tokens.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    steps: Steps,
    keys: Option<Rc<Keys>>,
    tokens: Option<Rc<Tokens>>,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One read of the whole map.
        let block = request_header_block();
        let authorization = header_in_block(&block, b"authorization");
        let mut found = authorization.is_some_and(|v| !v.is_empty());
        if self.steps.shared {
            let (record, _cas) = self.get_shared_data(SHARED_KEY);
            found &= record.is_some_and(|r| r.len() == SHARED_BYTES);
        }
        let checked = match (&self.keys, &self.tokens) {
            (Some(keys), _) => Some(authorization.and_then(|value| keys.check(value))),
            (None, Some(tokens)) => Some(authorization.and_then(|value| {
                // Each repeat after the first checks the same token again; `black_box` keeps
                // the compiler from reusing the fingerprint it computed before.
                (1..self.steps.lookups).for_each(|_| {
                    std::hint::black_box(tokens.check(std::hint::black_box(value)));
                });
                tokens.check(value)
            })),
            (None, None) => None,
        };
        let identity = match checked {
            Some(identity) => {
                if identity.is_none() {
                    // A filter that checks keys refuses the rest (the bench checks it does).
                    self.send_http_response(401, vec![], None);
                    return Action::Pause;
                }
                identity
            }
            None => None,
        };
        let (subject, scopes, key_id) = match &identity {
            Some((subject, scopes, key_id)) => (subject.as_str(), scopes.as_str(), key_id.as_str()),
            None => ("bench-owner", "demo:read", "kid_0123456789abcdef"),
        };
        // One header out, derived from what was read.
        let client = if found { "known" } else { "none" };
        if self.steps.replace {
            // The whole map in one call: as read, without the credential, with the identity.
            let mut map = block_pairs(&block);
            map.retain(|(name, _)| *name != b"authorization");
            map.push((b"x-floor-client", client.as_bytes()));
            map.push((b"x-floor-key-id", key_id.as_bytes()));
            map.push((b"x-floor-subject", subject.as_bytes()));
            map.push((b"x-floor-scopes", scopes.as_bytes()));
            for _ in 0..self.steps.repeat.max(1) {
                set_request_header_map(&map);
            }
            return Action::Continue;
        }
        self.add_http_request_header("x-floor-client", client);
        if self.steps.rewrite {
            self.set_http_request_header("authorization", None);
            self.add_http_request_header("x-floor-key-id", key_id);
            self.add_http_request_header("x-floor-subject", subject);
            self.add_http_request_header("x-floor-scopes", scopes);
            for _ in 1..self.steps.repeat {
                self.set_http_request_header("authorization", None);
                self.set_http_request_header("x-floor-key-id", Some(key_id));
                self.set_http_request_header("x-floor-subject", Some(subject));
                self.set_http_request_header("x-floor-scopes", Some(scopes));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.steps.status {
            for _ in 0..self.steps.repeat.max(1) {
                let status =
                    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
                if matches!(status, Ok(Some(ref s)) if s.as_slice() == b"599") {
                    // Never true here; keeps the read from being a no-op to the reader.
                    self.set_http_response_header("x-floor-status", Some("599"));
                }
            }
        }
        if self.steps.ratelimit {
            self.set_http_response_header("ratelimit-policy", Some("\"keygate\";q=1000;w=1"));
            self.set_http_response_header("ratelimit", Some("\"keygate\";r=999;t=0"));
        }
        Action::Continue
    }
}

mod ffi {
    use proxy_wasm::types::{MapType, Status};

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> Status;
        pub fn proxy_set_header_map_pairs(
            map_type: MapType,
            map_data: *const u8,
            map_size: usize,
        ) -> Status;
    }
}

/// Replaces the request header map with `pairs` in one host call (serialised as the host
/// serialises maps: a count, the sizes, then each name and value NUL-terminated).
fn set_request_header_map(pairs: &[(&[u8], &[u8])]) {
    let mut out = Vec::with_capacity(
        4 + pairs
            .iter()
            .map(|(n, v)| 10 + n.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    // SAFETY: the host reads `out.len()` bytes from `out`, which lives across the call.
    unsafe {
        ffi::proxy_set_header_map_pairs(MapType::HttpRequestHeaders, out.as_ptr(), out.len());
    }
}

/// Every (name, value) of a serialised block, in place; empty when it does not add up.
fn block_pairs(block: &[u8]) -> Vec<(&[u8], &[u8])> {
    let word = |at: usize| -> Option<usize> {
        let bytes = block.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let pairs = || -> Option<Vec<(&[u8], &[u8])>> {
        let count = word(0)?;
        let mut out = Vec::with_capacity(count + 4);
        let mut sizes_at = 4usize;
        let mut data_at = count.checked_mul(8)?.checked_add(4)?;
        for _ in 0..count {
            let (name_len, value_len) = (word(sizes_at)?, word(sizes_at + 4)?);
            sizes_at += 8;
            let name = block.get(data_at..data_at.checked_add(name_len)?)?;
            data_at = data_at.checked_add(name_len + 1)?;
            let value = block.get(data_at..data_at.checked_add(value_len)?)?;
            data_at = data_at.checked_add(value_len + 1)?;
            out.push((name, value));
        }
        Some(out)
    };
    pairs().unwrap_or_default()
}

/// The request headers as the host serialised them, in one buffer.
fn request_header_block() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (proxy-wasm 0.2.5's, pinned exactly: a boxed `[u8]` of that
    // length), so the buffer is ours to own as a `Vec` of that length and capacity, as the
    // SDK's own `get_map_bytes` does.
    unsafe {
        match ffi::proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

/// The value of header `name` in a serialised block (a count, then a (name length, value
/// length) pair per header, then each name and value followed by a NUL, all little-endian
/// `u32`), found in place; `None` when absent or when the block does not add up.
fn header_in_block<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let word = |at: usize| -> Option<usize> {
        let bytes = block.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    for _ in 0..count {
        let (name_len, value_len) = (word(sizes_at)?, word(sizes_at + 4)?);
        sizes_at += 8;
        let this = block.get(data_at..data_at.checked_add(name_len)?)?;
        data_at = data_at.checked_add(name_len + 1)?;
        if this == name {
            return block.get(data_at..data_at.checked_add(value_len)?);
        }
        data_at = data_at.checked_add(value_len + 1)?;
    }
    None
}
