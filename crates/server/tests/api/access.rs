//! Management keys: `keygate:admin` and `keygate:owner:<owner>` keys on the management API.
//! An owner sees and manages its own keys only (another owner's key answers 404, as if
//! absent), cannot reach the admin-only endpoints (403 `forbidden`) and grants no `keygate:`
//! scope; a management key stops working once revoked or expired.

use super::*;

on_both_backends!(
    an_owner_cannot_see_or_change_another_owners_key_through_any_endpoint,
    an_owner_creates_keys_of_its_own_owner_only,
    an_owner_is_refused_the_admin_only_endpoints,
    a_management_key_works_only_while_active,
    an_admin_management_key_is_a_full_admin,
    an_owner_reads_only_the_audit_entries_of_its_keys,
);

/// A management key with these scopes, minted by the admin key; answers its plaintext.
async fn management_key(h: &Harness, scopes: &[&str]) -> (String, String) {
    let created = h.create(json!({"name": "manager", "scopes": scopes})).await;
    (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

async fn call(h: &Harness, key: &str, method: &str, uri: &str, body: Option<Value>) -> Answer {
    let body = body.map(|b| b.to_string());
    h.send(method, uri, Some(key), body.as_deref()).await
}

async fn an_owner_cannot_see_or_change_another_owners_key_through_any_endpoint(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (alice, _) = management_key(&h, &["keygate:owner:alice"]).await;
    let bob_key = h
        .create(json!({"name": "bob's", "scopes": ["demo:read"], "owner": "bob"}))
        .await;
    let bob_id = bob_key["id"].as_str().unwrap();
    let alice_key = h
        .create(json!({"name": "alice's", "scopes": ["demo:read"], "owner": "alice"}))
        .await;
    let alice_id = alice_key["id"].as_str().unwrap();

    // Every per-key endpoint answers 404 for bob's key, as for an absent one.
    let by_id = [
        ("GET", format!("{KEYS}/{bob_id}"), None),
        ("GET", format!("{KEYS}/{bob_id}/usage"), None),
        (
            "PATCH",
            format!("{KEYS}/{bob_id}"),
            Some(json!({"name": "mine now"})),
        ),
        (
            "POST",
            format!("{KEYS}/{bob_id}/rotate"),
            Some(json!({"grace": 0})),
        ),
        ("POST", format!("{KEYS}/{bob_id}/expire"), None),
        ("DELETE", format!("{KEYS}/{bob_id}"), None),
    ];
    for (method, uri, body) in by_id {
        let answer = call(&h, &alice, method, &uri, body).await;
        answer.assert_problem(StatusCode::NOT_FOUND);
        assert_eq!(
            answer.body["type"], "urn:keygate:problem:not-found",
            "{method} {uri}"
        );
    }
    // Nothing happened to it.
    let shown = h.show(bob_id).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["name"], "bob's");
    assert_eq!(shown["rotated_to"], Value::Null);

    // The listing holds alice's keys only.
    let listed = call(&h, &alice, "GET", &format!("{KEYS}?limit=500"), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let owners: Vec<&str> = listed.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["owner"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(owners, ["alice"]);

    // Her own key: every endpoint works.
    assert_eq!(
        call(&h, &alice, "GET", &format!("{KEYS}/{alice_id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&h, &alice, "GET", &format!("{KEYS}/{alice_id}/usage"), None)
            .await
            .status,
        StatusCode::OK
    );
    let patched = call(
        &h,
        &alice,
        "PATCH",
        &format!("{KEYS}/{alice_id}"),
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    // She cannot make it a management key.
    let escalate = call(
        &h,
        &alice,
        "PATCH",
        &format!("{KEYS}/{alice_id}"),
        Some(json!({"scopes": ["keygate:admin"]})),
    )
    .await;
    escalate.assert_problem(StatusCode::FORBIDDEN);
    assert_eq!(escalate.body["type"], "urn:keygate:problem:forbidden");
    let rotated = call(
        &h,
        &alice,
        "POST",
        &format!("{KEYS}/{alice_id}/rotate"),
        Some(json!({"grace": 0})),
    )
    .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    assert_eq!(rotated.body["owner"], "alice");
    let successor = rotated.body["id"].as_str().unwrap();
    let revoked = call(&h, &alice, "DELETE", &format!("{KEYS}/{successor}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["status"], "revoked");
}

async fn an_owner_creates_keys_of_its_own_owner_only(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (alice, _) = management_key(&h, &["keygate:owner:alice"]).await;
    let created = call(
        &h,
        &alice,
        "POST",
        KEYS,
        Some(json!({"name": "dev", "scopes": ["demo:read"], "owner": "bob"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["owner"], "alice");
    assert!(created.body["key"].as_str().is_some());
    for scopes in [
        json!(["keygate:admin"]),
        json!(["keygate:owner:bob"]),
        json!(["demo:read", "keygate:owner:alice"]),
    ] {
        let refused = call(
            &h,
            &alice,
            "POST",
            KEYS,
            Some(json!({"name": "x", "scopes": scopes})),
        )
        .await;
        refused.assert_problem(StatusCode::FORBIDDEN);
        assert_eq!(refused.body["type"], "urn:keygate:problem:forbidden");
    }
    // Only admins mint management keys.
    let minted = h
        .create(json!({"name": "bob's manager", "scopes": ["keygate:owner:bob"]}))
        .await;
    assert_eq!(minted["scopes"], json!(["keygate:owner:bob"]));
}

async fn an_owner_is_refused_the_admin_only_endpoints(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (alice, _) = management_key(&h, &["keygate:owner:alice"]).await;
    let admin_only = [
        ("GET", "/api/v1/signing-keys", None),
        ("POST", "/api/v1/signing-keys/rotate", None),
        ("GET", "/api/v1/roles", None),
        (
            "POST",
            "/api/v1/roles",
            Some(json!({"name": "r", "scopes": ["a"]})),
        ),
        ("GET", "/api/v1/roles/r", None),
        ("GET", "/api/v1/pools", None),
        ("GET", "/api/v1/pools/alice", None),
        (
            "PUT",
            "/api/v1/pools/alice",
            Some(json!({"requests_per_second": 1, "burst": 1})),
        ),
        ("DELETE", "/api/v1/pools/alice", None),
        (
            "POST",
            "/api/v1/auth/keys/import?format=json",
            Some(json!([])),
        ),
    ];
    for (method, uri, body) in admin_only {
        let answer = call(&h, &alice, method, uri, body).await;
        answer.assert_problem(StatusCode::FORBIDDEN);
        assert_eq!(
            answer.body["type"], "urn:keygate:problem:forbidden",
            "{method} {uri}"
        );
    }
    // The refused import is audited as denied, with alice's key as the actor.
    let audit = h.admin("GET", "/api/v1/audit?action=import", None).await;
    assert_eq!(audit.body["entries"][0]["outcome"], "denied");
}

async fn a_management_key_works_only_while_active(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (alice, alice_id) = management_key(&h, &["keygate:owner:alice"]).await;
    let (expiring, _) = {
        let created = h
            .create(json!({"name": "m", "scopes": ["keygate:owner:alice"], "expires_in": 60}))
            .await;
        (created["key"].as_str().unwrap().to_owned(), ())
    };
    let (windowed, _) = {
        let created = h
            .create(json!({
                "name": "w", "scopes": ["keygate:owner:alice"],
                "not_before": rfc3339(NOW + 30)
            }))
            .await;
        (created["key"].as_str().unwrap().to_owned(), ())
    };
    let (plain, _) = management_key(&h, &["demo:read"]).await;
    assert_eq!(
        call(&h, &alice, "GET", KEYS, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&h, &expiring, "GET", KEYS, None).await.status,
        StatusCode::OK
    );
    // Not yet inside its window; a key without a management scope; a forged one.
    call(&h, &windowed, "GET", KEYS, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    call(&h, &plain, "GET", KEYS, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    let mut forged = alice.clone();
    forged.pop();
    forged.push(if alice.ends_with('a') { 'b' } else { 'a' });
    call(&h, &forged, "GET", KEYS, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    h.clock.advance(60);
    call(&h, &expiring, "GET", KEYS, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&h, &windowed, "GET", KEYS, None).await.status,
        StatusCode::OK
    );
    let revoked = h.admin("DELETE", &format!("{KEYS}/{alice_id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    call(&h, &alice, "GET", KEYS, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
}

async fn an_admin_management_key_is_a_full_admin(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (admin, admin_id) = management_key(&h, &["keygate:admin"]).await;
    let bob = h
        .create(json!({"name": "bob's", "scopes": [], "owner": "bob"}))
        .await;
    let shown = call(
        &h,
        &admin,
        "GET",
        &format!("{KEYS}/{}", bob["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(
        call(&h, &admin, "GET", "/api/v1/roles", None).await.status,
        StatusCode::OK
    );
    let minted = call(
        &h,
        &admin,
        "POST",
        KEYS,
        Some(json!({"name": "carol's manager", "scopes": ["keygate:owner:carol"]})),
    )
    .await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    // Audited with the management key's id as the actor.
    let audit = h.admin("GET", "/api/v1/audit?action=create", None).await;
    assert_eq!(audit.body["entries"][0]["actor"], admin_id.as_str());
}

async fn an_owner_reads_only_the_audit_entries_of_its_keys(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (alice, _) = management_key(&h, &["keygate:owner:alice"]).await;
    let bob = h
        .create(json!({"name": "b", "scopes": [], "owner": "bob"}))
        .await;
    let mine = call(
        &h,
        &alice,
        "POST",
        KEYS,
        Some(json!({"name": "a", "scopes": []})),
    )
    .await;
    let mine_id = mine.body["id"].as_str().unwrap();
    let page = call(&h, &alice, "GET", "/api/v1/audit", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let targets: Vec<&str> = page.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["target"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(targets, [mine_id]);
    let bob_target = format!("/api/v1/audit?target={}", bob["id"].as_str().unwrap());
    let page = call(&h, &alice, "GET", &bob_target, None).await;
    assert_eq!(page.body["entries"], json!([]));
}
