//! Per-key limits in the `keys` table, and key updates (`PATCH /api/v1/auth/keys/{id}`).

use super::error::StoreError;
use super::handle::KeyStore;
use super::rows::{encode_json_fields, encode_roles, key_from_row, LimitColumns, KEY_COLUMNS};
use super::sql::Sql;
use crate::model::{KeyPatch, KeyRecord};

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
        if let Some(roles) = &patch.roles {
            super::roles::check_roles_exist(&mut tx, roles).await?;
        }
        let roles = encode_roles(&record.roles)?;
        let update = Sql::new(
            "UPDATE keys SET name = $1, scopes = $2, metadata = $3, rate_limit_rps = $4, \
             rate_limit_burst = $5, allowed_cidrs = $6, not_before = $7, not_after = $8, \
             allowed_principals = $9, roles = $11, global_rps = $12, global_burst = $13, \
             quota_limit = $14, quota_period = $15, quota_anchor = $16, \
             allowed_countries = $17 WHERE id = $10",
        )
        .arg(record.name.as_str())
        .arg(scopes)
        .arg(metadata)
        .arg(limits.rate_limit_rps)
        .arg(limits.rate_limit_burst)
        .arg(limits.allowed_cidrs)
        .arg(limits.not_before)
        .arg(limits.not_after)
        .arg(limits.allowed_principals)
        .arg(record.id.as_str())
        .arg(roles)
        .arg(limits.global_rps)
        .arg(limits.global_burst)
        .arg(limits.quota_limit)
        .arg(limits.quota_period)
        .arg(limits.quota_anchor)
        .arg(limits.allowed_countries);
        tx.execute(&update).await?;
        tx.commit().await?;
        Ok(Ok(record))
    }
}
