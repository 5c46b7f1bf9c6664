//! Owners' pooled limits: one fleet-wide token bucket shared by all keys of an owner
//! (`PUT/GET/DELETE /api/v1/pools/{owner}`, `GET /api/v1/pools`). The filter finds the pool in
//! a key's lookup answer and spends from bucket `pool:<owner>` through leases.

use serde::Deserialize;

use crate::model::Pool;
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::limits::{validate_rate_limit, RateLimitRequest};
use crate::service::validate::{valid_text, MAX_OWNER_CHARS};

/// The body of `PUT /api/v1/pools/{owner}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Checks an owner named in a path.
pub fn validate_owner(owner: &str) -> Result<(), ApiError> {
    if owner.is_empty() || !valid_text(owner, MAX_OWNER_CHARS) {
        return Err(ApiError::BadPoolOwner);
    }
    Ok(())
}

/// Sets the pooled limit of `owner`.
pub async fn set(service: &Service, owner: String, request: PoolRequest) -> Result<Pool, ApiError> {
    validate_owner(&owner)?;
    let limit = validate_rate_limit(RateLimitRequest {
        requests_per_second: request.requests_per_second,
        burst: request.burst,
    })
    .map_err(|_| ApiError::BadPoolLimit)?;
    let pool = Pool {
        owner,
        limit,
        updated_at: service.now(),
    };
    service.store().put_pool(&pool).await?;
    tracing::info!(owner = %pool.owner, "pool set");
    Ok(pool)
}

pub async fn show(service: &Service, owner: &str) -> Result<Pool, ApiError> {
    validate_owner(owner)?;
    service
        .store()
        .get_pool(owner)
        .await?
        .ok_or(ApiError::PoolNotFound)
}

pub async fn delete(service: &Service, owner: &str) -> Result<(), ApiError> {
    validate_owner(owner)?;
    if service.store().delete_pool(owner).await? {
        tracing::info!(owner = %owner, "pool deleted");
        Ok(())
    } else {
        Err(ApiError::PoolNotFound)
    }
}

/// Most pools one list answers.
pub const MAX_POOLS_LISTED: u32 = 500;

pub async fn list(service: &Service, after: Option<&str>) -> Result<Vec<Pool>, ApiError> {
    Ok(service.store().list_pools(after, MAX_POOLS_LISTED).await?)
}
