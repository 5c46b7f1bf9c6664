//! Owners' pooled limits: the `pools` table (one token bucket shared by an owner's keys).

use keygate_core::wire::RateLimit;

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{Sql, StoredRow};
use crate::model::Pool;

const POOL_COLUMNS: &str = "owner, rps, burst, updated_at";

fn pool_from_row(row: &StoredRow) -> Result<Pool, StoreError> {
    let burst: i64 = row.get("burst")?;
    Ok(Pool {
        owner: row.get("owner")?,
        limit: RateLimit {
            requests_per_second: row.get("rps")?,
            burst: u32::try_from(burst).map_err(|_| StoreError::Corrupt("pools.burst"))?,
        },
        updated_at: row.get("updated_at")?,
    })
}

impl KeyStore {
    /// Sets (creates or replaces) the pooled limit of `pool.owner`.
    pub async fn put_pool(&self, pool: &Pool) -> Result<(), StoreError> {
        let sql = Sql::new(format!(
            "INSERT INTO pools ({POOL_COLUMNS}) VALUES ($1, $2, $3, $4) ON CONFLICT (owner) \
             DO UPDATE SET rps = $5, burst = $6, updated_at = $7"
        ))
        .arg(pool.owner.as_str())
        .arg(Some(pool.limit.requests_per_second))
        .arg(i64::from(pool.limit.burst))
        .arg(pool.updated_at)
        .arg(Some(pool.limit.requests_per_second))
        .arg(i64::from(pool.limit.burst))
        .arg(pool.updated_at);
        self.db.execute(&sql).await?;
        Ok(())
    }

    pub async fn get_pool(&self, owner: &str) -> Result<Option<Pool>, StoreError> {
        let sql = Sql::new(format!("SELECT {POOL_COLUMNS} FROM pools WHERE owner = $1")).arg(owner);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(pool_from_row).transpose()
    }

    /// Pools in owner order after `after`, at most `limit`.
    pub async fn list_pools(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Pool>, StoreError> {
        let mut sql = Sql::new(format!("SELECT {POOL_COLUMNS} FROM pools WHERE owner > "));
        sql.push_bind(after.unwrap_or(""))
            .push(" ORDER BY owner LIMIT ")
            .push_bind(i64::from(limit));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(pool_from_row).collect()
    }

    /// Deletes the pool of `owner`; answers whether there was one.
    pub async fn delete_pool(&self, owner: &str) -> Result<bool, StoreError> {
        let sql = Sql::new("DELETE FROM pools WHERE owner = $1").arg(owner);
        Ok(self.db.execute(&sql).await? > 0)
    }
}
