//! Webhooks and leaked keys, on both backends: a local receiver checks each delivery's
//! signature and idempotency id; a failing receiver gets retries until it recovers; a
//! delivery is redelivered on request; a delivery claimed by a replica that stopped is sent
//! again once its lease ends (at least once); a signed leaked-key report revokes the key and
//! answers `true_positive`, forged and unknown tokens `false_positive`, a bad signature 401.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use keygate_server::service::alerts::{deliver_once, scan_expiring, AlertSettings};
use keygate_server::service::secret_scanning::ReportKeys;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::Sha256;

use super::*;

on_both_backends!(
    deliveries_are_signed_retried_redelivered_and_survive_a_stopped_replica,
    a_signed_leak_report_revokes_the_key_and_forgeries_are_refused,
);

/// What the receiver got: headers and body of each request.
#[derive(Default)]
pub(crate) struct Received {
    requests: Mutex<Vec<(HeaderMap, String)>>,
    /// The status it answers (500 until told otherwise).
    status: AtomicU16,
}

impl Received {
    pub(crate) fn all(&self) -> Vec<(HeaderMap, String)> {
        self.requests.lock().unwrap().clone()
    }
}

/// A local HTTP receiver on a free port; answers its URL and what it receives.
pub(crate) async fn receiver(status: u16) -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    received.status.store(status, Ordering::SeqCst);
    let shared = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let shared = shared.clone();
            async move {
                shared.requests.lock().unwrap().push((headers, body));
                StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/hook"), received)
}

/// Checks a delivery as a receiver should: the signature over `t.body` under `secret`, and
/// the idempotency id against the body's `id`. Answers the body and the id.
pub(crate) fn verify(secret: &str, headers: &HeaderMap, body: &str) -> (Value, String) {
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let signature = header("keygate-signature");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("bad signature header {signature}"));
    assert_eq!(t, header("keygate-webhook-timestamp"));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the signature does not verify");
    let parsed: Value = serde_json::from_str(body).unwrap();
    let id = header("keygate-webhook-id");
    assert_eq!(parsed["id"], id.as_str());
    assert_eq!(parsed["type"], header("keygate-webhook-event").as_str());
    (parsed, id)
}

/// Runs the README's Python check on a delivery; answers what it printed.
fn readme_python_verifies(secret: &str, headers: &HeaderMap, body: &str, now: i64) -> bool {
    use std::io::Write;
    let block = crate::readme::readme_block(
        "none (a receiver's check; crates/server/tests/api/alerts.rs runs it on a delivery)",
    );
    let script = format!(
        "{block}\nimport json, sys\nd = json.load(sys.stdin)\n\
         print(verify(d['secret'], d['headers'], d['body'].encode(), now=d['now']))\n"
    );
    let input = json!({
        "secret": secret,
        "headers": {"Keygate-Signature": headers["keygate-signature"].to_str().unwrap()},
        "body": body,
        "now": now,
    });
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to run the README's webhook check");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the README's check failed to run");
    match String::from_utf8_lossy(&output.stdout).trim() {
        "True" => true,
        "False" => false,
        other => panic!("the README's check printed {other:?}"),
    }
}

pub(crate) async fn register(h: &Harness, url: &str, events: Value) -> (String, String) {
    let answer = h
        .admin(
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": url, "events": events})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let secret = answer.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    (answer.body["id"].as_str().unwrap().to_owned(), secret)
}

pub(crate) async fn deliveries(h: &Harness, webhook: &str) -> Vec<Value> {
    let answer = h
        .admin(
            "GET",
            &format!("/api/v1/webhooks/{webhook}/deliveries"),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["deliveries"].as_array().unwrap().clone()
}

async fn deliveries_are_signed_retried_redelivered_and_survive_a_stopped_replica(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (url, received) = receiver(500).await;
    let (webhook, secret) = register(&h, &url, json!(["key.created", "key.revoked"])).await;

    // Shown once: the list and the webhook itself never carry the secret.
    let listed = h.admin("GET", "/api/v1/webhooks", None).await;
    assert_eq!(listed.body["webhooks"][0]["id"], webhook.as_str());
    assert_eq!(
        listed.body["webhooks"][0]["events"],
        json!(["key.created", "key.revoked"])
    );
    assert!(listed.body["webhooks"][0].get("secret").is_none());
    let shown = h
        .admin("GET", &format!("/api/v1/webhooks/{webhook}"), None)
        .await;
    assert!(shown.body.get("secret").is_none());
    // Stored sealed, bound to its webhook: the row does not hold the secret.
    let stored = h
        .state
        .service()
        .store()
        .get_webhook(&webhook)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.secret.starts_with("sealed1:"), "{}", stored.secret);
    assert!(!stored.secret.contains(&secret[6..]));
    assert_eq!(
        *keygate_server::service::webhook_secrets::open_secret(
            h.state.service(),
            &webhook,
            &stored.secret
        )
        .unwrap(),
        secret
    );
    assert!(keygate_server::service::webhook_secrets::open_secret(
        h.state.service(),
        "another-webhook",
        &stored.secret
    )
    .is_err());
    let bad = h
        .admin(
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": url, "events": ["key.nope"]})),
        )
        .await;
    bad.assert_problem(StatusCode::BAD_REQUEST);
    let bad = h
        .admin(
            "POST",
            "/api/v1/webhooks",
            Some(json!({"url": "ftp://x/", "events": ["*"]})),
        )
        .await;
    bad.assert_problem(StatusCode::BAD_REQUEST);

    // An event: the receiver fails, so the delivery waits for a retry.
    let key = h
        .create(json!({"name": "ci", "scopes": [], "owner": "team-a"}))
        .await;
    let key_id = key["id"].as_str().unwrap();
    let service = h.state.service();
    assert_eq!(deliver_once(service).await, 1);
    let first = received.all();
    assert_eq!(first.len(), 1);
    let (body, delivery_id) = verify(&secret, &first[0].0, &first[0].1);
    assert_eq!(body["type"], "key.created");
    assert_eq!(body["subject"], key_id);
    assert_eq!(body["data"]["owner"], "team-a");
    // The README's receiver check agrees; a changed body, another secret or an old
    // timestamp fail it.
    assert!(readme_python_verifies(
        &secret,
        &first[0].0,
        &first[0].1,
        NOW
    ));
    let tampered = first[0].1.replace("team-a", "team-b");
    assert!(!readme_python_verifies(
        &secret,
        &first[0].0,
        &tampered,
        NOW
    ));
    assert!(!readme_python_verifies(
        "whsec_other",
        &first[0].0,
        &first[0].1,
        NOW
    ));
    assert!(!readme_python_verifies(
        &secret,
        &first[0].0,
        &first[0].1,
        NOW + 301
    ));
    let listed = deliveries(&h, &webhook).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], delivery_id.as_str());
    assert_eq!(listed[0]["status"], "pending");
    assert_eq!(listed[0]["attempts"], 1);
    assert_eq!(listed[0]["last_status"], 500);
    assert_eq!(listed[0]["last_error"], "HTTP 500");
    // Not due yet: backoff.
    assert_eq!(deliver_once(service).await, 0);

    // The receiver recovers; after the backoff the same delivery (same id) goes through.
    received.status.store(204, Ordering::SeqCst);
    h.clock.advance(60);
    assert_eq!(deliver_once(service).await, 1);
    let second = received.all();
    assert_eq!(second.len(), 2);
    let (_, again) = verify(&secret, &second[1].0, &second[1].1);
    assert_eq!(again, delivery_id, "a retry keeps the idempotency id");
    let listed = deliveries(&h, &webhook).await;
    assert_eq!(listed[0]["status"], "delivered");
    assert_eq!(listed[0]["attempts"], 2);
    assert_eq!(listed[0]["last_status"], 204);

    // Redelivery: the same id, sent again at once.
    let redelivered = h
        .admin(
            "POST",
            &format!("/api/v1/webhooks/{webhook}/deliveries/{delivery_id}/redeliver"),
            None,
        )
        .await;
    assert_eq!(
        redelivered.status,
        StatusCode::ACCEPTED,
        "{}",
        redelivered.body
    );
    assert_eq!(redelivered.body["status"], "pending");
    assert_eq!(deliver_once(service).await, 1);
    let third = received.all();
    assert_eq!(third.len(), 3);
    assert_eq!(verify(&secret, &third[2].0, &third[2].1).1, delivery_id);
    let missing = h
        .admin(
            "POST",
            &format!("/api/v1/webhooks/{webhook}/deliveries/nope/redeliver"),
            None,
        )
        .await;
    missing.assert_problem(StatusCode::NOT_FOUND);

    // A replica claims the revocation's delivery and stops before sending it.
    let revoked = h.admin("DELETE", &format!("{KEYS}/{key_id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    let lease = AlertSettings::default().lease_s();
    let stolen = h
        .state
        .store()
        .claim_deliveries(h.state.now(), "stopped-replica", h.state.now() + lease, 10)
        .await
        .unwrap();
    assert_eq!(stolen.len(), 1);
    // A second claim finds nothing while the lease holds: no double send.
    assert_eq!(deliver_once(service).await, 0);
    // A restarted service on the same database sends it once the lease ends.
    let store = h.db.connect().await;
    let restarted = harness_for(h.db.clone(), store, jwt_settings()).await;
    restarted.clock.set(h.state.now() + lease);
    assert_eq!(deliver_once(restarted.state.service()).await, 1);
    let fourth = received.all();
    assert_eq!(fourth.len(), 4);
    let (body, revoke_id) = verify(&secret, &fourth[3].0, &fourth[3].1);
    assert_eq!(body["type"], "key.revoked");
    assert_eq!(body["subject"], key_id);
    // The stopped replica's late result is not written over the new claim's.
    let late = h
        .state
        .store()
        .finish_attempt(
            &stolen[0],
            h.state.now(),
            &keygate_server::model::AttemptOutcome::Delivered { status: 200 },
        )
        .await
        .unwrap();
    assert!(!late);
    let listed = deliveries(&h, &webhook).await;
    let revoke = listed
        .iter()
        .find(|d| d["id"] == revoke_id.as_str())
        .unwrap();
    assert_eq!(revoke["status"], "delivered");

    // Attempts run out: the delivery is marked failed.
    received.status.store(503, Ordering::SeqCst);
    let limited = h.state.clone().with_alert_settings(AlertSettings {
        max_attempts: 2,
        ..AlertSettings::default()
    });
    let service = limited.service();
    h.clock.advance(1);
    h.create(json!({"name": "doomed", "scopes": []})).await;
    assert_eq!(deliver_once(service).await, 1);
    h.clock.advance(3600);
    assert_eq!(deliver_once(service).await, 1);
    h.clock.advance(3600);
    assert_eq!(deliver_once(service).await, 0);
    let listed = deliveries(&h, &webhook).await;
    assert_eq!(listed[0]["status"], "failed");
    assert_eq!(listed[0]["attempts"], 2);
    assert_eq!(listed[0]["last_status"], 503);

    // Expiring keys are announced once per expiry.
    let (_, _) = register(&h, &url, json!(["key.expiring"])).await;
    h.create(json!({"name": "soon", "scopes": [], "expires_in": "3d"}))
        .await;
    h.create(json!({"name": "later", "scopes": [], "expires_in": "30d"}))
        .await;
    assert_eq!(scan_expiring(h.state.service()).await, 1);
    assert_eq!(scan_expiring(h.state.service()).await, 0);

    // Removing the webhook removes its deliveries.
    let removed = h
        .admin("DELETE", &format!("/api/v1/webhooks/{webhook}"), None)
        .await;
    assert_eq!(removed.status, StatusCode::OK);
    assert_eq!(removed.body["id"], webhook.as_str());
    let gone = h
        .admin(
            "GET",
            &format!("/api/v1/webhooks/{webhook}/deliveries"),
            None,
        )
        .await;
    gone.assert_problem(StatusCode::NOT_FOUND);
    let audit = h
        .admin("GET", "/api/v1/audit?action=webhook_create", None)
        .await;
    let entries = audit.body["entries"].as_array().unwrap();
    let made = entries.iter().filter(|e| e["outcome"] == "ok").count();
    assert_eq!(made, 2, "{}", audit.body);
    assert_eq!(
        entries.len(),
        4,
        "the refused registrations are audited too"
    );
}

/// POSTs a report with the secret-scanning headers.
async fn report(h: &Harness, identifier: &str, signature: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method("POST")
        .uri("/api/v1/secret-scanning")
        .header(header::CONTENT_TYPE, "application/json")
        .header("Github-Public-Key-Identifier", identifier)
        .header("Github-Public-Key-Signature", signature)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app(h.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn sign(key: &p256::ecdsa::SigningKey, body: &str) -> String {
    let signature: p256::ecdsa::Signature = key.sign(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

async fn a_signed_leak_report_revokes_the_key_and_forgeries_are_refused(backend: Backend) {
    let mut h = harness_on(backend, jwt_settings()).await;
    // Off until a key set is configured.
    let off = report(&h, "k", "s", "[]").await;
    off.assert_problem(StatusCode::SERVICE_UNAVAILABLE);

    let github = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let pem = github
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let key_set = json!({"public_keys": [
        {"key_identifier": "test-key-1", "key": pem, "is_current": true}
    ]});
    h.state = h
        .state
        .clone()
        .with_report_keys(Some(ReportKeys::from_json(&key_set.to_string()).unwrap()));
    let (url, received) = receiver(200).await;
    let (_, secret) = register(&h, &url, json!(["key.leaked"])).await;

    let created = h.create(json!({"name": "leaky", "scopes": []})).await;
    let leaked = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    // Same shape, a broken checksum; and a well-formed key this service never minted.
    let mut forged = leaked.to_owned();
    let last = if forged.ends_with('a') { "b" } else { "a" };
    forged.replace_range(forged.len() - 1.., last);
    let other = keygate_core::key::mint_opaque_key(
        &KeyPrefix::parse("kg_test_").unwrap(),
        &GatewayKey::from_hex(GATEWAY_HEX).unwrap(),
        [7; 10],
        [9; 32],
    );
    let body = json!([
        {"token": leaked, "type": "keygate_api_key", "url": "https://github.com/o/r/blob/main/.env", "source": "content"},
        {"token": forged, "type": "keygate_api_key", "url": "https://github.com/o/r", "source": "content"},
        {"token": other.plaintext, "type": "keygate_api_key", "url": "https://github.com/o/r", "source": "commit"}
    ])
    .to_string();

    // A bad signature, an unknown key identifier, no headers: 401, and nothing revoked.
    let wrong = report(&h, "test-key-1", &sign(&github, "[]"), &body).await;
    wrong.assert_problem(StatusCode::UNAUTHORIZED);
    let unknown = report(&h, "test-key-2", &sign(&github, &body), &body).await;
    unknown.assert_problem(StatusCode::UNAUTHORIZED);
    let garbage = report(&h, "test-key-1", "bm90IGEgc2lnbmF0dXJl", &body).await;
    garbage.assert_problem(StatusCode::UNAUTHORIZED);
    let impostor = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let forged_report = report(&h, "test-key-1", &sign(&impostor, &body), &body).await;
    forged_report.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(h.show(id).await["status"], "active");

    let answer = report(&h, "test-key-1", &sign(&github, &body), &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!([
            {"token_raw": leaked, "token_type": "keygate_api_key", "label": "true_positive"},
            {"token_raw": forged, "token_type": "keygate_api_key", "label": "false_positive"},
            {"token_raw": other.plaintext, "token_type": "keygate_api_key", "label": "false_positive"}
        ])
    );
    assert_eq!(h.show(id).await["status"], "revoked");
    assert_eq!(h.lookup(id).await.body["status"], "revoked");
    let audit = h
        .admin("GET", "/api/v1/audit?action=key_leaked", None)
        .await;
    let entries = audit.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", audit.body);
    assert_eq!(entries[0]["target"], id);
    assert_eq!(entries[0]["actor"], "secret-scanning");

    assert_eq!(deliver_once(h.state.service()).await, 1);
    let got = received.all();
    let (body, _) = verify(&secret, &got[0].0, &got[0].1);
    assert_eq!(body["type"], "key.leaked");
    assert_eq!(body["subject"], id);
    assert_eq!(body["data"]["url"], "https://github.com/o/r/blob/main/.env");

    // Reported again: still a true positive, revoked once.
    let again =
        json!([{"token": leaked, "type": "keygate_api_key", "url": "", "source": "content"}])
            .to_string();
    let answer = report(&h, "test-key-1", &sign(&github, &again), &again).await;
    assert_eq!(answer.body[0]["label"], "true_positive");
}
