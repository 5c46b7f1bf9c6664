//! The revocation feed: `GET /v1/revocations?since=N&wait=S&window=W` (service token; see
//! [`crate::service::feed`]).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::http::extract::require_service_token;
use crate::http::state::AppState;
use crate::model::feed::{FeedRequest, MAX_WAIT_S, MAX_WINDOW_S};
use crate::service::error::ApiError;
use crate::service::feed::long_poll;

/// The query of `GET /v1/revocations`.
#[derive(Debug, Deserialize)]
pub struct FeedParams {
    since: Option<String>,
    wait: Option<String>,
    window: Option<String>,
}

/// `GET /v1/revocations?since=N&wait=S&window=W`: the revocation feed.
pub async fn revocations(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<FeedParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.feed_counters().count_request();
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
    let service = state.service();
    if let Some(gateway) = headers
        .get(keygate_core::wire::GATEWAY_HEADER)
        .and_then(|value| value.to_str().ok())
    {
        crate::service::usage::gateway_polled(service, gateway, since).await?;
    }
    let feed = long_poll(
        service.store(),
        service.clock(),
        service.feed_counters(),
        service.shutdown_signal(),
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
