//! The `keys` table's columns: what a record is bound as, and how a row decodes.

use keygate_core::wire::RateLimit;

use super::error::StoreError;
use super::sql::StoredRow;
use crate::model::{KeyLimits, KeyQuota, KeyRecord};

pub(super) const KEY_COLUMNS: &str = "id, prefix, name, owner, scopes, metadata, digest, format, \
     created_at, expires_at, grace_until, revoked_at, last_used_at, rotated_from, rotated_to, \
     algorithm, signing_kid, rate_limit_rps, rate_limit_burst, allowed_cidrs, not_before, \
     not_after, roles, allowed_principals, global_rps, global_burst, quota_limit, quota_period, \
     quota_anchor, last_used_address, allowed_countries";

/// The limit columns of a key record, as bound into SQL.
pub(super) struct LimitColumns {
    pub rate_limit_rps: Option<f64>,
    pub rate_limit_burst: Option<i64>,
    pub allowed_cidrs: String,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
    pub allowed_principals: String,
    pub allowed_countries: String,
    pub global_rps: Option<f64>,
    pub global_burst: Option<i64>,
    pub quota_limit: Option<i64>,
    pub quota_period: Option<i64>,
    pub quota_anchor: Option<i64>,
}

impl LimitColumns {
    pub fn of(limits: &KeyLimits) -> Result<Self, StoreError> {
        Ok(Self {
            rate_limit_rps: limits.rate_limit.map(|r| r.requests_per_second),
            rate_limit_burst: limits.rate_limit.map(|r| i64::from(r.burst)),
            allowed_cidrs: serde_json::to_string(&limits.allowed_cidrs)
                .map_err(|_| StoreError::Corrupt("allowed_cidrs"))?,
            not_before: limits.not_before,
            not_after: limits.not_after,
            allowed_principals: serde_json::to_string(&limits.allowed_principals)
                .map_err(|_| StoreError::Corrupt("allowed_principals"))?,
            allowed_countries: serde_json::to_string(&limits.allowed_countries)
                .map_err(|_| StoreError::Corrupt("allowed_countries"))?,
            global_rps: limits.global_limit.map(|r| r.requests_per_second),
            global_burst: limits.global_limit.map(|r| i64::from(r.burst)),
            quota_limit: limits
                .quota
                .map(|q| i64::try_from(q.limit).map_err(|_| StoreError::Corrupt("quota_limit")))
                .transpose()?,
            quota_period: limits
                .quota
                .map(|q| i64::try_from(q.period_s).map_err(|_| StoreError::Corrupt("quota_period")))
                .transpose()?,
            quota_anchor: limits.quota.map(|q| q.anchor),
        })
    }
}

pub(super) fn limits_from_row(row: &StoredRow) -> Result<KeyLimits, StoreError> {
    let rps: Option<f64> = row.get("rate_limit_rps")?;
    let burst: Option<i64> = row.get("rate_limit_burst")?;
    let rate_limit = match (rps, burst) {
        (None, None) => None,
        (Some(requests_per_second), Some(burst)) => Some(RateLimit {
            requests_per_second,
            burst: u32::try_from(burst)
                .map_err(|_| StoreError::Corrupt("keys.rate_limit_burst"))?,
        }),
        _ => return Err(StoreError::Corrupt("keys.rate_limit_rps")),
    };
    let cidrs: String = row.get("allowed_cidrs")?;
    let principals: String = row.get("allowed_principals")?;
    let countries: String = row.get("allowed_countries")?;
    let global_rps: Option<f64> = row.get("global_rps")?;
    let global_burst: Option<i64> = row.get("global_burst")?;
    let global_limit = match (global_rps, global_burst) {
        (None, None) => None,
        (Some(requests_per_second), Some(burst)) => Some(RateLimit {
            requests_per_second,
            burst: u32::try_from(burst).map_err(|_| StoreError::Corrupt("keys.global_burst"))?,
        }),
        _ => return Err(StoreError::Corrupt("keys.global_rps")),
    };
    let quota_limit: Option<i64> = row.get("quota_limit")?;
    let quota_period: Option<i64> = row.get("quota_period")?;
    let quota_anchor: Option<i64> = row.get("quota_anchor")?;
    let quota = match (quota_limit, quota_period, quota_anchor) {
        (None, None, None) => None,
        (Some(limit), Some(period), Some(anchor)) => Some(KeyQuota {
            limit: u64::try_from(limit).map_err(|_| StoreError::Corrupt("keys.quota_limit"))?,
            period_s: u64::try_from(period)
                .map_err(|_| StoreError::Corrupt("keys.quota_period"))?,
            anchor,
        }),
        _ => return Err(StoreError::Corrupt("keys.quota_limit")),
    };
    Ok(KeyLimits {
        global_limit,
        quota,
        rate_limit,
        allowed_cidrs: serde_json::from_str(&cidrs)
            .map_err(|_| StoreError::Corrupt("keys.allowed_cidrs"))?,
        not_before: row.get("not_before")?,
        not_after: row.get("not_after")?,
        allowed_principals: serde_json::from_str(&principals)
            .map_err(|_| StoreError::Corrupt("keys.allowed_principals"))?,
        allowed_countries: serde_json::from_str(&countries)
            .map_err(|_| StoreError::Corrupt("keys.allowed_countries"))?,
    })
}

pub(super) fn key_from_row(row: &StoredRow) -> Result<KeyRecord, StoreError> {
    let scopes: String = row.get("scopes")?;
    let metadata: String = row.get("metadata")?;
    Ok(KeyRecord {
        id: row.get("id")?,
        prefix: row.get("prefix")?,
        name: row.get("name")?,
        owner: row.get("owner")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| StoreError::Corrupt("keys.scopes"))?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|_| StoreError::Corrupt("keys.metadata"))?,
        digest: row.get("digest")?,
        format: row.get("format")?,
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
        grace_until: row.get("grace_until")?,
        revoked_at: row.get("revoked_at")?,
        last_used_at: row.get("last_used_at")?,
        rotated_from: row.get("rotated_from")?,
        rotated_to: row.get("rotated_to")?,
        algorithm: row.get("algorithm")?,
        signing_kid: row.get("signing_kid")?,
        limits: limits_from_row(row)?,
        roles: roles_from_row(row)?,
        last_used_address: row.get("last_used_address")?,
    })
}

/// The role names a key row holds.
pub(super) fn roles_from_row(row: &StoredRow) -> Result<Vec<String>, StoreError> {
    let roles: String = row.get("roles")?;
    serde_json::from_str(&roles).map_err(|_| StoreError::Corrupt("keys.roles"))
}

/// The JSON text of a record's role names.
pub(super) fn encode_roles(roles: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(roles).map_err(|_| StoreError::Corrupt("roles"))
}

/// The JSON texts of a record's scopes and metadata.
pub(super) fn encode_json_fields(key: &KeyRecord) -> Result<(String, String), StoreError> {
    let scopes = serde_json::to_string(&key.scopes).map_err(|_| StoreError::Corrupt("scopes"))?;
    let metadata =
        serde_json::to_string(&key.metadata).map_err(|_| StoreError::Corrupt("metadata"))?;
    Ok((scopes, metadata))
}
