//! Admin credentials (`admin_keys`): their digests, never the keys.

use keygate_core::key::KeyDigest;

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::Sql;

impl KeyStore {
    pub async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        let sql = Sql::new("SELECT COUNT(*) AS n FROM admin_keys");
        self.db.fetch_one(&sql).await?.get("n")
    }

    pub async fn insert_admin_key(
        &self,
        id: &str,
        digest: &KeyDigest,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = Sql::new("INSERT INTO admin_keys (id, digest, created_at) VALUES ($1, $2, $3)")
            .arg(id)
            .arg(digest.to_hex())
            .arg(now);
        self.db.execute(&sql).await?;
        Ok(())
    }

    /// Digests of the admin keys that are not revoked.
    pub async fn active_admin_digests(&self) -> Result<Vec<KeyDigest>, StoreError> {
        let keys = self.active_admin_keys().await?;
        Ok(keys.into_iter().map(|(_, digest)| digest).collect())
    }

    /// The ids and digests of the admin keys that are not revoked.
    pub async fn active_admin_keys(&self) -> Result<Vec<(String, KeyDigest)>, StoreError> {
        let sql = Sql::new("SELECT id, digest FROM admin_keys WHERE revoked_at IS NULL");
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter()
            .map(|row| {
                let hex: String = row.get("digest")?;
                let digest =
                    KeyDigest::from_hex(&hex).ok_or(StoreError::Corrupt("admin_keys.digest"))?;
                Ok((row.get("id")?, digest))
            })
            .collect()
    }
}
