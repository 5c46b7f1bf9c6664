//! The embedded SQLite backend: one file, one replica.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keygate_core::key::KeyDigest;
use keygate_core::wire::KeyStatus;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use super::FeedSignal;
use super::{
    encode_json_fields, event_from_row, i64_of, key_from_row, rotation_refusal,
    signing_key_from_row, u64_of, NewEvent, StoreError, APPEND_CHUNK, EVENT_COLUMNS, KEY_COLUMNS,
    SIGNING_KEY_COLUMNS,
};
use crate::model::feed::{self, EventKind, FeedEventInput, FeedRequest, FeedState, RevocationFeed};
use crate::model::{KeyRecord, PageAfter, SigningKeyRow};

/// The embedded SQLite backend.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    signal: Arc<FeedSignal>,
}

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
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let store = Self {
            pool,
            signal: Arc::new(FeedSignal::new(0)),
        };
        store.signal.publish(store.feed_seq().await?);
        Ok(store)
    }

    pub(super) fn signal(&self) -> &FeedSignal {
        &self.signal
    }

    /// The pool, for the audit log and legacy key queries (`store/audit.rs`, `store/legacy.rs`).
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(super) async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_key_with(&mut tx, key).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    pub(super) async fn list_keys(
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

    pub(super) async fn revoke_key(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(KeyRecord, Option<u64>), StoreError> {
        let mut tx = begin_feed_write(&self.pool).await?;
        let Some(mut record) = select_key(&mut tx, id).await? else {
            return Err(StoreError::KeyNotFound);
        };
        if record.revoked_at.is_some() {
            return Ok((record, None));
        }
        let ended = record.status(now) != KeyStatus::Active;
        sqlx::query("UPDATE keys SET revoked_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        record.revoked_at = Some(now);
        let seq = if ended {
            None
        } else {
            let event = NewEvent {
                kind: EventKind::Revoked,
                effective_at: now,
                until: record.expires_at,
            };
            Some(insert_event(&mut tx, id, &event, now).await?)
        };
        tx.commit().await?;
        Ok((record, seq))
    }

    pub(super) async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        grace_until: i64,
        now: i64,
    ) -> Result<(KeyRecord, KeyRecord, u64), StoreError> {
        let mut tx = begin_feed_write(&self.pool).await?;
        let Some(mut old) = select_key(&mut tx, old_id).await? else {
            return Err(StoreError::KeyNotFound);
        };
        if let Some(refusal) = rotation_refusal(&old, now) {
            return Err(refusal);
        }
        sqlx::query("UPDATE keys SET grace_until = ?, rotated_to = ? WHERE id = ?")
            .bind(grace_until)
            .bind(new_key.id.as_str())
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
        old.grace_until = Some(grace_until);
        old.rotated_to = Some(new_key.id.clone());
        let mut successor = new_key.clone();
        successor.rotated_from = Some(old.id.clone());
        insert_key_with(&mut tx, &successor).await?;
        let event = NewEvent {
            kind: EventKind::Rotated,
            effective_at: old.effective_expiry().unwrap_or(grace_until),
            until: old.expires_at,
        };
        let seq = insert_event(&mut tx, old_id, &event, now).await?;
        tx.commit().await?;
        Ok((old, successor, seq))
    }

    pub(super) async fn expire_key(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(KeyRecord, Option<u64>), StoreError> {
        let mut tx = begin_feed_write(&self.pool).await?;
        let Some(mut record) = select_key(&mut tx, id).await? else {
            return Err(StoreError::KeyNotFound);
        };
        if record.status(now) != KeyStatus::Active {
            return Ok((record, None));
        }
        sqlx::query("UPDATE keys SET expires_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let event = NewEvent {
            kind: EventKind::Expired,
            effective_at: now,
            until: record.expires_at,
        };
        record.expires_at = Some(now);
        let seq = insert_event(&mut tx, id, &event, now).await?;
        tx.commit().await?;
        Ok((record, Some(seq)))
    }

    pub(super) async fn read_feed(
        &self,
        request: FeedRequest,
        limit: usize,
        now: i64,
    ) -> Result<RevocationFeed, StoreError> {
        // One read transaction: a consistent snapshot of the state row and the events.
        let mut tx = self.pool.begin().await?;
        let state = select_feed_state(&mut tx).await?;
        let query = feed::plan(request, state, now);
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM revocation_events WHERE seq > ? AND created_at >= ? \
             AND (key_expires_at IS NULL OR key_expires_at >= ?) ORDER BY seq LIMIT ?"
        ))
        .bind(i64_of(query.after))
        .bind(query.created_from)
        .bind(query.until_from)
        .bind(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        let first_retained_at = if query.behind_pruned {
            sqlx::query(
                "SELECT created_at FROM revocation_events WHERE seq > ? ORDER BY seq LIMIT 1",
            )
            .bind(i64_of(state.compacted_through))
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<i64, _>("created_at"))
            .transpose()?
        } else {
            None
        };
        tx.commit().await?;
        let horizon = query.horizon(first_retained_at, now);
        Ok(feed::page(events, state, &query, horizon, limit))
    }

    pub(super) async fn compact_feed(
        &self,
        expired_before: i64,
        created_before: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = begin_feed_write(&self.pool).await?;
        // Pruned by age: followers behind these may have missed events that still mattered.
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(seq), 0) AS top FROM revocation_events \
             WHERE created_at < ?",
        )
        .bind(created_before)
        .fetch_one(&mut *tx)
        .await?;
        let old: i64 = row.try_get("n")?;
        let top: i64 = row.try_get("top")?;
        if old > 0 {
            sqlx::query("DELETE FROM revocation_events WHERE created_at < ?")
                .bind(created_before)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE feed_state SET compacted_through = MAX(compacted_through, ?) WHERE id = 1",
            )
            .bind(top)
            .execute(&mut *tx)
            .await?;
        }
        // Past the key's own expiry: can never matter again, to anyone.
        let ended = sqlx::query("DELETE FROM revocation_events WHERE key_expires_at < ?")
            .bind(expired_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(u64_of(old, "revocation_events")?.saturating_add(ended))
    }

    pub(super) async fn append_feed_events(
        &self,
        events: &[FeedEventInput],
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = begin_feed_write(&self.pool).await?;
        for chunk in events.chunks(APPEND_CHUNK) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO revocation_events \
                 (key_id, kind, effective_at, key_expires_at, created_at) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(event.id.as_str())
                    .push_bind(event.kind.as_str())
                    .push_bind(event.effective_at)
                    .push_bind(event.until)
                    .push_bind(now);
            });
            insert.build().execute(&mut *tx).await?;
        }
        let seq: i64 = sqlx::query(
            "UPDATE feed_state SET last_seq = \
             MAX(last_seq, (SELECT COALESCE(MAX(seq), 0) FROM revocation_events)) \
             WHERE id = 1 RETURNING last_seq",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("last_seq")?;
        tx.commit().await?;
        u64_of(seq, "feed_state.last_seq")
    }

    pub(super) async fn feed_seq(&self) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(select_feed_state(&mut conn).await?.last_seq)
    }

    pub(super) async fn active_signing_key(
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

    pub(super) async fn get_signing_key(
        &self,
        kid: &str,
    ) -> Result<Option<SigningKeyRow>, StoreError> {
        let sql = format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys WHERE kid = ?");
        let row = sqlx::query(&sql)
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(signing_key_from_row).transpose()
    }

    pub(super) async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let sql =
            format!("SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(signing_key_from_row).collect()
    }

    pub(super) async fn insert_first_signing_key(
        &self,
        key: &SigningKeyRow,
    ) -> Result<bool, StoreError> {
        // The partial unique index allows one active key per algorithm; a loser is ignored.
        let inserted = insert_signing_key_with(&self.pool, key, "INSERT OR IGNORE")
            .await?
            .rows_affected();
        Ok(inserted == 1)
    }

    pub(super) async fn rotate_signing_key(
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

    pub(super) async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        let count = sqlx::query("SELECT COUNT(*) FROM admin_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)?;
        Ok(count)
    }

    pub(super) async fn insert_admin_key(
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

    pub(super) async fn active_admin_digests(&self) -> Result<Vec<KeyDigest>, StoreError> {
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
pub(super) async fn insert_key_with(
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
    let (scopes, metadata) = encode_json_fields(key)?;
    let limits = super::limits::LimitColumns::of(&key.limits)?;
    sqlx::query(&format!(
        "INSERT INTO keys ({KEY_COLUMNS}) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
    .bind(limits.rate_limit_rps)
    .bind(limits.rate_limit_burst)
    .bind(limits.allowed_cidrs)
    .bind(limits.not_before)
    .bind(limits.not_after)
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

/// Begins a transaction that may add a feed event: its first statement writes the feed
/// state row, so it holds SQLite's write lock before it reads anything (no stale read, no
/// `SQLITE_BUSY` on upgrade) and events commit in `seq` order.
async fn begin_feed_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
    let mut tx = pool.begin().await?;
    let locked = sqlx::query("UPDATE feed_state SET last_seq = last_seq WHERE id = 1")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if locked != 1 {
        return Err(StoreError::FeedStateMissing);
    }
    Ok(tx)
}

async fn select_key(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Adds an event inside the caller's transaction; answers its sequence number.
async fn insert_event(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
    event: &NewEvent,
    now: i64,
) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query(
        "INSERT INTO revocation_events (key_id, kind, effective_at, key_expires_at, created_at) \
         VALUES (?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(id)
    .bind(event.kind.as_str())
    .bind(event.effective_at)
    .bind(event.until)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?
    .try_get("seq")?;
    sqlx::query("UPDATE feed_state SET last_seq = ? WHERE id = 1")
        .bind(seq)
        .execute(&mut **tx)
        .await?;
    u64_of(seq, "revocation_events.seq")
}

async fn select_feed_state(conn: &mut SqliteConnection) -> Result<FeedState, StoreError> {
    let row = sqlx::query("SELECT last_seq, compacted_through FROM feed_state WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(StoreError::FeedStateMissing)?;
    Ok(FeedState {
        last_seq: u64_of(row.try_get("last_seq")?, "feed_state.last_seq")?,
        compacted_through: u64_of(
            row.try_get("compacted_through")?,
            "feed_state.compacted_through",
        )?,
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
