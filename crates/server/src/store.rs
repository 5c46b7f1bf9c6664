//! Persistent storage of key records and admin credentials.
//!
//! [`KeyStore`] is the one interface the API uses. SQLite is the embedded default (one
//! replica); PostgreSQL serves several replicas sharing one database. The URL picks the
//! backend: `sqlite:` or `postgres://` / `postgresql://`.
//!
//! Revoking, rotating and expiring a key also add a revocation-feed event in the same
//! transaction (see [`crate::service::feed`]), and publish its sequence number after the commit.

mod audit;
mod legacy;
mod limits;
mod postgres;
mod sqlite;
mod usage;

use keygate_core::key::KeyDigest;
use keygate_core::wire::KeyStatus;
use serde_json::{Map, Value};
use sqlx::{ColumnIndex, Decode, Row, Type};
use tokio::sync::watch;

use crate::service::feed::{EventKind, FeedRequest, RevocationEvent, RevocationFeed};
use crate::service::limits::KeyLimits;

pub use audit::{AuditClass, AuditFilter, AuditRow, NewAuditRow};
pub use legacy::{LegacyImportRow, LegacyOutcome, FORMAT_LEGACY};
pub use limits::KeyPatch;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use usage::{UsageCell, UsageDelta, BATCH_ID_RETENTION_S};

/// What can go wrong talking to the store. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported database URL scheme (expected sqlite:, postgres:// or postgresql://)")]
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
    #[error("the revocation feed state row is missing (migrations not applied?)")]
    FeedStateMissing,
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
    /// Rate limit, address allow-list and validity window, for the filter to enforce.
    pub limits: KeyLimits,
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
    Postgres(PostgresStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Self::Sqlite($store) => $call,
            Self::Postgres($store) => $call,
        }
    };
}

impl KeyStore {
    /// Opens the database at `url` (creating an SQLite file if needed) and applies migrations.
    /// On PostgreSQL this also starts the task that listens for other replicas' events.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(PostgresStore::connect(url).await?))
        } else {
            Err(StoreError::UnsupportedUrl)
        }
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        dispatch!(self, store => store.insert_key(key).await)
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        dispatch!(self, store => store.get_key(id).await)
    }

    /// Keys in creation order after `after`, at most `limit`, optionally of one status at `now`.
    pub async fn list_keys(
        &self,
        after: Option<&PageAfter>,
        limit: u32,
        status: Option<KeyStatus>,
        now: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        dispatch!(self, store => store.list_keys(after, limit, status, now).await)
    }

    /// Revokes a key (idempotent: a second revocation keeps the first time). The first
    /// revocation of a key that has not ended yet adds a `revoked` event.
    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<KeyRecord, StoreError> {
        let (record, seq) = dispatch!(self, store => store.revoke_key(id, now).await)?;
        self.published(seq);
        Ok(record)
    }

    /// Atomically ends `old_id` at `grace_until` and stores `new_key` as its successor, with a
    /// `rotated` event for `old_id`. Refuses keys that are revoked, expired or already rotated.
    pub async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        grace_until: i64,
        now: i64,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let (old, new, seq) = dispatch!(self, store => {
            store.rotate_key(old_id, new_key, grace_until, now).await
        })?;
        self.published(Some(seq));
        Ok((old, new))
    }

    /// "Expire now": sets the key's own expiry to `now`, with an `expired` event. A key that is
    /// already revoked or expired is answered unchanged (idempotent, no event).
    pub async fn expire_key(&self, id: &str, now: i64) -> Result<KeyRecord, StoreError> {
        let (record, seq) = dispatch!(self, store => store.expire_key(id, now).await)?;
        self.published(seq);
        Ok(record)
    }

    /// One answer of the revocation feed for a follower's `request` (see [`crate::service::feed`]).
    pub async fn read_feed(
        &self,
        request: FeedRequest,
        limit: usize,
        now: i64,
    ) -> Result<RevocationFeed, StoreError> {
        dispatch!(self, store => store.read_feed(request, limit, now).await)
    }

    /// Deletes the events of keys whose own expiry is before `expired_before`, and every event
    /// committed before `created_before` (raising the compaction watermark over those). Answers
    /// how many were deleted. See [`crate::service::feed::prune`].
    pub async fn compact_feed(
        &self,
        expired_before: i64,
        created_before: i64,
    ) -> Result<u64, StoreError> {
        dispatch!(self, store => store.compact_feed(expired_before, created_before).await)
    }

    /// Adds many feed events in one transaction, in order, committed at `now` (bulk loads of
    /// revocations, such as a mass revocation carried over from another system). Answers the
    /// last sequence number.
    pub async fn append_feed_events(
        &self,
        events: &[FeedEventInput],
        now: i64,
    ) -> Result<u64, StoreError> {
        let seq = dispatch!(self, store => store.append_feed_events(events, now).await)?;
        self.published(Some(seq));
        Ok(seq)
    }

    /// The highest committed sequence number, as read from the database.
    pub async fn feed_seq(&self) -> Result<u64, StoreError> {
        dispatch!(self, store => store.feed_seq().await)
    }

    /// A receiver of the latest committed sequence number: it changes after each commit of an
    /// event through this store and, on PostgreSQL, through any replica.
    pub fn subscribe_feed(&self) -> watch::Receiver<u64> {
        dispatch!(self, store => store.signal().subscribe())
    }

    /// PostgreSQL: whether the task that hears other replicas' events is connected now
    /// (it reconnects by itself). `None` on SQLite, which has no other replicas.
    pub fn feed_listener_connected(&self) -> Option<bool> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(store) => Some(store.listening()),
        }
    }

    fn published(&self, seq: Option<u64>) {
        if let Some(seq) = seq {
            dispatch!(self, store => store.signal().publish(seq));
        }
    }

    /// The active (not retired) signing key of `algorithm`, if any.
    pub async fn active_signing_key(
        &self,
        algorithm: &str,
    ) -> Result<Option<SigningKeyRow>, StoreError> {
        dispatch!(self, store => store.active_signing_key(algorithm).await)
    }

    pub async fn get_signing_key(&self, kid: &str) -> Result<Option<SigningKeyRow>, StoreError> {
        dispatch!(self, store => store.get_signing_key(kid).await)
    }

    /// Every signing key, oldest first.
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        dispatch!(self, store => store.list_signing_keys().await)
    }

    /// Stores `key` as the active key of its algorithm unless one exists already (another
    /// writer won the race); answers whether it was stored.
    pub async fn insert_first_signing_key(&self, key: &SigningKeyRow) -> Result<bool, StoreError> {
        dispatch!(self, store => store.insert_first_signing_key(key).await)
    }

    /// Atomically retires the active key of `key.algorithm` (if any) at `now` and stores `key`
    /// as the new active one. Answers the retired kid.
    pub async fn rotate_signing_key(
        &self,
        key: &SigningKeyRow,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, store => store.rotate_signing_key(key, now).await)
    }

    pub async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        dispatch!(self, store => store.count_admin_keys().await)
    }

    pub async fn insert_admin_key(
        &self,
        id: &str,
        digest: &KeyDigest,
        now: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, store => store.insert_admin_key(id, digest, now).await)
    }

    /// Digests of the admin keys that are not revoked.
    pub async fn active_admin_digests(&self) -> Result<Vec<KeyDigest>, StoreError> {
        dispatch!(self, store => store.active_admin_digests().await)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared by both backends

const KEY_COLUMNS: &str = "id, prefix, name, owner, scopes, metadata, digest, format, created_at, \
     expires_at, grace_until, revoked_at, last_used_at, rotated_from, rotated_to, algorithm, \
     signing_kid, rate_limit_rps, rate_limit_burst, allowed_cidrs, not_before, not_after";

const SIGNING_KEY_COLUMNS: &str =
    "kid, algorithm, public_jwk, private_key_enc, created_at, retired_at, not_after, signs_forever";

const EVENT_COLUMNS: &str = "seq, key_id, kind, effective_at, key_expires_at, created_at";

/// Events in one multi-row insert of [`KeyStore::append_feed_events`] (5 parameters each).
const APPEND_CHUNK: usize = 1000;

/// Why a rotation is refused, from the old key's state at `now`.
fn rotation_refusal(old: &KeyRecord, now: i64) -> Option<StoreError> {
    match old.status(now) {
        KeyStatus::Revoked => Some(StoreError::KeyRevoked),
        KeyStatus::Expired => Some(StoreError::KeyExpired),
        KeyStatus::Active if old.rotated_to.is_some() => Some(StoreError::KeyAlreadyRotated),
        KeyStatus::Active => None,
    }
}

/// The event a change adds, if any. `until` is always the key's own expiry *before* the
/// change: a JWT key stays verifiable offline until its `exp`, so the entry must live as long.
/// A key that has already ended (revoked, expired, or past its grace period) adds nothing:
/// its earlier event, if any, still covers it.
struct NewEvent {
    kind: EventKind,
    effective_at: i64,
    until: Option<i64>,
}

/// One event for [`KeyStore::append_feed_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedEventInput {
    pub id: String,
    pub kind: EventKind,
    /// Unix seconds from which the id is refused.
    pub effective_at: i64,
    /// The key's own expiry, after which the event can be dropped.
    pub until: Option<i64>,
}

fn u64_of(value: i64, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(column))
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn event_from_row<'r, R>(row: &'r R) -> Result<RevocationEvent, StoreError>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    Ok(RevocationEvent {
        seq: u64_of(row.try_get("seq")?, "revocation_events.seq")?,
        id: row.try_get("key_id")?,
        kind: EventKind::parse(&kind).ok_or(StoreError::Corrupt("revocation_events.kind"))?,
        effective_at: row.try_get("effective_at")?,
        until: row.try_get("key_expires_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn signing_key_from_row<'r, R>(row: &'r R) -> Result<SigningKeyRow, StoreError>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
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

fn key_from_row<'r, R>(row: &'r R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
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
        limits: limits::limits_from_row(row)?,
    })
}

fn encode_json_fields(key: &KeyRecord) -> Result<(String, String), StoreError> {
    let scopes = serde_json::to_string(&key.scopes).map_err(|_| StoreError::Corrupt("scopes"))?;
    let metadata =
        serde_json::to_string(&key.metadata).map_err(|_| StoreError::Corrupt("metadata"))?;
    Ok((scopes, metadata))
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
            limits: KeyLimits::default(),
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
