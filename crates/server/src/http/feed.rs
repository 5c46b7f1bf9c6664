//! The revocation feed: `GET /v1/revocations?since=N&wait=S&window=W` (service token; see
//! [`crate::service::feed`]).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_core::feed::FeedResponse;
use keygate_core::machine::threat::{BlockReport, FeedBlocks};
use serde::{Deserialize, Serialize};

use crate::http::extract::require_service_token;
use crate::http::state::AppState;
use crate::model::feed::{FeedRequest, MAX_WAIT_S, MAX_WINDOW_S};
use crate::service::blocks;
use crate::service::error::ApiError;
use crate::service::feed::long_poll;

/// The query of `GET /v1/revocations`.
#[derive(Debug, Deserialize)]
pub struct FeedParams {
    since: Option<String>,
    wait: Option<String>,
    window: Option<String>,
    /// The version of the operator blocks the follower holds (filters that know blocks).
    blocks: Option<String>,
}

/// A feed answer: the filter's [`FeedResponse`], and the operator blocks when the follower
/// asked for them and holds another version.
#[derive(Debug, Serialize)]
struct FeedAnswer {
    #[serde(flatten)]
    feed: FeedResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<FeedBlocks>,
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
    let known_blocks = match params.blocks.as_deref() {
        None => None,
        Some(text) => Some(parse_decimal(text).ok_or(ApiError::BadBlock(
            "blocks must be the version of the operator blocks the filter holds",
        ))?),
    };
    let service = state.service();
    let gateway = headers
        .get(keygate_core::wire::GATEWAY_HEADER)
        .and_then(|value| value.to_str().ok());
    if let Some(gateway) = gateway {
        crate::service::usage::gateway_polled(service, gateway, since).await?;
    }
    // Automatic blocks the filter reports with its request (best effort: a malformed report
    // is ignored, the feed still answered).
    if let Some(reports) = headers
        .get(keygate_core::machine::threat::BLOCKED_HEADER)
        .and_then(|value| serde_json::from_slice::<Vec<BlockReport>>(value.as_bytes()).ok())
    {
        blocks::report(service, gateway, &reports, state.now()).await?;
    }
    let request = FeedRequest { since, window_s };
    let poll = |wait: u64| {
        long_poll(
            service.store(),
            service.clock(),
            service.feed_counters(),
            service.shutdown_signal(),
            request,
            Duration::from_secs(wait),
        )
    };
    let Some(known) = known_blocks else {
        return Ok(Json(poll(wait).await?).into_response());
    };
    // Subscribed before the blocks are read, so a change after the read is never missed.
    let mut changes = service.blocks().subscribe();
    changes.borrow_and_update();
    let current = blocks::feed_blocks(service, state.now()).await?;
    let feed = if current.version != known {
        poll(0).await?
    } else {
        tokio::select! {
            feed = poll(wait) => feed?,
            _ = changes.changed() => poll(0).await?,
        }
    };
    let current = blocks::feed_blocks(service, state.now()).await?;
    let blocks = (current.version != known).then_some(current);
    Ok(Json(FeedAnswer { feed, blocks }).into_response())
}

/// A non-negative decimal integer: digits only (no sign, no spaces), fitting in u64.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
