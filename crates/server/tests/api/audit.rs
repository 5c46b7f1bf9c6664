//! The audit log: every management action, its filters and paging, and no secret in
//! any field; through the HTTP API on both backends.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use keygate_server::app;
use keygate_server::model::AuditFilter;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::backends::Backend;
use crate::{harness_on, jwt_settings, rfc3339, Harness, ADMIN, KEYS, NOW, SERVICE};

const AUDIT: &str = "/api/v1/audit";
const PEER: &str = "203.0.113.7:45678";
const WRONG_ADMIN: &str = "kga_wrong_admin_key_of_at_least_32_characters";

on_both_backends!(
    every_action_is_audited_and_no_secret_is_stored,
    failures_are_audited_with_their_outcome,
    the_audit_api_filters_and_pages_newest_first,
    refused_admin_requests_are_one_small_row_per_source_and_minute,
);

/// Sends a request from [`PEER`] (as `into_make_service_with_connect_info` would give it).
async fn from_peer(
    h: &Harness,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let mut request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let peer: SocketAddr = PEER.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = app(h.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn admin_ok(h: &Harness, method: &str, uri: &str, body: Option<Value>) -> Value {
    let (status, answer) = from_peer(h, method, uri, Some(ADMIN), body).await;
    assert!(status.is_success(), "{method} {uri}: {status} {answer}");
    answer
}

async fn audit_page(h: &Harness, query: &str) -> Value {
    let answer = h.admin("GET", &format!("{AUDIT}{query}"), None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

async fn admin_id(h: &Harness) -> String {
    let admins = h.state.store().active_admin_keys().await.unwrap();
    assert_eq!(admins.len(), 1);
    admins[0].0.clone()
}

fn entries(page: &Value) -> &Vec<Value> {
    page["entries"].as_array().unwrap()
}

fn find<'a>(page: &'a Value, action: &str) -> &'a Value {
    entries(page)
        .iter()
        .find(|entry| entry["action"] == action)
        .unwrap_or_else(|| panic!("no {action} entry in {page}"))
}

async fn every_action_is_audited_and_no_secret_is_stored(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let actor = admin_id(&h).await;
    let mut secrets: Vec<String> = vec![ADMIN.into(), SERVICE.into(), WRONG_ADMIN.into()];

    let created = admin_ok(&h, "POST", KEYS, Some(json!({"name": "a", "scopes": []}))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    secrets.push(created["key"].as_str().unwrap().into());
    let jwt = admin_ok(
        &h,
        "POST",
        KEYS,
        Some(json!({"name": "j", "scopes": [], "format": "jwt", "expires_in": 3600})),
    )
    .await;
    secrets.push(jwt["key"].as_str().unwrap().into());
    let successor = admin_ok(&h, "POST", &format!("{KEYS}/{id}/rotate"), None).await;
    secrets.push(successor["key"].as_str().unwrap().into());
    let successor_id = successor["id"].as_str().unwrap().to_owned();
    admin_ok(&h, "POST", &format!("{KEYS}/{successor_id}/expire"), None).await;
    let jwt_id = jwt["id"].as_str().unwrap().to_owned();
    admin_ok(&h, "DELETE", &format!("{KEYS}/{jwt_id}"), None).await;
    let signing = admin_ok(&h, "POST", "/api/v1/signing-keys/rotate", None).await;
    let import = admin_ok(
        &h,
        "POST",
        "/api/v1/auth/keys/import",
        Some(json!([
            {"name": "l1", "key": "legacy-plaintext-secret-1"},
            {"name": "l2", "key": "legacy-plaintext-secret-2", "scopes": ["bad scope"]},
        ])),
    )
    .await;
    secrets.push("legacy-plaintext-secret-1".into());
    secrets.push("legacy-plaintext-secret-2".into());
    assert_eq!(import["created"], 1);
    // Failed admin authentication: a wrong key, and none at all.
    let (status, _) = from_peer(&h, "GET", KEYS, Some(WRONG_ADMIN), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = from_peer(&h, "DELETE", &format!("{KEYS}/{id}"), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Reads are not audited.
    admin_ok(&h, "GET", KEYS, None).await;
    admin_ok(&h, "GET", &format!("{KEYS}/{id}"), None).await;

    let page = audit_page(&h, "").await;
    let actions: Vec<&str> = entries(&page)
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "admin_auth",
            "import",
            "signing_key_rotate",
            "revoke",
            "expire",
            "rotate",
            "create",
            "create",
        ],
        "{page}"
    );
    for entry in entries(&page) {
        if entry["action"] == "admin_auth" {
            // Refusals are counted per address, whatever the port.
            assert_eq!(entry["source"], "203.0.113.7", "{entry}");
        } else {
            assert_eq!(entry["source"], PEER, "{entry}");
        }
        assert_eq!(entry["at"], rfc3339(NOW));
        assert!(entry["id"].is_i64());
        if entry["action"] == "admin_auth" {
            assert_eq!(entry["outcome"], "denied");
            assert_eq!(entry["actor"], Value::Null);
            assert_eq!(entry["target"], Value::Null);
        } else {
            assert_eq!(entry["outcome"], "ok", "{entry}");
            assert_eq!(entry["actor"], actor.as_str());
        }
    }
    let creates: Vec<&Value> = entries(&page)
        .iter()
        .filter(|entry| entry["action"] == "create")
        .collect();
    assert_eq!(creates[0]["target"], jwt_id.as_str());
    assert_eq!(creates[0]["detail"]["format"], "jwt");
    assert_eq!(creates[1]["target"], id.as_str());
    let rotate = find(&page, "rotate");
    assert_eq!(rotate["target"], id.as_str());
    assert_eq!(rotate["detail"]["successor"], successor_id.as_str());
    assert_eq!(find(&page, "expire")["target"], successor_id.as_str());
    assert_eq!(find(&page, "revoke")["target"], jwt_id.as_str());
    let signing_entry = find(&page, "signing_key_rotate");
    assert_eq!(signing_entry["target"], Value::Null);
    assert_eq!(signing_entry["detail"]["kid"], signing["kid"]);
    let import_entry = find(&page, "import");
    assert_eq!(import_entry["target"], Value::Null);
    assert_eq!(
        import_entry["detail"],
        json!({"format": "json", "dry_run": false, "created": 1, "updated": 0,
               "unchanged": 0, "errors": 1})
    );
    let denied = find(&page, "admin_auth");
    assert_eq!(denied["detail"]["count"], 2, "{denied}");
    assert_eq!(
        denied["detail"]["reasons"],
        json!({"missing": 1, "invalid": 1})
    );

    // The whole table, every column of every row: no secret anywhere.
    let rows = h
        .state
        .store()
        .list_audit(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 8);
    let dump = format!("{rows:?}");
    for secret in &secrets {
        assert!(
            !dump.contains(secret.as_str()),
            "a secret is in the audit log"
        );
        // Not even the secret part of an opaque key.
        if let Some(tail) = secret.strip_prefix("kg_test_") {
            assert!(!dump.contains(&tail[16..]));
        }
    }
}

async fn failures_are_audited_with_their_outcome(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let created = admin_ok(&h, "POST", KEYS, Some(json!({"name": "a", "scopes": []}))).await;
    let id = created["id"].as_str().unwrap().to_owned();
    admin_ok(&h, "DELETE", &format!("{KEYS}/{id}"), None).await;
    let (status, _) = from_peer(
        &h,
        "POST",
        &format!("{KEYS}/{id}/rotate"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = from_peer(
        &h,
        "DELETE",
        &format!("{KEYS}/aaaaaaaaaaaaaaaa"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = from_peer(&h, "POST", KEYS, Some(ADMIN), Some(json!({"name": ""}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let page = audit_page(&h, "").await;
    let got: Vec<(String, String, Value)> = entries(&page)
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["target"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "create".into(),
                "error: invalid-request (400)".into(),
                Value::Null
            ),
            (
                "revoke".into(),
                "error: not-found (404)".into(),
                json!("aaaaaaaaaaaaaaaa")
            ),
            (
                "rotate".into(),
                "error: key-not-rotatable (409)".into(),
                json!(id)
            ),
            ("revoke".into(), "ok".into(), json!(id)),
            ("create".into(), "ok".into(), json!(id)),
        ]
    );
}

async fn the_audit_api_filters_and_pages_newest_first(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let actor = admin_id(&h).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let created = h
            .create(json!({"name": format!("k{n}"), "scopes": []}))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
        h.clock.advance(60);
    }
    let revoked = h.admin("DELETE", &format!("{KEYS}/{}", ids[0]), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let refused = h.send("GET", AUDIT, Some(WRONG_ADMIN), None).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // Paging: 2 per page, newest first, until next_cursor is null.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = audit_page(&h, &query).await;
        assert!(entries(&page).len() <= 2);
        seen.extend(entries(&page).iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(seen.windows(2).all(|pair| pair[0] > pair[1]), "{seen:?}");

    let by_action = audit_page(&h, "?action=create").await;
    assert_eq!(entries(&by_action).len(), 5);
    assert_eq!(entries(&by_action)[0]["target"], ids[4].as_str());
    let by_target = audit_page(&h, &format!("?target={}", ids[0])).await;
    let actions: Vec<&str> = entries(&by_target)
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["revoke", "create"]);
    let by_actor = audit_page(&h, &format!("?actor={actor}&limit=500")).await;
    assert_eq!(entries(&by_actor).len(), 6);
    let denied = audit_page(&h, "?outcome=denied").await;
    assert_eq!(entries(&denied).len(), 1);
    assert_eq!(entries(&denied)[0]["action"], "admin_auth");
    // Time window: the creates at NOW+60 and NOW+120.
    let window = audit_page(
        &h,
        &format!(
            "?action=create&from={}&to={}",
            rfc3339(NOW + 60),
            rfc3339(NOW + 120)
        ),
    )
    .await;
    let targets: Vec<&Value> = entries(&window).iter().map(|e| &e["target"]).collect();
    assert_eq!(targets, [&json!(ids[2]), &json!(ids[1])]);
    let none = audit_page(&h, &format!("?action=create&target={}", "z".repeat(16))).await;
    assert_eq!(none, json!({"entries": [], "next_cursor": null}));

    for bad in [
        "?limit=0",
        "?limit=501",
        "?cursor=abc",
        "?from=yesterday",
        "?action=nothing",
    ] {
        let answer = h.admin("GET", &format!("{AUDIT}{bad}"), None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
    }
    let long = "x".repeat(200);
    let answer = h
        .admin("GET", &format!("{AUDIT}?action={long}"), None)
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
}

/// Unauthenticated clients cannot grow the audit log by request count or by path size: their
/// refusals fold into one row per address and minute, with the path cut short.
async fn refused_admin_requests_are_one_small_row_per_source_and_minute(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let huge = format!("{KEYS}/{}", "a".repeat(60 * 1024));
    for i in 0..300 {
        let token = (i % 2 == 0).then_some(WRONG_ADMIN);
        let (status, _) = from_peer(&h, "DELETE", &huge, token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Another address, the same minute.
    let other: SocketAddr = "198.51.100.9:1234".parse().unwrap();
    for _ in 0..3 {
        let mut request = Request::builder()
            .method("GET")
            .uri(KEYS)
            .body(Body::empty())
            .unwrap();
        request.extensions_mut().insert(ConnectInfo(other));
        let response = app(h.state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let all = AuditFilter {
        limit: 10_000,
        ..AuditFilter::default()
    };
    // The minute is not over: nothing written yet, nothing per request.
    let rows = h.state.store().list_audit(&all).await.unwrap();
    assert!(rows.len() <= 2, "{}", rows.len());

    // The next minute's first refusal writes the minute that ended.
    h.clock.advance(60);
    let (status, _) = from_peer(&h, "GET", KEYS, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let rows = h.state.store().list_audit(&all).await.unwrap();
    assert_eq!(rows.len(), 2, "one row per address: {rows:?}");
    for row in &rows {
        let detail = row.detail.as_deref().unwrap();
        assert!(detail.len() < 1024, "{} bytes", detail.len());
        assert!(row.source.as_deref().unwrap().len() <= 45);
    }

    // Read through the API: the current minute's refusal is there too, with its count.
    let page = audit_page(&h, "?action=admin_auth").await;
    let got: Vec<(Value, Value, Value)> = entries(&page)
        .iter()
        .map(|e| {
            (
                e["source"].clone(),
                e["detail"]["count"].clone(),
                e["at"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (json!("203.0.113.7"), json!(1), json!(rfc3339(NOW + 60))),
            (json!("203.0.113.7"), json!(300), json!(rfc3339(NOW))),
            (json!("198.51.100.9"), json!(3), json!(rfc3339(NOW))),
        ],
        "{page}"
    );
    let busy = &entries(&page)[1];
    assert_eq!(busy["outcome"], "denied");
    assert_eq!(busy["actor"], Value::Null);
    assert_eq!(
        busy["detail"]["reasons"],
        json!({"invalid": 150, "missing": 150})
    );
    assert_eq!(busy["detail"]["method"], "DELETE");
    let path = busy["detail"]["path"].as_str().unwrap();
    assert!(
        path.starts_with(KEYS) && path.len() <= 256,
        "{}",
        path.len()
    );
    assert!(!page.to_string().contains(WRONG_ADMIN));

    // More refusals in an already written minute update its row, not add one.
    for _ in 0..4 {
        from_peer(&h, "GET", KEYS, None, None).await;
    }
    let page = audit_page(&h, "?action=admin_auth").await;
    assert_eq!(entries(&page).len(), 3, "{page}");
    assert_eq!(entries(&page)[0]["detail"]["count"], 5, "{page}");
}
