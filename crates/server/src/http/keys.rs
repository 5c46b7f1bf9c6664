//! The key resource of the management API: `/api/v1/auth/keys` (create, list) and
//! `/api/v1/auth/keys/{id}` (show, update, revoke, rotate, expire).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keygate_core::key::KeyId;
use keygate_core::wire::{KeyStatus, RateLimit};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::audit::outcome_of;
use crate::http::extract::{page_limit, parse_json, read_body, Access, Caller};
use crate::http::state::AppState;
use crate::model::KeyLimits;
use crate::model::KeyRecord;
use crate::service::error::ApiError;
use crate::service::keys::{self, parse_key_id, CreateKeyRequest};
use crate::service::limits::UpdateKeyRequest;
use crate::service::request_signing::{self, SigningMaterialRequest, SigningMaterialView};
use crate::timestamp::format_rfc3339;

/// A key as the management API shows it. `key` (the plaintext) is present only in the answer
/// that mints it.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// Who the key belongs to; `null` when it has no owner (the subject is then the key id).
    pub owner: Option<String>,
    pub prefix: String,
    pub format: String,
    pub scopes: Vec<String>,
    pub metadata: Map<String, Value>,
    pub status: KeyStatus,
    pub created_at: Option<String>,
    /// The effective expiry: the own expiry or the end of the rotation grace, whichever first.
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    /// The client address of the last allowed use (as the gateway saw it), if known.
    pub last_used_address: Option<String>,
    pub revoked_at: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// JWT keys: the signature algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// JWT keys: the `kid` of the signing key that signed the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Rate limit, allowed CIDRs and validity window (see [`crate::service::limits`]).
    #[serde(flatten)]
    pub limits: LimitsView,
    /// Names of the roles the key holds (their scopes are not in `scopes`).
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Request-signing material: its algorithm and public key (an HMAC secret only in the
    /// answer that registers it). Shown by create and show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_material: Option<SigningMaterialView>,
}

impl KeyView {
    pub fn of(record: KeyRecord, now: i64) -> Self {
        Self {
            limits: LimitsView::of(&record.limits, now),
            status: record.status(now),
            expires_at: record.effective_expiry().and_then(format_rfc3339),
            created_at: format_rfc3339(record.created_at),
            last_used_at: record.last_used_at.and_then(format_rfc3339),
            last_used_address: record.last_used_address,
            revoked_at: record.revoked_at.and_then(format_rfc3339),
            id: record.id,
            name: record.name,
            owner: Some(record.owner).filter(|owner| !owner.is_empty()),
            prefix: record.prefix,
            format: record.format,
            scopes: record.scopes,
            metadata: record.metadata,
            rotated_from: record.rotated_from,
            rotated_to: record.rotated_to,
            algorithm: record.algorithm,
            kid: record.signing_kid,
            roles: record.roles,
            key: None,
            signing_material: None,
        }
    }

    fn with_plaintext(mut self, plaintext: String) -> Self {
        self.key = Some(plaintext);
        self
    }
}

/// The limits as the key object shows them.
#[derive(Debug, Serialize)]
pub struct LimitsView {
    pub rate_limit: Option<RateLimit>,
    pub allowed_cidrs: Vec<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    pub allowed_principals: Vec<String>,
    /// Fleet-wide rate limit.
    pub global_limit: Option<RateLimit>,
    pub quota: Option<QuotaView>,
    pub allowed_countries: Vec<String>,
}

/// A key's quota: its limit and period, the current window, and (on `GET` of one key) what
/// is left of it.
#[derive(Debug, Serialize)]
pub struct QuotaView {
    pub limit: u64,
    pub period_s: u64,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    /// Units left in the current window; `null` when not read (lists) or the counters are
    /// unavailable.
    pub remaining: Option<u64>,
}

impl LimitsView {
    pub fn of(limits: &KeyLimits, now: i64) -> Self {
        Self {
            rate_limit: limits.rate_limit,
            allowed_cidrs: limits.allowed_cidrs.clone(),
            not_before: limits.not_before.and_then(format_rfc3339),
            not_after: limits.not_after.and_then(format_rfc3339),
            allowed_principals: limits.allowed_principals.clone(),
            allowed_countries: limits.allowed_countries.clone(),
            global_limit: limits.global_limit,
            quota: limits.quota.map(|quota| {
                let wire = quota.wire();
                let now = u64::try_from(now).unwrap_or(0);
                let at = |t: u64| i64::try_from(t).ok().and_then(format_rfc3339);
                QuotaView {
                    limit: quota.limit,
                    period_s: quota.period_s,
                    window_start: at(wire.window_at(now)),
                    window_end: at(wire.window_end_at(now)),
                    remaining: None,
                }
            }),
        }
    }
}

pub async fn create_key(
    State(state): State<AppState>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let body = read_body(body)?;
    let mut request: CreateKeyRequest = parse_json(&body)?;
    let material = request
        .signing_material
        .take()
        .map(|material| request_signing::validate(&material))
        .transpose()?;
    let now = state.now();
    let (record, plaintext) = keys::create(state.service(), &access, request, now).await?;
    let signing = match &material {
        Some(material) => {
            Some(request_signing::store(state.service(), &record.id, material).await?)
        }
        None => None,
    };
    let mut view = KeyView::of(record, now).with_plaintext(plaintext);
    view.signing_material = signing;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The query of `GET /api/v1/auth/keys`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
    status: Option<String>,
}

/// A page of `GET /api/v1/auth/keys`.
#[derive(Debug, Serialize)]
pub struct KeyPage {
    keys: Vec<KeyView>,
    next_cursor: Option<String>,
}

fn parse_status(text: &str) -> Result<KeyStatus, ApiError> {
    match text {
        "active" => Ok(KeyStatus::Active),
        "revoked" => Ok(KeyStatus::Revoked),
        "expired" => Ok(KeyStatus::Expired),
        _ => Err(ApiError::BadStatusFilter),
    }
}

pub async fn list_keys(
    State(state): State<AppState>,
    access: Access,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let limit = page_limit(params.limit.as_deref())?;
    let after = params
        .cursor
        .as_deref()
        .map(keys::decode_cursor)
        .transpose()?;
    let status = params.status.as_deref().map(parse_status).transpose()?;
    let now = state.now();
    let (records, next_cursor) =
        keys::list(state.service(), &access, after, limit, status, now).await?;
    let keys = records
        .into_iter()
        .map(|record| KeyView::of(record, now))
        .collect();
    Ok(Json(KeyPage { keys, next_cursor }))
}

pub async fn show_key(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_key_id(&id)?;
    let record = keys::show(state.service(), &access, &id).await?;
    let remaining = match &record.limits.quota {
        Some(quota) => {
            crate::service::leases::quota_remaining(state.service(), &record.id, quota).await
        }
        None => None,
    };
    let signing = request_signing::shown(state.service(), &record.id).await?;
    let mut view = KeyView::of(record, state.now());
    if let Some(quota) = &mut view.limits.quota {
        quota.remaining = remaining;
    }
    view.signing_material = signing;
    Ok(Json(view))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_key_id(&id)?;
    let now = state.now();
    let record = keys::revoke(state.service(), &access, &id, now).await?;
    Ok(Json(KeyView::of(record, now)))
}

/// `POST /api/v1/auth/keys/{id}/expire`: the key's own expiry becomes now (idempotent).
pub async fn expire_key(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_key_id(&id)?;
    let now = state.now();
    let record = keys::expire(state.service(), &access, &id, now).await?;
    Ok(Json(KeyView::of(record, now)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Seconds as a number, or a duration string (see
    /// [`crate::service::validate::parse_duration`]).
    #[serde(default)]
    grace: Option<Value>,
}

pub async fn rotate_key(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let id = parse_key_id(&id)?;
    let body = read_body(body)?;
    let request: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        parse_json(&body)?
    };
    let grace = keys::grace_seconds(request.grace.as_ref())?;
    let now = state.now();
    let (new, plaintext) = keys::rotate(state.service(), &access, &id, grace, now).await?;
    let view = KeyView::of(new, now).with_plaintext(plaintext);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `PATCH /api/v1/auth/keys/{id}`: changes a key, and records the change in the audit log
/// (action `update`, with the names of the fields changed, never their values).
pub async fn update_key(
    State(state): State<AppState>,
    access: Access,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<KeyView>, ApiError> {
    let target = KeyId::parse(&id).ok().map(|id| id.to_string());
    let mut fields = Vec::new();
    let result = apply_update(&state, &access, &id, body, &mut fields).await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(error) => {
            let slug = match error.status() {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
                status if status.is_server_error() => "internal",
                _ => "invalid-request",
            };
            outcome_of(error.status(), Some(&format!("urn:keygate:problem:{slug}")))
        }
    };
    let detail = (!fields.is_empty()).then(|| serde_json::json!({ "fields": fields }));
    let entry = caller.entry("update", target, &outcome, detail);
    crate::service::audit::record(state.store(), state.now(), entry).await;
    result
}

pub async fn apply_update(
    state: &AppState,
    access: &Access,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    fields: &mut Vec<&'static str>,
) -> Result<Json<KeyView>, ApiError> {
    let id = KeyId::parse(id).map_err(|_| ApiError::BadKeyId)?;
    let body = read_body(body)?;
    let request: UpdateKeyRequest = parse_json(&body)?;
    // An owner changes only its own keys (their owner never changes), and grants no
    // `keygate:` scope.
    keys::show(state.service(), access, &id).await?;
    if let Some(Some(scopes)) = &request.scopes {
        crate::service::access::check_grant(access, scopes)?;
    }
    let now = state.now();
    let record = crate::service::limits::update(state.service(), &id, request, fields).await?;
    Ok(Json(KeyView::of(record, now)))
}

/// `PUT /api/v1/auth/keys/{id}/signing-material`: registers or replaces the key's
/// request-signing material (audited as `signing_material_set`); an HMAC secret is in this
/// answer only.
pub async fn set_signing_material(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SigningMaterialView>, ApiError> {
    let id = parse_key_id(&id)?;
    let body = read_body(body)?;
    let request: SigningMaterialRequest = parse_json(&body)?;
    let view = request_signing::set(state.service(), &access, &id, &request).await?;
    Ok(Json(view))
}

/// `DELETE /api/v1/auth/keys/{id}/signing-material`: removes it (audited as
/// `signing_material_remove`); signed routes then refuse the key.
pub async fn remove_signing_material(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_key_id(&id)?;
    request_signing::remove(state.service(), &access, &id).await?;
    Ok(Json(
        serde_json::json!({ "id": id.as_str(), "signing_material": null }),
    ))
}
