//! Keys' request-signing material: the `key_signing_material` table.

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{Sql, StoredRow};
use crate::model::RequestSigningRow;

const COLUMNS: &str = "key_id, alg, public_key, generation, updated_at";

fn from_row(row: &StoredRow) -> Result<RequestSigningRow, StoreError> {
    let generation: i64 = row.get("generation")?;
    Ok(RequestSigningRow {
        key_id: row.get("key_id")?,
        alg: row.get("alg")?,
        public_key: row.get("public_key")?,
        generation: u32::try_from(generation)
            .map_err(|_| StoreError::Corrupt("key_signing_material.generation"))?,
        updated_at: row.get("updated_at")?,
    })
}

impl KeyStore {
    /// The signing material of key `key_id`, if it has some (a removed one is `None`).
    pub async fn get_request_signing(
        &self,
        key_id: &str,
    ) -> Result<Option<RequestSigningRow>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {COLUMNS} FROM key_signing_material WHERE key_id = $1 AND alg IS NOT NULL"
        ))
        .arg(key_id);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Sets (registers or replaces) the signing material of key `key_id`, in a new
    /// generation; answers the row stored.
    pub async fn set_request_signing(
        &self,
        key_id: &str,
        alg: &str,
        public_key: Option<&str>,
        now: i64,
    ) -> Result<RequestSigningRow, StoreError> {
        let sql = Sql::new(format!(
            "INSERT INTO key_signing_material ({COLUMNS}) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (key_id) DO UPDATE SET alg = $5, public_key = $6, \
             generation = key_signing_material.generation + 1, updated_at = $7 \
             RETURNING {COLUMNS}"
        ))
        .arg(key_id)
        .arg(alg)
        .arg(public_key)
        .arg(now)
        .arg(alg)
        .arg(public_key)
        .arg(now);
        let row = self
            .db
            .fetch_optional(&sql)
            .await?
            .ok_or(StoreError::Corrupt("key_signing_material"))?;
        from_row(&row)
    }

    /// Removes the signing material of key `key_id` (its generation is kept); answers
    /// whether there was some.
    pub async fn remove_request_signing(&self, key_id: &str, now: i64) -> Result<bool, StoreError> {
        let sql = Sql::new(
            "UPDATE key_signing_material SET alg = NULL, public_key = NULL, updated_at = $2 \
             WHERE key_id = $1 AND alg IS NOT NULL",
        )
        .arg(key_id)
        .arg(now);
        Ok(self.db.execute(&sql).await? > 0)
    }
}
