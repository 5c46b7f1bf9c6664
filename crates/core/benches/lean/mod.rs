//! The host that does nothing and the cached-opaque-key and cached-token setups shared by the
//! request-path benchmarks (`request_path.rs` with criterion, `request_loop.rs` plain, for Wasm
//! runtimes).

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use keygate_core::config::FilterConfig;
use keygate_core::fleet::{LeaseGrant, LeaseResponse};
use keygate_core::host::{Event, Host, HostError, LogLevel, Versioned};
use keygate_core::key::{mint_opaque_key, GatewayKey, KeyPrefix};
use keygate_core::machine::state::Shared;
use keygate_core::machine::worker;
use keygate_core::wire::{KeyLookup, KeyStatus, RateLimit};
use serde_json::json;

pub const GATEWAY_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// A host that keeps shared data and answers one callout body, and otherwise does nothing.
#[derive(Default)]
pub struct LeanHost {
    pub now_ms: Cell<u64>,
    pub shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    pub next_token: Cell<u32>,
    pub body: RefCell<Vec<u8>>,
    /// The id of the key whose record `body` holds.
    pub record_id: RefCell<String>,
    /// The token of the last lease ask.
    pub lease_token: Cell<Option<u32>>,
}

impl Host for LeanHost {
    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }
    fn log(&self, _: LogLevel, _: &str) {}
    fn get_shared(&self, key: &str) -> Versioned {
        match self.shared.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        let mut shared = self.shared.borrow_mut();
        let version = shared.get(key).map_or(0, |(_, v)| *v);
        if cas.is_some_and(|c| c != version) {
            return Err(HostError::CasMismatch);
        }
        shared.insert(key.to_owned(), (value.to_vec(), version + 1));
        Ok(())
    }
    fn dispatch_http_call(
        &self,
        _: &str,
        headers: &[(&str, &str)],
        _: Option<&[u8]>,
        _: Duration,
    ) -> Result<u32, HostError> {
        if headers.contains(&(":path", "/v1/leases")) {
            self.lease_token.set(Some(self.next_token.get() + 1));
        }
        self.next_token.set(self.next_token.get() + 1);
        Ok(self.next_token.get())
    }
    fn call_response_status(&self) -> Option<u32> {
        Some(200)
    }
    fn call_response_body(&self, _: usize, _: usize) -> Option<Vec<u8>> {
        Some(self.body.borrow().clone())
    }
    fn property(&self, _: &[&str]) -> Option<Vec<u8>> {
        None
    }
    fn set_request_header(&self, name: &str, value: &str) {
        black_box((name, value));
    }
    fn remove_request_header(&self, name: &str) {
        black_box(name);
    }
    fn send_local_reply(&self, _: u32, _: &[(&str, &str)], _: &[u8]) {}
    fn count(&self, _: Event, _: u64) {}
    fn gauge(&self, _: Event, _: u64) {}
    fn count_denial(&self, _: bool, _: &'static str, _: u64) {}
    fn set_effective_context(&self, _: u32) -> Result<(), HostError> {
        Ok(())
    }
    fn resume_request(&self) {}
    fn set_response_header(&self, _: &str, _: &str) {}
    fn response_status(&self) -> Option<u32> {
        Some(200)
    }
    fn call_foreign_function(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, HostError> {
        Err(HostError::Refused("NotFound"))
    }
    fn set_tick_period(&self, _: Duration) {}

    fn register_queue(&self, _: &str) -> Option<u32> {
        None
    }

    fn post_to_queue(&self, _: &str, _: &[u8]) -> bool {
        false
    }

    fn take_from_queue(&self, _: u32) -> Option<Vec<u8>> {
        None
    }
}

/// A worker started on `host` (its clock set) with the filter configuration `config`.
fn start(host: &LeanHost, config: serde_json::Value) -> Rc<Shared> {
    host.now_ms.set(1_700_000_000_000);
    let config = FilterConfig::parse(config.to_string().as_bytes()).unwrap();
    let secrets = config
        .load_secrets(|var| {
            Some(if var.contains("GATEWAY") {
                GATEWAY_HEX.to_owned()
            } else {
                "service-token-service-token-service-token".to_owned()
            })
        })
        .unwrap();
    worker::start(host, config, secrets, [7; 16])
}

/// A worker holding one opaque key's record (its first request looked it up), and the
/// headers of a request presenting that key: every later request is a cache hit.
pub fn cached_opaque() -> (LeanHost, Rc<Shared>, String) {
    cached_opaque_with(
        json!({"routes": [{"prefix": "/", "scopes": ["demo:read"]}]}),
        None,
    )
}

/// [`cached_opaque`] with a fleet-wide limit on the key, its lease granted (more tokens, valid
/// longer, than any run spends): every later request is a cache hit spending from the lease.
/// `refusals`: `rate_limit_headers: "refusals"` (no `RateLimit` headers on allowed responses).
pub fn cached_opaque_fleet(refusals: bool) -> (LeanHost, Rc<Shared>, String) {
    let which = if refusals { "refusals" } else { "always" };
    let limit = RateLimit {
        requests_per_second: 1e6,
        burst: 1_000_000,
    };
    let (host, shared, bearer) = cached_opaque_with(
        json!({
            "routes": [{"prefix": "/", "scopes": ["demo:read"]}],
            "rate_limit_headers": which,
        }),
        Some(limit),
    );
    // The first request waits for the lease: the tick asks for it, the grant lets it go on.
    worker::on_tick(&host, &shared);
    let token = host.lease_token.get().expect("no lease asked for");
    let key_id = host.record_id.borrow().clone();
    *host.body.borrow_mut() = serde_json::to_vec(&LeaseResponse {
        leases: vec![LeaseGrant {
            bucket: format!("key:{key_id}"),
            granted: u32::MAX,
            valid_ms: u32::MAX,
            gateways: 1,
            remaining: None,
        }],
    })
    .unwrap();
    let size = host.body.borrow().len();
    worker::on_call_response(&host, &shared, token, size);
    // Spent from the lease from now on, with no callout.
    let asked = host.next_token.get();
    one_request(&host, &shared, &request_headers(&bearer), 2);
    assert_eq!(
        host.next_token.get(),
        asked,
        "a cached request made a callout"
    );
    (host, shared, bearer)
}

fn cached_opaque_with(
    config: serde_json::Value,
    global_limit: Option<RateLimit>,
) -> (LeanHost, Rc<Shared>, String) {
    let host = LeanHost::default();
    let shared = start(&host, config);
    let key = mint_opaque_key(
        &KeyPrefix::parse("kg_live_").unwrap(),
        &GatewayKey::from_hex(GATEWAY_HEX).unwrap(),
        [3; keygate_core::key::ID_LEN],
        [4; keygate_core::key::SECRET_LEN],
    );
    let record = KeyLookup {
        id: key.id.as_str().into(),
        digest: key.digest.to_hex(),
        subject: "team-analytics".into(),
        scopes: vec!["demo:read".into()],
        status: KeyStatus::Active,
        expires_at: None,
        rate_limit: None,
        allowed_cidrs: Vec::new(),
        not_before: None,
        not_after: None,
        roles: Vec::new(),
        allowed_principals: Vec::new(),
        global_limit,
        quota: None,
        pool: None,
        owner: None,
        metadata: Default::default(),
        signing: None,
        allowed_countries: Vec::new(),
    };
    *host.body.borrow_mut() = serde_json::to_vec(&record).unwrap();
    *host.record_id.borrow_mut() = record.id.to_string();
    let bearer = format!("Bearer {}", key.plaintext);
    let headers = request_headers(&bearer);
    // The first request looks the record up; the answer caches it.
    assert!(!worker::on_request_headers(&host, &shared, 1, &headers));
    let token = host.next_token.get();
    let size = host.body.borrow().len();
    worker::on_call_response(&host, &shared, token, size);
    worker::on_log(&shared, 1);
    (host, shared, bearer)
}

/// A worker holding one verified ES256 token of an outside issuer (its first request verified
/// it), and that token as a bearer value: every later request is a verified-token cache hit.
pub fn cached_jwt() -> (LeanHost, Rc<Shared>, String) {
    use keygate_core::jwt::{Algorithm, SigningKey};
    use rand_core::SeedableRng as _;

    let host = LeanHost::default();
    let signer = SigningKey::generate(
        Algorithm::ES256,
        &mut rand_chacha::ChaCha20Rng::seed_from_u64(5),
    )
    .unwrap();
    let shared = start(
        &host,
        json!({
            "routes": [{"prefix": "/", "scopes": ["demo:read"]}],
            "jwt": {"issuers": [{
                "issuer": "https://idp.example",
                "algorithms": ["ES256"],
                "jwks": {"inline": {"keys": [signer.public_jwk("k1")]}},
            }]},
        }),
    );
    let token = signer
        .sign(
            "k1",
            "JWT",
            &json!({
                "iss": "https://idp.example",
                "sub": "team-analytics",
                "scope": "demo:read",
                "exp": 1_700_000_000 + 3600,
            }),
        )
        .unwrap();
    let bearer = format!("Bearer {token}");
    one_request(&host, &shared, &request_headers(&bearer), 1);
    (host, shared, bearer)
}

/// A request's headers with `authorization` set to `bearer`.
pub fn request_headers(bearer: &str) -> [(&str, &[u8]); 6] {
    [
        (":authority", b"api.example"),
        (":path", b"/v1/bench"),
        (":method", b"GET"),
        (":scheme", b"http"),
        ("authorization", bearer.as_bytes()),
        ("x-request-id", b"6b1f9a52-1d1e-4c6a-9b7e-3f0a5d2c8e11"),
    ]
}

/// One whole cached request: headers (which must go on), response, end.
pub fn one_request(host: &LeanHost, shared: &Shared, headers: &[(&str, &[u8])], id: u32) {
    assert!(worker::on_request_headers(host, shared, id, headers));
    worker::on_response_headers(host, shared, id);
    worker::on_log(shared, id);
}
