//! Persistent storage of key records and admin credentials.
//!
//! [`KeyStore`] is the one interface the API uses. SQLite is the embedded default (one
//! replica); PostgreSQL serves several replicas sharing one database. The URL picks the
//! backend: `sqlite:` or `postgres://` / `postgresql://`.
//!
//! Revoking, rotating and expiring a key also add a revocation-feed event in the same
//! transaction (see [`crate::model::feed`]), and publish its sequence number after the commit.

mod audit;
mod legacy;
mod limits;
mod postgres;
mod signal;
mod sqlite;
mod usage;

use keygate_core::key::KeyDigest;
use keygate_core::wire::KeyStatus;
use sqlx::{ColumnIndex, Decode, Row, Type};
use tokio::sync::watch;

use crate::model::feed::{EventKind, FeedEventInput, FeedRequest, RevocationEvent, RevocationFeed};
use crate::model::{KeyRecord, PageAfter, SigningKeyRow};

pub use postgres::PostgresStore;
pub use signal::FeedSignal;
pub use sqlite::SqliteStore;

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

    /// One answer of the revocation feed for a follower's `request` (see [`crate::model::feed`]).
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
    /// how many were deleted. See [`crate::feed::prune`].
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
