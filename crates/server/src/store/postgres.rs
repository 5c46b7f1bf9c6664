//! The PostgreSQL backend: several `keygate serve` replicas share one database. Particular to
//! it are connecting, migrating, and telling the other replicas about feed events; every
//! query is shared with SQLite (see [`super::sql`]).
//!
//! Sequence numbers come from an identity column; every transaction that adds an event locks
//! the feed state row first, so events commit in sequence order across replicas. Each event
//! transaction also sends `NOTIFY keygate_revocations, '<seq>'` ([`notify`]), which PostgreSQL
//! delivers at commit to every replica's listener task; that task updates the replica's feed
//! signal, so a revoke on replica A wakes the long-polls held on replica B.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::task::JoinHandle;

use super::error::StoreError;
use super::seq::committed_seq;
use super::signal::FeedSignal;
use super::sql::Db;

/// The `LISTEN`/`NOTIFY` channel of feed events; the payload is the sequence number.
pub const FEED_CHANNEL: &str = "keygate_revocations";
/// The listener reconnects after this pause at first, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens a pool on the database at `url` and applies the migrations.
pub(super) async fn connect(url: &str) -> Result<(PgPool, PgConnectOptions), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok((pool, options))
}

/// Tells every listening replica, when (and only if) the transaction on `conn` commits, that
/// the feed reached `seq`.
pub(super) async fn notify(conn: &mut PgConnection, seq: i64) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(FEED_CHANNEL)
        .bind(seq.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The task that hears the other replicas' events; aborted when the last clone of the store is
/// dropped.
#[derive(Debug)]
pub(super) struct Listener {
    task: JoinHandle<()>,
    /// Whether the task has a live connection right now.
    listening: Arc<AtomicBool>,
}

impl Listener {
    /// Starts listening and publishes every notified sequence number on `signal`. (Read the
    /// current one after this, so no commit falls in between.)
    pub(super) async fn start(
        options: PgConnectOptions,
        db: Db,
        signal: Arc<FeedSignal>,
    ) -> Result<Self, StoreError> {
        let listener = listen(&options).await?;
        let listening = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(follow_notifications(
            listener,
            options,
            db,
            signal,
            listening.clone(),
        ));
        Ok(Self { task, listening })
    }

    /// Whether this replica currently hears the other replicas' events.
    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A dedicated connection (outside the pool) listening on [`FEED_CHANNEL`].
async fn listen(options: &PgConnectOptions) -> Result<PgListener, StoreError> {
    // A pool of one that never connects by itself: PgListener takes its connection, and this
    // task (not PgListener) decides when to reconnect.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.eager_reconnect(false);
    listener.listen(FEED_CHANNEL).await?;
    Ok(listener)
}

/// Publishes every notified sequence number. When the connection drops (PostgreSQL restarted,
/// network cut), reconnects with exponential backoff and then re-reads the current sequence
/// number from the database, since notifications sent meanwhile are lost.
async fn follow_notifications(
    mut listener: PgListener,
    options: PgConnectOptions,
    db: Db,
    signal: Arc<FeedSignal>,
    listening: Arc<AtomicBool>,
) {
    loop {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                    Ok(seq) => signal.publish(seq),
                    Err(_) => tracing::warn!(
                        payload = notification.payload(),
                        "ignored a malformed revocation notification"
                    ),
                },
                Ok(None) => {
                    tracing::warn!("revocation listener lost its PostgreSQL connection");
                    break;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "revocation listener failed");
                    break;
                }
            }
        }
        listening.store(false, Ordering::Relaxed);
        drop(listener);
        listener = reconnect(&options).await;
        listening.store(true, Ordering::Relaxed);
        match committed_seq(&db).await {
            Ok(seq) => {
                tracing::info!(seq, "revocation listener reconnected");
                signal.publish(seq);
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot re-read the feed sequence after reconnecting");
            }
        }
    }
}

async fn reconnect(options: &PgConnectOptions) -> PgListener {
    let mut backoff = MIN_BACKOFF;
    loop {
        tokio::time::sleep(backoff).await;
        match listen(options).await {
            Ok(listener) => return listener,
            Err(error) => {
                tracing::debug!(error = %error, ?backoff, "revocation listener cannot reconnect yet");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
