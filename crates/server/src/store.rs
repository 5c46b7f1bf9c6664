//! Persistent storage of key records and admin credentials.
//!
//! [`KeyStore`] is the one interface the layers above use. SQLite is the embedded default (one
//! replica); PostgreSQL serves several replicas sharing one database. The URL picks the
//! backend: `sqlite:` or `postgres://` / `postgresql://`.
//!
//! Each feature has one implementation for both databases, in its own file: `keys`, `feed`,
//! `signing`, `admin`, `limits`, `legacy`, `audit`, `usage`. Their queries are written once
//! (`sql`); the backend files (`sqlite`, `postgres`) only connect, migrate and, on
//! PostgreSQL, tell the other replicas about feed events.
//!
//! Revoking, rotating and expiring a key also add a revocation-feed event in the same
//! transaction (see [`crate::model::feed`]), and publish its sequence number after the commit.

mod admin;
mod audit;
mod feed;
mod keys;
mod legacy;
mod limits;
mod postgres;
mod signal;
mod signing;
mod sql;
mod sqlite;
mod usage;

use std::sync::Arc;

use tokio::sync::watch;

pub use signal::FeedSignal;
use sql::Db;

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
pub struct KeyStore {
    db: Db,
    /// The latest committed feed sequence number.
    signal: Arc<FeedSignal>,
    /// PostgreSQL: the task hearing the other replicas' events (aborted with the last clone).
    replicas: Option<Arc<postgres::Listener>>,
}

impl KeyStore {
    /// Opens the database at `url` (creating an SQLite file if needed) and applies migrations.
    /// On PostgreSQL this also starts the task that listens for other replicas' events.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let signal = Arc::new(FeedSignal::new(0));
        let (db, replicas) = if url.starts_with("sqlite:") {
            (Db::Sqlite(sqlite::connect(url).await?), None)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (pool, options) = postgres::connect(url).await?;
            let db = Db::Postgres(pool);
            // Listen before reading the current seq, so no commit falls in between.
            let listener = postgres::Listener::start(options, db.clone(), signal.clone()).await?;
            (db, Some(Arc::new(listener)))
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let store = Self {
            db,
            signal,
            replicas,
        };
        store.signal.publish(store.feed_seq().await?);
        Ok(store)
    }

    /// `sqlite` or `postgres`, for logs.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// A receiver of the latest committed sequence number: it changes after each commit of an
    /// event through this store and, on PostgreSQL, through any replica.
    pub fn subscribe_feed(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }

    /// PostgreSQL: whether the task that hears other replicas' events is connected now
    /// (it reconnects by itself). `None` on SQLite, which has no other replicas.
    pub fn feed_listener_connected(&self) -> Option<bool> {
        self.replicas.as_ref().map(|listener| listener.listening())
    }

    /// Wakes the long-polls after the commit of event `seq`, if any.
    fn published(&self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.signal.publish(seq);
        }
    }
}

fn u64_of(value: i64, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(column))
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// What a path into the crate starts with (spelled so that this file does not name one).
    fn root() -> String {
        ["crate", "::"].concat()
    }

    /// The modules of the crate named in the files of `module` (its file and its folder).
    fn crate_paths(module: &str) -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join(format!("{module}.rs"))];
        let folder = std::fs::read_dir(src.join(module)).unwrap();
        files.extend(folder.map(|entry| entry.unwrap().path()));
        let mut paths = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (at, _) in text.match_indices(&root()) {
                let path: String = text[at + root().len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                paths.push((file.display().to_string(), path));
            }
        }
        paths
    }

    #[test]
    fn the_store_and_the_model_import_only_the_model() {
        for module in ["store", "model"] {
            for (file, path) in crate_paths(module) {
                assert_eq!(path, "model", "{file} names {}{path}", root());
            }
        }
    }
}
