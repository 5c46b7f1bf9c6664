//! Per-key limits in the `keys` table, and key updates (`PATCH /api/v1/auth/keys/{id}`).

use keygate_core::wire::RateLimit;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{encode_json_fields, KeyStore, StoreError};
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

pub(super) fn limits_from_row<'r, R>(row: &'r R) -> Result<KeyLimits, StoreError>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let rps: Option<f64> = row.try_get("rate_limit_rps")?;
    let burst: Option<i64> = row.try_get("rate_limit_burst")?;
    let rate_limit = match (rps, burst) {
        (None, None) => None,
        (Some(requests_per_second), Some(burst)) => Some(RateLimit {
            requests_per_second,
            burst: u32::try_from(burst)
                .map_err(|_| StoreError::Corrupt("keys.rate_limit_burst"))?,
        }),
        _ => return Err(StoreError::Corrupt("keys.rate_limit_rps")),
    };
    let cidrs: String = row.try_get("allowed_cidrs")?;
    Ok(KeyLimits {
        rate_limit,
        allowed_cidrs: serde_json::from_str(&cidrs)
            .map_err(|_| StoreError::Corrupt("keys.allowed_cidrs"))?,
        not_before: row.try_get("not_before")?,
        not_after: row.try_get("not_after")?,
    })
}

const UPDATE_SQLITE: &str = "UPDATE keys SET name = ?, scopes = ?, metadata = ?, \
     rate_limit_rps = ?, rate_limit_burst = ?, allowed_cidrs = ?, not_before = ?, not_after = ? \
     WHERE id = ?";
const UPDATE_POSTGRES: &str = "UPDATE keys SET name = $1, scopes = $2, metadata = $3, \
     rate_limit_rps = $4, rate_limit_burst = $5, allowed_cidrs = $6, not_before = $7, \
     not_after = $8 WHERE id = $9";

macro_rules! bind_update {
    ($sql:expr, $record:expr, $scopes:expr, $metadata:expr, $limits:expr) => {
        sqlx::query($sql)
            .bind($record.name.as_str())
            .bind($scopes)
            .bind($metadata)
            .bind($limits.rate_limit_rps)
            .bind($limits.rate_limit_burst)
            .bind($limits.allowed_cidrs)
            .bind($limits.not_before)
            .bind($limits.not_after)
            .bind($record.id.as_str())
    };
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
        let select = format!("SELECT {} FROM keys WHERE id = ", super::KEY_COLUMNS);
        match self {
            Self::Sqlite(store) => {
                let mut tx = store.pool().begin().await?;
                // Write first, so this transaction holds the write lock before it reads.
                let found = sqlx::query("UPDATE keys SET id = id WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if found != 1 {
                    return Err(StoreError::KeyNotFound);
                }
                let row = sqlx::query(&format!("{select}?"))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut record = super::key_from_row(&row)?;
                patch.apply(&mut record);
                if let Err(refusal) = check(&record) {
                    return Ok(Err(refusal));
                }
                let (scopes, metadata) = encode_json_fields(&record)?;
                let limits = LimitColumns::of(&record.limits)?;
                bind_update!(UPDATE_SQLITE, record, scopes, metadata, limits)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Ok(record))
            }
            Self::Postgres(store) => {
                let mut tx = store.pool().begin().await?;
                let row = sqlx::query(&format!("{select}$1 FOR UPDATE"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::KeyNotFound)?;
                let mut record = super::key_from_row(&row)?;
                patch.apply(&mut record);
                if let Err(refusal) = check(&record) {
                    return Ok(Err(refusal));
                }
                let (scopes, metadata) = encode_json_fields(&record)?;
                let limits = LimitColumns::of(&record.limits)?;
                bind_update!(UPDATE_POSTGRES, record, scopes, metadata, limits)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Ok(record))
            }
        }
    }
}
