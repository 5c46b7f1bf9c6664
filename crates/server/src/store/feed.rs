//! The revocation feed's tables (`revocation_events`, `feed_state`): adding events inside a
//! key change's transaction, reading a follower's page, compacting, bulk loads.

use super::error::{i64_of, u64_of, StoreError};
use super::handle::KeyStore;
use super::postgres;
use super::seq::{committed_seq, feed_state_of, state_query};
use super::sql::{Db, Sql, StoredRow, Tx};
use crate::model::feed::{
    self, EventKind, FeedEvent, FeedEventInput, FeedItem, FeedRequest, FeedResponse, FeedState,
    RoleEvent, RoleEventKind,
};

const EVENT_COLUMNS: &str = "seq, key_id, kind, effective_at, key_expires_at, created_at";

/// Events in one multi-row insert of [`KeyStore::append_feed_events`] (5 parameters each).
const APPEND_CHUNK: usize = 1000;

/// The event a change adds, if any. `until` is always the key's own expiry *before* the
/// change: a JWT key stays verifiable offline until its `exp`, so the entry must live as long.
/// A key that has already ended (revoked, expired, or past its grace period) adds nothing:
/// its earlier event, if any, still covers it.
pub(super) struct NewEvent {
    pub kind: EventKind,
    pub effective_at: i64,
    pub until: Option<i64>,
}

impl KeyStore {
    /// One answer of the revocation feed for a follower's `request` (see [`crate::model::feed`]).
    pub async fn read_feed(
        &self,
        request: FeedRequest,
        limit: usize,
        now: i64,
    ) -> Result<FeedResponse, StoreError> {
        // One snapshot of the state row and the events.
        let mut tx = self.db.begin_snapshot().await?;
        let state = select_feed_state(&mut tx).await?;
        let query = feed::plan(request, state, now);
        let sql = Sql::new(format!(
            "SELECT {EVENT_COLUMNS} FROM revocation_events WHERE seq > $1 AND created_at >= $2 \
             AND (key_expires_at IS NULL OR key_expires_at >= $3) ORDER BY seq LIMIT $4"
        ))
        .arg(i64_of(query.after))
        .arg(query.created_from)
        .arg(query.until_from)
        .arg(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX));
        let rows = tx.fetch_all(&sql).await?;
        let items = rows.iter().map(item_from_row).collect::<Result<_, _>>()?;
        let first_retained_at = if query.behind_pruned {
            let sql = Sql::new(
                "SELECT created_at FROM revocation_events WHERE seq > $1 ORDER BY seq LIMIT 1",
            )
            .arg(i64_of(state.compacted_through));
            tx.fetch_optional(&sql)
                .await?
                .map(|row| row.get::<i64>("created_at"))
                .transpose()?
        } else {
            None
        };
        tx.commit().await?;
        let horizon = query.horizon(first_retained_at, now);
        Ok(feed::page_items(items, state, &query, horizon, limit))
    }

    /// Deletes the events of keys whose own expiry is before `expired_before`, and every event
    /// committed before `created_before` (raising the compaction watermark over those). Answers
    /// how many were deleted.
    pub async fn compact_feed(
        &self,
        expired_before: i64,
        created_before: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        // Pruned by age: followers behind these may have missed events that still mattered.
        let sql = Sql::new(
            "SELECT COUNT(*) AS n, COALESCE(MAX(seq), 0) AS top FROM revocation_events \
             WHERE created_at < $1",
        )
        .arg(created_before);
        let row = tx.fetch_one(&sql).await?;
        let old: i64 = row.get("n")?;
        let top: i64 = row.get("top")?;
        if old > 0 {
            tx.execute(
                &Sql::new("DELETE FROM revocation_events WHERE created_at < $1")
                    .arg(created_before),
            )
            .await?;
            let greatest = self.db.dialect().greatest();
            tx.execute(
                &Sql::new(format!(
                    "UPDATE feed_state SET compacted_through = {greatest}(compacted_through, $1) \
                     WHERE id = 1"
                ))
                .arg(top),
            )
            .await?;
        }
        // Past the key's own expiry: can never matter again, to anyone.
        let ended = tx
            .execute(
                &Sql::new("DELETE FROM revocation_events WHERE key_expires_at < $1")
                    .arg(expired_before),
            )
            .await?;
        tx.commit().await?;
        Ok(u64_of(old, "revocation_events")?.saturating_add(ended))
    }

    /// Adds many feed events in one transaction, in order, committed at `now` (bulk loads of
    /// revocations, such as a mass revocation carried over from another system). Answers the
    /// last sequence number.
    pub async fn append_feed_events(
        &self,
        events: &[FeedEventInput],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut insert = Sql::new(
                "INSERT INTO revocation_events \
                 (key_id, kind, effective_at, key_expires_at, created_at) VALUES ",
            );
            for (n, event) in chunk.iter().enumerate() {
                if n > 0 {
                    insert.push(", ");
                }
                insert.push_tuple([
                    event.id.as_str().into(),
                    event.kind.as_str().into(),
                    event.effective_at.into(),
                    event.until.into(),
                    now.into(),
                ]);
            }
            tx.execute(&insert).await?;
        }
        let greatest = self.db.dialect().greatest();
        let sql = Sql::new(format!(
            "UPDATE feed_state SET last_seq = \
             {greatest}(last_seq, (SELECT COALESCE(MAX(seq), 0) FROM revocation_events)) \
             WHERE id = 1 RETURNING last_seq"
        ));
        let seq: i64 = tx.fetch_one(&sql).await?.get("last_seq")?;
        announce(&mut tx, seq).await?;
        tx.commit().await?;
        let seq = u64_of(seq, "feed_state.last_seq")?;
        self.published(Some(seq));
        Ok(seq)
    }

    /// The highest committed sequence number, as read from the database.
    pub async fn feed_seq(&self) -> Result<u64, StoreError> {
        committed_seq(&self.db).await
    }
}

/// Begins a transaction that may add a feed event: it holds the feed state row against every
/// other such transaction (across replicas on PostgreSQL) before it reads anything. So the key
/// it reads next is current, and events commit in `seq` order (a follower never sees seq 11
/// before seq 10 commits).
pub(super) async fn begin_feed_write(db: &Db) -> Result<Tx, StoreError> {
    db.begin_holding("feed_state", 1)
        .await?
        .ok_or(StoreError::FeedStateMissing)
}

/// Adds an event inside the caller's transaction; answers its sequence number.
pub(super) async fn insert_event(
    tx: &mut Tx,
    id: &str,
    event: &NewEvent,
    now: i64,
) -> Result<u64, StoreError> {
    let sql = Sql::new(
        "INSERT INTO revocation_events (key_id, kind, effective_at, key_expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING seq",
    )
    .arg(id)
    .arg(event.kind.as_str())
    .arg(event.effective_at)
    .arg(event.until)
    .arg(now);
    let seq: i64 = tx.fetch_one(&sql).await?.get("seq")?;
    tx.execute(&Sql::new("UPDATE feed_state SET last_seq = $1 WHERE id = 1").arg(seq))
        .await?;
    announce(tx, seq).await?;
    u64_of(seq, "revocation_events.seq")
}

/// PostgreSQL: tells the other replicas about `seq` when the transaction commits. (SQLite has
/// no other replicas.)
pub(super) async fn announce(tx: &mut Tx, seq: i64) -> Result<(), StoreError> {
    match tx {
        Tx::Postgres(pg) => postgres::notify(pg, seq).await,
        Tx::Sqlite(_) => Ok(()),
    }
}

async fn select_feed_state(tx: &mut Tx) -> Result<FeedState, StoreError> {
    let row = tx.fetch_optional(&state_query()).await?;
    feed_state_of(row)
}

/// The `kind` of a role change's row; its `key_id` is the role's name and its `seq` the
/// role's new version.
pub(super) const ROLE_CHANGED: &str = "role_changed";

fn item_from_row(row: &StoredRow) -> Result<FeedItem, StoreError> {
    let kind: String = row.get("kind")?;
    if kind == ROLE_CHANGED {
        let seq = u64_of(row.get("seq")?, "revocation_events.seq")?;
        return Ok(FeedItem::Role(RoleEvent {
            seq,
            kind: RoleEventKind::RoleChanged,
            role: row.get("key_id")?,
            version: seq,
            created_at: Some(feed::unix_seconds(row.get("created_at")?)),
        }));
    }
    event_from_row(row, &kind).map(FeedItem::Key)
}

fn event_from_row(row: &StoredRow, kind: &str) -> Result<FeedEvent, StoreError> {
    let until: Option<i64> = row.get("key_expires_at")?;
    Ok(FeedEvent {
        seq: u64_of(row.get("seq")?, "revocation_events.seq")?,
        id: row.get("key_id")?,
        kind: EventKind::parse(kind).ok_or(StoreError::Corrupt("revocation_events.kind"))?,
        effective_at: feed::unix_seconds(row.get("effective_at")?),
        until: until.map(feed::unix_seconds),
        created_at: Some(feed::unix_seconds(row.get("created_at")?)),
    })
}
