//! Per-key limits in the `keys` table, and key updates (`PATCH /api/v1/auth/keys/{id}`).

use keygate_core::wire::RateLimit;

use super::keys::{encode_json_fields, key_from_row, KEY_COLUMNS};
use super::sql::{Sql, StoredRow};
use super::{KeyStore, StoreError};
use crate::model::{KeyLimits, KeyPatch, KeyRecord};

/// The limit columns of a key record, as bound into SQL.
pub(super) struct LimitColumns {
    pub rate_limit_rps: Option<f64>,
    pub rate_limit_burst: Option<i64>,
    pub allowed_cidrs: String,
    pub not_before: Option<i64>,
    pub not_after: Option<i64>,
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
    Ok(KeyLimits {
        rate_limit,
        allowed_cidrs: serde_json::from_str(&cidrs)
            .map_err(|_| StoreError::Corrupt("keys.allowed_cidrs"))?,
        not_before: row.get("not_before")?,
        not_after: row.get("not_after")?,
    })
}

impl KeyStore {
    /// Applies `patch` to key `id` atomically (a concurrent update is not lost); answers the
    /// updated record. `check` may refuse the result (nothing is written then).
    pub async fn update_key<E>(
        &self,
        id: &str,
        patch: &KeyPatch,
        check: impl FnOnce(&KeyRecord) -> Result<(), E>,
    ) -> Result<Result<KeyRecord, E>, StoreError> {
        let mut tx = self
            .db
            .begin_holding("keys", id)
            .await?
            .ok_or(StoreError::KeyNotFound)?;
        let select = Sql::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1")).arg(id);
        let mut record = key_from_row(&tx.fetch_one(&select).await?)?;
        patch.apply(&mut record);
        if let Err(refusal) = check(&record) {
            return Ok(Err(refusal));
        }
        let (scopes, metadata) = encode_json_fields(&record)?;
        let limits = LimitColumns::of(&record.limits)?;
        let update = Sql::new(
            "UPDATE keys SET name = $1, scopes = $2, metadata = $3, rate_limit_rps = $4, \
             rate_limit_burst = $5, allowed_cidrs = $6, not_before = $7, not_after = $8 \
             WHERE id = $9",
        )
        .arg(record.name.as_str())
        .arg(scopes)
        .arg(metadata)
        .arg(limits.rate_limit_rps)
        .arg(limits.rate_limit_burst)
        .arg(limits.allowed_cidrs)
        .arg(limits.not_before)
        .arg(limits.not_after)
        .arg(record.id.as_str());
        tx.execute(&update).await?;
        tx.commit().await?;
        Ok(Ok(record))
    }
}
