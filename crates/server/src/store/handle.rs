//! The store handle: connecting to either database, and the signal of committed feed events.

use std::sync::Arc;

use tokio::sync::watch;

use super::error::StoreError;
use super::postgres;
use super::seq::committed_seq;
use super::signal::FeedSignal;
use super::sql::Db;
use super::sqlite;

/// The key store. Cloning is cheap (a connection pool handle).
#[derive(Clone, Debug)]
pub struct KeyStore {
    pub(super) db: Db,
    /// The latest committed feed sequence number.
    pub(super) signal: Arc<FeedSignal>,
    /// PostgreSQL: the task hearing the other replicas' events (aborted with the last clone).
    pub(super) replicas: Option<Arc<postgres::Listener>>,
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
        store.signal.publish(committed_seq(&store.db).await?);
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
    pub(super) fn published(&self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.signal.publish(seq);
        }
    }
}
