//! The audit log table (`audit_log`) on both backends, and the admin key ids it names.
//!
//! Rows are appended; the newest row has the highest id, so a page is "ids below the cursor,
//! highest first". The one row ever changed is a refused-admin row, whose count grows during
//! its minute ([`KeyStore::update_audit_detail`]); rows older than the retention are deleted
//! ([`KeyStore::prune_audit`]).

use keygate_core::key::KeyDigest;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{KeyStore, StoreError};
use crate::model::{AuditClass, AuditFilter, AuditRow, NewAuditRow};

const AUDIT_COLUMNS: &str = "id, at, action, actor, source, target, outcome, detail";

enum Bind {
    Text(String),
    Int(i64),
}

/// The list query with `placeholder(n)` for the n-th (1-based) bind, and its binds in order.
fn list_query(filter: &AuditFilter, placeholder: fn(usize) -> String) -> (String, Vec<Bind>) {
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
    let mut binds = Vec::new();
    let texts = [
        ("action", &filter.action),
        ("target", &filter.target),
        ("actor", &filter.actor),
        ("outcome", &filter.outcome),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            binds.push(Bind::Text(value.clone()));
            sql.push_str(&format!(" AND {column} = {}", placeholder(binds.len())));
        }
    }
    let ints = [
        ("at >=", filter.from),
        ("at <=", filter.to),
        ("id <", filter.before),
    ];
    for (condition, value) in ints {
        if let Some(value) = value {
            binds.push(Bind::Int(value));
            sql.push_str(&format!(" AND {condition} {}", placeholder(binds.len())));
        }
    }
    binds.push(Bind::Int(i64::from(filter.limit)));
    sql.push_str(&format!(
        " ORDER BY id DESC LIMIT {}",
        placeholder(binds.len())
    ));
    (sql, binds)
}

fn audit_from_row<'r, R>(row: &'r R) -> Result<AuditRow, StoreError>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditRow {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        action: row.try_get("action")?,
        actor: row.try_get("actor")?,
        source: row.try_get("source")?,
        target: row.try_get("target")?,
        outcome: row.try_get("outcome")?,
        detail: row.try_get("detail")?,
    })
}

/// The SQL condition selecting the rows of `class`.
fn class_condition(class: AuditClass) -> &'static str {
    match class {
        AuditClass::RefusedAdmin => "action = 'admin_auth'",
        AuditClass::Management => "action <> 'admin_auth'",
    }
}

/// Rows deleted per statement, so a long prune never holds the database's writer for long.
pub(crate) const PRUNE_CHUNK: i64 = 5_000;

impl KeyStore {
    /// Appends one row to the audit log; answers its id.
    pub async fn append_audit(&self, row: &NewAuditRow<'_>) -> Result<i64, StoreError> {
        const COLUMNS: &str = "at, action, actor, source, target, outcome, detail";
        let id = match self {
            Self::Sqlite(store) => {
                let sql = format!(
                    "INSERT INTO audit_log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id"
                );
                sqlx::query_scalar::<_, i64>(&sql)
                    .bind(row.at)
                    .bind(row.action)
                    .bind(row.actor)
                    .bind(row.source)
                    .bind(row.target)
                    .bind(row.outcome)
                    .bind(row.detail)
                    .fetch_one(store.pool())
                    .await?
            }
            Self::Postgres(store) => {
                let sql = format!(
                    "INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     RETURNING id"
                );
                sqlx::query_scalar::<_, i64>(&sql)
                    .bind(row.at)
                    .bind(row.action)
                    .bind(row.actor)
                    .bind(row.source)
                    .bind(row.target)
                    .bind(row.outcome)
                    .bind(row.detail)
                    .fetch_one(store.pool())
                    .await?
            }
        };
        Ok(id)
    }

    /// Replaces the `detail` of the audit row `id` (a refused-admin row whose count grew).
    pub async fn update_audit_detail(&self, id: i64, detail: &str) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => {
                sqlx::query("UPDATE audit_log SET detail = ? WHERE id = ?")
                    .bind(detail)
                    .bind(id)
                    .execute(store.pool())
                    .await?;
            }
            Self::Postgres(store) => {
                sqlx::query("UPDATE audit_log SET detail = $1 WHERE id = $2")
                    .bind(detail)
                    .bind(id)
                    .execute(store.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes the audit rows of `class` older than `before` (Unix seconds), a chunk at a
    /// time; answers how many went.
    pub async fn prune_audit(&self, class: AuditClass, before: i64) -> Result<u64, StoreError> {
        let condition = class_condition(class);
        let mut deleted = 0;
        loop {
            let gone = match self {
                Self::Sqlite(store) => {
                    let sql = format!(
                        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log \
                         WHERE at < ? AND {condition} ORDER BY at LIMIT ?)"
                    );
                    sqlx::query(&sql)
                        .bind(before)
                        .bind(PRUNE_CHUNK)
                        .execute(store.pool())
                        .await?
                        .rows_affected()
                }
                Self::Postgres(store) => {
                    let sql = format!(
                        "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log \
                         WHERE at < $1 AND {condition} ORDER BY at LIMIT $2)"
                    );
                    sqlx::query(&sql)
                        .bind(before)
                        .bind(PRUNE_CHUNK)
                        .execute(store.pool())
                        .await?
                        .rows_affected()
                }
            };
            deleted += gone;
            if gone < PRUNE_CHUNK.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }

    /// Audit rows matching `filter`, newest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        match self {
            Self::Sqlite(store) => {
                let (sql, binds) = list_query(filter, |_| "?".to_owned());
                let mut query = sqlx::query(&sql);
                for bind in binds {
                    query = match bind {
                        Bind::Text(text) => query.bind(text),
                        Bind::Int(int) => query.bind(int),
                    };
                }
                let rows = query.fetch_all(store.pool()).await?;
                rows.iter().map(audit_from_row).collect()
            }
            Self::Postgres(store) => {
                let (sql, binds) = list_query(filter, |n| format!("${n}"));
                let mut query = sqlx::query(&sql);
                for bind in binds {
                    query = match bind {
                        Bind::Text(text) => query.bind(text),
                        Bind::Int(int) => query.bind(int),
                    };
                }
                let rows = query.fetch_all(store.pool()).await?;
                rows.iter().map(audit_from_row).collect()
            }
        }
    }

    /// The ids and digests of the admin keys that are not revoked.
    pub async fn active_admin_keys(&self) -> Result<Vec<(String, KeyDigest)>, StoreError> {
        const SQL: &str = "SELECT id, digest FROM admin_keys WHERE revoked_at IS NULL";
        let pairs: Vec<(String, String)> = match self {
            Self::Sqlite(store) => sqlx::query_as(SQL).fetch_all(store.pool()).await?,
            Self::Postgres(store) => sqlx::query_as(SQL).fetch_all(store.pool()).await?,
        };
        pairs
            .into_iter()
            .map(|(id, hex)| {
                KeyDigest::from_hex(&hex)
                    .map(|digest| (id, digest))
                    .ok_or(StoreError::Corrupt("admin_keys.digest"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_numbers_placeholders_in_bind_order() {
        let filter = AuditFilter {
            action: Some("create".into()),
            outcome: Some("ok".into()),
            from: Some(5),
            before: Some(9),
            limit: 10,
            ..AuditFilter::default()
        };
        let (sql, binds) = list_query(&filter, |n| format!("${n}"));
        assert_eq!(
            sql,
            "SELECT id, at, action, actor, source, target, outcome, detail FROM audit_log \
             WHERE 1 = 1 AND action = $1 AND outcome = $2 AND at >= $3 AND id < $4 \
             ORDER BY id DESC LIMIT $5"
        );
        assert_eq!(binds.len(), 5);
    }
}
