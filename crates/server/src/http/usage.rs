//! Usage: `POST /v1/usage` (service token; the filter's batches) and
//! `GET /api/v1/auth/keys/{id}/usage` (admin, or the key's owner). See [`crate::service::usage`].

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use keygate_core::wire::UsageBatch;
use serde::Deserialize;
use serde_json::Value;

use crate::http::extract::{parse_json, require_service_token, Access};
use crate::http::state::AppState;
use crate::service::error::ApiError;
use crate::service::usage::{UsageRange, UsageReport};

/// `POST /v1/usage` (service token): applies a usage batch once.
pub async fn ingest_usage(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_service_token(&state, &headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::UsageBatchTooLarge
        } else {
            ApiError::UnreadableBody
        }
    })?;
    let batch: UsageBatch = parse_json(&body)?;
    let answer = crate::service::usage::ingest(state.service(), batch).await?;
    Ok(Json(answer))
}

/// The query of `GET /api/v1/auth/keys/{id}/usage`.
#[derive(Debug, Deserialize)]
pub struct UsageParams {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
}

/// `GET /api/v1/auth/keys/{id}/usage?from=&to=&step=` (admin).
pub async fn key_usage(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    if !crate::service::usage::valid_key_id(&id) {
        return Err(ApiError::BadKeyId);
    }
    if let Some(owner) = access.owner() {
        // Another owner's key (or an unknown id) answers as if absent.
        let record = state.store().get_key(&id).await?;
        if record.is_none_or(|record| record.owner != owner) {
            return Err(ApiError::KeyNotFound);
        }
    }
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let range = UsageRange::parse(
        params.from.as_deref(),
        params.to.as_deref(),
        params.step.as_deref(),
        state.now(),
    )?;
    let report = crate::service::usage::report(state.service(), id, range).await?;
    Ok(Json(report))
}
