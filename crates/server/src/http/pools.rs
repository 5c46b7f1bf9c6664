//! Owners' pooled limits: `/api/v1/pools` (list) and `/api/v1/pools/{owner}` (set, show,
//! delete). See [`crate::service::pools`].

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use keygate_core::wire::RateLimit;
use serde::{Deserialize, Serialize};

use crate::http::extract::{parse_json, read_body};
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

pub async fn set_pool(
    State(state): State<AppState>,
    Path(owner): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PoolView>, ApiError> {
    let body = read_body(body)?;
    let request: PoolRequest = parse_json(&body)?;
    let pool = pools::set(state.service(), owner, request).await?;
    Ok(Json(PoolView::of(pool)))
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
    Path(owner): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    pools::delete(state.service(), &owner).await?;
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
