//! The audit log table (`audit_log`).
//!
//! Rows are appended; the newest row has the highest id, so a page is "ids below the cursor,
//! highest first". The one row ever changed is a refused-admin row, whose count grows during
//! its minute ([`KeyStore::update_audit_detail`]); rows older than the retention are deleted
//! ([`KeyStore::prune_audit`]).

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{from_row, Sql, StoredRow, PRUNE_CHUNK};
use crate::model::{AuditClass, AuditFilter, AuditRow, NewAuditRow};

const AUDIT_COLUMNS: &str = "id, at, action, actor, source, target, outcome, detail";

impl KeyStore {
    /// Appends one row to the audit log; answers its id.
    pub async fn append_audit(&self, row: &NewAuditRow<'_>) -> Result<i64, StoreError> {
        let mut sql = Sql::new(
            "INSERT INTO audit_log (at, action, actor, source, target, outcome, detail) VALUES ",
        );
        sql.push_tuple([
            row.at.into(),
            row.action.into(),
            row.actor.into(),
            row.source.into(),
            row.target.into(),
            row.outcome.into(),
            row.detail.into(),
        ])
        .push(" RETURNING id");
        self.db.fetch_one(&sql).await?.get("id")
    }

    /// Replaces the `detail` of the audit row `id` (a refused-admin row whose count grew).
    pub async fn update_audit_detail(&self, id: i64, detail: &str) -> Result<(), StoreError> {
        let sql = Sql::new("UPDATE audit_log SET detail = $1 WHERE id = $2")
            .arg(detail)
            .arg(id);
        self.db.execute(&sql).await?;
        Ok(())
    }

    /// Deletes the audit rows of `class` older than `before` (Unix seconds), a chunk at a
    /// time; answers how many went.
    pub async fn prune_audit(&self, class: AuditClass, before: i64) -> Result<u64, StoreError> {
        let condition = class_condition(class);
        let sql = Sql::new(format!(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log \
             WHERE at < $1 AND {condition} ORDER BY at LIMIT $2)"
        ))
        .arg(before)
        .arg(PRUNE_CHUNK);
        self.db.delete_in_chunks(&sql).await
    }

    /// Audit rows matching `filter`, newest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.db.fetch_all(&list_query(filter)).await?;
        rows.iter().map(audit_from_row).collect()
    }
}

/// The SQL condition selecting the rows of `class`.
fn class_condition(class: AuditClass) -> &'static str {
    match class {
        AuditClass::RefusedAdmin => "action = 'admin_auth'",
        AuditClass::Management => "action <> 'admin_auth'",
    }
}

/// The list query of `filter`.
fn list_query(filter: &AuditFilter) -> Sql {
    let mut sql = Sql::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1"));
    let texts = [
        ("action", &filter.action),
        ("target", &filter.target),
        ("actor", &filter.actor),
        ("outcome", &filter.outcome),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            sql.push(&format!(" AND {column} = ")).push_bind(value);
        }
    }
    if let Some(owner) = &filter.owner {
        sql.push(" AND target IN (SELECT id FROM keys WHERE owner = ")
            .push_bind(owner)
            .push(")");
    }
    let ints = [
        ("at >=", filter.from),
        ("at <=", filter.to),
        ("id <", filter.before),
    ];
    for (condition, value) in ints {
        if let Some(value) = value {
            sql.push(&format!(" AND {condition} ")).push_bind(value);
        }
    }
    sql.push(" ORDER BY id DESC LIMIT ")
        .push_bind(i64::from(filter.limit));
    sql
}

fn audit_from_row(row: &StoredRow) -> Result<AuditRow, StoreError> {
    Ok(from_row!(
        row,
        AuditRow {
            id,
            at,
            action,
            actor,
            source,
            target,
            outcome,
            detail
        }
    ))
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
        let sql = list_query(&filter);
        assert_eq!(
            sql.text(),
            "SELECT id, at, action, actor, source, target, outcome, detail FROM audit_log \
             WHERE 1 = 1 AND action = $1 AND outcome = $2 AND at >= $3 AND id < $4 \
             ORDER BY id DESC LIMIT $5"
        );
        assert_eq!(sql.arg_count(), 5);
    }
}
