//! What can go wrong talking to the store, and the checked conversions of stored numbers.

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
    #[error("no such role")]
    RoleNotFound,
    #[error("a role with this name exists")]
    RoleExists,
    #[error("the role is held by keys")]
    RoleInUse,
    #[error("too many roles")]
    TooManyRoles,
    #[error("a role the key would hold does not exist")]
    UnknownRole(String),
}

/// A stored non-negative number, or [`StoreError::Corrupt`] naming `column`.
pub(super) fn u64_of(value: i64, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(column))
}

/// A number to store; saturates (sequence numbers never get near it).
pub(super) fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
