//! The one-pass path for cached tokens ([`cached_token`]) held to the general path: every
//! request of a matrix of requests and configurations, each in a worker whose token cache
//! holds the test's token, is decided once by [`worker::on_request_headers`] (which tries
//! the one-pass path first) and once by the general path alone, in two identical workers.
//! Both must answer alike and make the same host calls with the same effects, through the
//! response, the end of the request and the next tick. Beside that, the requests the
//! one-pass path must take (and must leave) are named, so that it cannot pass these tests by
//! never deciding anything.

use std::rc::Rc;

use serde_json::{json, Value};

use crate::host::fake::{Effect, FakeHost};
use crate::jwt::testing::key as signing_key;
use crate::jwt::Algorithm;
use crate::machine::state::Shared;
use crate::machine::test_support::{minted, start_with, NOW_MS};
use crate::machine::{cached_token, worker};

const ISSUER: &str = "https://idp.example";
const EXPIRES_S: u64 = NOW_MS / 1000 + 3600;

fn token(claims: Value) -> String {
    let mut all = json!({"iss": ISSUER, "sub": "user-1", "scope": "demo:read", "exp": EXPIRES_S});
    if let (Some(all), Some(claims)) = (all.as_object_mut(), claims.as_object()) {
        all.extend(claims.clone());
    }
    signing_key(Algorithm::ES256)
        .sign("k1", "JWT", &all)
        .unwrap()
}

/// The configuration `make bench` gives C (routes, one inline issuer), with `extra` merged
/// in at the top level and `issuer` into the issuer.
fn config(extra: Value, issuer: Value) -> Value {
    let jwks = json!({"keys": [signing_key(Algorithm::ES256).public_jwk("k1")]});
    let mut issuer_config =
        json!({"issuer": ISSUER, "algorithms": ["ES256"], "jwks": {"inline": jwks}});
    if let (Some(all), Some(more)) = (issuer_config.as_object_mut(), issuer.as_object()) {
        all.extend(more.clone());
    }
    let mut config = json!({
        "key_prefixes": ["kg_live_", "kg_test_"],
        "credential_sources": {"bearer": true, "header": "x-api-key", "query_param": null},
        "routes": [
            {"prefix": "/public/", "public": true},
            {"methods": ["GET", "HEAD"], "prefix": "/v1/", "scopes": ["demo:read"]},
            {"prefix": "/v1/", "scopes": ["demo:write"]}
        ],
        "jwt": {"issuers": [issuer_config]},
    });
    if let (Some(all), Some(more)) = (config.as_object_mut(), extra.as_object()) {
        all.extend(more.clone());
    }
    config
}

/// A worker whose token cache holds `cached` (verified by a first request, whatever that
/// request's answer), its effects so far dropped.
fn warm(config: &Value, cached: &str) -> (FakeHost, Rc<Shared>) {
    let host = FakeHost::at(NOW_MS);
    let shared = start_with(&host, config);
    let bearer = format!("Bearer {cached}");
    let headers: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/v1/warm"),
        ("authorization", bearer.as_bytes()),
    ];
    if worker::on_request_headers(&host, &shared, 1, &headers) {
        worker::on_response_headers(&host, &shared, 1);
    }
    worker::on_log(&shared, 1);
    worker::on_tick(&host, &shared);
    host.take_effects();
    host.take_calls();
    (host, shared)
}

/// What one request did: its answer, and the host calls and effects of its headers, its
/// response, its end and the next tick.
#[derive(Debug, PartialEq)]
struct Outcome {
    went_on: bool,
    calls: Vec<&'static str>,
    effects: Vec<Effect>,
}

fn decide(config: &Value, request: &Request, one_pass: bool) -> Outcome {
    let (host, shared) = warm(config, &request.cached);
    host.advance(request.later_ms);
    let headers = request.pairs();
    let went_on = if one_pass {
        worker::on_request_headers(&host, &shared, 2, &headers)
    } else {
        shared.begin_callback();
        worker::decide_in_full(&host, &shared, 2, &headers)
    };
    if went_on {
        worker::on_response_headers(&host, &shared, 2);
    }
    worker::on_log(&shared, 2);
    worker::on_tick(&host, &shared);
    Outcome {
        went_on,
        calls: host.take_calls(),
        effects: host.take_effects(),
    }
}

/// Whether the one-pass path takes `request` (in a worker of its own).
fn taken(config: &Value, request: &Request) -> bool {
    let (host, shared) = warm(config, &request.cached);
    host.advance(request.later_ms);
    let headers = request.pairs();
    shared.begin_callback();
    cached_token::decide(&host, &shared, &headers).is_some()
}

impl Request {
    /// The headers as the host hands them to a request.
    fn pairs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect()
    }
}

struct Request {
    what: &'static str,
    /// The token the worker verified before.
    cached: String,
    headers: Vec<(String, Vec<u8>)>,
    /// How long after the cached token was verified the request comes.
    later_ms: u64,
}

fn request(what: &'static str, cached: &str, headers: &[(&str, &[u8])]) -> Request {
    Request {
        what,
        cached: cached.to_owned(),
        headers: headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
            .collect(),
        later_ms: 0,
    }
}

/// Every request of the matrix, and whether the one-pass path takes it under the bench
/// configuration.
fn requests() -> Vec<(Request, bool)> {
    let good = token(json!({}));
    let writer = token(json!({"scope": "demo:read demo:write"}));
    let other = token(json!({"sub": "user-2"}));
    let bearer = |token: &str| format!("Bearer {token}").into_bytes();
    let b = bearer(&good);
    let get = |path: &'static str, b: &[u8]| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            (":method", b"GET".to_vec()),
            (":path", path.as_bytes().to_vec()),
            ("authorization", b.to_vec()),
        ]
    };
    let with = |mut headers: Vec<(&'static str, Vec<u8>)>, extra: &[(&'static str, &[u8])]| {
        headers.extend(extra.iter().map(|(n, v)| (*n, v.to_vec())));
        headers
    };
    let make = |what, cached: &str, headers: Vec<(&'static str, Vec<u8>)>| {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        request(what, cached, &headers)
    };
    let key = minted();
    let forged = {
        let last = if good.ends_with('A') { "B" } else { "A" };
        format!("Bearer {}{last}", &good[..good.len() - 1]).into_bytes()
    };
    let long = format!("Bearer {}", "a".repeat(9000)).into_bytes();
    let mut expired = make(
        "the cached token expired since",
        &good,
        get("/v1/hello", &b),
    );
    expired.later_ms = 3_601_000;
    let mut later = make(
        "the cached token, a minute later",
        &good,
        get("/v1/hello", &b),
    );
    later.later_ms = 60_000;
    vec![
        (
            make(
                "a cached token on a plain route",
                &good,
                get("/v1/hello", &b),
            ),
            true,
        ),
        (later, true),
        (
            make("HEAD", &good, {
                let mut h = get("/v1/hello", &b);
                h[0].1 = b"HEAD".to_vec();
                h
            }),
            true,
        ),
        (
            make(
                "a query and a fragment",
                &good,
                get("/v1/hello?x=1&y=2#f", &b),
            ),
            true,
        ),
        (
            make(
                "more headers",
                &good,
                with(
                    get("/v1/hello", &b),
                    &[
                        ("user-agent", b"curl/8"),
                        ("accept", b"*/*"),
                        ("x-request-id", b"42"),
                    ],
                ),
            ),
            true,
        ),
        (
            make(
                "the scheme in lower case, spaces around the token",
                &good,
                get("/v1/hello", format!("bearer   {good}  ").as_bytes()),
            ),
            true,
        ),
        (
            make(
                "a token with more scopes than the route needs",
                &writer,
                get("/v1/hello", &bearer(&writer)),
            ),
            true,
        ),
        (
            make("POST: a scope the token lacks", &good, {
                let mut h = get("/v1/hello", &b);
                h[0].1 = b"POST".to_vec();
                h
            }),
            false,
        ),
        (
            make("POST with the scope", &writer, {
                let mut h = get("/v1/hello", &bearer(&writer));
                h[0].1 = b"POST".to_vec();
                h
            }),
            true,
        ),
        (make("a public route", &good, get("/public/x", &b)), false),
        (make("no route", &good, get("/other", &b)), false),
        (make("a path parameter", &good, get("/v1/a;b", &b)), false),
        (
            make("an encoded path parameter", &good, get("/v1/a%3Bb", &b)),
            false,
        ),
        (make("a dot segment", &good, get("/v1/../v1/x", &b)), false),
        (make("a double slash", &good, get("/v1//x", &b)), false),
        (
            make("an upper-case path", &good, get("/V1/hello", &b)),
            false,
        ),
        (
            make("a percent-encoded path", &good, get("/v1/h%65llo", &b)),
            false,
        ),
        (
            make(
                "a spoofed identity header",
                &good,
                with(get("/v1/hello", &b), &[("x-keygate-subject", b"admin")]),
            ),
            false,
        ),
        (
            make(
                "a spoofed identity header, another spelling",
                &good,
                with(get("/v1/hello", &b), &[("x_keygate_scopes", b"admin")]),
            ),
            false,
        ),
        (
            make(
                "the same token in the key header too",
                &good,
                with(get("/v1/hello", &b), &[("x-api-key", good.as_bytes())]),
            ),
            false,
        ),
        (
            make(
                "another credential in the key header",
                &good,
                with(
                    get("/v1/hello", &b),
                    &[("x-api-key", key.plaintext.as_bytes())],
                ),
            ),
            false,
        ),
        (
            make(
                "a key header look-alike",
                &good,
                with(get("/v1/hello", &b), &[("x_api_key", b"kg_live_x")]),
            ),
            false,
        ),
        (
            make(
                "a second Authorization, the same",
                &good,
                with(get("/v1/hello", &b), &[("authorization", &b)]),
            ),
            false,
        ),
        (
            make(
                "a second Authorization, another token",
                &good,
                with(get("/v1/hello", &b), &[("authorization", &bearer(&other))]),
            ),
            false,
        ),
        (
            make(
                "Basic credentials",
                &good,
                get("/v1/hello", b"Basic dXNlcjpwYXNz"),
            ),
            false,
        ),
        (
            make("an empty bearer", &good, get("/v1/hello", b"Bearer ")),
            false,
        ),
        (
            make("a bearer of spaces", &good, get("/v1/hello", b"Bearer    ")),
            false,
        ),
        (
            make("a token too long", &good, get("/v1/hello", &long)),
            false,
        ),
        (
            make(
                "a token with a control byte",
                &good,
                get("/v1/hello", format!("Bearer {good}\x01").as_bytes()),
            ),
            false,
        ),
        (
            make(
                "a token not seen before",
                &good,
                get("/v1/hello", &bearer(&other)),
            ),
            false,
        ),
        (
            make("a forged token", &good, get("/v1/hello", &forged)),
            false,
        ),
        (
            make(
                "an opaque key",
                &good,
                get("/v1/hello", &bearer(&key.plaintext)),
            ),
            false,
        ),
        (
            make(
                "no credential",
                &good,
                vec![
                    (":method", b"GET".to_vec()),
                    (":path", b"/v1/hello".to_vec()),
                ],
            ),
            false,
        ),
        (
            make(
                "no path",
                &good,
                vec![(":method", b"GET".to_vec()), ("authorization", b.clone())],
            ),
            false,
        ),
        (
            make(
                "a path not UTF-8",
                &good,
                get("/v1/\u{fffd}", &b)
                    .into_iter()
                    .map(|(n, v)| {
                        if n == ":path" {
                            (n, b"/v1/\xff".to_vec())
                        } else {
                            (n, v)
                        }
                    })
                    .collect(),
            ),
            false,
        ),
        (expired, false),
    ]
}

/// The configurations: the bench's, and each feature that sends requests the general way
/// or changes what the general way does with them.
fn configurations() -> Vec<(&'static str, Value, bool)> {
    let plain = |extra: Value| config(extra, json!({}));
    vec![
        ("the bench's", plain(json!({})), true),
        (
            "usage and the feed off (the tick is off until a count is pending)",
            plain(json!({"usage": {"enabled": false}, "revocation_feed": {"enabled": false}})),
            true,
        ),
        (
            "identity headers renamed",
            plain(
                json!({"identity_headers": {"subject": "x-user", "scopes": "x-perms", "issuer": "x-iss"}}),
            ),
            true,
        ),
        (
            "threat detection on",
            plain(json!({"threat": {"enabled": true}})),
            true,
        ),
        ("shadow mode", plain(json!({"mode": "shadow"})), false),
        (
            "a route in shadow mode",
            plain(
                json!({"routes": [{"prefix": "/v1/", "scopes": ["demo:read"], "mode": "shadow"}]}),
            ),
            false,
        ),
        (
            "a route rate limit",
            plain(
                json!({"routes": [{"prefix": "/v1/", "scopes": ["demo:read"], "rate_limit": {"requests_per_second": 100.0, "burst": 10}}]}),
            ),
            false,
        ),
        (
            "a route that forwards the credential",
            plain(
                json!({"routes": [{"prefix": "/v1/", "scopes": ["demo:read"], "forward_credential": true}]}),
            ),
            false,
        ),
        (
            "a route that accepts principals",
            plain(json!({
                "routes": [{"prefix": "/v1/", "scopes": ["demo:read"], "principal": "accept"}],
                "principals": {"map": [{"principal": "spiffe://cluster.local/ns/a/sa/b", "scopes": ["demo:read"]}]},
            })),
            false,
        ),
        (
            "a path template with a bound parameter",
            plain(
                json!({"routes": [{"path": "/v1/{thing}", "scopes": ["demo:read"], "bind": {"thing": "claim.sub"}}]}),
            ),
            false,
        ),
        (
            "route metadata",
            plain(json!({"route_metadata": true})),
            false,
        ),
        (
            "a query-parameter credential",
            plain(
                json!({"credential_sources": {"bearer": true, "header": "x-api-key", "query_param": "api_key"}}),
            ),
            false,
        ),
        (
            "the issuer's tokens name key records",
            config(json!({}), json!({"revocation": "key_service"})),
            false,
        ),
    ]
}

#[test]
fn every_request_is_decided_as_the_general_path_decides_it() {
    for (name, config, _) in configurations() {
        for (request, _) in requests() {
            let one_pass = decide(&config, &request, true);
            let general = decide(&config, &request, false);
            assert_eq!(
                one_pass, general,
                "configuration {name:?}, request {:?}",
                request.what
            );
        }
    }
}

#[test]
fn the_one_pass_path_takes_cached_tokens_on_plain_routes_and_nothing_else() {
    for (name, config, applies) in configurations() {
        for (request, plain) in requests() {
            assert_eq!(
                taken(&config, &request),
                applies && plain,
                "configuration {name:?}, request {:?}",
                request.what
            );
        }
    }
}

#[test]
fn a_cached_token_allowed_in_one_pass_is_forwarded_without_it() {
    let config = config(json!({}), json!({}));
    let good = token(json!({}));
    let bearer = format!("Bearer {good}");
    let initial: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/v1/hello"),
        ("authorization", bearer.as_bytes()),
    ];
    let (host, shared) = warm(&config, &good);
    shared.begin_callback();
    assert_eq!(cached_token::decide(&host, &shared, &initial), Some(true));
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert_eq!(
        crate::host::fake::forwarded(&initial, &host.take_effects()),
        [
            pair(":method", "GET"),
            pair(":path", "/v1/hello"),
            pair("x-keygate-subject", "user-1"),
            pair("x-keygate-scopes", "demo:read"),
            pair("x-keygate-issuer", ISSUER),
        ]
    );
}
