//! The key service's HTTP API, driven through `app(state)` without a socket, on a temporary
//! SQLite file and a manual clock; the storage suite and the revocation feed on both SQLite
//! and PostgreSQL (see `backends`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// `on_both_backends!`: a `sqlite::NAME` and a `postgres::NAME` test of each listed test.
#[macro_use]
extern crate keygate_testkit;

mod access;
mod alerts;
mod audit;
mod backends;
mod binding;
mod blocks;
mod countries;
mod errors;
mod events;
mod feed;
mod fleet;
mod legacy;
mod publish;
mod readme;
mod retention;
mod roles;
mod sessions;
mod signing_material;
mod storage;
mod transport;
mod usage;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use keygate_core::key::{parse_opaque_key, GatewayKey, KeyPrefix};
use keygate_server::clock::ManualClock;
use keygate_server::serve::{bootstrap_admin, AdminBootstrap};
use keygate_server::service::signing::{
    JwtIssuer, JwtSettings, SigningError, SigningSecret, JWT_TYP,
};
use keygate_server::store::KeyStore;
use keygate_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::backends::{Backend, Connect, TestDb};

const NOW: i64 = 1_800_000_000; // 2027-01-15T08:00:00Z
const ADMIN: &str = "kga_test_admin_key_of_at_least_32_characters";
const SERVICE: &str = "service-token-of-at-least-32-characters";
const GATEWAY_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const KEYS: &str = "/api/v1/auth/keys";
const SIGNING_SECRET_HEX: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const JWKS: &str = "/.well-known/jwks.json";
const SIGNING_KEYS: &str = "/api/v1/signing-keys";

struct Harness {
    state: AppState,
    clock: Arc<ManualClock>,
    /// Last, so the store is dropped before its database.
    db: Arc<TestDb>,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or("")
    }

    fn assert_problem(&self, status: StatusCode) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.content_type(), "application/problem+json");
        assert_eq!(self.body["status"], status.as_u16());
        assert!(self.body["type"].is_string());
        assert!(self.body["title"].is_string());
        assert!(!self.detail().is_empty());
    }
}

/// JWT signing on, with the default issuer and audience.
/// JWT signing on, with the default issuer and audience; keys sign as soon as they are stored
/// (the publish delay has its own tests).
fn jwt_settings() -> JwtSettings {
    JwtSettings {
        secret: SigningSecret::from_hex(SIGNING_SECRET_HEX),
        publish_delay_s: 0,
        ..JwtSettings::default()
    }
}

async fn harness() -> Harness {
    harness_with(jwt_settings()).await
}

async fn harness_with(jwt: JwtSettings) -> Harness {
    harness_on(Backend::Sqlite, jwt).await
}

async fn harness_on(backend: Backend, jwt: JwtSettings) -> Harness {
    let db = Arc::new(TestDb::new(backend).await);
    let store = db.connect().await;
    harness_for(db, store, jwt).await
}

/// A harness on `store` (which lives in `db`); installs the admin key unless one exists.
async fn harness_for(db: Arc<TestDb>, store: KeyStore, jwt: JwtSettings) -> Harness {
    let installed = bootstrap_admin(&store, Some(ADMIN), None, NOW)
        .await
        .unwrap();
    assert!(matches!(
        installed,
        AdminBootstrap::InstalledFromEnv
            | AdminBootstrap::AlreadyPresent {
                env_key_known: Some(true)
            }
    ));
    let clock = Arc::new(ManualClock::new(NOW));
    let state = AppState::new(
        store,
        clock.clone(),
        GatewayKey::from_hex(GATEWAY_HEX).unwrap(),
        KeyPrefix::parse("kg_test_").unwrap(),
        SERVICE,
    )
    .with_jwt(jwt);
    Harness { state, clock, db }
}

impl Harness {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .unwrap();
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn admin(&self, method: &str, uri: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        self.send(method, uri, Some(ADMIN), body.as_deref()).await
    }

    async fn create(&self, body: Value) -> Value {
        let answer = self.admin("POST", KEYS, Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }

    async fn lookup(&self, id: &str) -> Answer {
        self.send("GET", &format!("/v1/keys/{id}"), Some(SERVICE), None)
            .await
    }

    async fn show(&self, id: &str) -> Value {
        let answer = self.admin("GET", &format!("{KEYS}/{id}"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    /// Every byte the database holds on disk (main file and write-ahead log).
    fn database_bytes(&self) -> Vec<u8> {
        let path = self.db.path.as_ref().expect("an SQLite harness");
        let mut bytes = std::fs::read(path).unwrap();
        let wal = path.with_extension("db-wal");
        if let Ok(more) = std::fs::read(wal) {
            bytes.extend(more);
        }
        bytes
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn rfc3339(unix: i64) -> String {
    keygate_server::timestamp::format_rfc3339(unix).unwrap()
}

#[tokio::test]
async fn create_returns_the_key_once_and_stores_only_its_digest() {
    let h = harness().await;
    let created = h
        .create(json!({
            "name": "billing ci",
            "scopes": ["demo:write", "demo:read"],
            "owner": "team-billing",
            "metadata": {"ticket": "OPS-1"}
        }))
        .await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(key.starts_with("kg_test_"));
    assert_eq!(id.len(), 16);
    assert_eq!(&key[8..24], id);
    let parsed = parse_opaque_key(key, &["kg_test_"]).unwrap();
    assert!(parsed.tag_is_authentic(&GatewayKey::from_hex(GATEWAY_HEX).unwrap()));
    assert_eq!(created["scopes"], json!(["demo:read", "demo:write"]));
    assert_eq!(created["status"], "active");
    assert_eq!(created["format"], "opaque");
    assert_eq!(created["prefix"], "kg_test_");
    assert_eq!(created["owner"], "team-billing");
    assert_eq!(created["metadata"], json!({"ticket": "OPS-1"}));
    assert_eq!(created["created_at"], rfc3339(NOW));
    assert_eq!(created["expires_at"], Value::Null);
    assert_eq!(created["revoked_at"], Value::Null);
    assert_eq!(created["last_used_at"], Value::Null);

    // Shown once: reading it back never includes the plaintext.
    let shown = h.show(id).await;
    assert!(shown.get("key").is_none());
    assert_eq!(shown["name"], "billing ci");

    // On disk: the digest, never the key, never its secret part.
    let lookup = h.lookup(id).await;
    let digest = lookup.body["digest"].as_str().unwrap();
    assert_eq!(digest, parsed.digest().to_hex());
    let bytes = h.database_bytes();
    assert!(contains(&bytes, digest), "digest should be stored");
    assert!(
        !contains(&bytes, key),
        "plaintext key found in the database"
    );
    assert!(
        !contains(&bytes, &key[24..]),
        "key secret found in the database"
    );
    assert!(!contains(&bytes, ADMIN), "admin key found in the database");
}

#[tokio::test]
async fn expiry_comes_from_expires_in_or_expires_at_and_the_clock_ends_it() {
    let h = harness().await;
    let by_seconds = h
        .create(json!({"name": "a", "scopes": [], "expires_in": 60}))
        .await;
    assert_eq!(by_seconds["expires_at"], rfc3339(NOW + 60));
    let by_date = h
        .create(json!({"name": "b", "scopes": [], "expires_at": rfc3339(NOW + 3600)}))
        .await;
    assert_eq!(by_date["expires_at"], rfc3339(NOW + 3600));

    let id = by_seconds["id"].as_str().unwrap();
    let lookup = h.lookup(id).await;
    assert_eq!(lookup.body["status"], "active");
    assert_eq!(lookup.body["expires_at"], NOW + 60);
    h.clock.advance(59);
    assert_eq!(h.show(id).await["status"], "active");
    h.clock.advance(1);
    assert_eq!(h.show(id).await["status"], "expired");
    assert_eq!(h.lookup(id).await.body["status"], "expired");
    assert_eq!(
        h.show(by_date["id"].as_str().unwrap()).await["status"],
        "active"
    );
}

#[tokio::test]
async fn list_pages_with_a_cursor_and_filters_by_status() {
    let h = harness().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let created = h
            .create(json!({"name": format!("k{i}"), "scopes": []}))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
        h.clock.advance(1);
    }
    let first = h.admin("GET", &format!("{KEYS}?limit=2"), None).await;
    assert_eq!(first.status, StatusCode::OK);
    let keys = first.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["id"], ids[0].as_str());
    assert_eq!(keys[1]["id"], ids[1].as_str());
    assert!(keys.iter().all(|k| k.get("key").is_none()));
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = h
        .admin("GET", &format!("{KEYS}?limit=2&cursor={cursor}"), None)
        .await;
    let keys = second.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], ids[2].as_str());
    assert_eq!(second.body["next_cursor"], Value::Null);

    let all = h.admin("GET", KEYS, None).await;
    assert_eq!(all.body["keys"].as_array().unwrap().len(), 3);

    h.admin("DELETE", &format!("{KEYS}/{}", ids[1]), None).await;
    let revoked = h
        .admin("GET", &format!("{KEYS}?status=revoked"), None)
        .await;
    let keys = revoked.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], ids[1].as_str());
    let active = h.admin("GET", &format!("{KEYS}?status=active"), None).await;
    assert_eq!(active.body["keys"].as_array().unwrap().len(), 2);

    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "status=gone",
        "cursor=junk",
    ] {
        let answer = h.admin("GET", &format!("{KEYS}?{bad}"), None).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn revoke_is_idempotent_and_the_lookup_reports_it() {
    let h = harness().await;
    let created = h
        .create(json!({"name": "x", "scopes": ["demo:read"]}))
        .await;
    let id = created["id"].as_str().unwrap();
    let revoked = h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.body["status"], "revoked");
    assert_eq!(revoked.body["revoked_at"], rfc3339(NOW));

    h.clock.advance(100);
    let again = h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["revoked_at"], rfc3339(NOW));

    let lookup = h.lookup(id).await;
    assert_eq!(lookup.status, StatusCode::OK);
    assert_eq!(lookup.body["status"], "revoked");
    assert_eq!(lookup.body["scopes"], json!(["demo:read"]));
}

#[tokio::test]
async fn rotate_starts_a_grace_period_and_copies_the_key() {
    let h = harness().await;
    let old = h
        .create(json!({
            "name": "svc", "scopes": ["demo:read", "demo:write"], "owner": "svc-a",
            "expires_in": 30 * 86_400, "metadata": {"env": "prod"}
        }))
        .await;
    let old_id = old["id"].as_str().unwrap();
    h.clock.advance(10);
    let rotated = h
        .admin(
            "POST",
            &format!("{KEYS}/{old_id}/rotate"),
            Some(json!({"grace": 3600})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let new = rotated.body;
    let new_id = new["id"].as_str().unwrap();
    assert_ne!(new_id, old_id);
    assert!(new["key"].as_str().unwrap().starts_with("kg_test_"));
    assert_ne!(new["key"], old["key"]);
    assert_eq!(new["scopes"], old["scopes"]);
    assert_eq!(new["name"], "svc");
    assert_eq!(new["owner"], "svc-a");
    assert_eq!(new["metadata"], json!({"env": "prod"}));
    assert_eq!(new["rotated_from"], old_id);
    assert_eq!(new["status"], "active");
    // The new key keeps the old key's own expiry.
    assert_eq!(new["expires_at"], rfc3339(NOW + 30 * 86_400));

    let old_now = h.show(old_id).await;
    assert_eq!(old_now["rotated_to"], new_id);
    assert_eq!(old_now["status"], "active");
    assert_eq!(old_now["expires_at"], rfc3339(NOW + 10 + 3600));
    let old_lookup = h.lookup(old_id).await;
    assert_eq!(old_lookup.body["expires_at"], NOW + 10 + 3600);
    assert_eq!(old_lookup.body["subject"], "svc-a");

    // A key already rotated is not rotated twice.
    let twice = h
        .admin("POST", &format!("{KEYS}/{old_id}/rotate"), None)
        .await;
    twice.assert_problem(StatusCode::CONFLICT);

    h.clock.advance(3600);
    assert_eq!(h.lookup(old_id).await.body["status"], "expired");
    assert_eq!(h.lookup(new_id).await.body["status"], "active");
}

#[tokio::test]
async fn grace_never_extends_past_the_old_keys_own_expiry() {
    let h = harness().await;
    let old = h
        .create(json!({"name": "short", "scopes": [], "expires_in": 600}))
        .await;
    let old_id = old["id"].as_str().unwrap();
    // No body: the default grace (one day) applies, but the key ends in 600 s anyway.
    let rotated = h
        .admin("POST", &format!("{KEYS}/{old_id}/rotate"), None)
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    assert_eq!(h.show(old_id).await["expires_at"], rfc3339(NOW + 600));
    assert_eq!(h.lookup(old_id).await.body["expires_at"], NOW + 600);
    assert_eq!(rotated.body["expires_at"], rfc3339(NOW + 600));
}

#[tokio::test]
async fn zero_grace_ends_the_old_key_at_once() {
    let h = harness().await;
    let old = h.create(json!({"name": "x", "scopes": []})).await;
    let old_id = old["id"].as_str().unwrap();
    let rotated = h
        .admin(
            "POST",
            &format!("{KEYS}/{old_id}/rotate"),
            Some(json!({"grace": 0})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    assert_eq!(h.show(old_id).await["status"], "expired");
    assert_eq!(rotated.body["expires_at"], Value::Null);
}

#[tokio::test]
async fn revoked_and_expired_keys_cannot_be_rotated() {
    let h = harness().await;
    let revoked = h.create(json!({"name": "r", "scopes": []})).await;
    let revoked_id = revoked["id"].as_str().unwrap();
    h.admin("DELETE", &format!("{KEYS}/{revoked_id}"), None)
        .await;
    let answer = h
        .admin("POST", &format!("{KEYS}/{revoked_id}/rotate"), None)
        .await;
    answer.assert_problem(StatusCode::CONFLICT);
    assert!(answer.detail().contains("revoked"));

    let expiring = h
        .create(json!({"name": "e", "scopes": [], "expires_in": 5}))
        .await;
    let expiring_id = expiring["id"].as_str().unwrap();
    h.clock.advance(5);
    let answer = h
        .admin("POST", &format!("{KEYS}/{expiring_id}/rotate"), None)
        .await;
    answer.assert_problem(StatusCode::CONFLICT);
    assert!(answer.detail().contains("expired"));

    for bad in [
        json!({"grace": -1}),
        json!({"grace": 31 * 86_400}),
        json!({"nope": 1}),
    ] {
        let fresh = h.create(json!({"name": "f", "scopes": []})).await;
        let id = fresh["id"].as_str().unwrap();
        let answer = h
            .admin("POST", &format!("{KEYS}/{id}/rotate"), Some(bad))
            .await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
    }
    let unknown = h
        .admin("POST", &format!("{KEYS}/aaaaaaaaaaaaaaaa/rotate"), None)
        .await;
    unknown.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_lookup_needs_the_service_token_and_counts_calls() {
    let h = harness().await;
    let created = h.create(json!({"name": "x", "scopes": ["a"]})).await;
    let id = created["id"].as_str().unwrap();
    let uri = format!("/v1/keys/{id}");

    let missing = h.send("GET", &uri, None, None).await;
    missing.assert_problem(StatusCode::UNAUTHORIZED);
    assert!(missing.headers.contains_key(header::WWW_AUTHENTICATE));
    let wrong = h.send("GET", &uri, Some("not-the-token"), None).await;
    wrong.assert_problem(StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.contains_key(header::WWW_AUTHENTICATE));
    let admin_is_not_enough = h.send("GET", &uri, Some(ADMIN), None).await;
    assert_eq!(admin_is_not_enough.status, StatusCode::UNAUTHORIZED);

    let ok = h.lookup(id).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["id"], id);
    assert_eq!(
        ok.body["subject"], id,
        "no owner: the subject is the key id"
    );
    assert_eq!(ok.body["scopes"], json!(["a"]));
    assert_eq!(ok.body["status"], "active");
    assert_eq!(ok.body["expires_at"], Value::Null);
    let wire: keygate_core::wire::KeyLookup = serde_json::from_value(ok.body).unwrap();
    assert_eq!(wire.digest.len(), 64);

    let unknown = h.lookup("aaaaaaaaaaaaaaaa").await;
    unknown.assert_problem(StatusCode::NOT_FOUND);
    let malformed = h.lookup("not-an-id").await;
    malformed.assert_problem(StatusCode::NOT_FOUND);

    let stats = h.send("GET", "/v1/stats", Some(SERVICE), None).await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(
        stats.body,
        json!({"lookups": 6, "feed_requests": 0, "feed_waiting": 0})
    );
    assert_eq!(h.state.lookups_served(), 6);
    let stats = h.send("GET", "/v1/stats", None, None).await;
    stats.assert_problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_management_api_needs_an_admin_key() {
    let h = harness().await;
    let body = json!({"name": "x", "scopes": []}).to_string();
    for (method, uri, body) in [
        ("POST", KEYS.to_owned(), Some(body.as_str())),
        ("GET", KEYS.to_owned(), None),
        ("GET", format!("{KEYS}/aaaaaaaaaaaaaaaa"), None),
        ("DELETE", format!("{KEYS}/aaaaaaaaaaaaaaaa"), None),
        ("POST", format!("{KEYS}/aaaaaaaaaaaaaaaa/rotate"), None),
    ] {
        let missing = h.send(method, &uri, None, body).await;
        missing.assert_problem(StatusCode::UNAUTHORIZED);
        let challenge = missing.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let wrong = h.send(method, &uri, Some(SERVICE), body).await;
        wrong.assert_problem(StatusCode::UNAUTHORIZED);
        assert!(!wrong.body.to_string().contains(SERVICE));
    }
}

#[tokio::test]
async fn bad_create_requests_get_a_clear_problem() {
    let h = harness().await;
    let cases: Vec<(String, &str)> = vec![
        (
            json!({"name": "x", "scopes": ["has space"]}).to_string(),
            "scopes[0]",
        ),
        (
            json!({"name": "x", "scopes": ["ok", "bad;"]}).to_string(),
            "a scope is 1 to 64 characters",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_in": 60, "expires_at": rfc3339(NOW + 60)})
                .to_string(),
            "not both",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_in": -5}).to_string(),
            "expires_in",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_in": 0}).to_string(),
            "expires_in",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_in": 400_000_000}).to_string(),
            "10 years",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_at": rfc3339(NOW - 1)}).to_string(),
            "in the future",
        ),
        (
            json!({"name": "x", "scopes": [], "expires_at": "next week"}).to_string(),
            "RFC 3339",
        ),
        (
            json!({"name": "x", "scopes": [], "colour": "red"}).to_string(),
            "unknown field `colour`",
        ),
        (
            json!({"name": "x", "scopes": [], "metadata": "text"}).to_string(),
            "metadata must be a JSON object",
        ),
        (
            json!({"name": "x", "scopes": [], "metadata": [1, 2]}).to_string(),
            "metadata must be a JSON object",
        ),
        (json!({"name": "", "scopes": []}).to_string(), "name"),
        (json!({"scopes": []}).to_string(), "missing field `name`"),
        (
            json!({"name": "x", "scopes": "demo:read"}).to_string(),
            "sequence",
        ),
        (
            json!({"name": "x", "scopes": [], "format": "pgp"}).to_string(),
            "format",
        ),
        ("{\"name\": \"x\", ".to_owned(), "not valid JSON"),
        ("not json".to_owned(), "not valid JSON"),
        (String::new(), "not valid JSON"),
    ];
    for (body, expected) in cases {
        let answer = h.send("POST", KEYS, Some(ADMIN), Some(&body)).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
        assert!(
            answer.detail().contains(expected),
            "body {body}: detail {:?} lacks {expected:?}",
            answer.detail()
        );
    }
    let listed = h.admin("GET", KEYS, None).await;
    assert_eq!(
        listed.body["keys"],
        json!([]),
        "no bad request created a key"
    );
}

#[tokio::test]
async fn bodies_over_64_kib_are_refused_with_413() {
    let h = harness().await;
    let body = json!({"name": "x", "scopes": [], "metadata": {"pad": "p".repeat(70 * 1024)}});
    let answer = h.admin("POST", KEYS, Some(body)).await;
    answer.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit, the metadata rule (4 KiB) answers instead.
    let body = json!({"name": "x", "scopes": [], "metadata": {"pad": "p".repeat(60 * 1024)}});
    let answer = h.admin("POST", KEYS, Some(body)).await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    assert!(answer.detail().contains("4096"));
}

#[tokio::test]
async fn unknown_ids_are_404_and_malformed_ids_are_400() {
    let h = harness().await;
    for method in ["GET", "DELETE"] {
        let unknown = h
            .admin(method, &format!("{KEYS}/aaaaaaaaaaaaaaaa"), None)
            .await;
        unknown.assert_problem(StatusCode::NOT_FOUND);
        let malformed = h.admin(method, &format!("{KEYS}/NOT-AN-ID"), None).await;
        malformed.assert_problem(StatusCode::BAD_REQUEST);
        assert!(malformed.detail().contains("key id"));
    }
    let nowhere = h.send("GET", "/nowhere", None, None).await;
    nowhere.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_needs_no_credential() {
    let h = harness().await;
    let answer = h.send("GET", "/healthz", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, json!({"status": "ok"}));
}

#[tokio::test]
async fn the_first_start_mints_an_admin_key_and_writes_it_0600() {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::connect(&format!("sqlite://{}/k.db", dir.path().display()))
        .await
        .unwrap();
    let file = dir.path().join("secrets").join("admin.key");
    let AdminBootstrap::Minted(key) = bootstrap_admin(&store, None, Some(&file), NOW)
        .await
        .unwrap()
    else {
        panic!("expected a minted admin key");
    };
    assert!(key.starts_with("kga_"));
    assert_eq!(key.len(), 4 + 52);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Later starts leave it alone and notice an unknown KEYGATE_ADMIN_KEY.
    assert_eq!(
        bootstrap_admin(&store, Some(ADMIN), Some(&file), NOW)
            .await
            .unwrap(),
        AdminBootstrap::AlreadyPresent {
            env_key_known: Some(false)
        }
    );
    assert_eq!(
        bootstrap_admin(&store, Some(&key), None, NOW)
            .await
            .unwrap(),
        AdminBootstrap::AlreadyPresent {
            env_key_known: Some(true)
        }
    );
    assert_eq!(store.count_admin_keys().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// JWT API keys

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keygate_core::jwt::{verify_jwt, Algorithm, KeySet, SigningKey, Validation, VerifiedToken};
use keygate_core::key::KeyDigest;
use keygate_server::clock::Clock;

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The JOSE header of a compact JWS, decoded (no verification).
fn jose_header(token: &str) -> Value {
    let segment = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

/// The claims of a compact JWS, decoded (no verification).
fn claims(token: &str) -> Value {
    let segment = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

impl Harness {
    async fn jwks(&self) -> (Value, KeySet) {
        let answer = self.send("GET", JWKS, None, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.content_type(), "application/json");
        let cache = answer.headers[header::CACHE_CONTROL].to_str().unwrap();
        assert!(cache.contains("max-age=60"), "{cache}");
        let bytes = serde_json::to_vec(&answer.body).unwrap();
        let (keys, skipped) = KeySet::from_jwks_json(&bytes).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        (answer.body, keys)
    }

    async fn jwks_kids(&self) -> Vec<String> {
        let (body, _) = self.jwks().await;
        body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn verify(&self, token: &str) -> Result<VerifiedToken, keygate_core::jwt::JwtError> {
        let (_, keys) = self.jwks().await;
        let mut validation = Validation::new("keygate");
        validation.audiences = vec!["keygate".into()];
        validation.typ = Some(JWT_TYP.into());
        verify_jwt(token, &keys, &validation, self.clock.now() as u64)
    }

    async fn create_jwt(&self, algorithm: &str, expires_in: i64) -> Value {
        self.create(json!({
            "name": format!("{algorithm} key"), "scopes": ["demo:read"],
            "format": "jwt", "algorithm": algorithm, "expires_in": expires_in
        }))
        .await
    }

    async fn rotate_signing_key(&self, algorithm: &str) -> Value {
        let answer = self
            .admin(
                "POST",
                &format!("{SIGNING_KEYS}/rotate"),
                Some(json!({"algorithm": algorithm})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }
}

#[tokio::test]
async fn jwt_keys_of_every_algorithm_verify_against_the_published_jwks() {
    let h = harness().await;
    for algorithm in ["ES256", "EdDSA", "RS256"] {
        let created = h
            .create(json!({
                "name": "partner", "scopes": ["demo:write", "demo:read"], "owner": "team-a",
                "format": "jwt", "algorithm": algorithm, "expires_in": 3600,
                "metadata": {"ticket": "OPS-2"}
            }))
            .await;
        let id = created["id"].as_str().unwrap();
        let token = created["key"].as_str().unwrap();
        let kid = created["kid"].as_str().unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(created["format"], "jwt");
        assert_eq!(created["algorithm"], algorithm);
        assert_eq!(created["status"], "active");
        assert_eq!(created["expires_at"], rfc3339(NOW + 3600));
        assert_eq!(created["scopes"], json!(["demo:read", "demo:write"]));
        assert!(
            kid.starts_with(&format!("kg-{}-", algorithm.to_lowercase())),
            "{kid}"
        );

        let header = jose_header(token);
        assert_eq!(header["typ"], JWT_TYP);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], algorithm);
        assert_eq!(header["kid"], kid);
        assert_eq!(
            claims(token),
            json!({
                "iss": "keygate", "sub": "team-a", "aud": "keygate", "jti": id,
                "client_id": id, "iat": NOW, "exp": NOW + 3600,
                "scope": "demo:read demo:write"
            })
        );

        let verified = h.verify(token).await.unwrap();
        assert_eq!(verified.jti.as_deref(), Some(id));
        assert_eq!(verified.subject, "team-a");
        assert_eq!(verified.expires_at, Some((NOW + 3600) as u64));
        assert_eq!(verified.scopes, ["demo:read", "demo:write"]);

        // The filter checks a jti with the same lookup as an opaque key id.
        let lookup = h.lookup(id).await;
        assert_eq!(lookup.status, StatusCode::OK);
        assert_eq!(lookup.body["status"], "active");
        assert_eq!(lookup.body["subject"], "team-a");
        assert_eq!(
            lookup.body["digest"],
            KeyDigest::of(token.as_bytes()).to_hex()
        );
        assert!(h.show(id).await.get("key").is_none());
    }
    // One active signing key per algorithm, all published.
    assert_eq!(h.jwks_kids().await.len(), 3);

    // Without an owner the subject is the key id.
    let anonymous = h.create_jwt("ES256", 60).await;
    let verified = h.verify(anonymous["key"].as_str().unwrap()).await.unwrap();
    assert_eq!(verified.subject, anonymous["id"].as_str().unwrap());
}

#[tokio::test]
async fn the_issuer_and_audience_are_configurable() {
    let h = harness_with(JwtSettings {
        issuer: "https://keys.example.com".into(),
        audience: "orders-api".into(),
        ..jwt_settings()
    })
    .await;
    let created = h.create_jwt("EdDSA", 600).await;
    let token = created["key"].as_str().unwrap();
    let (_, keys) = h.jwks().await;
    let mut validation = Validation::new("https://keys.example.com");
    validation.audiences = vec!["orders-api".into()];
    verify_jwt(token, &keys, &validation, NOW as u64).unwrap();
    let mut wrong = Validation::new("keygate");
    wrong.audiences = vec!["orders-api".into()];
    assert!(verify_jwt(token, &keys, &wrong, NOW as u64).is_err());
}

#[tokio::test]
async fn neither_tokens_nor_private_keys_are_stored_in_clear() {
    let h = harness().await;
    let mut tokens = Vec::new();
    for algorithm in ["ES256", "EdDSA", "RS256"] {
        let created = h.create_jwt(algorithm, 3600).await;
        tokens.push((
            created["key"].as_str().unwrap().to_owned(),
            created["kid"].as_str().unwrap().to_owned(),
            algorithm,
        ));
    }
    let bytes = h.database_bytes();
    let secret = SigningSecret::from_hex(SIGNING_SECRET_HEX).unwrap();
    for (token, kid, algorithm) in &tokens {
        assert!(!contains(&bytes, token), "token found in the database");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!contains(&bytes, signature), "token signature found");
        assert!(contains(&bytes, &KeyDigest::of(token.as_bytes()).to_hex()));

        let row = h.state.store().get_signing_key(kid).await.unwrap().unwrap();
        let der = secret.open(kid, &row.private_key_enc).unwrap();
        assert_ne!(row.private_key_enc, *der);
        assert!(!contains_bytes(&row.private_key_enc, &der));
        assert!(
            !contains_bytes(&bytes, &der),
            "{algorithm} private key found in clear in the database"
        );
        // The decrypted key is the one whose public half is published.
        let key = SigningKey::from_pkcs8_der(Algorithm::parse(algorithm).unwrap(), &der).unwrap();
        let public: Value = serde_json::from_str(&row.public_jwk).unwrap();
        assert_eq!(serde_json::to_value(key.public_jwk(kid)).unwrap(), public);
        for private_member in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(public.get(private_member).is_none(), "{private_member}");
        }
    }
    // The management API never shows private material either.
    let list = h.admin("GET", SIGNING_KEYS, None).await;
    assert_eq!(list.status, StatusCode::OK);
    let text = list.body.to_string();
    assert!(
        !text.contains("private") && !text.contains("\"d\""),
        "{text}"
    );
}

#[tokio::test]
async fn without_the_signing_secret_jwt_keys_are_refused_and_opaque_keys_work() {
    let h = harness_with(JwtSettings::default()).await;
    let answer = h
        .admin(
            "POST",
            KEYS,
            Some(json!({"name": "x", "scopes": [], "format": "jwt", "expires_in": 60})),
        )
        .await;
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        answer
            .detail()
            .contains("JWT signing is not configured: set KEYGATE_SIGNING_KEY_SECRET"),
        "{}",
        answer.detail()
    );
    let rotate = h
        .admin("POST", &format!("{SIGNING_KEYS}/rotate"), None)
        .await;
    rotate.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    let list = h.admin("GET", SIGNING_KEYS, None).await;
    assert_eq!(list.body, json!({"configured": false, "signing_keys": []}));
    assert_eq!(h.jwks().await.0, json!({"keys": []}));

    let opaque = h.create(json!({"name": "x", "scopes": []})).await;
    assert_eq!(opaque["format"], "opaque");
}

#[tokio::test]
async fn a_wrong_signing_secret_is_a_clear_error_not_a_panic() {
    let h = harness().await;
    h.create_jwt("ES256", 60).await;
    let wrong = JwtSettings {
        secret: Some(SigningSecret::from_bytes([9; 32])),
        ..jwt_settings()
    };
    // At start.
    let error = JwtIssuer::new(wrong.clone())
        .prepare(h.state.store(), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SigningError::Undecryptable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("KEYGATE_SIGNING_KEY_SECRET"));
    // At use.
    let state = h.state.clone().with_jwt(wrong);
    let request = Request::builder()
        .method("POST")
        .uri(KEYS)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from(
            json!({"name": "x", "scopes": [], "format": "jwt", "expires_in": 60}).to_string(),
        ))
        .unwrap();
    let response = app(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["type"], "urn:keygate:problem:signing-key-unreadable");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("KEYGATE_SIGNING_KEY_SECRET"));
}

#[tokio::test]
async fn the_first_start_with_a_secret_creates_a_key_of_every_algorithm() {
    let h = harness().await;
    assert!(h.jwks_kids().await.is_empty());
    h.state.jwt().prepare(h.state.store(), NOW).await.unwrap();
    let kids = h.jwks_kids().await;
    assert_eq!(kids.len(), 3, "{kids:?}");
    for prefix in ["kg-es256-", "kg-eddsa-", "kg-rs256-"] {
        assert!(kids.iter().any(|kid| kid.starts_with(prefix)), "{kids:?}");
    }
    // Preparing again keeps the keys.
    h.state.jwt().prepare(h.state.store(), NOW).await.unwrap();
    assert_eq!(h.jwks_kids().await, kids);
    // And they sign the next keys of their algorithm.
    for (algorithm, prefix) in [("ES256", "kg-es256-"), ("RS256", "kg-rs256-")] {
        let kid = kids.iter().find(|kid| kid.starts_with(prefix)).unwrap();
        let created = h.create_jwt(algorithm, 60).await;
        assert_eq!(created["kid"], kid.as_str());
    }
}

#[tokio::test]
async fn jwt_keys_need_an_expiry_unless_the_operator_allows_none() {
    let h = harness().await;
    let answer = h
        .admin(
            "POST",
            KEYS,
            Some(json!({"name": "x", "scopes": [], "format": "jwt"})),
        )
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    assert!(
        answer.detail().contains("expires_in"),
        "{}",
        answer.detail()
    );
    assert!(answer.detail().contains("--allow-jwt-without-expiry"));

    let h = harness_with(JwtSettings {
        allow_without_expiry: true,
        ..jwt_settings()
    })
    .await;
    let created = h
        .create(json!({"name": "forever", "scopes": ["demo:read"], "format": "jwt"}))
        .await;
    let token = created["key"].as_str().unwrap();
    assert_eq!(created["expires_at"], Value::Null);
    assert!(claims(token).get("exp").is_none());
    let kid = created["kid"].as_str().unwrap().to_owned();
    // The key that signed a token without expiry stays published for good, even retired.
    h.rotate_signing_key("ES256").await;
    h.clock.advance(100 * 365 * 86_400);
    assert!(h.jwks_kids().await.contains(&kid));
    let list = h.admin("GET", SIGNING_KEYS, None).await;
    let old = list.body["signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()
        .clone();
    assert_eq!(old["signs_forever"], true);
    assert_eq!(old["published"], true);
}

#[tokio::test]
async fn bad_jwt_requests_get_a_clear_problem() {
    let h = harness().await;
    for (body, detail) in [
        (
            json!({"name": "x", "scopes": [], "format": "jwt", "algorithm": "HS256", "expires_in": 60}),
            "algorithm must be one of ES256, EdDSA, RS256",
        ),
        (
            json!({"name": "x", "scopes": [], "format": "jwt", "algorithm": "none", "expires_in": 60}),
            "algorithm must be one of ES256, EdDSA, RS256",
        ),
        (
            json!({"name": "x", "scopes": [], "algorithm": "ES256"}),
            "algorithm applies only to format jwt",
        ),
    ] {
        let answer = h.admin("POST", KEYS, Some(body)).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
        assert_eq!(answer.detail(), detail);
    }
    let answer = h
        .admin(
            "POST",
            &format!("{SIGNING_KEYS}/rotate"),
            Some(json!({"algorithm": "PS256"})),
        )
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    // Signing keys are managed with the admin key; the JWKS is public.
    let anonymous = h
        .send("POST", &format!("{SIGNING_KEYS}/rotate"), None, None)
        .await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
    let anonymous = h.send("GET", SIGNING_KEYS, None, None).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(h.send("GET", JWKS, None, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn signing_key_rotation_keeps_old_tokens_valid_until_they_expire() {
    let h = harness().await;
    let first = h.create_jwt("ES256", 3600).await;
    let old_token = first["key"].as_str().unwrap().to_owned();
    let old_kid = first["kid"].as_str().unwrap().to_owned();

    h.clock.advance(60);
    let rotated = h.rotate_signing_key("ES256").await;
    let new_kid = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert!(new_kid.starts_with("kg-es256-"));
    assert_eq!(rotated["retired_kid"], old_kid.as_str());
    assert_eq!(rotated["algorithm"], "ES256");
    assert_eq!(rotated["published"], true);

    // Both are published; the old token still verifies; new tokens use the new kid.
    let kids = h.jwks_kids().await;
    assert!(
        kids.contains(&old_kid) && kids.contains(&new_kid),
        "{kids:?}"
    );
    h.verify(&old_token).await.unwrap();
    let second = h.create_jwt("ES256", 7200).await;
    let new_token = second["key"].as_str().unwrap().to_owned();
    assert_eq!(second["kid"], new_kid.as_str());
    assert_eq!(jose_header(&new_token)["kid"], new_kid.as_str());
    h.verify(&new_token).await.unwrap();

    let list = h.admin("GET", SIGNING_KEYS, None).await;
    assert_eq!(list.body["configured"], true);
    let listed = list.body["signing_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["kid"], old_kid.as_str());
    assert_eq!(listed[0]["retired_at"], rfc3339(NOW + 60));
    assert_eq!(listed[0]["not_after"], rfc3339(NOW + 3600));
    assert_eq!(listed[0]["published"], true);
    assert_eq!(listed[1]["retired_at"], Value::Null);

    // The old kid stays until its last token has expired, plus 60 s of leeway.
    h.clock.set(NOW + 3600 + 60);
    assert!(h.jwks_kids().await.contains(&old_kid));
    h.clock.set(NOW + 3600 + 61);
    assert_eq!(h.jwks_kids().await, std::slice::from_ref(&new_kid));
    h.verify(&new_token).await.unwrap();
    assert!(h.verify(&old_token).await.is_err());
    let list = h.admin("GET", SIGNING_KEYS, None).await;
    assert_eq!(list.body["signing_keys"][0]["published"], false);

    // Rotating an algorithm that has no key yet just creates one.
    let first_rsa = h.rotate_signing_key("EdDSA").await;
    assert_eq!(first_rsa["retired_kid"], Value::Null);
    // No body: ES256.
    let default = h
        .admin("POST", &format!("{SIGNING_KEYS}/rotate"), None)
        .await;
    assert_eq!(default.status, StatusCode::CREATED, "{}", default.body);
    assert_eq!(default.body["algorithm"], "ES256");
    assert_eq!(default.body["retired_kid"], new_kid.as_str());
}

#[tokio::test]
async fn jwt_keys_revoke_and_rotate_like_opaque_keys() {
    let h = harness().await;
    let created = h
        .create(json!({
            "name": "svc", "scopes": ["demo:read"], "owner": "svc-a", "format": "jwt",
            "algorithm": "EdDSA", "expires_in": 86_400, "metadata": {"env": "prod"}
        }))
        .await;
    let id = created["id"].as_str().unwrap();

    let rotated = h
        .admin(
            "POST",
            &format!("{KEYS}/{id}/rotate"),
            Some(json!({"grace": 600})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let new = rotated.body;
    let new_id = new["id"].as_str().unwrap();
    let new_token = new["key"].as_str().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(new["format"], "jwt");
    assert_eq!(new["algorithm"], "EdDSA");
    assert_eq!(new["name"], "svc");
    assert_eq!(new["owner"], "svc-a");
    assert_eq!(new["metadata"], json!({"env": "prod"}));
    assert_eq!(new["rotated_from"], id);
    assert_eq!(new["expires_at"], rfc3339(NOW + 86_400));
    assert_eq!(jose_header(new_token)["alg"], "EdDSA");
    let verified = h.verify(new_token).await.unwrap();
    assert_eq!(verified.jti.as_deref(), Some(new_id));
    assert_eq!(claims(new_token)["exp"], NOW + 86_400);
    // The old token's record ends with the grace period.
    assert_eq!(h.lookup(id).await.body["expires_at"], NOW + 600);

    let revoked = h.admin("DELETE", &format!("{KEYS}/{new_id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let lookup = h.lookup(new_id).await;
    assert_eq!(lookup.body["status"], "revoked");
    assert_eq!(lookup.body["subject"], "svc-a");
    let again = h
        .admin("POST", &format!("{KEYS}/{new_id}/rotate"), None)
        .await;
    again.assert_problem(StatusCode::CONFLICT);

    let listed = h
        .admin("GET", &format!("{KEYS}?status=revoked"), None)
        .await;
    assert_eq!(listed.body["keys"][0]["id"], new_id);
    assert_eq!(listed.body["keys"][0]["format"], "jwt");
}
