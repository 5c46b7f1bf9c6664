//! Legacy keys over HTTP: `POST /api/v1/auth/keys/import` (admin) and the filter's
//! `GET /v1/legacy-keys/{sha256 hex}` (service token). See [`crate::service::legacy`].

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::http::audit::AuditNote;
use crate::http::extract::require_service_token;
use crate::http::lookup::lookup_key;
use crate::http::state::AppState;
use crate::service::error::ApiError;
use crate::service::legacy::{import_rows, read_import, ImportFormat};

/// The query of `POST /api/v1/auth/keys/import`.
#[derive(Debug, Deserialize)]
pub struct ImportParams {
    format: Option<String>,
    dry_run: Option<String>,
}

/// `?format=` if given, else `text/csv` → CSV, anything else → JSON.
fn import_format(param: Option<&str>, headers: &HeaderMap) -> Result<ImportFormat, ApiError> {
    if let Some(text) = param {
        return ImportFormat::parse(text).ok_or(ApiError::UnknownImportFormat);
    }
    let csv = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("text/csv")
        });
    Ok(if csv {
        ImportFormat::Csv
    } else {
        ImportFormat::Json
    })
}

fn flag(text: Option<&str>) -> Result<bool, ApiError> {
    match text {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(_) => Err(ApiError::MalformedQuery),
    }
}

pub async fn import_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ImportParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::ImportTooLarge
        } else {
            ApiError::UnreadableBody
        }
    })?;
    let format = import_format(params.format.as_deref(), &headers)?;
    let dry_run = flag(params.dry_run.as_deref())?;
    let rows = read_import(format, &body)?;
    let report = import_rows(state.service(), rows, dry_run).await?;
    tracing::info!(
        format = format.as_str(),
        dry_run,
        created = report.created,
        updated = report.updated,
        unchanged = report.unchanged,
        errors = report.errors.len(),
        "legacy keys imported"
    );
    // One summary entry per import (not one per key): counts only, no digests.
    let note = AuditNote {
        target: None,
        detail: Some(serde_json::json!({
            "format": format.as_str(),
            "dry_run": dry_run,
            "created": report.created,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "errors": report.errors.len(),
        })),
    };
    let mut response = Json(report).into_response();
    response.extensions_mut().insert(note);
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// GET /v1/legacy-keys/{sha256}

fn not_found() -> Response {
    ApiError::KeyNotFound.into_response()
}

/// `GET /v1/legacy-keys/{sha256 hex}` (service token): the same answer as
/// `GET /v1/keys/{id}` for the legacy key with this digest; 404 for any other digest,
/// including the digest of an opaque or JWT key. Counted as a lookup.
pub async fn lookup_legacy_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Response {
    if let Err(error) = require_service_token(&state, &headers) {
        state.count_lookup();
        return error.into_response();
    }
    let digest = digest.to_ascii_lowercase();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        state.count_lookup();
        tracing::debug!("legacy lookup of a malformed digest");
        return not_found();
    }
    match state.store().get_legacy_key(&digest).await {
        // The id lookup counts it and answers exactly as for any key.
        Ok(Some(record)) => lookup_key(State(state), headers, Path(record.id)).await,
        Ok(None) => {
            state.count_lookup();
            tracing::debug!(found = false, "legacy lookup");
            not_found()
        }
        Err(error) => {
            state.count_lookup();
            ApiError::from(error).into_response()
        }
    }
}
