//! Health and the filter's counters: `GET /healthz` (public) and `GET /v1/stats` (service
//! token).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::http::extract::require_service_token;
use crate::http::state::AppState;
use crate::service::error::ApiError;

pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_service_token(&state, &headers)?;
    Ok(Json(serde_json::json!({
        "lookups": state.lookups_served(),
        "feed_requests": state.feed_counters().requests(),
        "feed_waiting": state.feed_counters().waiting(),
    }))
    .into_response())
}

pub async fn healthz() -> Json<Value> {
    Json(serde_json::json!({"status": "ok"}))
}
