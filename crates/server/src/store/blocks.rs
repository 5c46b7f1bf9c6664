//! Blocked client addresses (`address_blocks`): operator blocks and reported automatic ones.
//! Ended blocks are never answered; they are deleted now and then ([`KeyStore::prune_blocks`]).

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{Sql, StoredRow};
use crate::model::block::{BlockRecord, BlockSource, MAX_LISTED_BLOCKS, MAX_OPERATOR_BLOCKS};

const BLOCK_COLUMNS: &str =
    "id, cidr, source, reason, created_by, failures, created_at, expires_at";

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl KeyStore {
    /// Stores a block; answers it with its id.
    pub async fn insert_block(&self, block: &BlockRecord) -> Result<BlockRecord, StoreError> {
        let sql = Sql::new(
            "INSERT INTO address_blocks \
             (cidr, source, reason, created_by, failures, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .arg(block.cidr.as_str())
        .arg(block.source.as_str())
        .arg(block.reason.as_str())
        .arg(block.created_by.as_deref())
        .arg(block.failures)
        .arg(block.created_at)
        .arg(block.expires_at);
        let id: i64 = self.db.fetch_one(&sql).await?.get("id")?;
        Ok(BlockRecord {
            id,
            ..block.clone()
        })
    }

    /// The blocks in force at `now`, newest first (at most [`MAX_LISTED_BLOCKS`]).
    pub async fn list_blocks(&self, now: i64) -> Result<Vec<BlockRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {BLOCK_COLUMNS} FROM address_blocks WHERE expires_at > $1 \
             AND lifted_at IS NULL ORDER BY id DESC LIMIT $2"
        ))
        .arg(now)
        .arg(limit(MAX_LISTED_BLOCKS));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(block_from_row).collect()
    }

    /// The operator blocks in force at `now`, oldest first (at most [`MAX_OPERATOR_BLOCKS`]).
    pub async fn operator_blocks(&self, now: i64) -> Result<Vec<BlockRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {BLOCK_COLUMNS} FROM address_blocks WHERE source = 'operator' \
             AND expires_at > $1 ORDER BY id LIMIT $2"
        ))
        .arg(now)
        .arg(limit(MAX_OPERATOR_BLOCKS));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(block_from_row).collect()
    }

    /// Operator blocks in force at `now` (to bound them).
    pub async fn count_operator_blocks(&self, now: i64) -> Result<usize, StoreError> {
        let sql = Sql::new(
            "SELECT COUNT(*) AS n FROM address_blocks WHERE source = 'operator' \
             AND expires_at > $1",
        )
        .arg(now);
        let n: i64 = self.db.fetch_one(&sql).await?.get("n")?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The automatic blocks an operator lifted that would still be in force at `now`: each
    /// network once, with the latest end of its lifted blocks (at most
    /// [`MAX_OPERATOR_BLOCKS`], the latest ending first).
    pub async fn lifted_blocks(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = Sql::new(
            "SELECT cidr, MAX(expires_at) AS until FROM address_blocks \
             WHERE source = 'automatic' AND lifted_at IS NOT NULL AND expires_at > $1 \
             GROUP BY cidr ORDER BY until DESC LIMIT $2",
        )
        .arg(now)
        .arg(limit(MAX_OPERATOR_BLOCKS));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter()
            .map(|row| Ok((row.get("cidr")?, row.get("until")?)))
            .collect()
    }

    /// Lifts every automatic block of `cidr` in force at `now` (they stay, marked, until
    /// they end); answers how many.
    pub async fn lift_automatic_blocks(&self, cidr: &str, now: i64) -> Result<u64, StoreError> {
        self.db
            .execute(
                &Sql::new(
                    "UPDATE address_blocks SET lifted_at = $2 WHERE source = 'automatic' \
                     AND cidr = $1 AND lifted_at IS NULL AND expires_at > $2",
                )
                .arg(cidr)
                .arg(now),
            )
            .await
    }

    /// Block `id` if it is in force (not lifted), or `None`.
    pub async fn get_block(&self, id: i64) -> Result<Option<BlockRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {BLOCK_COLUMNS} FROM address_blocks WHERE id = $1 AND lifted_at IS NULL"
        ))
        .arg(id);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(block_from_row).transpose()
    }

    /// Deletes block `id`; answers it, or `None` when there is none.
    pub async fn delete_block(&self, id: i64) -> Result<Option<BlockRecord>, StoreError> {
        let sql = Sql::new(format!(
            "DELETE FROM address_blocks WHERE id = $1 RETURNING {BLOCK_COLUMNS}"
        ))
        .arg(id);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(block_from_row).transpose()
    }

    /// Deletes the blocks that ended before `before`; answers how many.
    pub async fn prune_blocks(&self, before: i64) -> Result<u64, StoreError> {
        self.db
            .execute(&Sql::new("DELETE FROM address_blocks WHERE expires_at < $1").arg(before))
            .await
    }
}

fn block_from_row(row: &StoredRow) -> Result<BlockRecord, StoreError> {
    let source: String = row.get("source")?;
    Ok(BlockRecord {
        id: row.get("id")?,
        cidr: row.get("cidr")?,
        source: BlockSource::parse(&source).ok_or(StoreError::Corrupt("address_blocks.source"))?,
        reason: row.get("reason")?,
        created_by: row.get("created_by")?,
        failures: row.get("failures")?,
        created_at: row.get("created_at")?,
        expires_at: row.get("expires_at")?,
    })
}
