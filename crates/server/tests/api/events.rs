//! Live events (`GET /api/v1/events`): a revoke made through the API arrives as an event, an
//! owner receives only its own keys' events, usage ingest publishes one event per row, and
//! subscribers are bounded.

use std::time::Duration;

use axum::body::BodyDataStream;
use futures_util::StreamExt;
use keygate_server::service::sessions::AccessSettings;

use super::*;

on_both_backends!(
    a_revoke_made_through_the_api_arrives_as_an_event,
    an_owner_receives_only_its_own_keys_events_and_usage,
);

/// An open event stream.
struct Stream {
    body: BodyDataStream,
    text: String,
}

impl Stream {
    async fn open(h: &Harness, token: &str) -> Self {
        let request = Request::builder()
            .uri("/api/v1/events")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = app(h.state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        Self {
            body: response.into_body().into_data_stream(),
            text: String::new(),
        }
    }

    /// The next event: its name and data.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let frame: String = self.text.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(rest) = line.strip_prefix("event:") {
                        name = rest.trim().to_owned();
                    } else if let Some(rest) = line.strip_prefix("data:") {
                        data.push_str(rest.trim());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open")
                .unwrap();
            self.text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn a_revoke_made_through_the_api_arrives_as_an_event(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let mut stream = Stream::open(&h, ADMIN).await;
    let created = h
        .create(json!({"name": "live", "scopes": [], "owner": "alice"}))
        .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        stream.next().await,
        (
            "key.created".to_owned(),
            json!({"id": id, "owner": "alice", "name": "live"})
        )
    );
    let revoked = h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(
        stream.next().await,
        (
            "key.revoked".to_owned(),
            json!({"id": id, "owner": "alice"})
        )
    );
    // A second revoke changes nothing and says nothing; an update, a rotation and an expiry do.
    h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    let other = h.create(json!({"name": "o", "scopes": []})).await;
    let other_id = other["id"].as_str().unwrap();
    assert_eq!(stream.next().await.0, "key.created");
    h.admin(
        "PATCH",
        &format!("{KEYS}/{other_id}"),
        Some(json!({"name": "p"})),
    )
    .await;
    assert_eq!(
        stream.next().await,
        (
            "key.updated".to_owned(),
            json!({"id": other_id, "owner": null})
        )
    );
    let rotated = h
        .admin(
            "POST",
            &format!("{KEYS}/{other_id}/rotate"),
            Some(json!({"grace": 0})),
        )
        .await;
    let new_id = rotated.body["id"].as_str().unwrap();
    assert_eq!(
        stream.next().await,
        (
            "key.rotated".to_owned(),
            json!({"id": other_id, "new_id": new_id, "owner": null})
        )
    );
    assert_eq!(stream.next().await.0, "key.created");
    h.admin("POST", &format!("{KEYS}/{new_id}/expire"), None)
        .await;
    assert_eq!(
        stream.next().await,
        (
            "key.expired".to_owned(),
            json!({"id": new_id, "owner": null})
        )
    );
}

async fn an_owner_receives_only_its_own_keys_events_and_usage(backend: Backend) {
    let mut h = harness_on(backend, jwt_settings()).await;
    h.state = h.state.clone().with_access_settings(AccessSettings {
        event_subscribers: 1,
        ..AccessSettings::default()
    });
    let manager = h
        .create(json!({"name": "m", "scopes": ["keygate:owner:alice"]}))
        .await;
    let alice = manager["key"].as_str().unwrap();
    let mut stream = Stream::open(&h, alice).await;
    // One subscriber at most: the next one is refused.
    let refused = h.send("GET", "/api/v1/events", Some(ADMIN), None).await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE);

    let bob = h
        .create(json!({"name": "b", "scopes": [], "owner": "bob"}))
        .await;
    let bob_id = bob["id"].as_str().unwrap();
    h.admin("DELETE", &format!("{KEYS}/{bob_id}"), None).await;
    let mine = h
        .create(json!({"name": "a", "scopes": [], "owner": "alice"}))
        .await;
    let mine_id = mine["id"].as_str().unwrap();
    // Bob's creation and revocation never reach alice: her own key's creation comes first.
    assert_eq!(
        stream.next().await,
        (
            "key.created".to_owned(),
            json!({"id": mine_id, "owner": "alice", "name": "a"})
        )
    );
    let minute = (NOW / 60) * 60;
    let batch = json!({
        "batch_id": "b-1",
        "rows": [
            {"key_id": bob_id, "minute": minute, "allowed": 5, "last_used_at": NOW},
            {"key_id": mine_id, "minute": minute, "allowed": 3,
             "denied": {"rate_limited": 2}, "last_used_at": NOW}
        ]
    });
    let ingested = h
        .send("POST", "/v1/usage", Some(SERVICE), Some(&batch.to_string()))
        .await;
    assert_eq!(ingested.status, StatusCode::OK, "{}", ingested.body);
    assert_eq!(
        stream.next().await,
        (
            "usage".to_owned(),
            json!({"key_id": mine_id, "owner": "alice", "minute": minute, "allowed": 3, "denied": 2})
        )
    );
    // Once the stream is gone, another subscriber is welcome.
    drop(stream);
    let again = Stream::open(&h, ADMIN).await;
    drop(again);
}
