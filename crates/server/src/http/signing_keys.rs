//! The signing keys of JWT API keys: `/api/v1/signing-keys` (list, rotate; admin) and the
//! public `/.well-known/jwks.json`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::extract::{parse_json, read_body};
use crate::http::state::AppState;
use crate::model::SigningKeyRow;
use crate::service::error::ApiError;
use crate::service::keys::parse_algorithm;
use crate::service::signing::{
    is_published, published_jwks, DEFAULT_ALGORITHM, JWKS_CACHE_CONTROL,
};
use crate::timestamp::format_rfc3339;

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

pub async fn list_signing_keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = state.now();
    let delay = state.jwt().settings().publish_delay_s;
    let rows = state.store().list_signing_keys().await?;
    let list = SigningKeyList {
        configured: state.jwt().is_configured(),
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

pub async fn rotate_signing_key(
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
    let now = state.now();
    let (row, retired_kid) = state.jwt().rotate(state.store(), algorithm, now).await?;
    let answer = RotatedSigningKey {
        key: SigningKeyView::of(row, now, state.jwt().settings().publish_delay_s),
        retired_kid,
    };
    let answer =
        serde_json::to_value(answer).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `GET /.well-known/jwks.json`: the public keys of every signing key that is active or still
/// needed to verify a live token. Public keys need no secret, so this answers even when
/// KEYGATE_SIGNING_KEY_SECRET is not set (then only keys stored earlier are listed).
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = state.store().list_signing_keys().await?;
    let body = published_jwks(&rows, state.now(), state.jwt().settings().publish_delay_s);
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(JWKS_CACHE_CONTROL),
    );
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// The filter's endpoints
