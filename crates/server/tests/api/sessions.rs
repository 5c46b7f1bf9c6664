//! Login sessions of the management page: the cookie's flags, the CSRF check (missing token,
//! wrong token, cross-site Origin), logout, expiry, a revoked management key ending its
//! session, the failed-login limit, and `Cache-Control: no-store`.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use keygate_server::service::sessions::AccessSettings;

use super::*;

const SESSION: &str = "/ui/api/session";

on_both_backends!(
    a_login_sets_a_strict_http_only_cookie_and_the_session_answers_with_its_csrf,
    writes_with_the_cookie_need_the_csrf_token_and_the_same_origin,
    logout_clears_the_cookie_and_ends_the_session,
    a_session_ends_at_its_ttl,
    revoking_the_management_key_ends_its_session,
    failed_logins_are_limited_per_address_and_audited,
);

/// Sends a request with these extra headers, from 192.0.2.1.
async fn send_with(
    h: &Harness,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let mut request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app(h.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

struct Login {
    cookie: String,
    csrf: String,
    answer: Answer,
}

async fn login(h: &Harness, key: &str) -> Login {
    let answer = send_with(h, "POST", SESSION, &[], Some(json!({ "key": key }))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let set = answer.headers[header::SET_COOKIE].to_str().unwrap();
    let pair = set.split(';').next().unwrap();
    Login {
        cookie: pair.to_owned(),
        csrf: answer.body["csrf"].as_str().unwrap().to_owned(),
        answer,
    }
}

async fn owner_key(h: &Harness, owner: &str) -> (String, String) {
    let created = h
        .create(json!({"name": "manager", "scopes": [format!("keygate:owner:{owner}")]}))
        .await;
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

async fn a_login_sets_a_strict_http_only_cookie_and_the_session_answers_with_its_csrf(
    backend: Backend,
) {
    let h = harness_on(backend, jwt_settings()).await;
    let (key, id) = owner_key(&h, "alice").await;
    let login = login(&h, &key).await;
    let set = login.answer.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(login.cookie.starts_with("keygate_session="));
    let value = login.cookie.trim_start_matches("keygate_session=");
    assert_eq!(value.len(), 43, "256 bits in base64url");
    for flag in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=28800"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag");
    assert_eq!(login.answer.headers[header::CACHE_CONTROL], "no-store");
    let body = &login.answer.body;
    assert_eq!(body["role"], "owner");
    assert_eq!(body["owner"], "alice");
    assert_eq!(body["actor"], id.as_str());
    assert_eq!(body["expires_at"], NOW + 8 * 3600);

    let shown = send_with(&h, "GET", SESSION, &[("cookie", &login.cookie)], None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(&shown.body, body);
    assert_eq!(shown.headers[header::CACHE_CONTROL], "no-store");
    // The cookie reads the API as the owner.
    let listed = send_with(&h, "GET", KEYS, &[("cookie", &login.cookie)], None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.headers[header::CACHE_CONTROL], "no-store");
    // The database holds neither the session id nor the CSRF token.
    if matches!(backend, Backend::Sqlite) {
        let bytes = h.database_bytes();
        assert!(!contains(&bytes, value));
        assert!(!contains(&bytes, &login.csrf));
    }
    // An admin logs in with the admin key.
    let admin = super::sessions::login(&h, ADMIN).await;
    assert_eq!(admin.answer.body["role"], "admin");
    assert_eq!(admin.answer.body["owner"], Value::Null);
    // No cookie, a made-up cookie: 401.
    send_with(&h, "GET", SESSION, &[], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    send_with(
        &h,
        "GET",
        SESSION,
        &[("cookie", "keygate_session=forged")],
        None,
    )
    .await
    .assert_problem(StatusCode::UNAUTHORIZED);
    // A bad key: 401, audited without the key.
    let failed = send_with(
        &h,
        "POST",
        SESSION,
        &[],
        Some(json!({"key": "kg_test_nope"})),
    )
    .await;
    failed.assert_problem(StatusCode::UNAUTHORIZED);
    assert!(failed.headers.get(header::SET_COOKIE).is_none());
    let audit = h
        .admin("GET", "/api/v1/audit?action=session.login", None)
        .await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 2);
    assert_eq!(audit.body["entries"][1]["actor"], id.as_str());
    let audit = h
        .admin("GET", "/api/v1/audit?action=session.login_failed", None)
        .await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 1);
    assert!(!audit.body.to_string().contains("kg_test_nope"));
}

async fn writes_with_the_cookie_need_the_csrf_token_and_the_same_origin(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (key, _) = owner_key(&h, "alice").await;
    let login = login(&h, &key).await;
    let cookie = ("cookie", login.cookie.as_str());
    let body = || Some(json!({"name": "dev", "scopes": []}));
    let refusals = [
        vec![cookie],
        vec![cookie, ("x-csrf-token", "wrong")],
        vec![
            cookie,
            ("x-csrf-token", login.csrf.as_str()),
            ("host", "keys.example"),
            ("origin", "https://evil.example"),
        ],
        vec![
            cookie,
            ("x-csrf-token", login.csrf.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
    ];
    for headers in refusals {
        let answer = send_with(&h, "POST", KEYS, &headers, body()).await;
        answer.assert_problem(StatusCode::FORBIDDEN);
        assert_eq!(
            answer.body["type"], "urn:keygate:problem:csrf",
            "{headers:?}"
        );
    }
    // Nothing was created.
    let listed = send_with(&h, "GET", KEYS, &[cookie], None).await;
    assert_eq!(listed.body["keys"], json!([]));
    // With the token (and a same-origin Origin, or none), it works.
    let ok = send_with(
        &h,
        "POST",
        KEYS,
        &[
            cookie,
            ("x-csrf-token", &login.csrf),
            ("host", "keys.example"),
            ("origin", "https://keys.example"),
        ],
        body(),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    assert_eq!(ok.body["owner"], "alice");
    let id = ok.body["id"].as_str().unwrap();
    let revoked = send_with(
        &h,
        "DELETE",
        &format!("{KEYS}/{id}"),
        &[cookie, ("x-csrf-token", &login.csrf)],
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    // Another session's token does not do.
    let other = super::sessions::login(&h, &key).await;
    let answer = send_with(
        &h,
        "POST",
        KEYS,
        &[cookie, ("x-csrf-token", &other.csrf)],
        body(),
    )
    .await;
    answer.assert_problem(StatusCode::FORBIDDEN);
}

async fn logout_clears_the_cookie_and_ends_the_session(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (key, _) = owner_key(&h, "alice").await;
    let login = login(&h, &key).await;
    let cookie = ("cookie", login.cookie.as_str());
    // Logout needs the CSRF header too.
    send_with(&h, "DELETE", SESSION, &[cookie], None)
        .await
        .assert_problem(StatusCode::FORBIDDEN);
    let out = send_with(
        &h,
        "DELETE",
        SESSION,
        &[cookie, ("x-csrf-token", &login.csrf)],
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let set = out.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.starts_with("keygate_session=;") && set.contains("Max-Age=0"),
        "{set}"
    );
    send_with(&h, "GET", SESSION, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    send_with(&h, "GET", KEYS, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    let audit = h
        .admin("GET", "/api/v1/audit?action=session.logout", None)
        .await;
    assert_eq!(audit.body["entries"].as_array().unwrap().len(), 1);
}

async fn a_session_ends_at_its_ttl(backend: Backend) {
    let mut h = harness_on(backend, jwt_settings()).await;
    h.state = h.state.clone().with_access_settings(AccessSettings {
        session_ttl_s: 600,
        secure_cookie: true,
        ..AccessSettings::default()
    });
    let login = login(&h, ADMIN).await;
    let set = login.answer.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("Max-Age=600") && set.contains("; Secure"),
        "{set}"
    );
    let cookie = ("cookie", login.cookie.as_str());
    h.clock.advance(599);
    assert_eq!(
        send_with(&h, "GET", KEYS, &[cookie], None).await.status,
        StatusCode::OK
    );
    h.clock.advance(1);
    send_with(&h, "GET", KEYS, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    send_with(&h, "GET", SESSION, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

async fn revoking_the_management_key_ends_its_session(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (key, id) = owner_key(&h, "alice").await;
    let login = login(&h, &key).await;
    let cookie = ("cookie", login.cookie.as_str());
    assert_eq!(
        send_with(&h, "GET", KEYS, &[cookie], None).await.status,
        StatusCode::OK
    );
    let revoked = h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    send_with(&h, "GET", KEYS, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    send_with(&h, "GET", SESSION, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    // An expired one too.
    let (key, id) = owner_key(&h, "alice").await;
    let login = super::sessions::login(&h, &key).await;
    let cookie = ("cookie", login.cookie.as_str());
    let expired = h.admin("POST", &format!("{KEYS}/{id}/expire"), None).await;
    assert_eq!(expired.status, StatusCode::OK);
    send_with(&h, "GET", KEYS, &[cookie], None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

async fn failed_logins_are_limited_per_address_and_audited(backend: Backend) {
    let mut h = harness_on(backend, jwt_settings()).await;
    h.state = h.state.clone().with_access_settings(AccessSettings {
        login_failures_per_minute: 3,
        ..AccessSettings::default()
    });
    for _ in 0..3 {
        send_with(&h, "POST", SESSION, &[], Some(json!({"key": "wrong"})))
            .await
            .assert_problem(StatusCode::UNAUTHORIZED);
    }
    // Now even the right key is refused from this address until the minute is over.
    for _ in 0..2 {
        let limited = send_with(&h, "POST", SESSION, &[], Some(json!({"key": ADMIN}))).await;
        limited.assert_problem(StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = limited.headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
    let audit = h
        .admin("GET", "/api/v1/audit?action=session.login_limited", None)
        .await;
    assert_eq!(
        audit.body["entries"].as_array().unwrap().len(),
        1,
        "one entry per address and minute"
    );
    h.clock.advance(60);
    login(&h, ADMIN).await;
}
