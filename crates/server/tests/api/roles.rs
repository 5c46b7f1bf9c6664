//! Roles over HTTP (`/api/v1/roles`, keys' `roles`, the lookup and the feed), on both
//! backends.

use std::time::Duration;

use axum::http::StatusCode;
use keygate_server::model::feed::FeedResponse;
use serde_json::{json, Value};

use crate::backends::{eventually, Backend};
use crate::{harness_on, jwt_settings, Harness, KEYS, NOW};

const ROLES: &str = "/api/v1/roles";

on_both_backends!(
    roles_are_created_listed_shown_changed_and_deleted,
    bad_role_requests_get_a_clear_problem,
    a_key_holds_roles_and_its_lookup_has_their_scopes_and_versions,
    a_role_held_by_a_key_cannot_be_deleted,
    role_changes_travel_the_revocation_feed,
    a_long_poll_is_woken_by_a_role_change,
    role_changes_are_audited,
);

impl Harness {
    async fn role(&self, method: &str, name: &str, body: Option<Value>) -> crate::Answer {
        self.admin(method, &format!("{ROLES}/{name}"), body).await
    }

    async fn role_feed(&self, query: &str) -> FeedResponse {
        let uri = format!("/v1/revocations?{query}");
        let answer = self.send("GET", &uri, Some(crate::SERVICE), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        serde_json::from_value(answer.body).unwrap()
    }

    async fn create_role(&self, name: &str, scopes: &[&str]) -> Value {
        let answer = self
            .admin("POST", ROLES, Some(json!({"name": name, "scopes": scopes})))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }
}

async fn roles_are_created_listed_shown_changed_and_deleted(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let created = h
        .admin(
            "POST",
            ROLES,
            Some(
                json!({"name": "analyst", "scopes": ["models:read", "datasets:read"],
                "description": "reads models and data"}),
            ),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["name"], "analyst");
    assert_eq!(
        created.body["scopes"],
        json!(["datasets:read", "models:read"])
    );
    assert_eq!(created.body["description"], "reads models and data");
    assert_eq!(created.body["created_at"], crate::rfc3339(NOW));
    let v1 = created.body["version"].as_u64().unwrap();
    assert!(v1 > 0);
    h.create_role("ops", &[]).await;

    let again = h
        .admin(
            "POST",
            ROLES,
            Some(json!({"name": "analyst", "scopes": []})),
        )
        .await;
    again.assert_problem(StatusCode::CONFLICT);

    let list = h.admin("GET", ROLES, None).await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<&str> = list.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["analyst", "ops"]);

    let shown = h.role("GET", "analyst", None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body, created.body);

    h.clock.advance(10);
    let changed = h
        .role(
            "PATCH",
            "analyst",
            Some(json!({"scopes": ["datasets:read"]})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(changed.body["scopes"], json!(["datasets:read"]));
    assert_eq!(changed.body["description"], "reads models and data");
    assert_eq!(changed.body["updated_at"], crate::rfc3339(NOW + 10));
    let v2 = changed.body["version"].as_u64().unwrap();
    assert!(v2 > v1, "versions only grow");

    let deleted = h.role("DELETE", "analyst", None).await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    h.role("GET", "analyst", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.role("DELETE", "analyst", None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    h.role("PATCH", "analyst", Some(json!({"scopes": []})))
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    // Re-created under the same name: its version is still higher than any before.
    let again = h.create_role("analyst", &["models:read"]).await;
    assert!(again["version"].as_u64().unwrap() > v2);
}

async fn bad_role_requests_get_a_clear_problem(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    for body in [
        json!({"name": "Analyst", "scopes": []}),
        json!({"name": "", "scopes": []}),
        json!({"name": "a".repeat(65), "scopes": []}),
        json!({"name": "a b", "scopes": []}),
        json!({"name": "a", "scopes": ["bad scope"]}),
        json!({"name": "a", "scopes": many}),
        json!({"name": "a", "scopes": [], "version": 7}),
        json!({"name": "a"}),
    ] {
        let answer = h.admin("POST", ROLES, Some(body.clone())).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
        assert!(!answer.detail().is_empty(), "{body}");
    }
    h.role("GET", "NOT%20A%20NAME", None)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    // The management API needs the admin key.
    let anonymous = h.send("GET", ROLES, None, None).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
}

async fn a_key_holds_roles_and_its_lookup_has_their_scopes_and_versions(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let analyst = h
        .create_role("analyst", &["models:read", "datasets:read"])
        .await;
    h.create_role("ops", &["demo:write"]).await;
    let key = h
        .create(json!({"name": "k", "scopes": ["demo:read", "models:read"],
            "roles": ["analyst", "analyst"]}))
        .await;
    assert_eq!(key["roles"], json!(["analyst"]));
    assert_eq!(
        key["scopes"],
        json!(["demo:read", "models:read"]),
        "own scopes only"
    );
    let id = key["id"].as_str().unwrap();
    assert_eq!(h.show(id).await["roles"], json!(["analyst"]));

    let lookup = h.lookup(id).await;
    assert_eq!(lookup.status, StatusCode::OK);
    assert_eq!(
        lookup.body["scopes"],
        json!(["datasets:read", "demo:read", "models:read"])
    );
    assert_eq!(
        lookup.body["roles"],
        json!([{"name": "analyst", "version": analyst["version"]}])
    );

    // A change to the role changes the key.
    let changed = h
        .role(
            "PATCH",
            "analyst",
            Some(json!({"scopes": ["datasets:read"]})),
        )
        .await;
    let lookup = h.lookup(id).await;
    assert_eq!(
        lookup.body["scopes"],
        json!(["datasets:read", "demo:read", "models:read"])
    );
    assert_eq!(lookup.body["roles"][0]["version"], changed.body["version"]);
    let changed = h
        .role(
            "PATCH",
            "analyst",
            Some(json!({"scopes": ["reports:read"]})),
        )
        .await;
    let lookup = h.lookup(id).await;
    assert_eq!(
        lookup.body["scopes"],
        json!(["demo:read", "models:read", "reports:read"])
    );
    assert_eq!(lookup.body["roles"][0]["version"], changed.body["version"]);

    // Roles replaced through an update; `[]` removes them.
    let updated = h
        .admin(
            "PATCH",
            &format!("{KEYS}/{id}"),
            Some(json!({"roles": ["ops"]})),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.body["roles"], json!(["ops"]));
    assert_eq!(
        h.lookup(id).await.body["scopes"],
        json!(["demo:read", "demo:write", "models:read"])
    );
    let cleared = h
        .admin("PATCH", &format!("{KEYS}/{id}"), Some(json!({"roles": []})))
        .await;
    assert_eq!(cleared.body["roles"], json!([]));
    let lookup = h.lookup(id).await;
    assert_eq!(lookup.body["scopes"], json!(["demo:read", "models:read"]));
    assert!(
        lookup.body.get("roles").is_none(),
        "absent when the key holds none"
    );

    // Refusals: a role that does not exist, too many, a JWT key.
    let unknown = h
        .admin(
            "POST",
            KEYS,
            Some(json!({"name": "x", "scopes": [], "roles": ["nope"]})),
        )
        .await;
    unknown.assert_problem(StatusCode::BAD_REQUEST);
    assert!(unknown.detail().contains("nope"), "{}", unknown.detail());
    let unknown = h
        .admin(
            "PATCH",
            &format!("{KEYS}/{id}"),
            Some(json!({"roles": ["nope"]})),
        )
        .await;
    unknown.assert_problem(StatusCode::BAD_REQUEST);
    let nine: Vec<String> = (0..9).map(|i| format!("r{i}")).collect();
    h.admin(
        "POST",
        KEYS,
        Some(json!({"name": "x", "scopes": [], "roles": nine})),
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST);
    h.admin(
        "POST",
        KEYS,
        Some(
            json!({"name": "x", "scopes": [], "format": "jwt", "expires_in": 60,
            "roles": ["ops"]}),
        ),
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST);
    // A rotation's successor holds the same roles.
    h.admin(
        "PATCH",
        &format!("{KEYS}/{id}"),
        Some(json!({"roles": ["ops"]})),
    )
    .await;
    let successor = h
        .admin("POST", &format!("{KEYS}/{id}/rotate"), Some(json!({})))
        .await;
    assert_eq!(successor.status, StatusCode::CREATED, "{}", successor.body);
    assert_eq!(successor.body["roles"], json!(["ops"]));
}

async fn a_role_held_by_a_key_cannot_be_deleted(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    h.create_role("a_b", &["x"]).await;
    h.create_role("axb", &["y"]).await;
    let key = h
        .create(json!({"name": "k", "scopes": [], "roles": ["axb"]}))
        .await;
    let id = key["id"].as_str().unwrap();
    let held = h.role("DELETE", "axb", None).await;
    held.assert_problem(StatusCode::CONFLICT);
    assert_eq!(held.body["type"], "urn:keygate:problem:role-in-use");
    // `_` is not a wildcard: a_b is held by no key.
    let free = h.role("DELETE", "a_b", None).await;
    assert_eq!(free.status, StatusCode::OK, "{}", free.body);
    // Once the key is revoked, the role may go.
    h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    let gone = h.role("DELETE", "axb", None).await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    // The revoked key's record no longer has the role's scopes.
    let lookup = h.lookup(id).await;
    assert_eq!(lookup.body["scopes"], json!([]));
}

async fn role_changes_travel_the_revocation_feed(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let key = h.create(json!({"name": "k", "scopes": []})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    let cold = h.role_feed("since=0").await;
    assert_eq!(cold.seq, 1);
    assert!(cold.roles.is_empty());

    let created = h.create_role("analyst", &["models:read"]).await;
    assert_eq!(
        created["version"], 2,
        "a role's version is its change's seq"
    );
    let next = h.role_feed("since=1&wait=0").await;
    assert_eq!(next.seq, 2);
    assert!(next.events.is_empty());
    assert_eq!(next.roles.len(), 1);
    assert_eq!(next.roles[0].role, "analyst");
    assert_eq!(next.roles[0].version, 2);
    assert_eq!(next.roles[0].created_at, Some(NOW as u64));

    let changed = h
        .role("PATCH", "analyst", Some(json!({"scopes": []})))
        .await;
    let feed = h.role_feed("since=2&wait=0").await;
    assert_eq!(
        feed.roles[0].version,
        changed.body["version"].as_u64().unwrap()
    );
    // A cold follower's snapshot carries both kinds, in one sequence.
    let snapshot = h.role_feed("since=0").await;
    assert!(snapshot.reset);
    assert_eq!(snapshot.seq, 3);
    assert_eq!(snapshot.events.len(), 1);
    assert_eq!(snapshot.roles.len(), 2);
    // On the wire, role changes are beside the events (which older filters read alone).
    let raw = h
        .send(
            "GET",
            "/v1/revocations?since=2&wait=0",
            Some(crate::SERVICE),
            None,
        )
        .await;
    assert_eq!(raw.body["events"], json!([]));
    assert_eq!(raw.body["roles"][0]["kind"], "role_changed");
    // A key revoked after the roles continues the sequence.
    let other = h.create(json!({"name": "o", "scopes": []})).await;
    h.admin(
        "DELETE",
        &format!("{KEYS}/{}", other["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(h.role_feed("since=3&wait=0").await.events[0].seq, 4);
}

async fn role_changes_are_audited(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let created = h.create_role("analyst", &["models:read"]).await;
    h.role("PATCH", "analyst", Some(json!({"scopes": []})))
        .await;
    h.admin(
        "POST",
        ROLES,
        Some(json!({"name": "analyst", "scopes": []})),
    )
    .await;
    h.role("DELETE", "analyst", None).await;
    let page = h.admin("GET", "/api/v1/audit?target=analyst", None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let entries = page.body["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("role_delete", "ok"),
            ("role_create", "error: conflict (409)"),
            ("role_update", "ok"),
            ("role_create", "ok"),
        ]
    );
    let first = entries.last().unwrap();
    assert_eq!(first["detail"]["version"], created["version"]);
    assert!(
        !first.to_string().contains("models:read"),
        "no scopes in the log"
    );
    let filtered = h
        .admin("GET", "/api/v1/audit?action=role_update", None)
        .await;
    assert_eq!(filtered.body["entries"].as_array().unwrap().len(), 1);
}

async fn a_long_poll_is_woken_by_a_role_change(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    h.create_role("analyst", &["models:read"]).await;
    // Held for up to 60 s unless something new is committed: a role change alone is news.
    let poll = tokio::time::timeout(Duration::from_secs(20), h.role_feed("since=1&wait=60"));
    let (answer, ()) = tokio::join!(poll, async {
        assert!(
            eventually(Duration::from_secs(5), || h.state.feed_counters().waiting()
                == 1)
            .await,
            "the long-poll is held"
        );
        h.role("PATCH", "analyst", Some(json!({"scopes": []})))
            .await;
    });
    let answer = answer.expect("woken by the change, long before its wait is over");
    assert_eq!(answer.seq, 2);
    assert_eq!(answer.roles.len(), 1);
    assert_eq!(answer.roles[0].version, 2);
}
