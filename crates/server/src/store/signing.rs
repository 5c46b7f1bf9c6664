//! The keys the service signs JWT API keys with (`signing_keys`): one active key per
//! algorithm, retired ones kept while tokens they signed may still be verified.

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{from_row, Sql, StoredRow, Tx};
use crate::model::SigningKeyRow;

const SIGNING_KEY_COLUMNS: &str =
    "kid, algorithm, public_jwk, private_key_enc, created_at, retired_at, not_after, signs_forever";

impl KeyStore {
    /// The active (not retired) signing key of `algorithm`, if any.
    pub async fn active_signing_key(
        &self,
        algorithm: &str,
    ) -> Result<Option<SigningKeyRow>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys \
             WHERE algorithm = $1 AND retired_at IS NULL"
        ))
        .arg(algorithm);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(signing_key_from_row).transpose()
    }

    pub async fn get_signing_key(&self, kid: &str) -> Result<Option<SigningKeyRow>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE kid = $1"
        ))
        .arg(kid);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(signing_key_from_row).transpose()
    }

    /// Every signing key, oldest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid"
        ));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(signing_key_from_row).collect()
    }

    /// Stores `key` as the active key of its algorithm unless one exists already (another
    /// writer won the race); answers whether it was stored.
    pub async fn insert_first_signing_key(&self, key: &SigningKeyRow) -> Result<bool, StoreError> {
        // The partial unique index allows one active key per algorithm; a loser is ignored.
        let inserted = self
            .db
            .execute(&insert_query(key, " ON CONFLICT DO NOTHING"))
            .await?;
        Ok(inserted == 1)
    }

    /// Atomically retires the active key of `key.algorithm` (if any) at `now` and stores `key`
    /// as the new active one. Answers the retired kid.
    pub async fn rotate_signing_key(
        &self,
        key: &SigningKeyRow,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.db.begin().await?;
        let retire = Sql::new(
            "UPDATE signing_keys SET retired_at = $1 \
             WHERE algorithm = $2 AND retired_at IS NULL RETURNING kid",
        )
        .arg(now)
        .arg(key.algorithm.as_str());
        let retired = tx
            .fetch_optional(&retire)
            .await?
            .map(|row| row.get::<String>("kid"))
            .transpose()?;
        tx.execute(&insert_query(key, "")).await?;
        tx.commit().await?;
        Ok(retired)
    }
}

/// Keeps the signing key `kid` published until `expires_at` at least, or for good if the
/// token it signed never expires. Runs inside the caller's transaction.
pub(super) async fn extend_publication(
    tx: &mut Tx,
    kid: &str,
    expires_at: Option<i64>,
) -> Result<(), StoreError> {
    let sql = match expires_at {
        Some(exp) => {
            let greatest = tx.dialect().greatest();
            Sql::new(format!(
                "UPDATE signing_keys SET not_after = {greatest}(COALESCE(not_after, $1), $1) \
                 WHERE kid = $2"
            ))
            .arg(exp)
            .arg(kid)
        }
        None => Sql::new("UPDATE signing_keys SET signs_forever = TRUE WHERE kid = $1").arg(kid),
    };
    if tx.execute(&sql).await? != 1 {
        return Err(StoreError::SigningKeyNotFound);
    }
    Ok(())
}

fn insert_query(key: &SigningKeyRow, on_conflict: &str) -> Sql {
    let mut sql = Sql::new(format!(
        "INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES "
    ));
    sql.push_tuple([
        key.kid.as_str().into(),
        key.algorithm.as_str().into(),
        key.public_jwk.as_str().into(),
        key.private_key_enc.as_slice().into(),
        key.created_at.into(),
        key.retired_at.into(),
        key.not_after.into(),
        key.signs_forever.into(),
    ])
    .push(on_conflict);
    sql
}

fn signing_key_from_row(row: &StoredRow) -> Result<SigningKeyRow, StoreError> {
    Ok(from_row!(
        row,
        SigningKeyRow {
            kid,
            algorithm,
            public_jwk,
            private_key_enc,
            created_at,
            retired_at,
            not_after,
            signs_forever
        }
    ))
}
