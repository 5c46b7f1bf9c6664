//! Bound routes and parameter scopes through the request machines, on the fake host: the
//! key's owner (from its record, cached) against the path's tenant, a dataset's scope, and a
//! workload (no owner) on a bound route.

use std::rc::Rc;

use serde_json::json;

use crate::host::fake::{Effect, FakeHost};
use crate::key::MintedKey;
use crate::machine::state::Shared;
use crate::machine::test_support::{minted, start_with, NOW_MS};
use crate::machine::worker;
use crate::principal::PRINCIPAL_PROPERTY;
use crate::wire::{KeyLookup, KeyStatus};

const PAYMENTS: &str = "spiffe://cluster.local/ns/payments/sa/api";

/// Routes: `/t/{tenant}/` bound to the key's owner, `/d/{dataset}` asking the dataset's
/// scope, `/k/` unbound (warms the cache), `/p/{tenant}` bound and accepting a principal.
fn start(host: &FakeHost) -> Rc<Shared> {
    let config = json!({
        "principals": {"map": [{"principal": PAYMENTS, "scopes": ["read"]}]},
        "routes": [
            {"path": "/t/{tenant}/**", "scopes": ["read"], "bind": {"tenant": "owner"}},
            {"path": "/d/{dataset}", "scopes": ["datasets:{dataset}:read"]},
            {"prefix": "/k/", "scopes": ["read"]},
            {"path": "/p/{tenant}", "scopes": ["read"], "bind": {"tenant": "owner"},
             "principal": "accept"}
        ]
    });
    start_with(host, &config)
}

fn record(key: &MintedKey) -> KeyLookup {
    KeyLookup {
        id: key.id.as_str().into(),
        digest: key.digest.to_hex(),
        subject: "team-a".into(),
        scopes: vec!["read".into(), "datasets:x:read".into()],
        status: KeyStatus::Active,
        expires_at: None,
        rate_limit: None,
        allowed_cidrs: Vec::new(),
        not_before: None,
        not_after: None,
        roles: Vec::new(),
        allowed_principals: Vec::new(),
        owner: Some("acme".into()),
        metadata: Default::default(),
        global_limit: None,
        quota: None,
        pool: None,
        signing: None,
        allowed_countries: Vec::new(),
    }
}

fn peer(host: &FakeHost, principal: &str) {
    host.set_property(&PRINCIPAL_PROPERTY, principal.as_bytes());
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
fn a_cached_key_reaches_only_its_owners_paths_and_its_datasets() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let key = minted();
    assert_eq!(warm(&host, &shared, &key, &record(&key)), Ok(()));
    let credential = [("x-api-key", key.plaintext.as_str())];
    let mut context = 2;
    let mut call = |path: &str| {
        context += 1;
        let went_on = request(&host, &shared, context, path, &credential);
        let status = refused(&host.take_effects());
        host.take_calls();
        if went_on {
            Ok(())
        } else {
            Err(status)
        }
    };
    assert_eq!(call("/t/acme/x"), Ok(()));
    for other in [
        "/t/other/x",
        "/t/ACME/x",
        "/t/%61cme/x",
        "/t//acme/x",
        "/t/x/../acme/x",
    ] {
        assert_ne!(call(other), Ok(()), "{other}");
    }
    assert_eq!(call("/t/other/x"), Err(Some(403)));
    assert_eq!(call("/d/x"), Ok(()));
    assert_eq!(call("/d/y"), Err(Some(403)));
    assert_eq!(
        call("/d/x:y"),
        Err(Some(400)),
        "a value that forges scope syntax"
    );
}

#[test]
fn a_workload_has_no_owner_so_a_bound_route_refuses_it() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    peer(&host, PAYMENTS);
    assert!(!request(&host, &shared, 1, "/p/acme", &[]));
    assert_eq!(refused(&host.take_effects()), Some(403));
}
