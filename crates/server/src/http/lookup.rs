//! The filter's lookup of a key by id: `GET /v1/keys/{id}` (service token).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_core::key::KeyId;

use crate::http::extract::require_service_token;
use crate::http::state::AppState;
use crate::service::error::ApiError;

fn lookup_not_found() -> Response {
    ApiError::KeyNotFound.into_response()
}

/// `GET /v1/keys/{id}`: what the filter needs to know of a key; 404 for an unknown or
/// malformed id. Every request is counted as a lookup.
pub async fn lookup_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    state.count_lookup();
    if let Err(error) = require_service_token(&state, &headers) {
        return error.into_response();
    }
    let Ok(id) = KeyId::parse(&id) else {
        tracing::debug!("lookup of a malformed key id");
        return lookup_not_found();
    };
    match crate::service::keys::lookup(state.service(), &id).await {
        Ok(Some(answer)) => Json(answer).into_response(),
        Ok(None) => lookup_not_found(),
        Err(error) => error.into_response(),
    }
}
