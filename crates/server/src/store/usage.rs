//! Usage analytics: per-minute counts per key, applied once per batch id.

use std::collections::BTreeSet;

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{from_row, Dialect, Sql, StoredRow, Tx, PRUNE_CHUNK};
use crate::model::usage::is_breakdown;
use crate::model::{
    GatewayRow, UsageCell, UsageDelta, BATCH_ID_RETENTION_S, GATEWAY_RETENTION_S, MAX_GATEWAYS,
};

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
             CAST(SUM(count) AS BIGINT) AS total FROM \
             (SELECT minute, kind, name, count FROM usage_counts \
              WHERE key_id = $2 AND minute >= $3 AND minute < $4 \
              UNION ALL SELECT minute, kind, name, count FROM usage_breakdown \
              WHERE key_id = $5 AND minute >= $6 AND minute < $7) AS cells \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .arg(step)
        .arg(key_id)
        .arg(from)
        .arg(to)
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
        let mut deleted = 0;
        for table in ["usage_counts", "usage_breakdown"] {
            let sql = Sql::new(format!(
                "DELETE FROM {table} WHERE {row_id} IN \
                 (SELECT {row_id} FROM {table} WHERE minute < $1 LIMIT $2)"
            ))
            .arg(before)
            .arg(PRUNE_CHUNK);
            deleted += self.db.delete_in_chunks(&sql).await?;
        }
        Ok(deleted)
    }

    /// Notes a feed request of `gateway` asking from `sequence` (then bounds the table).
    pub async fn gateway_polled(
        &self,
        gateway: &str,
        sequence: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = Sql::new(
            "INSERT INTO gateways (gateway, last_seen_at, last_feed_sequence, last_feed_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (gateway) DO UPDATE SET \
             last_seen_at = excluded.last_seen_at, \
             last_feed_sequence = excluded.last_feed_sequence, \
             last_feed_at = excluded.last_feed_at",
        )
        .arg(gateway)
        .arg(now)
        .arg(sequence)
        .arg(now);
        self.note_gateway(&sql, now).await
    }

    /// Notes a usage batch of `rows` rows from `gateway` (then bounds the table).
    pub async fn gateway_reported(
        &self,
        gateway: &str,
        rows: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let sql = Sql::new(
            "INSERT INTO gateways (gateway, last_seen_at, last_usage_batch_at, last_usage_rows) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (gateway) DO UPDATE SET \
             last_seen_at = excluded.last_seen_at, \
             last_usage_batch_at = excluded.last_usage_batch_at, \
             last_usage_rows = excluded.last_usage_rows",
        )
        .arg(gateway)
        .arg(now)
        .arg(now)
        .arg(rows);
        self.note_gateway(&sql, now).await
    }

    /// Runs `upsert`, then forgets gateways unseen for [`GATEWAY_RETENTION_S`] and all but the
    /// [`MAX_GATEWAYS`] most recently seen.
    async fn note_gateway(&self, upsert: &Sql, now: i64) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        tx.execute(upsert).await?;
        let old = Sql::new("DELETE FROM gateways WHERE last_seen_at < $1")
            .arg(now.saturating_sub(GATEWAY_RETENTION_S));
        tx.execute(&old).await?;
        let beyond = Sql::new(
            "DELETE FROM gateways WHERE gateway NOT IN \
             (SELECT gateway FROM gateways ORDER BY last_seen_at DESC, gateway LIMIT $1)",
        )
        .arg(MAX_GATEWAYS);
        tx.execute(&beyond).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The gateways seen in the last [`GATEWAY_RETENTION_S`], most recently seen first.
    pub async fn gateways(&self, now: i64) -> Result<Vec<GatewayRow>, StoreError> {
        let sql = Sql::new(
            "SELECT gateway, last_seen_at, last_feed_sequence, last_feed_at, \
             last_usage_batch_at, last_usage_rows FROM gateways WHERE last_seen_at >= $1 \
             ORDER BY last_seen_at DESC, gateway LIMIT $2",
        )
        .arg(now.saturating_sub(GATEWAY_RETENTION_S))
        .arg(MAX_GATEWAYS);
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter()
            .map(|row| {
                Ok(from_row!(
                    row,
                    GatewayRow {
                        gateway,
                        last_seen_at,
                        last_feed_sequence,
                        last_feed_at,
                        last_usage_batch_at,
                        last_usage_rows,
                    }
                ))
            })
            .collect()
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
    let (breakdown, counts): (Vec<_>, Vec<_>) = delta
        .counts
        .iter()
        .partition(|((_, _, kind, _), _)| is_breakdown(kind));
    for (table, cells) in [("usage_counts", counts), ("usage_breakdown", breakdown)] {
        insert_cells(tx, table, &cells).await?;
    }
    let used: Vec<_> = delta.last_used.iter().collect();
    for chunk in used.chunks(CHUNK) {
        tx.execute(&last_used_query(tx.dialect(), chunk)).await?;
    }
    let addresses: Vec<_> = delta.last_used_address.iter().collect();
    for chunk in addresses.chunks(CHUNK) {
        tx.execute(&last_address_query(chunk)).await?;
    }
    let forget = Sql::new("DELETE FROM usage_batches WHERE applied_at < $1")
        .arg(now.saturating_sub(BATCH_ID_RETENTION_S));
    tx.execute(&forget).await?;
    Ok(true)
}

/// A usage cell: (key id, minute, kind, name) and its count.
type CellRef<'a> = (&'a (String, i64, &'static str, String), &'a i64);

/// Adds `cells` to the counts of `table` (`usage_counts` or `usage_breakdown`).
async fn insert_cells(tx: &mut Tx, table: &str, cells: &[CellRef<'_>]) -> Result<(), StoreError> {
    for chunk in cells.chunks(CHUNK) {
        let mut sql = Sql::new(format!(
            "INSERT INTO {table} (key_id, minute, kind, name, count) VALUES "
        ));
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
        sql.push(&format!(
            " ON CONFLICT (key_id, minute, kind, name) \
             DO UPDATE SET count = {table}.count + excluded.count"
        ));
        tx.execute(&sql).await?;
    }
    Ok(())
}

/// Sets `last_used_address` of each (key id, (time, address)) whose time is in the minute of
/// the key's last use or later (a use counted later may have named no address).
fn last_address_query(used: &[(&String, &(i64, String))]) -> Sql {
    let mut sql = Sql::new("UPDATE keys SET last_used_address = v.column3 FROM (VALUES ");
    for (n, (key_id, (at, address))) in used.iter().enumerate() {
        if n > 0 {
            sql.push(", ");
        }
        sql.push_tuple([
            key_id.as_str().into(),
            (*at).into(),
            address.as_str().into(),
        ]);
    }
    sql.push(
        ") AS v WHERE keys.id = v.column1 \
         AND v.column2 >= COALESCE(keys.last_used_at, 0) - 60",
    );
    sql
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
