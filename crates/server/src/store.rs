//! Persistent storage of key records and admin credentials.
//!
//! [`KeyStore`] is the one interface the API uses. SQLite is the embedded default; another
//! backend (PostgreSQL, for several replicas) is one more variant behind the same methods.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use keygate_core::key::KeyDigest;
use keygate_core::wire::KeyStatus;
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

/// What can go wrong talking to the store. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported database URL scheme (expected sqlite:)")]
    UnsupportedUrl,
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a stored record is corrupt: column {0}")]
    Corrupt(&'static str),
    #[error("no such key")]
    KeyNotFound,
    #[error("the key is revoked")]
    KeyRevoked,
    #[error("the key is expired")]
    KeyExpired,
    #[error("the key was already rotated")]
    KeyAlreadyRotated,
    #[error("the signing key of a JWT key record does not exist")]
    SigningKeyNotFound,
}

/// Format of a key record whose plaintext is a JWT signed by the service.
pub const FORMAT_JWT: &str = "jwt";
/// Format of a key record whose plaintext is an opaque key.
pub const FORMAT_OPAQUE: &str = "opaque";

/// One issued key as stored: the digest, never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub prefix: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Hex SHA-256 of the whole key text.
    pub digest: String,
    pub format: String,
    pub created_at: i64,
    /// The key's own expiry.
    pub expires_at: Option<i64>,
    /// End of the rotation grace period, once the key has been rotated.
    pub grace_until: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// JWT keys: the signature algorithm (`ES256`, `EdDSA`, `RS256`). `None` for opaque keys.
    pub algorithm: Option<String>,
    /// JWT keys: the `kid` of the signing key that signed the token. `None` for opaque keys.
    /// Storing a record with a `signing_kid` also extends that signing key's publication
    /// (see [`SigningKeyRow::is_published`]) to the record's `expires_at`.
    pub signing_kid: Option<String>,
}

impl KeyRecord {
    /// The end of validity: the own expiry or the end of the grace period, whichever is first.
    pub fn effective_expiry(&self) -> Option<i64> {
        match (self.expires_at, self.grace_until) {
            (Some(own), Some(grace)) => Some(own.min(grace)),
            (own, grace) => own.or(grace),
        }
    }

    pub fn status(&self, now: i64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.effective_expiry().is_some_and(|end| end <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// A key the service signs JWT API keys with, as stored: the private key only encrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRow {
    pub kid: String,
    pub algorithm: String,
    /// The public JWK (RFC 7517) as JSON text.
    pub public_jwk: String,
    /// `nonce (12 bytes) || AES-256-GCM ciphertext` of the PKCS#8 DER private key.
    pub private_key_enc: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    /// The latest `exp` of a token this key signed (`None`: it signed no expiring token).
    pub not_after: Option<i64>,
    /// True once this key signed a token without `exp`: it stays published for good.
    pub signs_forever: bool,
}

impl SigningKeyRow {
    /// Whether the JWKS publishes this key at `now`: while it is active, and after it is retired
    /// until the last token it signed has expired (plus `leeway` seconds of clock skew).
    pub fn is_published(&self, now: i64, leeway: i64) -> bool {
        self.retired_at.is_none()
            || self.signs_forever
            || self
                .not_after
                .is_some_and(|end| now <= end.saturating_add(leeway))
    }
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .field("not_after", &self.not_after)
            .field("signs_forever", &self.signs_forever)
            .finish_non_exhaustive()
    }
}

/// Where a page of keys starts: after this (created_at, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageAfter {
    pub created_at: i64,
    pub id: String,
}

/// The key store. Cloning is cheap (a connection pool handle).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum KeyStore {
    Sqlite(SqliteStore),
}

impl KeyStore {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteStore::connect(url).await?))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => store.insert_key(key).await,
        }
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        match self {
            Self::Sqlite(store) => store.get_key(id).await,
        }
    }

    /// Keys in creation order after `after`, at most `limit`, optionally of one status at `now`.
    pub async fn list_keys(
        &self,
        after: Option<&PageAfter>,
        limit: u32,
        status: Option<KeyStatus>,
        now: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        match self {
            Self::Sqlite(store) => store.list_keys(after, limit, status, now).await,
        }
    }

    /// Revokes a key (idempotent: a second revocation keeps the first time).
    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<KeyRecord, StoreError> {
        match self {
            Self::Sqlite(store) => store.revoke_key(id, now).await,
        }
    }

    /// Atomically ends `old_id` at `grace_until` and stores `new_key` as its successor.
    /// Refuses keys that are revoked, expired or already rotated.
    pub async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        grace_until: i64,
        now: i64,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        match self {
            Self::Sqlite(store) => store.rotate_key(old_id, new_key, grace_until, now).await,
        }
    }

    /// The active (not retired) signing key of `algorithm`, if any.
    pub async fn active_signing_key(
        &self,
        algorithm: &str,
    ) -> Result<Option<SigningKeyRow>, StoreError> {
        match self {
            Self::Sqlite(store) => store.active_signing_key(algorithm).await,
        }
    }

    pub async fn get_signing_key(&self, kid: &str) -> Result<Option<SigningKeyRow>, StoreError> {
        match self {
            Self::Sqlite(store) => store.get_signing_key(kid).await,
        }
    }

    /// Every signing key, oldest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        match self {
            Self::Sqlite(store) => store.list_signing_keys().await,
        }
    }

    /// Stores `key` as the active key of its algorithm unless one exists already (another
    /// writer won the race); answers whether it was stored.
    pub async fn insert_first_signing_key(&self, key: &SigningKeyRow) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(store) => store.insert_first_signing_key(key).await,
        }
    }

    /// Atomically retires the active key of `key.algorithm` (if any) at `now` and stores `key`
    /// as the new active one. Answers the retired kid.
    pub async fn rotate_signing_key(
        &self,
        key: &SigningKeyRow,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Self::Sqlite(store) => store.rotate_signing_key(key, now).await,
        }
    }

    pub async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        match self {
            Self::Sqlite(store) => store.count_admin_keys().await,
        }
    }

    pub async fn insert_admin_key(
        &self,
        id: &str,
        digest: &KeyDigest,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => store.insert_admin_key(id, digest, now).await,
        }
    }

    /// Digests of the admin keys that are not revoked.
    pub async fn active_admin_digests(&self) -> Result<Vec<KeyDigest>, StoreError> {
        match self {
            Self::Sqlite(store) => store.active_admin_digests().await,
        }
    }
}

/// The embedded SQLite backend.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

const KEY_COLUMNS: &str = "id, prefix, name, owner, scopes, metadata, digest, format, created_at, \
     expires_at, grace_until, revoked_at, last_used_at, rotated_from, rotated_to, algorithm, \
     signing_kid";

const SIGNING_KEY_COLUMNS: &str =
    "kid, algorithm, public_jwk, private_key_enc, created_at, retired_at, not_after, signs_forever";

/// SQL for the effective expiry (scalar MIN is NULL if either side is NULL).
const EFFECTIVE_EXPIRY: &str = "COALESCE(MIN(expires_at, grace_until), expires_at, grace_until)";

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        create_parent_dir(options.get_filename())?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_key_with(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_keys(
        &self,
        after: Option<&PageAfter>,
        limit: u32,
        status: Option<KeyStatus>,
        now: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE 1 = 1");
        if after.is_some() {
            sql.push_str(" AND (created_at > ? OR (created_at = ? AND id > ?))");
        }
        match status {
            None => {}
            Some(KeyStatus::Revoked) => sql.push_str(" AND revoked_at IS NOT NULL"),
            Some(KeyStatus::Expired) => sql.push_str(&format!(
                " AND revoked_at IS NULL AND {EFFECTIVE_EXPIRY} IS NOT NULL AND {EFFECTIVE_EXPIRY} <= ?"
            )),
            Some(KeyStatus::Active) => sql.push_str(&format!(
                " AND revoked_at IS NULL AND ({EFFECTIVE_EXPIRY} IS NULL OR {EFFECTIVE_EXPIRY} > ?)"
            )),
        }
        sql.push_str(" ORDER BY created_at, id LIMIT ?");
        let mut query = sqlx::query(&sql);
        if let Some(after) = after {
            query = query
                .bind(after.created_at)
                .bind(after.created_at)
                .bind(after.id.as_str());
        }
        if matches!(status, Some(KeyStatus::Expired | KeyStatus::Active)) {
            query = query.bind(now);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, id: &str, now: i64) -> Result<KeyRecord, StoreError> {
        sqlx::query("UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.get_key(id).await?.ok_or(StoreError::KeyNotFound)
    }

    async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        grace_until: i64,
        now: i64,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Write first, so the transaction holds the write lock before it reads.
        let sql = format!(
            "UPDATE keys SET grace_until = ?, rotated_to = ? \
             WHERE id = ? AND revoked_at IS NULL AND rotated_to IS NULL \
             AND ({EFFECTIVE_EXPIRY} IS NULL OR {EFFECTIVE_EXPIRY} > ?)"
        );
        let updated = sqlx::query(&sql)
            .bind(grace_until)
            .bind(new_key.id.as_str())
            .bind(old_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let select = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?");
        let old_row = sqlx::query(&select)
            .bind(old_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(old) = old_row.as_ref().map(key_from_row).transpose()? else {
            return Err(StoreError::KeyNotFound);
        };
        if updated == 0 {
            return Err(match old.status(now) {
                KeyStatus::Revoked => StoreError::KeyRevoked,
                KeyStatus::Expired => StoreError::KeyExpired,
                KeyStatus::Active => StoreError::KeyAlreadyRotated,
            });
        }
        let mut successor = new_key.clone();
        successor.rotated_from = Some(old.id.clone());
        insert_key_with(&mut tx, &successor).await?;
        tx.commit().await?;
        Ok((old, successor))
    }

    async fn active_signing_key(
        &self,
        algorithm: &str,
    ) -> Result<Option<SigningKeyRow>, StoreError> {
        let sql = format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys \
             WHERE algorithm = ? AND retired_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(algorithm)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(signing_key_from_row).transpose()
    }

    async fn get_signing_key(&self, kid: &str) -> Result<Option<SigningKeyRow>, StoreError> {
        let sql = format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE kid = ?");
        let row = sqlx::query(&sql)
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(signing_key_from_row).transpose()
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let sql =
            format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(signing_key_from_row).collect()
    }

    async fn insert_first_signing_key(&self, key: &SigningKeyRow) -> Result<bool, StoreError> {
        // The partial unique index allows one active key per algorithm; a loser is ignored.
        let inserted = insert_signing_key_with(&self.pool, key, "INSERT OR IGNORE")
            .await?
            .rows_affected();
        Ok(inserted == 1)
    }

    async fn rotate_signing_key(
        &self,
        key: &SigningKeyRow,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let retired = sqlx::query(
            "UPDATE signing_keys SET retired_at = ? \
             WHERE algorithm = ? AND retired_at IS NULL RETURNING kid",
        )
        .bind(now)
        .bind(key.algorithm.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get::<String, _>("kid"))
        .transpose()?;
        insert_signing_key_with(&mut *tx, key, "INSERT").await?;
        tx.commit().await?;
        Ok(retired)
    }

    async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        let count = sqlx::query("SELECT COUNT(*) FROM admin_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?;
        Ok(count)
    }

    async fn insert_admin_key(
        &self,
        id: &str,
        digest: &KeyDigest,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO admin_keys (id, digest, created_at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(digest.to_hex())
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn active_admin_digests(&self) -> Result<Vec<KeyDigest>, StoreError> {
        let rows = sqlx::query("SELECT digest FROM admin_keys WHERE revoked_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let hex: String = row.try_get("digest")?;
                KeyDigest::from_hex(&hex).ok_or(StoreError::Corrupt("admin_keys.digest"))
            })
            .collect()
    }
}

/// Stores a key record; for a JWT key, also extends the publication of the signing key that
/// signed it to the token's expiry. Runs inside the caller's transaction.
async fn insert_key_with(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    key: &KeyRecord,
) -> Result<(), StoreError> {
    if let Some(kid) = key.signing_kid.as_deref() {
        let extended = match key.expires_at {
            Some(exp) => {
                sqlx::query(
                    "UPDATE signing_keys SET not_after = MAX(COALESCE(not_after, ?), ?) \
                     WHERE kid = ?",
                )
                .bind(exp)
                .bind(exp)
                .bind(kid)
                .execute(&mut **tx)
                .await?
            }
            None => {
                sqlx::query("UPDATE signing_keys SET signs_forever = 1 WHERE kid = ?")
                    .bind(kid)
                    .execute(&mut **tx)
                    .await?
            }
        };
        if extended.rows_affected() != 1 {
            return Err(StoreError::SigningKeyNotFound);
        }
    }
    let scopes = serde_json::to_string(&key.scopes).map_err(|_| StoreError::Corrupt("scopes"))?;
    let metadata =
        serde_json::to_string(&key.metadata).map_err(|_| StoreError::Corrupt("metadata"))?;
    sqlx::query(&format!(
        "INSERT INTO keys ({KEY_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(key.id.as_str())
    .bind(key.prefix.as_str())
    .bind(key.name.as_str())
    .bind(key.owner.as_str())
    .bind(scopes)
    .bind(metadata)
    .bind(key.digest.as_str())
    .bind(key.format.as_str())
    .bind(key.created_at)
    .bind(key.expires_at)
    .bind(key.grace_until)
    .bind(key.revoked_at)
    .bind(key.last_used_at)
    .bind(key.rotated_from.as_deref())
    .bind(key.rotated_to.as_deref())
    .bind(key.algorithm.as_deref())
    .bind(key.signing_kid.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_signing_key_with<'e, E>(
    executor: E,
    key: &SigningKeyRow,
    verb: &str,
) -> Result<sqlx::sqlite::SqliteQueryResult, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let result = sqlx::query(&format!(
        "{verb} INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(key.kid.as_str())
    .bind(key.algorithm.as_str())
    .bind(key.public_jwk.as_str())
    .bind(key.private_key_enc.as_slice())
    .bind(key.created_at)
    .bind(key.retired_at)
    .bind(key.not_after)
    .bind(key.signs_forever)
    .execute(executor)
    .await?;
    Ok(result)
}

fn signing_key_from_row(row: &SqliteRow) -> Result<SigningKeyRow, StoreError> {
    Ok(SigningKeyRow {
        kid: row.try_get("kid")?,
        algorithm: row.try_get("algorithm")?,
        public_jwk: row.try_get("public_jwk")?,
        private_key_enc: row.try_get("private_key_enc")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
        not_after: row.try_get("not_after")?,
        signs_forever: row.try_get("signs_forever")?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let scopes: String = row.try_get("scopes")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| StoreError::Corrupt("keys.scopes"))?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|_| StoreError::Corrupt("keys.metadata"))?,
        digest: row.try_get("digest")?,
        format: row.try_get("format")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        grace_until: row.try_get("grace_until")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        rotated_from: row.try_get("rotated_from")?,
        rotated_to: row.try_get("rotated_to")?,
        algorithm: row.try_get("algorithm")?,
        signing_kid: row.try_get("signing_kid")?,
    })
}

fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    let in_memory = file.as_os_str().is_empty() || file.as_os_str() == ":memory:";
    match file.parent() {
        Some(parent) if !in_memory && !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: Option<i64>, grace_until: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: "aaaaaaaaaaaaaaaa".into(),
            prefix: "kg_test_".into(),
            name: "n".into(),
            owner: String::new(),
            scopes: vec![],
            metadata: Map::new(),
            digest: "00".repeat(32),
            format: "opaque".into(),
            created_at: 0,
            expires_at,
            grace_until,
            revoked_at: None,
            last_used_at: None,
            rotated_from: None,
            rotated_to: None,
            algorithm: None,
            signing_kid: None,
        }
    }

    #[test]
    fn effective_expiry_is_the_earlier_of_own_expiry_and_grace() {
        assert_eq!(record(None, None).effective_expiry(), None);
        assert_eq!(record(Some(10), None).effective_expiry(), Some(10));
        assert_eq!(record(None, Some(20)).effective_expiry(), Some(20));
        assert_eq!(record(Some(10), Some(20)).effective_expiry(), Some(10));
        assert_eq!(record(Some(30), Some(20)).effective_expiry(), Some(20));
    }

    #[test]
    fn status_follows_revocation_then_expiry() {
        let key = record(Some(100), None);
        assert_eq!(key.status(99), KeyStatus::Active);
        assert_eq!(key.status(100), KeyStatus::Expired);
        let revoked = KeyRecord {
            revoked_at: Some(5),
            ..key
        };
        assert_eq!(revoked.status(0), KeyStatus::Revoked);
        assert_eq!(revoked.status(1000), KeyStatus::Revoked);
        assert_eq!(record(None, None).status(i64::MAX), KeyStatus::Active);
    }
}
