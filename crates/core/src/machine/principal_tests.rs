//! Workload identities through the request machines, on the fake host: a route that takes
//! principals, a key bound to workloads, the principal identity header, and the host calls
//! each adds (the peer principal is a property read, made only when the config or the key's
//! record needs it).

use std::rc::Rc;

use serde_json::json;

use crate::host::fake::{Effect, FakeHost};
use crate::key::MintedKey;
use crate::machine::state::Shared;
use crate::machine::test_support::{minted, start_with, NOW_MS};
use crate::machine::worker;
use crate::principal::PRINCIPAL_PROPERTY;
use crate::wire::KeyLookup;

const PAYMENTS: &str = "spiffe://cluster.local/ns/payments/sa/api";
const BILLING: &str = "spiffe://cluster.local/ns/billing/sa/api";

/// Routes: `/a/` accepts a principal instead of a key, `/r/` requires one, `/k/` takes keys
/// only; payments workloads may read. The routes are named, so usage reads no route name.
fn start(host: &FakeHost) -> Rc<Shared> {
    let config = json!({
        "principals": {"map": [
            {"principal": "spiffe://cluster.local/ns/payments/sa/*", "scopes": ["read"]},
            {"principal": BILLING, "scopes": ["other"]}
        ]},
        "routes": [
            {"name": "a", "prefix": "/a/", "scopes": ["read"], "principal": "accept"},
            {"name": "r", "prefix": "/r/", "scopes": ["read"], "principal": "require"},
            {"name": "k", "prefix": "/k/", "scopes": ["read"]}
        ]
    });
    start_with(host, &config)
}

fn record(key: &MintedKey, allowed_principals: &[&str]) -> KeyLookup {
    KeyLookup {
        scopes: vec!["read".into()],
        allowed_principals: allowed_principals.iter().map(|p| (*p).to_owned()).collect(),
        ..KeyLookup::active(key.id.as_str(), key.digest.to_hex())
    }
}

fn peer(host: &FakeHost, principal: &str) {
    host.set_property(&PRINCIPAL_PROPERTY, principal.as_bytes());
}

/// The request headers an upstream would get from [`request`] on `path` with `extra`.
fn forwarded(path: &str, extra: &[(&str, &str)], effects: &[Effect]) -> Vec<(String, String)> {
    let mut initial: Vec<(&str, &[u8])> = vec![(":method", b"GET"), (":path", path.as_bytes())];
    initial.extend(extra.iter().map(|(n, v)| (*n, v.as_bytes())));
    crate::host::fake::forwarded(&initial, effects)
}

/// The local reply's status, when the request was refused.
fn refused(effects: &[Effect]) -> Option<u32> {
    effects.iter().find_map(|e| match e {
        Effect::LocalReply { status, .. } => Some(*status),
        _ => None,
    })
}

/// One whole request on `path` with the extra headers; true when it went on.
fn request(
    host: &FakeHost,
    shared: &Shared,
    context_id: u32,
    path: &str,
    extra: &[(&str, &str)],
) -> bool {
    let mut headers: Vec<(&str, &[u8])> = vec![(":method", b"GET"), (":path", path.as_bytes())];
    headers.extend(extra.iter().map(|(n, v)| (*n, v.as_bytes())));
    let went_on = worker::on_request_headers(host, shared, context_id, &headers);
    if went_on {
        worker::on_response_headers(host, shared, context_id);
    }
    worker::on_log(shared, context_id);
    went_on
}

/// The first request with `key` looks its record up; the callout is answered with `record`.
/// `Ok`: it went on; `Err`: the status it was refused with.
fn warm(
    host: &FakeHost,
    shared: &Shared,
    key: &MintedKey,
    record: &KeyLookup,
) -> Result<(), Option<u32>> {
    let headers: [(&str, &[u8]); 3] = [
        (":method", b"GET"),
        (":path", b"/k/x"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    assert!(!worker::on_request_headers(host, shared, 1, &headers));
    let token = host
        .dispatched()
        .iter()
        .find_map(|e| match e {
            Effect::Dispatch { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap();
    let body = serde_json::to_vec(record).unwrap();
    host.answer(Some(200), Some(&body));
    worker::on_call_response(host, shared, token, body.len());
    let effects = host.take_effects();
    let went_on = effects.contains(&Effect::ResumeRequest);
    if went_on {
        worker::on_response_headers(host, shared, 1);
    }
    worker::on_log(shared, 1);
    host.take_effects();
    host.take_calls();
    if went_on {
        Ok(())
    } else {
        Err(refused(&effects))
    }
}

#[test]
fn a_mapped_principal_passes_without_a_key_and_its_header_cannot_be_forged() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    peer(&host, PAYMENTS);
    let forged = [("x-keygate-principal", "spiffe://forged")];
    assert!(request(&host, &shared, 1, "/a/x", &forged));
    let headers = forwarded("/a/x", &forged, &host.take_effects());
    let principal: Vec<_> = headers
        .iter()
        .filter(|(n, _)| n == "x-keygate-principal")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        principal,
        [PAYMENTS],
        "the verified principal, never the client's"
    );
    assert!(host.take_calls().contains(&"property"));
}

#[test]
fn a_principal_without_the_scopes_or_none_at_all_is_refused() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    peer(&host, BILLING);
    assert!(!request(&host, &shared, 1, "/a/x", &[]));
    assert_eq!(refused(&host.take_effects()), Some(403));

    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    assert!(!request(&host, &shared, 1, "/a/x", &[]));
    assert_eq!(
        refused(&host.take_effects()),
        Some(401),
        "no principal and no key: the key is missing"
    );
    assert!(!request(&host, &shared, 2, "/r/x", &[]));
    assert_eq!(
        refused(&host.take_effects()),
        Some(403),
        "required and absent"
    );
}

#[test]
fn a_key_only_route_reads_no_principal() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    peer(&host, PAYMENTS);
    assert!(!request(&host, &shared, 1, "/k/x", &[]));
    assert_eq!(refused(&host.take_effects()), Some(401));
    assert!(!host.take_calls().contains(&"property"));
}

#[test]
fn a_key_bound_to_a_workload_passes_only_from_that_workload() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    peer(&host, PAYMENTS);
    assert_eq!(
        warm(&host, &shared, &key, &record(&key, &[PAYMENTS])),
        Ok(())
    );

    // Cached: the principal is read for the bound key, and carried upstream.
    let credential = [("x-api-key", key.plaintext.as_str())];
    assert!(request(&host, &shared, 2, "/k/x", &credential));
    let headers = forwarded("/k/x", &credential, &host.take_effects());
    assert!(headers.contains(&("x-keygate-principal".to_owned(), PAYMENTS.to_owned())));
    assert_eq!(
        host.take_calls()
            .iter()
            .filter(|c| **c == "property")
            .count(),
        1,
        "read once for the decision and the header"
    );

    peer(&host, BILLING);
    assert!(!request(&host, &shared, 3, "/k/x", &credential));
    assert_eq!(refused(&host.take_effects()), Some(403));
}

#[test]
fn a_key_bound_elsewhere_is_refused_when_its_record_arrives() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    peer(&host, BILLING);
    assert_eq!(
        warm(&host, &shared, &key, &record(&key, &[PAYMENTS])),
        Err(Some(403))
    );
}

#[test]
fn an_unbound_key_reads_no_principal_on_the_cached_path() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    peer(&host, PAYMENTS);
    assert_eq!(warm(&host, &shared, &key, &record(&key, &[])), Ok(()));
    let credential = [("x-api-key", key.plaintext.as_str())];
    assert!(request(&host, &shared, 2, "/k/x", &credential));
    let headers = forwarded("/k/x", &credential, &host.take_effects());
    assert!(!headers.iter().any(|(n, _)| n == "x-keygate-principal"));
    assert!(!host.take_calls().contains(&"property"));
}
