//! Wildcard grants and what the filter needs to bind routes: the key's owner and metadata.

use axum::http::StatusCode;
use serde_json::json;

use super::{harness, KEYS};

#[tokio::test]
async fn wildcard_grants_are_accepted_and_ambiguous_ones_refused() {
    let h = harness().await;
    let key = h
        .create(json!({"name": "w", "owner": "acme", "scopes": ["datasets:*", "demo:read"]}))
        .await;
    assert_eq!(key["scopes"], json!(["datasets:*", "demo:read"]));
    for bad in [
        "*",
        "*:read",
        "datasets:*:read",
        "datasets*",
        "datasets::*",
        "datasets:**",
    ] {
        let answer = h
            .admin("POST", KEYS, Some(json!({"name": "w", "scopes": [bad]})))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.body
        );
        assert!(
            answer.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains('*'),
            "{bad}: {}",
            answer.body
        );
        let id = key["id"].as_str().unwrap();
        let answer = h
            .admin(
                "PATCH",
                &format!("{KEYS}/{id}"),
                Some(json!({"scopes": [bad]})),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn the_lookup_carries_the_owner_and_string_metadata() {
    let h = harness().await;
    let key = h
        .create(json!({
            "name": "t",
            "owner": "acme",
            "scopes": ["datasets:read"],
            "metadata": {"team": "red", "seats": 3, "tags": ["a"]}
        }))
        .await;
    let lookup = h.lookup(key["id"].as_str().unwrap()).await;
    assert_eq!(lookup.status, StatusCode::OK);
    assert_eq!(lookup.body["owner"], "acme");
    assert_eq!(lookup.body["metadata"], json!({"team": "red"}));
    // An ownerless key has no owner to bind (its subject is its id, never an owner).
    let ownerless = h.create(json!({"name": "n", "scopes": []})).await;
    let lookup = h.lookup(ownerless["id"].as_str().unwrap()).await;
    assert!(lookup.body.get("owner").is_none(), "{}", lookup.body);
    assert!(lookup.body.get("metadata").is_none(), "{}", lookup.body);
}
