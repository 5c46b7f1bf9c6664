//! Login sessions (`sessions`): digests of the session id and CSRF token, never either.

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{from_row, Sql};
use crate::model::session::SessionRow;

const SESSION_COLUMNS: &str = "id_digest, csrf_digest, kind, actor, source, created_at, expires_at";

impl KeyStore {
    pub async fn insert_session(&self, row: &SessionRow) -> Result<(), StoreError> {
        let mut sql = Sql::new(format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES "));
        sql.push_tuple([
            row.id_digest.as_str().into(),
            row.csrf_digest.as_str().into(),
            row.kind.as_str().into(),
            row.actor.as_str().into(),
            row.source.as_deref().into(),
            row.created_at.into(),
            row.expires_at.into(),
        ]);
        self.db.execute(&sql).await?;
        Ok(())
    }

    /// The session whose id has this digest, if it was not deleted (it may have expired).
    pub async fn get_session(&self, id_digest: &str) -> Result<Option<SessionRow>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id_digest = $1"
        ))
        .arg(id_digest);
        let Some(row) = self.db.fetch_optional(&sql).await? else {
            return Ok(None);
        };
        Ok(Some(from_row!(
            row,
            SessionRow {
                id_digest,
                csrf_digest,
                kind,
                actor,
                source,
                created_at,
                expires_at
            }
        )))
    }

    pub async fn delete_session(&self, id_digest: &str) -> Result<(), StoreError> {
        let sql = Sql::new("DELETE FROM sessions WHERE id_digest = $1").arg(id_digest);
        self.db.execute(&sql).await?;
        Ok(())
    }

    /// Deletes the sessions that ended before `now`; answers how many went.
    pub async fn delete_expired_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let sql = Sql::new("DELETE FROM sessions WHERE expires_at <= $1").arg(now);
        self.db.execute(&sql).await
    }
}
