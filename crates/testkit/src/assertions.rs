//! What the tests assert about Envoy's answers: a deny is a problem+json with the right status
//! and challenge that never echoes the credential; an allowed request reaches the upstream with
//! the key's identity and without credentials.

use std::time::Duration;

use serde_json::Value;

use crate::http::Reply;
use crate::poll::poll_reply;
use crate::stack::Stack;

/// The headers the filter adds to an allowed request.
pub const IDENTITY_HEADERS: [&str; 3] =
    ["x-keygate-subject", "x-keygate-key-id", "x-keygate-scopes"];

/// Asserts a deny: status, `WWW-Authenticate` containing `challenge` (if given), a problem+json
/// body with the same status, and no trace of `secret` anywhere in the response.
pub fn assert_denied(reply: &Reply, status: u16, challenge: Option<&str>, secret: Option<&str>) {
    assert_eq!(reply.status, status, "expected {status}: {reply:#?}");
    if let Some(challenge) = challenge {
        let www = reply
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("no WWW-Authenticate on a {status}: {reply:#?}"));
        assert!(
            www.contains(challenge),
            "WWW-Authenticate {www:?} lacks {challenge:?}"
        );
    }
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "deny content-type is {content_type:?}, expected application/problem+json: {reply:#?}"
    );
    let problem = reply.json();
    assert_eq!(
        problem["status"].as_u64(),
        Some(u64::from(status)),
        "problem status: {problem}"
    );
    for field in ["type", "title", "detail"] {
        assert!(
            problem.get(field).is_some(),
            "problem+json lacks `{field}`: {problem}"
        );
    }
    if let Some(secret) = secret {
        let everything = format!("{:?}{}", reply.headers, reply.body);
        assert!(
            !everything.contains(secret),
            "the deny response echoes the credential: {reply:#?}"
        );
    }
}

/// Asserts a 200 from the echo upstream carrying the identity of `key`, without credentials.
pub fn assert_forwarded_with_identity(
    reply: &Reply,
    key_id: &str,
) -> serde_json::Map<String, Value> {
    assert_eq!(reply.status, 200, "expected 200 through Envoy: {reply:#?}");
    let upstream = reply.upstream_headers();
    for name in IDENTITY_HEADERS {
        let value = upstream
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            !value.is_empty(),
            "upstream did not get {name}: {upstream:#?}"
        );
    }
    assert_eq!(
        upstream["x-keygate-key-id"].as_str(),
        Some(key_id),
        "x-keygate-key-id: {upstream:#?}"
    );
    assert!(
        !upstream.contains_key("authorization"),
        "authorization reached upstream: {upstream:#?}"
    );
    assert!(
        !upstream.contains_key("x-api-key"),
        "x-api-key reached upstream: {upstream:#?}"
    );
    upstream
}

/// Polls GET `path` with `key` until it answers `status` (up to `timeout`); returns the last reply.
pub fn poll_status(stack: &Stack, path: &str, key: &str, status: u16, timeout: Duration) -> Reply {
    poll_reply(timeout, Duration::from_millis(200), status, || {
        stack.get_with_key(path, key)
    })
}
