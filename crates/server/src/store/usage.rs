//! Usage analytics: per-minute counts per key, applied once per batch id.

use sqlx::Row;

use super::{KeyStore, StoreError};
use crate::model::{UsageCell, UsageDelta, BATCH_ID_RETENTION_S};

/// Rows per multi-row statement (well under both backends' bind-parameter limits).
const CHUNK: usize = 1000;

/// SQL placeholder `n` (1-based) of a backend.
fn placeholder(postgres: bool, n: usize) -> String {
    if postgres {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

fn insert_counts_sql(postgres: bool, rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO usage_counts (key_id, minute, kind, name, count) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let p = |i: usize| placeholder(postgres, row * 5 + i);
        sql.push_str(&format!(
            "({}, {}, {}, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5)
        ));
    }
    sql.push_str(
        " ON CONFLICT (key_id, minute, kind, name) DO UPDATE SET count = usage_counts.count + excluded.count",
    );
    sql
}

fn last_used_sql(postgres: bool, rows: usize) -> String {
    let mut values = String::new();
    for row in 0..rows {
        if row > 0 {
            values.push_str(", ");
        }
        let p = |i: usize| placeholder(postgres, row * 2 + i);
        values.push_str(&format!("({}, {})", p(1), p(2)));
    }
    if postgres {
        format!(
            "UPDATE keys SET last_used_at = GREATEST(keys.last_used_at, v.t) \
             FROM (VALUES {values}) AS v(id, t) WHERE keys.id = v.id"
        )
    } else {
        format!(
            "UPDATE keys SET last_used_at = MAX(COALESCE(keys.last_used_at, v.column2), v.column2) \
             FROM (VALUES {values}) AS v WHERE keys.id = v.column1"
        )
    }
}

/// Applies a batch in the caller's transaction `$tx` of backend `$postgres`.
macro_rules! apply_in {
    ($tx:ident, $postgres:expr, $batch_id:expr, $delta:expr, $now:expr) => {{
        let p = |n| placeholder($postgres, n);
        let fresh = sqlx::query(&format!(
            "INSERT INTO usage_batches (batch_id, applied_at) VALUES ({}, {}) \
             ON CONFLICT (batch_id) DO NOTHING",
            p(1),
            p(2)
        ))
        .bind($batch_id)
        .bind($now)
        .execute(&mut *$tx)
        .await?
        .rows_affected()
            == 1;
        if fresh {
            let counts: Vec<_> = $delta.counts.iter().collect();
            for chunk in counts.chunks(CHUNK) {
                let sql = insert_counts_sql($postgres, chunk.len());
                let mut query = sqlx::query(&sql);
                for ((key_id, minute, kind, name), count) in chunk {
                    query = query
                        .bind(key_id.as_str())
                        .bind(*minute)
                        .bind(*kind)
                        .bind(name.as_str())
                        .bind(**count);
                }
                query.execute(&mut *$tx).await?;
            }
            let used: Vec<_> = $delta.last_used.iter().collect();
            for chunk in used.chunks(CHUNK) {
                let sql = last_used_sql($postgres, chunk.len());
                let mut query = sqlx::query(&sql);
                for (key_id, at) in chunk {
                    query = query.bind(key_id.as_str()).bind(**at);
                }
                query.execute(&mut *$tx).await?;
            }
            sqlx::query(&format!(
                "DELETE FROM usage_batches WHERE applied_at < {}",
                p(1)
            ))
            .bind($now.saturating_sub(BATCH_ID_RETENTION_S))
            .execute(&mut *$tx)
            .await?;
        }
        fresh
    }};
}

const CELLS_SQLITE: &str = "SELECT minute - (minute % ?) AS bucket, kind, name, \
     CAST(SUM(count) AS BIGINT) AS total FROM usage_counts \
     WHERE key_id = ? AND minute >= ? AND minute < ? GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";
const CELLS_POSTGRES: &str = "SELECT minute - (minute % $1) AS bucket, kind, name, \
     CAST(SUM(count) AS BIGINT) AS total FROM usage_counts \
     WHERE key_id = $2 AND minute >= $3 AND minute < $4 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

impl KeyStore {
    /// Applies a usage batch in one transaction, unless `batch_id` was applied in the last
    /// [`BATCH_ID_RETENTION_S`] seconds. Answers whether it was applied now. Batch ids older
    /// than that are forgotten.
    pub async fn apply_usage(
        &self,
        batch_id: &str,
        delta: &UsageDelta,
        now: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(store) => {
                let mut tx = store.pool().begin().await?;
                let fresh = apply_in!(tx, false, batch_id, delta, now);
                tx.commit().await?;
                Ok(fresh)
            }
            Self::Postgres(store) => {
                let mut tx = store.pool().begin().await?;
                let fresh = apply_in!(tx, true, batch_id, delta, now);
                tx.commit().await?;
                Ok(fresh)
            }
        }
    }

    /// Usage of `key_id` in minutes `from <= minute < to`, summed per `step` seconds (buckets
    /// start at multiples of `step`), per kind and name. Empty buckets are absent.
    pub async fn usage_cells(
        &self,
        key_id: &str,
        from: i64,
        to: i64,
        step: i64,
    ) -> Result<Vec<UsageCell>, StoreError> {
        let rows = match self {
            Self::Sqlite(store) => {
                let rows = sqlx::query(CELLS_SQLITE)
                    .bind(step)
                    .bind(key_id)
                    .bind(from)
                    .bind(to)
                    .fetch_all(store.pool())
                    .await?;
                rows.iter().map(cell_of_sqlite).collect::<Result<_, _>>()?
            }
            Self::Postgres(store) => {
                let rows = sqlx::query(CELLS_POSTGRES)
                    .bind(step)
                    .bind(key_id)
                    .bind(from)
                    .bind(to)
                    .fetch_all(store.pool())
                    .await?;
                rows.iter()
                    .map(cell_of_postgres)
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(rows)
    }

    /// Deletes the usage counts of minutes before `before` (Unix seconds), a chunk at a time;
    /// answers how many rows went.
    pub async fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let chunk = super::audit::PRUNE_CHUNK;
        let mut deleted = 0;
        loop {
            let gone = match self {
                Self::Sqlite(store) => sqlx::query(
                    "DELETE FROM usage_counts WHERE rowid IN \
                     (SELECT rowid FROM usage_counts WHERE minute < ? LIMIT ?)",
                )
                .bind(before)
                .bind(chunk)
                .execute(store.pool())
                .await?
                .rows_affected(),
                Self::Postgres(store) => sqlx::query(
                    "DELETE FROM usage_counts WHERE ctid IN \
                     (SELECT ctid FROM usage_counts WHERE minute < $1 LIMIT $2)",
                )
                .bind(before)
                .bind(chunk)
                .execute(store.pool())
                .await?
                .rows_affected(),
            };
            deleted += gone;
            if gone < chunk.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }

    /// The ids among `ids` that name a stored key.
    pub async fn known_key_ids(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut known = std::collections::BTreeSet::new();
        for chunk in ids.chunks(CHUNK) {
            let postgres = matches!(self, Self::Postgres(_));
            let list: Vec<String> = (1..=chunk.len())
                .map(|n| placeholder(postgres, n))
                .collect();
            let sql = format!("SELECT id FROM keys WHERE id IN ({})", list.join(", "));
            let found: Vec<(String,)> = match self {
                Self::Sqlite(store) => {
                    let mut query = sqlx::query_as(&sql);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.fetch_all(store.pool()).await?
                }
                Self::Postgres(store) => {
                    let mut query = sqlx::query_as(&sql);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query.fetch_all(store.pool()).await?
                }
            };
            known.extend(found.into_iter().map(|(id,)| id));
        }
        Ok(known)
    }

    /// Whether any usage was ever recorded for `key_id`.
    pub async fn has_usage(&self, key_id: &str) -> Result<bool, StoreError> {
        let found = match self {
            Self::Sqlite(store) => {
                sqlx::query("SELECT 1 FROM usage_counts WHERE key_id = ? LIMIT 1")
                    .bind(key_id)
                    .fetch_optional(store.pool())
                    .await?
                    .is_some()
            }
            Self::Postgres(store) => {
                sqlx::query("SELECT 1 FROM usage_counts WHERE key_id = $1 LIMIT 1")
                    .bind(key_id)
                    .fetch_optional(store.pool())
                    .await?
                    .is_some()
            }
        };
        Ok(found)
    }

    /// Number of keys per status at `now`: (active, revoked, expired).
    pub async fn count_keys_by_status(&self, now: i64) -> Result<(i64, i64, i64), StoreError> {
        const SQLITE: &str = "SELECT \
             COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS revoked, \
             COALESCE(SUM(CASE WHEN revoked_at IS NULL AND COALESCE(MIN(expires_at, grace_until), expires_at, grace_until) <= ? THEN 1 ELSE 0 END), 0) AS expired, \
             COUNT(*) AS total FROM keys";
        const POSTGRES: &str = "SELECT \
             CAST(COUNT(*) FILTER (WHERE revoked_at IS NOT NULL) AS BIGINT) AS revoked, \
             CAST(COUNT(*) FILTER (WHERE revoked_at IS NULL AND LEAST(expires_at, grace_until) <= $1) AS BIGINT) AS expired, \
             CAST(COUNT(*) AS BIGINT) AS total FROM keys";
        let (revoked, expired, total): (i64, i64, i64) = match self {
            Self::Sqlite(store) => {
                let row = sqlx::query(SQLITE)
                    .bind(now)
                    .fetch_one(store.pool())
                    .await?;
                (
                    row.try_get("revoked")?,
                    row.try_get("expired")?,
                    row.try_get("total")?,
                )
            }
            Self::Postgres(store) => {
                let row = sqlx::query(POSTGRES)
                    .bind(now)
                    .fetch_one(store.pool())
                    .await?;
                (
                    row.try_get("revoked")?,
                    row.try_get("expired")?,
                    row.try_get("total")?,
                )
            }
        };
        Ok((total - revoked - expired, revoked, expired))
    }
}

fn cell_of_sqlite(row: &sqlx::sqlite::SqliteRow) -> Result<UsageCell, StoreError> {
    Ok(UsageCell {
        bucket: row.try_get("bucket")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        count: row.try_get("total")?,
    })
}

fn cell_of_postgres(row: &sqlx::postgres::PgRow) -> Result<UsageCell, StoreError> {
    Ok(UsageCell {
        bucket: row.try_get("bucket")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        count: row.try_get("total")?,
    })
}
