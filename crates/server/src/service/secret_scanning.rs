//! Leaked keys: `POST /api/v1/secret-scanning`, in the shape of GitHub's secret-scanning
//! partner program.
//!
//! GitHub finds a string that matches Keygate's key pattern (`kg_live_…`) in a public place
//! and POSTs a JSON array of `{token, type, url, source}`, signed: the
//! `Github-Public-Key-Signature` header is a base64 ECDSA P-256 / SHA-256 signature (ASN.1
//! DER) over the raw body, made with the key that `Github-Public-Key-Identifier` names. The
//! keys are GitHub's published set (`https://api.github.com/meta/public_keys/secret_scanning`),
//! saved to a file given with `--secret-scanning-keys` ([`ReportKeys::from_json`]).
//!
//! For each token: its shape, checksum and tag are checked (the tag in constant time), then
//! its digest against the stored record (in constant time). A real key is revoked (if it
//! was not already), audited (`key_leaked`) and alerted (`key.leaked`), and labelled
//! `true_positive`; anything else is `false_positive`. The answer is GitHub's
//! `[{token_raw, token_type, label}]`.

use keygate_core::key::{parse_opaque_key, KeyDigest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::{AlertKind, NewAuditRow};
use crate::service::alerts;
use crate::service::context::Service;
use crate::service::error::ApiError;
pub use crate::service::report_keys::{ReportKeys, ReportKeysError};

/// Most tokens in one report.
pub const MAX_REPORTED_TOKENS: usize = 1000;
/// Longest `url`/`source`/`type` copied into the audit log and the alert.
const MAX_TEXT_CHARS: usize = 512;
/// Longest token considered (a Keygate key is much shorter).
const MAX_TOKEN_CHARS: usize = 512;
/// The actor of the audit entries of leaked keys.
pub const ACTOR: &str = "secret-scanning";

/// One reported match.
#[derive(Debug, Deserialize)]
pub struct ReportedToken {
    pub token: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub source: String,
}

/// The answer for one token, in GitHub's partner response format.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TokenLabel {
    pub token_raw: String,
    pub token_type: String,
    pub label: &'static str,
}

fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_TEXT_CHARS)
        .collect()
}

/// Checks a report's signature and handles each token. `body` is the raw body as received.
pub async fn report(
    service: &Service,
    identifier: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Vec<TokenLabel>, ApiError> {
    let keys = service
        .report_keys()
        .ok_or(ApiError::SecretScanningNotConfigured)?;
    let (Some(identifier), Some(signature)) = (identifier, signature) else {
        return Err(ApiError::BadReportSignature);
    };
    if !keys.verify(identifier, signature, body) {
        tracing::warn!("secret scanning: a report with a bad signature was refused");
        return Err(ApiError::BadReportSignature);
    }
    let tokens: Vec<ReportedToken> =
        serde_json::from_slice(body).map_err(|error| match error.classify() {
            serde_json::error::Category::Data => ApiError::InvalidBody(error.to_string()),
            _ => ApiError::MalformedJson(error.to_string()),
        })?;
    if tokens.len() > MAX_REPORTED_TOKENS {
        return Err(ApiError::TooManyReportedTokens);
    }
    let mut labels = Vec::with_capacity(tokens.len());
    for reported in tokens {
        let leaked = handle_token(service, &reported).await?;
        labels.push(TokenLabel {
            token_raw: reported.token,
            token_type: reported.kind,
            label: if leaked {
                "true_positive"
            } else {
                "false_positive"
            },
        });
    }
    Ok(labels)
}

/// Whether `reported` is a real key of this service; if so it is revoked, audited and
/// alerted.
async fn handle_token(service: &Service, reported: &ReportedToken) -> Result<bool, ApiError> {
    if reported.token.len() > MAX_TOKEN_CHARS {
        return Ok(false);
    }
    let Ok(parsed) = parse_opaque_key(&reported.token, &[service.prefix().as_str()]) else {
        return Ok(false);
    };
    if !parsed.tag_is_authentic(service.gateway_key()) {
        return Ok(false);
    }
    let id = parsed.id();
    let Some(record) = service.store().get_key(id.as_str()).await? else {
        return Ok(false);
    };
    let matches =
        KeyDigest::from_hex(&record.digest).is_some_and(|stored| stored.ct_eq(&parsed.digest()));
    if !matches {
        return Ok(false);
    }
    let now = service.now();
    let was_revoked = record.revoked_at.is_some();
    let record = if was_revoked {
        record
    } else {
        let record = service.store().revoke_key(id.as_str(), now).await?;
        service.metrics().count_key_revoked();
        service.events().key_revoked(&record);
        record
    };
    let detail = json!({
        "type": clip(&reported.kind),
        "url": clip(&reported.url),
        "source": clip(&reported.source),
        "already_revoked": was_revoked,
    });
    let detail_text = detail.to_string();
    let row = NewAuditRow {
        at: now,
        action: "key_leaked",
        actor: Some(ACTOR),
        source: None,
        target: Some(record.id.as_str()),
        outcome: "ok",
        detail: Some(&detail_text),
    };
    if let Err(error) = service.store().append_audit(&row).await {
        tracing::error!(key_id = %record.id, %error, "cannot audit a leaked key");
    }
    tracing::warn!(key_id = %record.id, already_revoked = was_revoked, "leaked key reported; revoked");
    let owner = if record.owner.is_empty() {
        Value::Null
    } else {
        Value::from(record.owner.clone())
    };
    let mut data = detail;
    if let Some(object) = data.as_object_mut() {
        object.insert("id".into(), record.id.clone().into());
        object.insert("owner".into(), owner.clone());
    }
    alerts::raise(service, AlertKind::KeyLeaked, &record.id, data).await;
    if !was_revoked {
        alerts::raise(
            service,
            AlertKind::KeyRevoked,
            &record.id,
            json!({ "id": record.id, "owner": owner, "reason": "leaked" }),
        )
        .await;
    }
    Ok(true)
}
