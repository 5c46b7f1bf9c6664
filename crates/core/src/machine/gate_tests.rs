//! The body gate: a request paused on its headers keeps its body and trailers paused until
//! the worker resumes it, and a signed route's body is read whole, bounded, then decided.

use std::rc::Rc;

use serde_json::json;

use crate::host::fake::{Effect, FakeHost};
use crate::machine::gate::{BodyStep, Resumed, Stage, MAX_RESUMED};
use crate::machine::state::Shared;
use crate::machine::test_support::{minted, start_with, NOW_MS};
use crate::machine::worker;
use crate::wire::KeyLookup;

fn start(host: &FakeHost) -> Rc<Shared> {
    start_with(
        host,
        &json!({
            "routes": [{"prefix": "/", "scopes": ["a"]}],
            "signatures": {"max_body_bytes": 100}
        }),
    )
}

fn record() -> KeyLookup {
    crate::machine::test_support::record_of(&minted())
}

/// A POST whose key is not cached: its headers pause for a lookup. Returns the callout token.
fn paused_for_lookup(host: &FakeHost, shared: &Shared, context_id: u32) -> u32 {
    let key = minted();
    let headers: [(&str, &[u8]); 3] = [
        (":method", b"POST"),
        (":path", b"/v1/orders"),
        ("x-api-key", key.plaintext.as_bytes()),
    ];
    assert!(!worker::on_request_headers(
        host, shared, context_id, &headers
    ));
    host.dispatched()
        .iter()
        .find_map(|e| match e {
            Effect::Dispatch { token, .. } => Some(*token),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_body_waits_for_the_lookup_and_goes_on_once_the_request_is_resumed() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let token = paused_for_lookup(&host, &shared, 5);
    let mut stage = Stage::decided(false);
    assert_eq!(stage, Stage::Held);
    // Body chunks and trailers while the lookup is pending: paused, however many.
    assert_eq!(stage.on_body(shared.gate(), 5, 10, false), BodyStep::Pause);
    assert_eq!(stage.on_body(shared.gate(), 5, 20, true), BodyStep::Pause);
    assert_eq!(stage.on_trailers(shared.gate(), 5), BodyStep::Pause);
    assert_eq!(stage, Stage::Held);

    let body = serde_json::to_vec(&record()).unwrap();
    host.answer(Some(200), Some(&body));
    host.take_effects();
    worker::on_call_response(&host, &shared, token, body.len());
    assert!(host.take_effects().contains(&Effect::ResumeRequest));
    assert_eq!(shared.resumed.borrow().len(), 1);

    // Another request's body is not let through by this resume.
    let mut other = Stage::Held;
    assert_eq!(other.on_body(shared.gate(), 6, 10, true), BodyStep::Pause);

    assert_eq!(
        stage.on_body(shared.gate(), 5, 20, true),
        BodyStep::Continue
    );
    assert_eq!(stage, Stage::Open);
    assert!(shared.resumed.borrow().is_empty(), "the record is taken");
    assert_eq!(stage.on_trailers(shared.gate(), 5), BodyStep::Continue);
}

#[test]
fn a_body_of_a_request_refused_after_its_lookup_never_goes_on() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let token = paused_for_lookup(&host, &shared, 5);
    let mut stage = Stage::decided(false);
    host.answer(Some(404), Some(b"{}"));
    host.take_effects();
    worker::on_call_response(&host, &shared, token, 2);
    let effects = host.take_effects();
    assert!(!effects.contains(&Effect::ResumeRequest), "{effects:?}");
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::LocalReply { status: 401, .. })),
        "{effects:?}"
    );
    assert!(shared.resumed.borrow().is_empty());
    assert_eq!(stage.on_body(shared.gate(), 5, 20, true), BodyStep::Pause);
    assert_eq!(stage.on_trailers(shared.gate(), 5), BodyStep::Pause);
}

#[test]
fn a_resumed_request_that_had_no_body_is_forgotten_on_its_log() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let token = paused_for_lookup(&host, &shared, 5);
    let body = serde_json::to_vec(&record()).unwrap();
    host.answer(Some(200), Some(&body));
    worker::on_call_response(&host, &shared, token, body.len());
    assert_eq!(shared.resumed.borrow().len(), 1);
    worker::on_log(&shared, 5);
    assert!(shared.resumed.borrow().is_empty());
}

#[test]
fn a_request_that_went_on_at_its_headers_passes_its_body() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let mut stage = Stage::decided(true);
    assert_eq!(
        stage.on_body(shared.gate(), 1, 10, false),
        BodyStep::Continue
    );
    assert_eq!(
        stage.on_body(shared.gate(), 1, 10, true),
        BodyStep::Continue
    );
    assert_eq!(stage.on_trailers(shared.gate(), 1), BodyStep::Continue);
    assert_eq!(Stage::default(), Stage::Open);
}

#[test]
fn a_signed_routes_body_is_read_whole_then_decided() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let mut stage = Stage::ReadingBody(0);
    assert_eq!(stage.on_body(shared.gate(), 1, 40, false), BodyStep::Pause);
    assert_eq!(stage, Stage::ReadingBody(40));
    assert_eq!(
        stage.on_body(shared.gate(), 1, 100, true),
        BodyStep::Decide(100)
    );
    // Held until the decision says otherwise.
    assert_eq!(stage, Stage::Held);
    assert_eq!(stage.on_trailers(shared.gate(), 1), BodyStep::Pause);
}

#[test]
fn a_signed_routes_body_ending_in_trailers_is_decided_on_what_was_read() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let mut stage = Stage::ReadingBody(0);
    assert_eq!(stage.on_body(shared.gate(), 1, 30, false), BodyStep::Pause);
    assert_eq!(stage.on_trailers(shared.gate(), 1), BodyStep::Decide(30));
    assert_eq!(stage, Stage::Held);
}

#[test]
fn a_signed_routes_body_over_the_limit_is_refused_and_stays_paused() {
    let host = FakeHost::at(NOW_MS);
    let shared = start(&host);
    let mut stage = Stage::ReadingBody(0);
    assert_eq!(
        stage.on_body(shared.gate(), 1, 101, false),
        BodyStep::TooLarge
    );
    assert_eq!(stage, Stage::Held);
    assert_eq!(stage.on_body(shared.gate(), 1, 150, true), BodyStep::Pause);
    assert_eq!(stage.on_trailers(shared.gate(), 1), BodyStep::Pause);
    // Over the limit at the end of the stream too.
    let mut stage = Stage::ReadingBody(0);
    assert_eq!(
        stage.on_body(shared.gate(), 1, 101, true),
        BodyStep::TooLarge
    );
}

#[test]
fn resumed_ids_are_bounded_and_drop_the_oldest() {
    let mut resumed = Resumed::default();
    for id in 1..=u32::try_from(MAX_RESUMED).unwrap() {
        resumed.record(id);
    }
    assert_eq!(resumed.len(), MAX_RESUMED);
    // Recording one already there drops nothing.
    resumed.record(7);
    assert_eq!(resumed.len(), MAX_RESUMED);
    resumed.record(u32::MAX);
    assert_eq!(resumed.len(), MAX_RESUMED);
    // The oldest is gone: its body would stay paused (closed), never go on early.
    assert!(!resumed.take(1));
    assert!(resumed.take(2));
    assert!(!resumed.take(2), "taken once");
    assert!(resumed.take(u32::MAX));
    resumed.forget(3);
    assert!(!resumed.take(3));
}
