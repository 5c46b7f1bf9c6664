//! The HTTP API: the management API (admin key), the filter's lookup and revocation feed
//! (service token), the public JWKS, health.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keygate_core::jwt::Algorithm;
use keygate_core::key::{
    mint_opaque_key, GatewayKey, KeyDigest, KeyId, KeyPrefix, ID_LEN, SECRET_LEN,
};
use keygate_core::scope::{parse_scopes, Scope, MAX_SCOPES};
use keygate_core::wire::{KeyLookup, KeyStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::error::{ApiError, Realm};
use crate::feed::{long_poll, FeedCounters};
use crate::limits::{CreateLimits, LimitsView};
use crate::model::feed::{FeedRequest, MAX_WAIT_S, MAX_WINDOW_S};
use crate::model::{KeyLimits, KeyRecord, PageAfter, SigningKeyRow, FORMAT_JWT, FORMAT_OPAQUE};
use crate::signing::{
    is_published, published_jwks, JwtIssuer, JwtSettings, DEFAULT_ALGORITHM, JWKS_CACHE_CONTROL,
};
use crate::store::KeyStore;
use crate::timestamp::{format_rfc3339, parse_rfc3339};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest `expires_in`: ten years.
pub const MAX_EXPIRES_IN: i64 = 10 * 365 * 86_400;
/// Default rotation grace period: one day.
pub const DEFAULT_GRACE: i64 = 86_400;
/// Longest rotation grace period: thirty days.
pub const MAX_GRACE: i64 = 30 * 86_400;
pub(crate) const MAX_NAME_CHARS: usize = 128;
const MAX_OWNER_CHARS: usize = 128;
const MAX_METADATA_BYTES: usize = 4096;
const MAX_METADATA_KEYS: usize = 32;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// Everything a request handler needs. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    store: KeyStore,
    clock: Arc<dyn Clock>,
    gateway_key: GatewayKey,
    prefix: KeyPrefix,
    service_token: KeyDigest,
    lookups: Arc<AtomicU64>,
    feed: Arc<FeedCounters>,
    /// Turns true when the service shuts down: held long-polls answer at once.
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    jwt: JwtIssuer,
    metrics: Arc<crate::metrics::Metrics>,
    /// Refused admin authentications waiting to be written to the audit log.
    refused_admin: Arc<crate::audit::RefusedAdmin>,
    /// Largest `POST /v1/usage` body.
    usage_body_limit: usize,
}

impl AppState {
    /// `service_token` is the shared secret the filter presents on lookups.
    pub fn new(
        store: KeyStore,
        clock: Arc<dyn Clock>,
        gateway_key: GatewayKey,
        prefix: KeyPrefix,
        service_token: &str,
    ) -> Self {
        Self {
            store,
            clock,
            gateway_key,
            prefix,
            service_token: KeyDigest::of(service_token.as_bytes()),
            lookups: Arc::new(AtomicU64::new(0)),
            feed: Arc::default(),
            shutdown: Arc::new(tokio::sync::watch::Sender::new(false)),
            jwt: JwtIssuer::new(JwtSettings::default()),
            metrics: Arc::default(),
            refused_admin: Arc::default(),
            usage_body_limit: crate::usage::MAX_USAGE_BODY_BYTES,
        }
    }

    /// Refused admin authentications not written to the audit log yet.
    pub fn refused_admin(&self) -> &crate::audit::RefusedAdmin {
        &self.refused_admin
    }

    /// Sets the largest usage batch body (default [`crate::usage::MAX_USAGE_BODY_BYTES`]).
    #[must_use]
    pub fn with_usage_body_limit(mut self, bytes: usize) -> Self {
        self.usage_body_limit = bytes;
        self
    }

    /// The Prometheus counters (see [`crate::metrics`]).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Sets how JWT API keys are minted (without this: default issuer and audience, and no
    /// signing secret, so JWT keys are refused).
    #[must_use]
    pub fn with_jwt(self, settings: JwtSettings) -> Self {
        self.with_jwt_issuer(JwtIssuer::new(settings))
    }

    /// Like [`with_jwt`](Self::with_jwt), with an issuer already prepared.
    #[must_use]
    pub fn with_jwt_issuer(mut self, issuer: JwtIssuer) -> Self {
        self.jwt = issuer;
        self
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    pub fn jwt(&self) -> &JwtIssuer {
        &self.jwt
    }

    /// The current time in Unix seconds, from the service's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Counts one lookup (for lookups answered outside [`lookup_key`]).
    pub(crate) fn count_lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookup requests received so far (`GET /v1/keys/{id}`, whatever their outcome).
    pub fn lookups_served(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Revocation feed requests received so far, and long-polls held right now.
    pub fn feed_counters(&self) -> &FeedCounters {
        &self.feed
    }

    /// Answers every held long-poll now, and later ones without waiting: call it when the
    /// service starts to shut down so it is not held up by followers.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// The whole HTTP API, ready to serve or to test with `oneshot`.
pub fn app(state: AppState) -> Router {
    let management = Router::new()
        .route("/api/v1/auth/keys", post(create_key).get(list_keys))
        .route(
            "/api/v1/auth/keys/{id}",
            get(show_key)
                .delete(revoke_key)
                .patch(crate::limits::update_key),
        )
        .route("/api/v1/auth/keys/{id}/usage", get(crate::usage::key_usage))
        .route("/api/v1/auth/keys/{id}/rotate", post(rotate_key))
        .route("/api/v1/auth/keys/{id}/expire", post(expire_key))
        .route("/api/v1/signing-keys", get(list_signing_keys))
        .route("/api/v1/signing-keys/rotate", post(rotate_signing_key))
        .merge(crate::audit::routes())
        .merge(crate::legacy::management_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::audit::audit_management,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let service = Router::new()
        .route("/v1/keys/{id}", get(lookup_key))
        .route("/v1/revocations", get(revocations))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/legacy-keys/{digest}",
            get(crate::legacy::lookup_legacy_key),
        )
        .route(
            keygate_core::wire::USAGE_PATH,
            post(crate::usage::ingest_usage)
                .layer(DefaultBodyLimit::max(state.usage_body_limit))
                // Before the body is read: an anonymous client never makes the service hold
                // a batch of up to the usage body limit.
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    require_service,
                )),
        );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(crate::metrics::metrics_endpoint))
        .merge(management)
        .merge(service)
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(
            crate::error::problem_for_every_error,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Authentication

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let Some(presented) = bearer_token(&parts.headers).map(|token| KeyDigest::of(token.as_bytes()))
    else {
        crate::audit::record_denied_admin(&state, &parts, "missing").await;
        return Err(ApiError::MissingCredential(Realm::Admin));
    };
    let admins = state.store.active_admin_keys().await?;
    // Compare against every admin digest so the time taken does not depend on which matched.
    let matched = admins.iter().fold(None, |found, (id, digest)| {
        if digest.ct_eq(&presented) {
            Some(id)
        } else {
            found
        }
    });
    let Some(admin_id) = matched else {
        tracing::info!("management request with an invalid admin key refused");
        crate::audit::record_denied_admin(&state, &parts, "invalid").await;
        return Err(ApiError::InvalidCredential(Realm::Admin));
    };
    let mut request = Request::from_parts(parts, body);
    let actor = crate::audit::AdminActor(admin_id.clone());
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}

/// Middleware: the service token, checked before the handler reads anything of the request.
async fn require_service(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require_service_token(&state, request.headers())?;
    Ok(next.run(request).await)
}

pub(crate) fn require_service_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = bearer_token(headers).ok_or(ApiError::MissingCredential(Realm::Service))?;
    if KeyDigest::of(presented.as_bytes()).ct_eq(&state.service_token) {
        Ok(())
    } else {
        tracing::info!("lookup with an invalid service token refused");
        Err(ApiError::InvalidCredential(Realm::Service))
    }
}

// ---------------------------------------------------------------------------------------------
// The key object

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
    pub revoked_at: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// JWT keys: the signature algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// JWT keys: the `kid` of the signing key that signed the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Rate limit, allowed CIDRs and validity window (see [`crate::limits`]).
    #[serde(flatten)]
    pub limits: LimitsView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KeyView {
    pub(crate) fn of(record: KeyRecord, now: i64) -> Self {
        Self {
            limits: LimitsView::of(&record.limits),
            status: record.status(now),
            expires_at: record.effective_expiry().and_then(format_rfc3339),
            created_at: format_rfc3339(record.created_at),
            last_used_at: record.last_used_at.and_then(format_rfc3339),
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
            key: None,
        }
    }

    fn with_plaintext(mut self, plaintext: String) -> Self {
        self.key = Some(plaintext);
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Create

/// The body of `POST /api/v1/auth/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Seconds as a number, or a duration string (see [`parse_duration`]).
    #[serde(default)]
    pub expires_in: Option<Value>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub format: Option<String>,
    /// JWT keys only: `ES256` (default), `EdDSA` or `RS256`.
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<crate::limits::RateLimitRequest>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
}

/// What kind of key to mint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    Opaque,
    /// A JWT signed by the service with this algorithm.
    Jwt(Algorithm),
}

/// A create request that passed every check.
#[derive(Debug, PartialEq)]
pub struct ValidCreate {
    pub name: String,
    pub owner: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<i64>,
    pub metadata: Map<String, Value>,
    pub format: KeyFormat,
    pub limits: KeyLimits,
}

fn parse_algorithm(text: &str) -> Result<Algorithm, ApiError> {
    Algorithm::parse(text).ok_or(ApiError::UnknownAlgorithm)
}

pub(crate) fn valid_text(text: &str, max_chars: usize) -> bool {
    text.chars().count() <= max_chars && !text.chars().any(char::is_control)
}

/// Checks a create request at time `now`.
pub fn validate_create(request: CreateKeyRequest, now: i64) -> Result<ValidCreate, ApiError> {
    let format = match (request.format.as_deref(), request.algorithm.as_deref()) {
        (None | Some(FORMAT_OPAQUE), None) => KeyFormat::Opaque,
        (None | Some(FORMAT_OPAQUE), Some(_)) => return Err(ApiError::AlgorithmWithoutJwt),
        (Some(FORMAT_JWT), None) => KeyFormat::Jwt(DEFAULT_ALGORITHM),
        (Some(FORMAT_JWT), Some(text)) => KeyFormat::Jwt(parse_algorithm(text)?),
        (Some(_), _) => return Err(ApiError::UnknownFormat),
    };
    if request.name.is_empty() || !valid_text(&request.name, MAX_NAME_CHARS) {
        return Err(ApiError::BadName);
    }
    let owner = request.owner.unwrap_or_default();
    if !valid_text(&owner, MAX_OWNER_CHARS) {
        return Err(ApiError::BadOwner);
    }
    let scopes = validate_scopes(&request.scopes)?;
    let expires_at = match (request.expires_in, request.expires_at) {
        (Some(_), Some(_)) => return Err(ApiError::ExpiryConflict),
        (Some(duration), None) => {
            let seconds = duration_seconds(&duration)
                .filter(|seconds| (1..=MAX_EXPIRES_IN).contains(seconds))
                .ok_or(ApiError::BadExpiresIn)?;
            Some(now.saturating_add(seconds))
        }
        (None, Some(text)) => {
            let at = parse_rfc3339(&text).ok_or(ApiError::UnparsableExpiresAt)?;
            if at <= now {
                return Err(ApiError::ExpiresAtInPast);
            }
            Some(at)
        }
        (None, None) => None,
    };
    let metadata = validate_metadata(request.metadata)?;
    let limits = CreateLimits {
        rate_limit: request.rate_limit,
        allowed_cidrs: request.allowed_cidrs,
        not_before: request.not_before,
        not_after: request.not_after,
    }
    .validate()?;
    Ok(ValidCreate {
        name: request.name,
        owner,
        scopes,
        expires_at,
        metadata,
        format,
        limits,
    })
}

/// Parses a duration such as `3600`, `3600s`, `90m`, `12h` or `30d` into seconds: the one
/// syntax of `expires_in` and `grace` in REST and of the CLI's `--expires-in` and `--grace`.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    number.parse::<i64>().ok()?.checked_mul(multiplier)
}

/// A duration field of a request: whole seconds as a JSON number, or a string that
/// [`parse_duration`] reads.
fn duration_seconds(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => parse_duration(text),
        _ => None,
    }
}

pub(crate) fn validate_scopes(items: &[String]) -> Result<Vec<Scope>, ApiError> {
    if items.len() > MAX_SCOPES {
        return Err(ApiError::TooManyScopes);
    }
    for (index, item) in items.iter().enumerate() {
        Scope::parse(item).map_err(|reason| ApiError::BadScope { index, reason })?;
    }
    parse_scopes(items).map_err(|_| ApiError::TooManyScopes)
}

pub(crate) fn validate_metadata(metadata: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    let map = match metadata {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::MetadataNotObject),
    };
    if map.len() > MAX_METADATA_KEYS {
        return Err(ApiError::MetadataTooManyKeys);
    }
    let size = serde_json::to_vec(&map)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge);
    }
    Ok(map)
}

pub(crate) fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::UnreadableBody
        }
    })
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::InvalidBody(error.to_string()),
        _ => ApiError::MalformedJson(error.to_string()),
    })
}

/// What a new key record copies from its request (create) or its predecessor (rotate).
struct KeyFields {
    name: String,
    owner: String,
    scopes: Vec<String>,
    metadata: Map<String, Value>,
    expires_at: Option<i64>,
    limits: KeyLimits,
}

fn random_key_id() -> Result<KeyId, ApiError> {
    let mut id = [0u8; ID_LEN];
    getrandom::getrandom(&mut id)
        .map_err(|error| ApiError::Internal(format!("OS random number generator: {error}")))?;
    Ok(KeyId::from_bytes(id))
}

/// Mints a key of `format` and builds its record (not yet stored). Answers the record and
/// the plaintext, which is shown once.
async fn mint(
    state: &AppState,
    format: KeyFormat,
    fields: KeyFields,
    now: i64,
) -> Result<(KeyRecord, String), ApiError> {
    let mut record = KeyRecord {
        id: String::new(),
        prefix: String::new(),
        name: fields.name,
        owner: fields.owner,
        scopes: fields.scopes,
        metadata: fields.metadata,
        digest: String::new(),
        format: String::new(),
        created_at: now,
        expires_at: fields.expires_at,
        grace_until: None,
        revoked_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
        algorithm: None,
        signing_kid: None,
        limits: fields.limits,
    };
    let plaintext = match format {
        KeyFormat::Opaque => {
            let mut id = [0u8; ID_LEN];
            let mut secret = [0u8; SECRET_LEN];
            getrandom::getrandom(&mut id)
                .and_then(|()| getrandom::getrandom(&mut secret))
                .map_err(|error| {
                    ApiError::Internal(format!("OS random number generator: {error}"))
                })?;
            let minted = mint_opaque_key(&state.prefix, &state.gateway_key, id, secret);
            record.id = minted.id.to_string();
            record.prefix = state.prefix.to_string();
            record.digest = minted.digest.to_hex();
            record.format = FORMAT_OPAQUE.into();
            minted.plaintext
        }
        KeyFormat::Jwt(algorithm) => {
            let settings = state.jwt.settings();
            if record.expires_at.is_none() && !settings.allow_without_expiry {
                return Err(ApiError::JwtExpiryRequired);
            }
            if !state.jwt.is_configured() {
                return Err(ApiError::JwtSigningNotConfigured);
            }
            record.id = random_key_id()?.to_string();
            let claims = jwt_claims(&record, settings);
            let (token, kid) = state
                .jwt
                .sign(&state.store, algorithm, &claims, now)
                .await?;
            record.digest = KeyDigest::of(token.as_bytes()).to_hex();
            record.format = FORMAT_JWT.into();
            record.algorithm = Some(algorithm.as_str().into());
            record.signing_kid = Some(kid);
            token
        }
    };
    Ok((record, plaintext))
}

/// The claims of a JWT API key (RFC 9068 access-token profile): `jti` and `client_id` are the
/// key id, so revocation and lookups work as for opaque keys.
fn jwt_claims(record: &KeyRecord, settings: &JwtSettings) -> Value {
    let mut claims = Map::new();
    claims.insert("iss".into(), settings.issuer.clone().into());
    let subject = if record.owner.is_empty() {
        &record.id
    } else {
        &record.owner
    };
    claims.insert("sub".into(), subject.clone().into());
    claims.insert("aud".into(), settings.audience.clone().into());
    claims.insert("jti".into(), record.id.clone().into());
    claims.insert("client_id".into(), record.id.clone().into());
    claims.insert("iat".into(), record.created_at.into());
    if let Some(exp) = record.expires_at {
        claims.insert("exp".into(), exp.into());
    }
    if !record.scopes.is_empty() {
        claims.insert("scope".into(), record.scopes.join(" ").into());
    }
    Value::Object(claims)
}

async fn create_key(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let body = read_body(body)?;
    let request: CreateKeyRequest = parse_json(&body)?;
    let now = state.clock.now();
    let valid = validate_create(request, now)?;
    let fields = KeyFields {
        name: valid.name,
        owner: valid.owner,
        scopes: valid.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        metadata: valid.metadata,
        expires_at: valid.expires_at,
        limits: valid.limits,
    };
    let (record, plaintext) = mint(&state, valid.format, fields, now).await?;
    state.store.insert_key(&record).await?;
    tracing::info!(key_id = %record.id, name = %record.name, format = %record.format, "key created");
    let view = KeyView::of(record, now).with_plaintext(plaintext);
    Ok((StatusCode::CREATED, Json(view)))
}

// ---------------------------------------------------------------------------------------------
// List, show, revoke

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Serialize)]
struct KeyPage {
    keys: Vec<KeyView>,
    next_cursor: Option<String>,
}

fn encode_cursor(record: &KeyRecord) -> String {
    format!("{}.{}", record.created_at, record.id)
}

fn decode_cursor(text: &str) -> Result<PageAfter, ApiError> {
    let (created_at, id) = text.split_once('.').ok_or(ApiError::BadCursor)?;
    let created_at = created_at.parse().map_err(|_| ApiError::BadCursor)?;
    let id = KeyId::parse(id).map_err(|_| ApiError::BadCursor)?;
    Ok(PageAfter {
        created_at,
        id: id.to_string(),
    })
}

fn parse_status(text: &str) -> Result<KeyStatus, ApiError> {
    match text {
        "active" => Ok(KeyStatus::Active),
        "revoked" => Ok(KeyStatus::Revoked),
        "expired" => Ok(KeyStatus::Expired),
        _ => Err(ApiError::BadStatusFilter),
    }
}

async fn list_keys(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or(ApiError::BadLimit)?,
    };
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let status = params.status.as_deref().map(parse_status).transpose()?;
    let now = state.clock.now();
    let mut records = state
        .store
        .list_keys(after.as_ref(), limit + 1, status, now)
        .await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next_cursor = if more {
        records.last().map(encode_cursor)
    } else {
        None
    };
    let keys = records
        .into_iter()
        .map(|record| KeyView::of(record, now))
        .collect();
    Ok(Json(KeyPage { keys, next_cursor }))
}

fn parse_key_id(text: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(text).map_err(|_| ApiError::BadKeyId)
}

async fn show_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_key_id(&id)?;
    let record = state
        .store
        .get_key(id.as_str())
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    Ok(Json(KeyView::of(record, state.clock.now())))
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_key_id(&id)?;
    let now = state.clock.now();
    let already = state
        .store
        .get_key(id.as_str())
        .await?
        .is_some_and(|record| record.revoked_at.is_some());
    let record = state.store.revoke_key(id.as_str(), now).await?;
    if already {
        tracing::debug!(key_id = %record.id, "key already revoked");
    } else {
        state.metrics.count_key_revoked();
        tracing::info!(key_id = %record.id, "key revoked");
    }
    Ok(Json(KeyView::of(record, now)))
}

/// `POST /api/v1/auth/keys/{id}/expire`: the key's own expiry becomes now (idempotent).
async fn expire_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = parse_key_id(&id)?;
    let now = state.clock.now();
    let record = state.store.expire_key(id.as_str(), now).await?;
    tracing::info!(key_id = %record.id, "key expired now");
    Ok(Json(KeyView::of(record, now)))
}

// ---------------------------------------------------------------------------------------------
// Rotate

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// Seconds as a number, or a duration string (see [`parse_duration`]).
    #[serde(default)]
    grace: Option<Value>,
}

async fn rotate_key(
    State(state): State<AppState>,
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
    let grace = match &request.grace {
        None => DEFAULT_GRACE,
        Some(value) => duration_seconds(value)
            .filter(|grace| (0..=MAX_GRACE).contains(grace))
            .ok_or(ApiError::BadGrace)?,
    };
    let now = state.clock.now();
    let old = state
        .store
        .get_key(id.as_str())
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    // Refuse early what the store would refuse, before signing a token for nothing.
    match old.status(now) {
        KeyStatus::Revoked => return Err(ApiError::RotateRevoked),
        KeyStatus::Expired => return Err(ApiError::RotateExpired),
        KeyStatus::Active if old.rotated_to.is_some() => {
            return Err(ApiError::RotateAlreadyRotated)
        }
        KeyStatus::Active => {}
    }
    let format = if old.format == FORMAT_JWT {
        let algorithm = old
            .algorithm
            .as_deref()
            .and_then(Algorithm::parse)
            .ok_or_else(|| ApiError::Internal(format!("key {} has no valid algorithm", old.id)))?;
        KeyFormat::Jwt(algorithm)
    } else {
        KeyFormat::Opaque
    };
    let fields = KeyFields {
        name: old.name,
        owner: old.owner,
        scopes: old.scopes,
        metadata: old.metadata,
        expires_at: old.expires_at,
        limits: old.limits,
    };
    let (mut successor, plaintext) = mint(&state, format, fields, now).await?;
    successor.rotated_from = Some(old.id);
    let (old, new) = state
        .store
        .rotate_key(id.as_str(), &successor, now.saturating_add(grace), now)
        .await?;
    tracing::info!(key_id = %old.id, successor = %new.id, grace, "key rotated");
    let view = KeyView::of(new, now).with_plaintext(plaintext);
    Ok((StatusCode::CREATED, Json(view)))
}

// ---------------------------------------------------------------------------------------------
// Signing keys and the JWKS

/// A signing key as the management API shows it: never private material.
#[derive(Debug, Serialize)]
pub struct SigningKeyView {
    pub kid: String,
    pub algorithm: String,
    pub created_at: Option<String>,
    pub retired_at: Option<String>,
    /// From when it signs new tokens: once it has been published for the publish delay (a
    /// newer key of its algorithm takes over once that one is ready).
    pub signs_from: Option<String>,
    /// The latest expiry of a token it signed; `null` if none (or see `signs_forever`).
    pub not_after: Option<String>,
    /// It signed a token without expiry, so it stays published for good.
    pub signs_forever: bool,
    /// Whether `GET /.well-known/jwks.json` lists it now.
    pub published: bool,
}

impl SigningKeyView {
    fn of(row: SigningKeyRow, now: i64, delay: i64) -> Self {
        Self {
            published: is_published(&row, now, delay),
            created_at: format_rfc3339(row.created_at),
            signs_from: format_rfc3339(row.created_at.saturating_add(delay)),
            retired_at: row.retired_at.and_then(format_rfc3339),
            not_after: row.not_after.and_then(format_rfc3339),
            signs_forever: row.signs_forever,
            kid: row.kid,
            algorithm: row.algorithm,
        }
    }
}

#[derive(Debug, Serialize)]
struct SigningKeyList {
    /// Whether KEYGATE_SIGNING_KEY_SECRET is set (JWT keys can be minted).
    configured: bool,
    signing_keys: Vec<SigningKeyView>,
}

async fn list_signing_keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = state.clock.now();
    let delay = state.jwt.settings().publish_delay_s;
    let rows = state.store.list_signing_keys().await?;
    let list = SigningKeyList {
        configured: state.jwt.is_configured(),
        signing_keys: rows
            .into_iter()
            .map(|row| SigningKeyView::of(row, now, delay))
            .collect(),
    };
    serde_json::to_value(list)
        .map(Json)
        .map_err(|error| ApiError::Internal(error.to_string()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSigningKeyRequest {
    #[serde(default)]
    algorithm: Option<String>,
}

#[derive(Debug, Serialize)]
struct RotatedSigningKey {
    #[serde(flatten)]
    key: SigningKeyView,
    /// The kid it replaced, if there was an active key of this algorithm.
    retired_kid: Option<String>,
}

async fn rotate_signing_key(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(body)?;
    let request: RotateSigningKeyRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateSigningKeyRequest::default()
    } else {
        parse_json(&body)?
    };
    let algorithm = request
        .algorithm
        .as_deref()
        .map(parse_algorithm)
        .transpose()?
        .unwrap_or(DEFAULT_ALGORITHM);
    let now = state.clock.now();
    let (row, retired_kid) = state.jwt.rotate(&state.store, algorithm, now).await?;
    let answer = RotatedSigningKey {
        key: SigningKeyView::of(row, now, state.jwt.settings().publish_delay_s),
        retired_kid,
    };
    let answer =
        serde_json::to_value(answer).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /.well-known/jwks.json`: the public keys of every signing key that is active or still
/// needed to verify a live token. Public keys need no secret, so this answers even when
/// KEYGATE_SIGNING_KEY_SECRET is not set (then only keys stored earlier are listed).
async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = state.store.list_signing_keys().await?;
    let body = published_jwks(
        &rows,
        state.clock.now(),
        state.jwt.settings().publish_delay_s,
    );
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(JWKS_CACHE_CONTROL),
    );
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// The filter's endpoints

fn lookup_not_found() -> Response {
    ApiError::KeyNotFound.into_response()
}

pub(crate) async fn lookup_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    state.lookups.fetch_add(1, Ordering::Relaxed);
    if let Err(error) = require_service_token(&state, &headers) {
        return error.into_response();
    }
    let Ok(id) = KeyId::parse(&id) else {
        tracing::debug!("lookup of a malformed key id");
        return lookup_not_found();
    };
    let record = match state.store.get_key(id.as_str()).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            tracing::debug!(key_id = %id, found = false, "lookup");
            return lookup_not_found();
        }
        Err(error) => return ApiError::from(error).into_response(),
    };
    let now = state.clock.now();
    let status = record.status(now);
    tracing::debug!(key_id = %id, found = true, status = status.as_str(), "lookup");
    let answer = KeyLookup {
        subject: if record.owner.is_empty() {
            record.id.clone()
        } else {
            record.owner.clone()
        },
        expires_at: record
            .effective_expiry()
            .map(|end| u64::try_from(end).unwrap_or(0)),
        id: record.id,
        digest: record.digest,
        scopes: record.scopes,
        status,
        rate_limit: record.limits.rate_limit,
        allowed_cidrs: record.limits.allowed_cidrs,
        not_before: record
            .limits
            .not_before
            .map(|t| u64::try_from(t).unwrap_or(0)),
        not_after: record
            .limits
            .not_after
            .map(|t| u64::try_from(t).unwrap_or(0)),
    };
    Json(answer).into_response()
}

#[derive(Debug, Deserialize)]
struct FeedParams {
    since: Option<String>,
    wait: Option<String>,
    window: Option<String>,
}

/// `GET /v1/revocations?since=N&wait=S&window=W`: the revocation feed (see [`crate::feed`]).
async fn revocations(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.feed.count_request();
    require_service_token(&state, &headers)?;
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let since = match params.since.as_deref() {
        None => 0,
        Some(text) => parse_decimal(text).ok_or(ApiError::BadSince)?,
    };
    let wait = match params.wait.as_deref() {
        None => 0,
        Some(text) => parse_decimal(text)
            .filter(|wait| *wait <= MAX_WAIT_S)
            .ok_or(ApiError::BadWait)?,
    };
    let window_s = match params.window.as_deref() {
        None => None,
        Some(text) => Some(
            parse_decimal(text)
                .filter(|window| *window <= MAX_WINDOW_S)
                .ok_or(ApiError::BadWindow)?,
        ),
    };
    let feed = long_poll(
        &state.store,
        &state.clock,
        &state.feed,
        state.shutdown.subscribe(),
        FeedRequest { since, window_s },
        Duration::from_secs(wait),
    )
    .await?;
    Ok(Json(feed).into_response())
}

/// A non-negative decimal integer: digits only (no sign, no spaces), fitting in u64.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_service_token(&state, &headers)?;
    Ok(Json(serde_json::json!({
        "lookups": state.lookups_served(),
        "feed_requests": state.feed.requests(),
        "feed_waiting": state.feed.waiting(),
    }))
    .into_response())
}

async fn healthz() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> CreateKeyRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn accepts_a_minimal_request() {
        let valid = validate_create(
            request(serde_json::json!({"name": "ci", "scopes": ["b", "a", "a"]})),
            1000,
        )
        .unwrap();
        assert_eq!(valid.owner, "");
        assert_eq!(valid.expires_at, None);
        let scopes: Vec<_> = valid.scopes.iter().map(Scope::as_str).collect();
        assert_eq!(scopes, ["a", "b"]);
    }

    #[test]
    fn expiry_comes_from_either_field_not_both() {
        let now = 1000;
        let valid = validate_create(
            request(serde_json::json!({"name": "x", "scopes": [], "expires_in": 60})),
            now,
        )
        .unwrap();
        assert_eq!(valid.expires_at, Some(1060));
        let both = request(serde_json::json!({
            "name": "x", "scopes": [], "expires_in": 60, "expires_at": "2030-01-01T00:00:00Z"
        }));
        assert!(matches!(
            validate_create(both, now),
            Err(ApiError::ExpiryConflict)
        ));
        for (text, seconds) in [
            ("30d", 2_592_000),
            ("90m", 5400),
            ("3600", 3600),
            ("12h", 43_200),
        ] {
            let r = request(serde_json::json!({"name": "x", "scopes": [], "expires_in": text}));
            assert_eq!(
                validate_create(r, now).unwrap().expires_at,
                Some(now + seconds)
            );
        }
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(MAX_EXPIRES_IN + 1),
            serde_json::json!(1.5),
            serde_json::json!("1.5h"),
            serde_json::json!("soon"),
            serde_json::json!("0s"),
            serde_json::json!("3651d"),
            serde_json::json!([60]),
        ] {
            let r = request(serde_json::json!({"name": "x", "scopes": [], "expires_in": bad}));
            assert!(matches!(
                validate_create(r, now),
                Err(ApiError::BadExpiresIn)
            ));
        }
        let past = request(serde_json::json!({
            "name": "x", "scopes": [], "expires_at": "1970-01-01T00:00:01Z"
        }));
        assert!(matches!(
            validate_create(past, now),
            Err(ApiError::ExpiresAtInPast)
        ));
    }

    #[test]
    fn refuses_bad_names_scopes_metadata_and_formats() {
        let cases = [
            serde_json::json!({"name": "", "scopes": []}),
            serde_json::json!({"name": "a".repeat(129), "scopes": []}),
            serde_json::json!({"name": "x", "scopes": ["has space"]}),
            serde_json::json!({"name": "x", "scopes": [], "metadata": [1]}),
            serde_json::json!({"name": "x", "scopes": [], "metadata": {"k": "v".repeat(5000)}}),
            serde_json::json!({"name": "x", "scopes": [], "format": "jwt", "algorithm": "HS256"}),
            serde_json::json!({"name": "x", "scopes": [], "format": "jwt", "algorithm": "none"}),
            serde_json::json!({"name": "x", "scopes": [], "algorithm": "ES256"}),
            serde_json::json!({"name": "x", "scopes": [], "format": "pgp"}),
            serde_json::json!({"name": "x", "scopes": [], "owner": "o".repeat(129)}),
        ];
        for case in cases {
            assert!(validate_create(request(case.clone()), 0).is_err(), "{case}");
        }
        let many: Map<String, Value> = (0..33).map(|i| (format!("k{i}"), Value::Null)).collect();
        let r = request(serde_json::json!({"name": "x", "scopes": [], "metadata": many}));
        assert!(matches!(
            validate_create(r, 0),
            Err(ApiError::MetadataTooManyKeys)
        ));
    }

    #[test]
    fn jwt_format_defaults_to_es256_and_names_the_algorithm() {
        let jwt = |extra: Value| {
            let mut body = serde_json::json!({"name": "x", "scopes": [], "format": "jwt"});
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            validate_create(request(body), 0).map(|valid| valid.format)
        };
        assert_eq!(jwt(Value::Null).unwrap(), KeyFormat::Jwt(Algorithm::ES256));
        for (name, algorithm) in [
            ("ES256", Algorithm::ES256),
            ("EdDSA", Algorithm::EdDSA),
            ("RS256", Algorithm::RS256),
        ] {
            assert_eq!(
                jwt(serde_json::json!({"algorithm": name})).unwrap(),
                KeyFormat::Jwt(algorithm)
            );
        }
        assert!(matches!(
            jwt(serde_json::json!({"algorithm": "HS256"})),
            Err(ApiError::UnknownAlgorithm)
        ));
        let opaque = validate_create(request(serde_json::json!({"name": "x", "scopes": []})), 0);
        assert_eq!(opaque.unwrap().format, KeyFormat::Opaque);
    }

    #[test]
    fn jwt_claims_follow_rfc_9068() {
        let record = KeyRecord {
            id: "aaaaaaaaaaaaaaaa".into(),
            prefix: String::new(),
            name: "n".into(),
            owner: String::new(),
            scopes: vec!["demo:read".into(), "demo:write".into()],
            metadata: Map::new(),
            digest: String::new(),
            format: FORMAT_JWT.into(),
            created_at: 1000,
            expires_at: Some(2000),
            grace_until: None,
            revoked_at: None,
            last_used_at: None,
            rotated_from: None,
            rotated_to: None,
            algorithm: None,
            signing_kid: None,
            limits: Default::default(),
        };
        let settings = JwtSettings {
            issuer: "https://keys.example".into(),
            audience: "api".into(),
            ..JwtSettings::default()
        };
        assert_eq!(
            jwt_claims(&record, &settings),
            serde_json::json!({
                "iss": "https://keys.example", "sub": "aaaaaaaaaaaaaaaa", "aud": "api",
                "jti": "aaaaaaaaaaaaaaaa", "client_id": "aaaaaaaaaaaaaaaa",
                "iat": 1000, "exp": 2000, "scope": "demo:read demo:write"
            })
        );
        let owned = KeyRecord {
            owner: "team-a".into(),
            scopes: vec![],
            expires_at: None,
            ..record
        };
        let claims = jwt_claims(&owned, &settings);
        assert_eq!(claims["sub"], "team-a");
        assert!(claims.get("exp").is_none() && claims.get("scope").is_none());
    }

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let after = decode_cursor("1700000000.aaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(after.created_at, 1_700_000_000);
        assert_eq!(after.id, "aaaaaaaaaaaaaaaa");
        for junk in ["", "x", "1.x", "a.aaaaaaaaaaaaaaaa"] {
            assert!(decode_cursor(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn bearer_tokens_are_extracted_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
