//! The host calls of the cached path, call by call: one request with an opaque key whose
//! record this worker holds, and one with a JWT found in the verified-token cache. Each host
//! call crosses from Wasm into Envoy and is the cost of the cached path, so these lists are
//! the regression guard: a new call on the hot path fails here first.

use std::rc::Rc;

use serde_json::json;

use crate::host::fake::{Effect, FakeHost};
use crate::jwt::testing::key as signing_key;
use crate::jwt::Algorithm;
use crate::key::MintedKey;
use crate::machine::state::Shared;
use crate::machine::test_support::{minted, start_with, NOW_MS};
use crate::machine::worker;
use crate::wire::{KeyLookup, UsageBatch};

/// A cached key's header edits, one host call each: the key removed, the subject, scopes,
/// issuer and key id added (a token carries no Keygate key id: one fewer).
const KEY_EDITS: [&str; 5] = [
    "remove_request_header",
    "set_request_header",
    "set_request_header",
    "set_request_header",
    "set_request_header",
];
const TOKEN_EDITS: [&str; 4] = [
    "remove_request_header",
    "set_request_header",
    "set_request_header",
    "set_request_header",
];

/// `before`, then `edits`, then `after`: a request's host calls around its header edits.
fn around(
    before: &[&'static str],
    edits: &[&'static str],
    after: &[&'static str],
) -> Vec<&'static str> {
    [before, edits, after].concat()
}

fn start(host: &FakeHost, extra: serde_json::Value) -> Rc<Shared> {
    let mut config = json!({"routes": [{"prefix": "/", "scopes": ["a"]}]});
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    start_with(host, &config)
}

fn record(key: &MintedKey) -> KeyLookup {
    crate::machine::test_support::record_of(key)
}

/// The usage batch the next tick sends (effects before it are dropped).
fn flushed_batch(host: &FakeHost, shared: &Shared) -> UsageBatch {
    host.take_effects();
    worker::on_tick(host, shared);
    host.take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Dispatch {
                body: Some(body), ..
            } => serde_json::from_slice::<UsageBatch>(&body).ok(),
            _ => None,
        })
        .unwrap()
}

/// The request headers an upstream would get from [`request`] with `credential`.
fn forwarded(credential: (&str, &str), effects: &[Effect]) -> Vec<(String, String)> {
    let initial: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/v1/hello"),
        (credential.0, credential.1.as_bytes()),
    ];
    crate::host::fake::forwarded(&initial, effects)
}

/// One whole request: headers, then (when it went on) the response, then its end.
fn request(host: &FakeHost, shared: &Shared, context_id: u32, credential: (&str, &str)) -> bool {
    let headers: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/v1/hello"),
        (credential.0, credential.1.as_bytes()),
    ];
    let went_on = worker::on_request_headers(host, shared, context_id, &headers);
    if went_on {
        worker::on_response_headers(host, shared, context_id);
    }
    worker::on_log(shared, context_id);
    went_on
}

/// The first request looks the record up; the callout is answered.
fn warm_opaque(host: &FakeHost, shared: &Shared, key: &MintedKey) {
    warm_with(host, shared, key, &record(key), &[]);
}

/// [`warm_opaque`] with the key service answering `answer`, and `extra` request headers.
fn warm_with(
    host: &FakeHost,
    shared: &Shared,
    key: &MintedKey,
    answer: &KeyLookup,
    extra: &[(&str, &[u8])],
) {
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", b"/v1/hello"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    headers.extend_from_slice(extra);
    assert!(!worker::on_request_headers(host, shared, 1, &headers));
    let token = host
        .dispatched()
        .iter()
        .find_map(|e| match e {
            Effect::Dispatch { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap();
    let body = serde_json::to_vec(answer).unwrap();
    host.answer(Some(200), Some(&body));
    worker::on_call_response(host, shared, token, body.len());
    assert!(host.take_effects().contains(&Effect::ResumeRequest));
    worker::on_response_headers(host, shared, 1);
    worker::on_log(shared, 1);
    host.take_effects();
    host.take_calls();
}

/// The route table of these tests: named, so usage reads no route name.
fn named_route() -> serde_json::Value {
    json!({"routes": [{"name": "hello", "prefix": "/", "scopes": ["a"]}]})
}

/// The host calls of a second request with a cached opaque key, under `extra` config.
fn cached_opaque_calls(extra: serde_json::Value) -> Vec<&'static str> {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host, extra);
    let key = minted();
    warm_opaque(&host, &shared, &key);
    assert!(request(&host, &shared, 2, ("x-api-key", &key.plaintext)));
    host.take_calls()
}

#[test]
fn a_cached_opaque_key_makes_these_host_calls() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host, named_route());
    let key = minted();
    warm_opaque(&host, &shared, &key);

    assert!(request(&host, &shared, 2, ("x-api-key", &key.plaintext)));
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert_eq!(
        forwarded(("x-api-key", &key.plaintext), &host.take_effects()),
        [
            pair(":method", "GET"),
            pair(":path", "/v1/hello"),
            pair("x-keygate-subject", "team-a"),
            pair("x-keygate-scopes", "a"),
            pair("x-keygate-issuer", "keygate"),
            pair("x-keygate-key-id", key.id.as_str()),
        ],
        "the key is stripped, the identity added"
    );
    // Before: now_ms, count, now_ms, count, remove_request_header, 4 × set_request_header,
    // response_status (10, and the header read: 11 host calls). Usage (on by default) read
    // the client address on the key's first request, not on this one.
    assert_eq!(
        host.take_calls(),
        around(&["now_ms"], &KEY_EDITS, &["response_status"])
    );
    // The counts reach the host on the tick.
    worker::on_tick(&host, &shared);
    assert_eq!(host.counted(crate::host::Event::Allowed), 2);
    assert_eq!(host.counted(crate::host::Event::CacheHit), 1);
}

#[test]
fn usage_adds_no_host_call_on_an_unnamed_route_and_none_when_off() {
    // A route without a `name` is counted as `route[<index>]`: no property read.
    assert_eq!(
        cached_opaque_calls(json!({})),
        around(&["now_ms"], &KEY_EDITS, &["response_status"])
    );
    // Usage off: no route name, no address, and the response is not looked at.
    let off = json!({"usage": {"enabled": false}});
    assert_eq!(
        cached_opaque_calls(off),
        around(&["now_ms"], &KEY_EDITS, &[])
    );
    let mut off_named = named_route();
    off_named["usage"] = json!({"enabled": false});
    assert_eq!(
        cached_opaque_calls(off_named),
        around(&["now_ms"], &KEY_EDITS, &[])
    );
}

/// What usage reports for a cached key: the route, the upstream latency in its bucket, the
/// client address and the gateway (`node.id`), in the batch the tick sends.
#[test]
fn usage_rows_carry_route_latency_address_and_gateway() {
    let host = FakeHost::at(NOW_MS);
    host.set_property(&["source", "address"], b"198.51.100.9:4711");
    // Envoy's route name is not read for a table route (it costs a host call per request).
    host.set_property(&["xds", "route_name"], b"envoy-hello");
    host.set_property(&["xds", "node", "id"], b"edge-1");
    let shared = start(&host, json!({}));
    let key = minted();
    warm_opaque(&host, &shared, &key);
    host.set_response_status(Some(200));
    let headers: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/v1/hello"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    for (context_id, latency_ms) in [(2, 30), (3, 3)] {
        assert!(worker::on_request_headers(
            &host, &shared, context_id, &headers
        ));
        host.advance(latency_ms);
        worker::on_response_headers(&host, &shared, context_id);
        worker::on_log(&shared, context_id);
    }
    let batch = flushed_batch(&host, &shared);
    assert_eq!(batch.gateway.as_deref(), Some("edge-1"));
    let row = batch
        .rows
        .iter()
        .find(|r| r.route.as_deref() == Some("route[0]"))
        .unwrap();
    // The warm request (no status: no latency) and the two timed ones.
    assert_eq!(row.counts.allowed, 3);
    assert_eq!(row.counts.status["2xx"], 2);
    let mut latency = vec![0; crate::wire::LATENCY_BUCKETS];
    latency[2] = 1; // 3 ms
    latency[5] = 1; // 30 ms: above 25, at most 50
    assert_eq!(row.counts.latency, latency);
    // The address is the one the first request computed before it waited for its record.
    assert_eq!(row.client_address.as_deref(), Some("198.51.100.9"));

    // A named route: the address is read once in the minute.
    let host = FakeHost::at(NOW_MS);
    host.set_property(&["source", "address"], b"198.51.100.9:4711");
    let shared = start(&host, named_route());
    warm_opaque(&host, &shared, &key);
    assert!(request(&host, &shared, 2, ("x-api-key", &key.plaintext)));
    let batch = flushed_batch(&host, &shared);
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(batch.rows[0].route.as_deref(), Some("hello"));
    assert_eq!(
        batch.rows[0].client_address.as_deref(),
        Some("198.51.100.9")
    );
    assert_eq!(batch.rows[0].counts.allowed, 2);
}

#[test]
fn a_cached_token_makes_these_host_calls() {
    let host = FakeHost::at(NOW_MS);
    let signer = signing_key(Algorithm::ES256);
    let jwks = json!({"keys": [signer.public_jwk("k1")]});
    let shared = start(
        &host,
        json!({
            "routes": [{"name": "hello", "prefix": "/", "scopes": ["a"]}],
            "jwt": {"issuers": [{"issuer": "https://idp.example", "algorithms": ["ES256"], "jwks": {"inline": jwks}}]},
        }),
    );
    let claims = json!({
        "iss": "https://idp.example",
        "sub": "user-1",
        "scope": "a",
        "exp": NOW_MS / 1000 + 3600,
    });
    let token = signer.sign("k1", "JWT", &claims).unwrap();
    let bearer = format!("Bearer {token}");
    assert!(request(&host, &shared, 1, ("authorization", &bearer)));
    host.take_effects();
    host.take_calls();

    assert!(request(&host, &shared, 2, ("authorization", &bearer)));
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert_eq!(
        forwarded(("authorization", &bearer), &host.take_effects()),
        [
            pair(":method", "GET"),
            pair(":path", "/v1/hello"),
            pair("x-keygate-subject", "user-1"),
            pair("x-keygate-scopes", "a"),
            pair("x-keygate-issuer", "https://idp.example"),
        ],
        "the token is stripped, the identity added"
    );
    // Before: now_ms, count, now_ms, count, remove_request_header, 3 × set_request_header,
    // response_status (9, and the header read: 10 host calls). A token of an outside issuer
    // has no Keygate key id, so no usage row, and its response status is not read.
    assert_eq!(host.take_calls(), around(&["now_ms"], &TOKEN_EDITS, &[]));
    worker::on_tick(&host, &shared);
    assert_eq!(host.counted(crate::host::Event::TokenCacheHit), 1);
    assert_eq!(host.counted(crate::host::Event::Allowed), 2);
    let usage_batches = host.dispatched().into_iter().filter(|effect| {
        matches!(effect, Effect::Dispatch { headers, .. }
            if headers.contains(&(":path".into(), "/v1/usage".into())))
    });
    assert_eq!(
        usage_batches.count(),
        0,
        "no row the key service would refuse"
    );
}

/// A key with a fleet-wide limit: its first request waits for a lease; the ask goes out on
/// the tick before any request's context is made effective (an ask sent from a request's
/// context is dropped with it), and its answer resumes the request. The next request spends
/// from the lease without a callout, and the ones after it from the worker's batch, without
/// shared data.
#[test]
fn a_fleet_limited_key_waits_for_a_lease_asked_on_the_tick() {
    assert_eq!(
        fleet_limited_requests(json!({})),
        around(
            &["now_ms"],
            &KEY_EDITS,
            &[
                "set_response_header",
                "set_response_header",
                "response_status"
            ]
        )
    );
}

/// With `rate_limit_headers: "refusals"` an allowed response carries no rate-limit headers:
/// spending from the worker's batch then makes the same host calls as a key without limits.
#[test]
fn without_rate_limit_headers_on_allowed_responses_a_fleet_limited_key_costs_what_b_does() {
    assert_eq!(
        fleet_limited_requests(json!({"rate_limit_headers": "refusals"})),
        around(&["now_ms"], &KEY_EDITS, &["response_status"])
    );
}

/// The scenario above with `config` added to the filter's; the host calls of the third
/// request (spent from the worker's batch).
fn fleet_limited_requests(config: serde_json::Value) -> Vec<&'static str> {
    use crate::fleet::{LeaseGrant, LeaseRequest, LeaseResponse};
    use crate::wire::RateLimit;

    let host = FakeHost::at(NOW_MS);
    let shared = start(&host, config);
    let key = minted();
    let headers: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/v1/hello"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    assert!(!worker::on_request_headers(&host, &shared, 1, &headers));
    let lookup = host
        .dispatched()
        .iter()
        .find_map(|e| match e {
            Effect::Dispatch { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap();
    let mut found = record(&key);
    found.global_limit = Some(RateLimit {
        requests_per_second: 100.0,
        burst: 100,
    });
    host.take_effects();
    let body = serde_json::to_vec(&found).unwrap();
    host.answer(Some(200), Some(&body));
    worker::on_call_response(&host, &shared, lookup, body.len());
    let effects = host.take_effects();
    assert!(!effects.contains(&Effect::ResumeRequest), "{effects:?}");
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Dispatch { .. })),
        "the ask waits for the tick: {effects:?}"
    );
    assert!(shared.fleet.borrow().has_waiters());

    worker::on_tick(&host, &shared);
    let effects = host.take_effects();
    let (ask, asked) = effects
        .iter()
        .enumerate()
        .find_map(|(at, e)| match e {
            Effect::Dispatch { token, body, .. } => Some((at, (*token, body.clone()))),
            _ => None,
        })
        .unwrap();
    assert!(
        !effects[..ask]
            .iter()
            .any(|e| matches!(e, Effect::SetEffectiveContext(_))),
        "the ask is sent from the root context: {effects:?}"
    );
    let sent: LeaseRequest = serde_json::from_slice(&asked.1.unwrap()).unwrap();
    let bucket = format!("key:{}", key.id.as_str());
    assert_eq!(sent.leases.len(), 1);
    assert_eq!(sent.leases[0].bucket, bucket);

    let grant = LeaseResponse {
        leases: vec![LeaseGrant {
            bucket,
            granted: 800,
            valid_ms: 60_000,
            gateways: 1,
            remaining: None,
        }],
    };
    let body = serde_json::to_vec(&grant).unwrap();
    host.answer(Some(200), Some(&body));
    worker::on_call_response(&host, &shared, asked.0, body.len());
    let effects = host.take_effects();
    assert!(
        effects.contains(&Effect::SetEffectiveContext(1)),
        "{effects:?}"
    );
    assert!(effects.contains(&Effect::ResumeRequest), "{effects:?}");
    assert!(!shared.fleet.borrow().has_waiters());
    worker::on_response_headers(&host, &shared, 1);
    worker::on_log(&shared, 1);
    host.take_effects();

    assert!(request(&host, &shared, 2, ("x-api-key", &key.plaintext)));
    let effects = host.take_effects();
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Dispatch { .. })),
        "spent from the lease: {effects:?}"
    );
    // That request took a batch of the lease for this worker: the next ones spend from it
    // without a shared-data read or write (only the rate-limit headers are added).
    host.take_calls();
    assert!(request(&host, &shared, 3, ("x-api-key", &key.plaintext)));
    host.take_calls()
}

/// A key restricted to countries: the country is read from the header map the filter holds
/// anyway (no host call); a request from elsewhere, or with no country, is refused.
#[test]
fn a_country_restricted_key_costs_no_host_call_and_refuses_other_countries() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host, json!({"geo": {"country_header": "x-geo-country"}}));
    let key = minted();
    let mut restricted = record(&key);
    restricted.allowed_countries = vec!["DE".into(), "AT".into()];
    warm_with(
        &host,
        &shared,
        &key,
        &restricted,
        &[("x-geo-country", b"DE")],
    );
    host.take_calls();

    // From an allowed country: the cached path's host calls, nothing more.
    let from = |context_id: u32, country: Option<&'static [u8]>| {
        let mut headers: Vec<(&str, &[u8])> = vec![
            (":method", b"GET"),
            (":path", b"/v1/hello"),
            ("x-api-key", key.plaintext.as_bytes()),
        ];
        if let Some(country) = country {
            headers.push(("x-geo-country", country));
        }
        let went_on = worker::on_request_headers(&host, &shared, context_id, &headers);
        if went_on {
            worker::on_response_headers(&host, &shared, context_id);
        }
        worker::on_log(&shared, context_id);
        went_on
    };
    assert!(from(2, Some(b"at")));
    assert_eq!(
        host.take_calls(),
        around(&["now_ms"], &KEY_EDITS, &["response_status"])
    );
    host.take_effects();
    for (context_id, country) in [(3, Some(&b"US"[..])), (4, None), (5, Some(b"Germany"))] {
        assert!(!from(context_id, country), "{country:?}");
        let refused = host.take_effects().into_iter().find_map(|e| match e {
            Effect::LocalReply { status, body, .. } => Some((status, body)),
            _ => None,
        });
        let (status, body) = refused.unwrap();
        assert_eq!(status, 403);
        assert!(
            String::from_utf8_lossy(&body).contains("country-not-allowed"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// Threat detection adds no host call and no shared-data read to the cached path while no
/// block is in force (the check is a branch on the worker's copy of the block list); while one
/// is, it adds exactly one: the read of the client address (`source.address`). The block
/// list is never read from shared data on a request, only on the tick.
#[test]
fn threat_detection_adds_nothing_without_blocks_and_one_property_read_with_them() {
    let on = json!({"usage": {"enabled": false}, "threat": {"enabled": true}});
    assert_eq!(
        cached_opaque_calls(on),
        around(&["now_ms"], &KEY_EDITS, &[])
    );

    let host = FakeHost::at(NOW_MS);
    host.set_property(&["source", "address"], b"198.51.100.9:4711");
    let shared = start(
        &host,
        json!({"usage": {"enabled": false}, "threat": {"enabled": true}}),
    );
    let key = minted();
    warm_opaque(&host, &shared, &key);
    // Another address is blocked (by an operator, through the feed's shared list).
    crate::machine::threat::share_operator_blocks(
        &host,
        &shared.config.threat,
        &[crate::machine::threat::OperatorBlock {
            cidr: "203.0.113.0/24".into(),
            until: NOW_MS / 1000 + 60,
        }],
    );
    worker::on_tick(&host, &shared);
    host.take_calls();
    host.take_effects();
    assert!(request(&host, &shared, 2, ("x-api-key", &key.plaintext)));
    assert_eq!(
        host.take_calls(),
        around(&["property", "now_ms"], &KEY_EDITS, &[])
    );
}

/// With `geo` configured, usage rows carry the countries the key was used from: read from the
/// header map the filter holds anyway, so an unrestricted key's cached request makes exactly
/// the calls it makes without `geo`.
#[test]
fn usage_countries_add_no_host_call() {
    let geo = json!({"geo": {"country_header": "x-geo-country"}});
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host, geo.clone());
    let key = minted();
    warm_with(
        &host,
        &shared,
        &key,
        &record(&key),
        &[("x-geo-country", b"de")],
    );
    let from = |context_id: u32, country: &'static [u8]| {
        let headers: [(&str, &[u8]); 4] = [
            (":method", b"GET"),
            (":path", b"/v1/hello"),
            ("x-api-key", key.plaintext.as_bytes()),
            ("x-geo-country", country),
        ];
        assert!(worker::on_request_headers(
            &host, &shared, context_id, &headers
        ));
        worker::on_response_headers(&host, &shared, context_id);
        worker::on_log(&shared, context_id);
        host.take_calls()
    };
    let calls = from(2, b"US");
    assert_eq!(calls, around(&["now_ms"], &KEY_EDITS, &["response_status"]));
    assert_eq!(
        calls,
        cached_opaque_calls(json!({})),
        "the same as without geo"
    );
    assert_eq!(
        from(3, b"Germany"),
        calls,
        "a malformed country: no country"
    );
    let batch = flushed_batch(&host, &shared);
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(batch.rows[0].counts.allowed, 3);
    assert_eq!(batch.rows[0].countries, ["DE", "US"]);

    // Without `geo`, the header is not a country: rows carry none.
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host, json!({}));
    warm_with(
        &host,
        &shared,
        &key,
        &record(&key),
        &[("x-geo-country", b"DE")],
    );
    worker::on_tick(&host, &shared);
    let body = host
        .take_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Dispatch {
                body: Some(body), ..
            } => Some(body),
            _ => None,
        })
        .unwrap();
    assert!(!String::from_utf8_lossy(&body).contains("countries"));
}

/// The client address is read by a key's first request in each minute on each worker: the
/// worker keeps its rows across the hand-overs of counts to shared data (once a second).
#[test]
fn usage_reads_the_address_once_per_key_and_minute() {
    // 58 s into a minute.
    let host = FakeHost::at(NOW_MS / 60_000 * 60_000 + 58_000);
    let shared = start(&host, named_route());
    let key = minted();
    warm_opaque(&host, &shared, &key);
    assert!(request(&host, &shared, 2, ("x-api-key", &key.plaintext)));
    assert!(!host.take_calls().contains(&"property"));
    host.advance(1_500);
    worker::on_tick(&host, &shared);
    host.take_calls();
    assert!(request(&host, &shared, 3, ("x-api-key", &key.plaintext)));
    assert_eq!(
        host.take_calls(),
        around(&["now_ms"], &KEY_EDITS, &["response_status"]),
        "after a hand-over, in the same minute"
    );
    host.advance(1_000);
    worker::on_tick(&host, &shared);
    host.take_calls();
    assert!(request(&host, &shared, 4, ("x-api-key", &key.plaintext)));
    assert_eq!(
        host.take_calls(),
        around(&["now_ms", "property"], &KEY_EDITS, &["response_status"]),
        "the next minute"
    );
    assert!(request(&host, &shared, 5, ("x-api-key", &key.plaintext)));
    assert!(!host.take_calls().contains(&"property"));
}

/// The tick period a worker last set.
fn tick_period(host: &FakeHost) -> Option<std::time::Duration> {
    host.take_effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::SetTickPeriod(period) => Some(period),
            _ => None,
        })
        .next_back()
}

/// Following the revocation feed (on by default) needs no fast tick: the follower tells the
/// workers of a new set on their queues, so a worker ticks every 100 ms (the bound should a
/// message be lost). A timer firing
/// every 10 ms costs Envoy CPU on every request, however little the tick does. A worker
/// whose host gives no queue ticks every 10 ms, as before.
#[test]
fn following_the_feed_ticks_every_100_ms_where_workers_have_queues() {
    let config = json!({"routes": [{"name": "hello", "prefix": "/", "scopes": ["a"]}]});
    let host = FakeHost::at(NOW_MS);
    let shared = start_with(&host, &config);
    assert!(shared.config.revocation_feed.enabled, "on by default");
    assert_eq!(tick_period(&host), Some(worker::FEED_TICK));
    worker::on_tick(&host, &shared);
    assert_eq!(tick_period(&host), None, "unchanged");

    let without = host.worker();
    without.refuse_queues();
    start_with(&without, &config);
    assert_eq!(tick_period(&without), Some(worker::FAST_TICK));
}
