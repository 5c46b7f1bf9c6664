//! Alerts: security events delivered to webhooks through a persisted outbox.
//!
//! [`raise`] is the one entry point: the key operations call it (`key.created`,
//! `key.rotated`, `key.revoked`, `key.leaked`), the expiry scan calls it (`key.expiring`),
//! threat blocking calls it for `address.blocked` and `auth.failure_spike`, and usage
//! ingestion for `key.new_country` ([`crate::service::countries`]). It writes one delivery per webhook that wants
//! the event and wakes the worker; it never fails the operation that raised it (a failure is
//! logged and counted).
//!
//! **Delivery** ([`deliver_once`], run by [`run_worker`]): a worker claims due deliveries
//! under a lease ([`crate::store::KeyStore::claim_deliveries`]), POSTs each body with a
//! timeout, and records the outcome under its lease. A 2xx answer delivers; anything else
//! (another status, a timeout, a refused connection) is retried with exponential backoff
//! and jitter ([`retry_delay`]) until `max_attempts`, then the delivery is `failed` (it can
//! be redelivered through the API). A replica that stops mid-delivery leaves its claim
//! behind; the claim's lease ends and the delivery is sent again: delivery is at least
//! once, and receivers dedupe on the idempotency id.
//!
//! **Signature**: every attempt carries
//! `Keygate-Webhook-Id: <delivery id>` (the same in every attempt),
//! `Keygate-Webhook-Timestamp: <unix seconds of the attempt>` and
//! `Keygate-Signature: t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! ([`signature_header`]).
//!
//! **Bounds**: at most [`MAX_WEBHOOKS`] webhooks, [`MAX_OPEN_DELIVERIES`] deliveries waiting
//! (beyond, new events are dropped and logged), bodies of at most [`MAX_BODY_BYTES`], at most
//! `concurrency` attempts at once per replica, finished deliveries kept `retention` days.
//! No log line names a webhook's secret or URL (the URL may hold a token): only its id.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use keygate_core::base32;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::model::{
    AlertKind, AttemptOutcome, ClaimedDelivery, DeliveryRecord, DeliveryStatus, KeyRecord,
};
pub use crate::service::alert_config::{AlertArgs, AlertConfigError, AlertSettings, Alerts};
use crate::service::context::Service;
use crate::timestamp::format_rfc3339;

/// Most webhooks the service holds.
pub const MAX_WEBHOOKS: usize = 100;
/// Most deliveries waiting to be sent; beyond, new events are dropped (and logged).
pub const MAX_OPEN_DELIVERIES: u64 = 10_000;
/// Largest delivery body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// First retry delay; each further retry doubles it, up to [`MAX_RETRY_DELAY_S`].
pub const BASE_RETRY_DELAY_S: i64 = 10;
pub const MAX_RETRY_DELAY_S: i64 = 3600;
/// How often the worker looks for due deliveries (retries, other replicas' events) when
/// nothing wakes it.
pub const POLL_PERIOD: Duration = Duration::from_secs(2);
/// How often the worker looks for keys about to expire.
pub const EXPIRY_SCAN_PERIOD: Duration = Duration::from_secs(60);
/// How often the worker deletes old finished deliveries.
pub const PRUNE_PERIOD: Duration = Duration::from_secs(3600);
/// Keys announced per expiry scan at most (the next scan takes the rest).
const EXPIRY_SCAN_LIMIT: u32 = 500;

/// A fresh random identifier: `bytes` random bytes in base32.
pub fn random_id(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)?;
    Ok(base32::encode(&buf))
}

/// Raises a security event: one delivery per webhook that wants `kind`, then wakes the
/// worker. `subject` is what the event is about (a key id, an address). Never fails the
/// caller: a failure is logged and answered as `false`.
pub async fn raise(service: &Service, kind: AlertKind, subject: &str, data: Value) -> bool {
    match enqueue(service, kind, subject, data).await {
        Ok(queued) => {
            if queued > 0 {
                service.alerts().wake();
            }
            true
        }
        Err(error) => {
            tracing::error!(event = kind.as_str(), %error, "alert not queued");
            false
        }
    }
}

async fn enqueue(
    service: &Service,
    kind: AlertKind,
    subject: &str,
    data: Value,
) -> Result<usize, String> {
    let store = service.store();
    let webhooks: Vec<_> = store
        .list_webhooks()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|webhook| webhook.wants(kind))
        .collect();
    if webhooks.is_empty() {
        return Ok(0);
    }
    let open = store
        .count_open_deliveries()
        .await
        .map_err(|e| e.to_string())?;
    if open.saturating_add(webhooks.len() as u64) > MAX_OPEN_DELIVERIES {
        return Err(format!(
            "the outbox is full ({MAX_OPEN_DELIVERIES} deliveries waiting)"
        ));
    }
    let now = service.now();
    let mut deliveries = Vec::with_capacity(webhooks.len());
    for webhook in &webhooks {
        let id = random_id(16).map_err(|e| e.to_string())?;
        let body = json!({
            "id": id,
            "type": kind.as_str(),
            "created_at": format_rfc3339(now),
            "subject": subject,
            "data": data,
        })
        .to_string();
        if body.len() > MAX_BODY_BYTES {
            return Err(format!(
                "the event body is larger than {MAX_BODY_BYTES} bytes"
            ));
        }
        deliveries.push(DeliveryRecord {
            id,
            webhook_id: webhook.id.clone(),
            event: kind.as_str().to_owned(),
            body,
            created_at: now,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            last_status: None,
            last_error: None,
            finished_at: None,
        });
    }
    store
        .enqueue_deliveries(&deliveries)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        event = kind.as_str(),
        webhooks = deliveries.len(),
        "alert queued"
    );
    Ok(deliveries.len())
}

fn key_data(record: &KeyRecord) -> Value {
    json!({
        "id": record.id,
        "owner": if record.owner.is_empty() { Value::Null } else { Value::from(record.owner.clone()) },
        "name": record.name,
    })
}

/// `key.created` for a new key (the key operations call it after the commit).
pub async fn key_created(service: &Service, record: &KeyRecord) {
    raise(service, AlertKind::KeyCreated, &record.id, key_data(record)).await;
}

/// `key.revoked` for a key just revoked.
pub async fn key_revoked(service: &Service, record: &KeyRecord) {
    raise(service, AlertKind::KeyRevoked, &record.id, key_data(record)).await;
}

/// `key.rotated` for `record` (the old key) and its successor `new_id`.
pub async fn key_rotated(service: &Service, record: &KeyRecord, new_id: &str) {
    let mut data = key_data(record);
    if let Some(object) = data.as_object_mut() {
        object.insert("new_id".into(), new_id.into());
    }
    raise(service, AlertKind::KeyRotated, &record.id, data).await;
}

/// `key.new_country` for `record`, used from `country` (upper-case ISO 3166-1 alpha-2) for the
/// first time; `seen_before` are the countries it was used from until then, first seen first.
pub async fn key_new_country(
    service: &Service,
    record: &KeyRecord,
    country: &str,
    seen_before: &[String],
) {
    let mut data = key_data(record);
    if let Some(object) = data.as_object_mut() {
        object.insert("country".into(), country.into());
        object.insert("seen_before".into(), seen_before.into());
    }
    raise(service, AlertKind::KeyNewCountry, &record.id, data).await;
}

/// The `Keygate-Signature` header of `body` sent at `timestamp` under `secret`:
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature_header(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return format!("t={timestamp}"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// The delay before retry `attempt` (the attempt that failed was number `attempt`, from 1):
/// [`BASE_RETRY_DELAY_S`] doubled per attempt, at most [`MAX_RETRY_DELAY_S`], plus a random
/// jitter of up to half of it so that failing receivers are not hit in waves.
pub fn retry_delay(attempt: u32, jitter: u16) -> i64 {
    let doublings = attempt.saturating_sub(1).min(20);
    let delay = BASE_RETRY_DELAY_S
        .saturating_mul(1i64 << doublings)
        .min(MAX_RETRY_DELAY_S);
    delay + delay / 2 * i64::from(jitter) / i64::from(u16::MAX)
}

/// What an HTTP attempt came to: the status (if any answer came) or why none came.
struct Sent {
    status: Option<u16>,
    error: Option<String>,
}

fn post(url: &str, headers: &[(&str, String)], body: &str, timeout: Duration) -> Sent {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(0)
        .user_agent("keygate-webhooks")
        .build();
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    match request.send_string(body) {
        Ok(response) if (200..300).contains(&response.status()) => Sent {
            status: Some(response.status()),
            error: None,
        },
        Ok(response) => Sent {
            status: Some(response.status()),
            error: Some(format!("HTTP {}", response.status())),
        },
        Err(ureq::Error::Status(status, _)) => Sent {
            status: Some(status),
            error: Some(format!("HTTP {status}")),
        },
        // The kind only: the full error may repeat the URL.
        Err(ureq::Error::Transport(transport)) => Sent {
            status: None,
            error: Some(transport.kind().to_string()),
        },
    }
}

/// One attempt of a claimed delivery, and its outcome.
async fn attempt(service: &Service, claimed: &ClaimedDelivery) -> AttemptOutcome {
    let settings = service.alerts().settings().clone();
    let timestamp = service.now();
    let body = claimed.delivery.body.clone();
    let secret = match crate::service::webhook_secrets::open_secret(
        service,
        &claimed.delivery.webhook_id,
        &claimed.secret,
    ) {
        Ok(secret) => secret,
        Err(error) => {
            tracing::error!(webhook = %claimed.delivery.webhook_id, "{error}");
            return AttemptOutcome::Failed {
                status: None,
                error: error.to_owned(),
                retry_at: None,
            };
        }
    };
    let headers = vec![
        ("Content-Type", "application/json".to_owned()),
        ("Keygate-Webhook-Id", claimed.delivery.id.clone()),
        ("Keygate-Webhook-Event", claimed.delivery.event.clone()),
        ("Keygate-Webhook-Timestamp", timestamp.to_string()),
        (
            "Keygate-Signature",
            signature_header(&secret, timestamp, &body),
        ),
    ];
    let url = claimed.url.clone();
    let timeout = settings.timeout;
    let sent = tokio::task::spawn_blocking(move || post(&url, &headers, &body, timeout))
        .await
        .unwrap_or(Sent {
            status: None,
            error: Some("the attempt stopped".to_owned()),
        });
    match sent.error {
        None => AttemptOutcome::Delivered {
            status: sent.status.unwrap_or(200),
        },
        Some(error) => {
            let attempt = claimed.delivery.attempts.saturating_add(1);
            let retry_at = (attempt < settings.max_attempts).then(|| {
                let mut jitter = [0u8; 2];
                // Without randomness the retry comes without jitter.
                let _ = getrandom::getrandom(&mut jitter);
                service
                    .now()
                    .saturating_add(retry_delay(attempt, u16::from_le_bytes(jitter)))
            });
            AttemptOutcome::Failed {
                status: sent.status,
                error,
                retry_at,
            }
        }
    }
}

/// Claims the due deliveries (at most `concurrency`), attempts them at once and records
/// each outcome. Answers how many were claimed.
pub async fn deliver_once(service: &Service) -> usize {
    let settings = service.alerts().settings().clone();
    let Ok(lease_token) = random_id(16) else {
        tracing::error!("webhooks: the OS random number generator failed");
        return 0;
    };
    let now = service.now();
    let claimed = match service
        .store()
        .claim_deliveries(
            now,
            &lease_token,
            now.saturating_add(settings.lease_s()),
            settings.concurrency,
        )
        .await
    {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot claim deliveries");
            return 0;
        }
    };
    let attempts = claimed.iter().map(|claimed| async move {
        let outcome = attempt(service, claimed).await;
        match &outcome {
            AttemptOutcome::Delivered { status } => tracing::info!(
                webhook = %claimed.delivery.webhook_id,
                delivery = %claimed.delivery.id,
                status,
                "webhook delivered"
            ),
            AttemptOutcome::Failed {
                status,
                error,
                retry_at,
            } => tracing::warn!(
                webhook = %claimed.delivery.webhook_id,
                delivery = %claimed.delivery.id,
                status = status.unwrap_or(0),
                error = %error,
                retry = retry_at.is_some(),
                "webhook attempt failed"
            ),
        }
        match service
            .store()
            .finish_attempt(claimed, service.now(), &outcome)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                delivery = %claimed.delivery.id,
                "webhooks: the claim ended before the attempt did"
            ),
            Err(error) => tracing::error!(%error, "webhooks: cannot record an attempt"),
        }
    });
    futures_util::future::join_all(attempts).await;
    claimed.len()
}

/// Announces `key.expiring` for the keys that expire within the configured days and were
/// not announced for that expiry yet. Skipped when no webhook wants it. Answers how many.
pub async fn scan_expiring(service: &Service) -> usize {
    let store = service.store();
    match store.list_webhooks().await {
        Ok(webhooks) if webhooks.iter().any(|w| w.wants(AlertKind::KeyExpiring)) => {}
        Ok(_) => return 0,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot read the webhooks");
            return 0;
        }
    }
    let now = service.now();
    let until = now.saturating_add(service.alerts().settings().expiring_s);
    let keys = match store
        .keys_expiring_unannounced(now, until, EXPIRY_SCAN_LIMIT)
        .await
    {
        Ok(keys) => keys,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot scan for expiring keys");
            return 0;
        }
    };
    let mut announced = 0;
    for (id, owner, name, expires_at) in keys {
        // Only the replica that records the notice announces it.
        match store.note_expiry_announced(&id, expires_at).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::error!(%error, "webhooks: cannot record an expiry notice");
                continue;
            }
        }
        let data = json!({
            "id": id,
            "owner": if owner.is_empty() { Value::Null } else { Value::from(owner) },
            "name": name,
            "expires_at": format_rfc3339(expires_at),
        });
        if raise(service, AlertKind::KeyExpiring, &id, data).await {
            announced += 1;
        }
    }
    announced
}

/// Delivers until stopped: as soon as an event is raised, and every `poll` for retries and
/// other replicas' events; scans for expiring keys every [`EXPIRY_SCAN_PERIOD`] and prunes
/// old deliveries every [`PRUNE_PERIOD`]. `keygate serve` aborts it on shutdown.
pub async fn run_worker(service: Service, poll: Duration) {
    let alerts: Arc<Alerts> = service.alerts_handle();
    let mut last_scan: Option<tokio::time::Instant> = None;
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        if last_scan.is_none_or(|at| now.duration_since(at) >= EXPIRY_SCAN_PERIOD) {
            last_scan = Some(now);
            scan_expiring(&service).await;
        }
        if last_prune.is_none_or(|at| now.duration_since(at) >= PRUNE_PERIOD) {
            last_prune = Some(now);
            let before = service.now().saturating_sub(alerts.settings().retention_s);
            match service.store().prune_deliveries(before).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "webhooks: old deliveries deleted"),
                Err(error) => tracing::error!(%error, "webhooks: prune failed"),
            }
        }
        // A full batch: there may be more due at once.
        while deliver_once(&service).await >= alerts.settings().concurrency as usize {}
        tokio::select! {
            () = alerts.woken() => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 does not cover this shape; the value is from Python's hmac module:
        // hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest()
        let header = signature_header("whsec_test", 1_700_000_000, "{}");
        assert_eq!(
            header,
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
        assert_ne!(header, signature_header("whsec_other", 1_700_000_000, "{}"));
        assert_ne!(header, signature_header("whsec_test", 1_700_000_001, "{}"));
    }

    #[test]
    fn retries_back_off_exponentially_with_bounded_jitter() {
        assert_eq!(retry_delay(1, 0), 10);
        assert_eq!(retry_delay(2, 0), 20);
        assert_eq!(retry_delay(3, 0), 40);
        assert_eq!(retry_delay(30, 0), MAX_RETRY_DELAY_S);
        assert_eq!(retry_delay(1, u16::MAX), 15);
        assert_eq!(retry_delay(30, u16::MAX), MAX_RETRY_DELAY_S * 3 / 2);
    }
}
