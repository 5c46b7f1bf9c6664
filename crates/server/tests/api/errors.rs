//! Every error the key service answers is `application/problem+json`, whatever refused the
//! request: a handler, an extractor, a body limit or the router itself.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use keygate_server::app;
use serde_json::Value;
use tower::ServiceExt;

use crate::{harness, ADMIN, KEYS, SERVICE};

struct Bad {
    method: &'static str,
    uri: String,
    token: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
}

fn bad(method: &'static str, uri: &str, token: Option<&'static str>, status: StatusCode) -> Bad {
    Bad {
        method,
        uri: uri.to_owned(),
        token,
        body: Vec::new(),
        status,
    }
}

fn with_body(mut request: Bad, body: impl Into<Vec<u8>>) -> Bad {
    request.body = body.into();
    request
}

#[tokio::test]
async fn every_error_is_problem_json() {
    let h = harness().await;
    let key = "aaaaaaaaaaaaaaaa";
    let big = vec![b'x'; 2 * 1024 * 1024];
    let cases = [
        // The router: unknown paths and methods.
        bad("PUT", KEYS, Some(ADMIN), StatusCode::METHOD_NOT_ALLOWED),
        bad("PATCH", KEYS, Some(ADMIN), StatusCode::METHOD_NOT_ALLOWED),
        // Without a credential the management API says so first.
        bad("PUT", KEYS, None, StatusCode::UNAUTHORIZED),
        bad("DELETE", "/healthz", None, StatusCode::METHOD_NOT_ALLOWED),
        bad(
            "POST",
            "/.well-known/jwks.json",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        bad(
            "PUT",
            "/v1/usage",
            Some(SERVICE),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        bad("GET", "/nothing/here", None, StatusCode::NOT_FOUND),
        bad("GET", "/api/v1/nothing", Some(ADMIN), StatusCode::NOT_FOUND),
        // Extractors: a path segment that is not UTF-8, a query that does not parse.
        bad(
            "GET",
            &format!("{KEYS}/%FF%FE"),
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            "/v1/keys/%C3%28",
            Some(SERVICE),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            &format!("{KEYS}?limit=abc"),
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            &format!("{KEYS}?status=bogus"),
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            "/api/v1/audit?from=yesterday",
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            "/api/v1/audit?action=bogus",
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            "/v1/revocations?since=-1",
            Some(SERVICE),
            StatusCode::BAD_REQUEST,
        ),
        bad(
            "GET",
            &format!("{KEYS}/{key}/usage?step=7"),
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
        // Bodies: not JSON, the wrong shape, too large.
        with_body(bad("POST", KEYS, Some(ADMIN), StatusCode::BAD_REQUEST), "{"),
        with_body(
            bad("POST", KEYS, Some(ADMIN), StatusCode::BAD_REQUEST),
            "[1, 2]",
        ),
        with_body(
            bad("POST", KEYS, Some(ADMIN), StatusCode::BAD_REQUEST),
            r#"{"name": "x", "scopes": [], "expires_in": "soon"}"#,
        ),
        with_body(
            bad("POST", KEYS, Some(ADMIN), StatusCode::PAYLOAD_TOO_LARGE),
            big.clone(),
        ),
        with_body(
            bad(
                "POST",
                "/v1/usage",
                Some(SERVICE),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            big.clone(),
        ),
        with_body(
            bad(
                "PATCH",
                &format!("{KEYS}/{key}"),
                Some(ADMIN),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            big.clone(),
        ),
        with_body(
            bad(
                "POST",
                "/api/v1/auth/keys/import?format=xml",
                Some(ADMIN),
                StatusCode::BAD_REQUEST,
            ),
            "[]",
        ),
        // Credentials and lookups.
        bad("GET", KEYS, None, StatusCode::UNAUTHORIZED),
        bad("GET", KEYS, Some(SERVICE), StatusCode::UNAUTHORIZED),
        bad(
            "GET",
            &format!("/v1/keys/{key}"),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        bad(
            "GET",
            &format!("/v1/keys/{key}"),
            Some(SERVICE),
            StatusCode::NOT_FOUND,
        ),
        bad(
            "GET",
            &format!("/v1/legacy-keys/{}", "ab".repeat(32)),
            Some(SERVICE),
            StatusCode::NOT_FOUND,
        ),
        bad(
            "GET",
            &format!("{KEYS}/{key}"),
            Some(ADMIN),
            StatusCode::NOT_FOUND,
        ),
        bad(
            "DELETE",
            &format!("{KEYS}/not-an-id"),
            Some(ADMIN),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for case in cases {
        let what = format!("{} {}", case.method, case.uri);
        let mut request = Request::builder().method(case.method).uri(&case.uri);
        if let Some(token) = case.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::from(case.body)).unwrap();
        let response = app(h.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, case.status, "{what}: {text}");
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}: {text}"
        );
        let problem: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_eq!(problem["status"], status.as_u16(), "{what}: {problem}");
        let kind = problem["type"].as_str().unwrap_or_default();
        assert!(
            kind.starts_with("urn:keygate:problem:"),
            "{what}: {problem}"
        );
        for field in ["title", "detail"] {
            assert!(
                problem[field].as_str().is_some_and(|t| !t.is_empty()),
                "{what}: no {field}: {problem}"
            );
        }
        if let Some(token) = case.token {
            assert!(
                !text.contains(token),
                "{what} echoes the credential: {text}"
            );
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                headers.contains_key(header::ALLOW),
                "{what}: no Allow header"
            );
            assert_eq!(kind, "urn:keygate:problem:method-not-allowed", "{what}");
        }
    }
}
