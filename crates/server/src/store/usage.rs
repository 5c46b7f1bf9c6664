//! Usage analytics: per-minute counts per key, applied once per batch id.

use std::collections::BTreeSet;

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{from_row, Dialect, Sql, StoredRow, Tx, PRUNE_CHUNK};
use crate::model::{UsageCell, UsageDelta, BATCH_ID_RETENTION_S};

/// Rows per multi-row statement (well under both backends' bind-parameter limits).
const CHUNK: usize = 1000;

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
        let mut tx = self.db.begin().await?;
        let fresh = apply_in(&mut tx, batch_id, delta, now).await?;
        tx.commit().await?;
        Ok(fresh)
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
        let sql = Sql::new(
            "SELECT minute - (minute % $1) AS bucket, kind, name, \
             CAST(SUM(count) AS BIGINT) AS total FROM usage_counts \
             WHERE key_id = $2 AND minute >= $3 AND minute < $4 \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .arg(step)
        .arg(key_id)
        .arg(from)
        .arg(to);
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(cell_from_row).collect()
    }

    /// Deletes the usage counts of minutes before `before` (Unix seconds), a chunk at a time;
    /// answers how many rows went.
    pub async fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let row_id = self.db.dialect().row_id();
        let sql = Sql::new(format!(
            "DELETE FROM usage_counts WHERE {row_id} IN \
             (SELECT {row_id} FROM usage_counts WHERE minute < $1 LIMIT $2)"
        ))
        .arg(before)
        .arg(PRUNE_CHUNK);
        self.db.delete_in_chunks(&sql).await
    }

    /// The ids among `ids` that name a stored key.
    pub async fn known_key_ids(&self, ids: &[&str]) -> Result<BTreeSet<String>, StoreError> {
        let mut known = BTreeSet::new();
        for chunk in ids.chunks(CHUNK) {
            let mut sql = Sql::new("SELECT id FROM keys WHERE id IN ");
            sql.push_tuple(chunk.iter().map(|id| (*id).into()));
            for row in self.db.fetch_all(&sql).await? {
                known.insert(row.get("id")?);
            }
        }
        Ok(known)
    }

    /// Whether any usage was ever recorded for `key_id`.
    pub async fn has_usage(&self, key_id: &str) -> Result<bool, StoreError> {
        let sql =
            Sql::new("SELECT 1 AS found FROM usage_counts WHERE key_id = $1 LIMIT 1").arg(key_id);
        Ok(self.db.fetch_optional(&sql).await?.is_some())
    }
}

/// Applies a batch in the caller's transaction; answers whether `batch_id` was new.
async fn apply_in(
    tx: &mut Tx,
    batch_id: &str,
    delta: &UsageDelta,
    now: i64,
) -> Result<bool, StoreError> {
    let remember = Sql::new(
        "INSERT INTO usage_batches (batch_id, applied_at) VALUES ($1, $2) \
         ON CONFLICT (batch_id) DO NOTHING",
    )
    .arg(batch_id)
    .arg(now);
    if tx.execute(&remember).await? != 1 {
        return Ok(false);
    }
    let counts: Vec<_> = delta.counts.iter().collect();
    for chunk in counts.chunks(CHUNK) {
        let mut sql =
            Sql::new("INSERT INTO usage_counts (key_id, minute, kind, name, count) VALUES ");
        for (n, ((key_id, minute, kind, name), count)) in chunk.iter().enumerate() {
            if n > 0 {
                sql.push(", ");
            }
            sql.push_tuple([
                key_id.as_str().into(),
                (*minute).into(),
                (*kind).into(),
                name.as_str().into(),
                (**count).into(),
            ]);
        }
        sql.push(
            " ON CONFLICT (key_id, minute, kind, name) \
             DO UPDATE SET count = usage_counts.count + excluded.count",
        );
        tx.execute(&sql).await?;
    }
    let used: Vec<_> = delta.last_used.iter().collect();
    for chunk in used.chunks(CHUNK) {
        tx.execute(&last_used_query(tx.dialect(), chunk)).await?;
    }
    let forget = Sql::new("DELETE FROM usage_batches WHERE applied_at < $1")
        .arg(now.saturating_sub(BATCH_ID_RETENTION_S));
    tx.execute(&forget).await?;
    Ok(true)
}

/// Moves `last_used_at` of each (key id, time) forward to the time, never back.
fn last_used_query(dialect: Dialect, used: &[(&String, &i64)]) -> Sql {
    let greatest = dialect.greatest();
    let mut sql = Sql::new(format!(
        "UPDATE keys SET last_used_at = \
         {greatest}(COALESCE(keys.last_used_at, v.column2), v.column2) FROM (VALUES "
    ));
    for (n, (key_id, at)) in used.iter().enumerate() {
        if n > 0 {
            sql.push(", ");
        }
        sql.push_tuple([key_id.as_str().into(), (**at).into()]);
    }
    sql.push(") AS v WHERE keys.id = v.column1");
    sql
}

fn cell_from_row(row: &StoredRow) -> Result<UsageCell, StoreError> {
    Ok(from_row!(row, UsageCell { bucket, kind, name, count = "total" }))
}
