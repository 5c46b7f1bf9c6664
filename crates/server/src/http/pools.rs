//! Owners' pooled limits: `/api/v1/pools` (list) and `/api/v1/pools/{owner}` (set, show,
//! delete). See [`crate::service::pools`]. Setting and deleting a pool each record an audit
//! entry (`pool_set`, `pool_delete`; the target is the owner, the detail the limit set).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keygate_core::wire::RateLimit;
use serde::{Deserialize, Serialize};

use crate::http::audit::outcome_of;
use crate::http::extract::{parse_json, read_body, Caller};
use crate::http::state::AppState;
use crate::model::Pool;
use crate::service::error::ApiError;
use crate::service::pools::{self, PoolRequest};
use crate::timestamp::format_rfc3339;

/// A pool as the management API shows it.
#[derive(Debug, Serialize)]
pub struct PoolView {
    pub owner: String,
    pub rate_limit: RateLimit,
    pub updated_at: Option<String>,
}

impl PoolView {
    fn of(pool: Pool) -> Self {
        Self {
            owner: pool.owner,
            rate_limit: pool.limit,
            updated_at: format_rfc3339(pool.updated_at),
        }
    }
}

/// Records the audit entry of a pool change: `detail` for a change made, the outcome of a
/// refused one.
async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    owner: &str,
    result: Result<Option<serde_json::Value>, &ApiError>,
) {
    // Only an owner that passes the check is copied into the log.
    let target = pools::validate_owner(owner).ok().map(|()| owner.to_owned());
    let (outcome, detail) = match result {
        Ok(detail) => ("ok".to_owned(), detail),
        Err(error) => {
            let slug = match error.status() {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
                status if status.is_server_error() => "internal",
                _ => "invalid-request",
            };
            let outcome = outcome_of(error.status(), Some(&format!("urn:keygate:problem:{slug}")));
            (outcome, None)
        }
    };
    let entry = caller.entry(action, target, &outcome, detail);
    crate::service::audit::record(state.store(), state.now(), entry).await;
}

pub async fn set_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(owner): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PoolView>, ApiError> {
    let parsed = read_body(body).and_then(|body| parse_json::<PoolRequest>(&body));
    let result = match parsed {
        Ok(request) => pools::set(state.service(), owner.clone(), request).await,
        Err(error) => Err(error),
    };
    let detail = result.as_ref().map(|pool| {
        Some(serde_json::json!({
            "requests_per_second": pool.limit.requests_per_second,
            "burst": pool.limit.burst,
        }))
    });
    audit(&state, &caller, "pool_set", &owner, detail).await;
    Ok(Json(PoolView::of(result?)))
}

pub async fn show_pool(
    State(state): State<AppState>,
    Path(owner): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    Ok(Json(PoolView::of(
        pools::show(state.service(), &owner).await?,
    )))
}

pub async fn delete_pool(
    State(state): State<AppState>,
    caller: Caller,
    Path(owner): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = pools::delete(state.service(), &owner).await;
    audit(
        &state,
        &caller,
        "pool_delete",
        &owner,
        result.as_ref().map(|()| None),
    )
    .await;
    result?;
    Ok(Json(serde_json::json!({ "deleted": owner })))
}

/// The query of `GET /api/v1/pools`.
#[derive(Debug, Deserialize)]
pub struct PoolListParams {
    after: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PoolPage {
    pools: Vec<PoolView>,
}

pub async fn list_pools(
    State(state): State<AppState>,
    params: Result<Query<PoolListParams>, QueryRejection>,
) -> Result<Json<PoolPage>, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let pools = pools::list(state.service(), params.after.as_deref()).await?;
    Ok(Json(PoolPage {
        pools: pools.into_iter().map(PoolView::of).collect(),
    }))
}
