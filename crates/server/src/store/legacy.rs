//! Legacy keys: keys issued by an earlier system, imported by their SHA-256 digest.
//!
//! They are ordinary key rows with `format = 'legacy'` and `prefix = ''`; the filter finds
//! them by digest ([`KeyStore::get_legacy_key`]). An import applies every row in one
//! transaction; a digest already stored is updated or left as it is, never duplicated.

use keygate_core::wire::KeyStatus;

use super::{key_from_row, KeyStore, StoreError, KEY_COLUMNS};
use crate::model::{KeyRecord, LegacyImportRow, LegacyOutcome, FORMAT_LEGACY};

/// What to do with one row, given the key stored under its digest (if any).
enum Plan {
    Insert,
    Update(String),
    Answer(LegacyOutcome),
}

fn plan(row: &LegacyImportRow, stored: Option<&KeyRecord>, now: i64) -> Plan {
    let Some(stored) = stored else {
        return Plan::Insert;
    };
    if stored.format != FORMAT_LEGACY {
        return Plan::Answer(LegacyOutcome::NotLegacy);
    }
    if row.matches(stored) {
        return Plan::Answer(LegacyOutcome::Unchanged(stored.id.clone()));
    }
    if has_ended(stored, now) {
        return Plan::Answer(LegacyOutcome::Ended(stored.id.clone()));
    }
    Plan::Update(stored.id.clone())
}

/// Whether a stored key has ended for good at `now`: revoked, expired (its own expiry or the
/// end of a rotation grace), rotated, or past its `not_after`.
fn has_ended(stored: &KeyRecord, now: i64) -> bool {
    stored.status(now) != KeyStatus::Active
        || stored.rotated_to.is_some()
        || stored.limits.not_after.is_some_and(|end| end <= now)
}

/// The update of a legacy key's fields, guarded so that it touches only a key that is still
/// live when it runs (a revoke or an expiry committed since the key was read wins).
fn update_sql(postgres: bool) -> String {
    // Numbered on both backends: `now` is used three times.
    let p = |n: usize| {
        if postgres {
            format!("${n}")
        } else {
            format!("?{n}")
        }
    };
    format!(
        "UPDATE keys SET name = {}, owner = {}, scopes = {}, expires_at = {} \
         WHERE id = {} AND revoked_at IS NULL AND rotated_to IS NULL \
         AND (expires_at IS NULL OR expires_at > {now}) \
         AND (grace_until IS NULL OR grace_until > {now}) \
         AND (not_after IS NULL OR not_after > {now})",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        now = p(6),
    )
}

fn scopes_json(scopes: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(scopes).map_err(|_| StoreError::Corrupt("scopes"))
}

impl KeyStore {
    /// Imports `rows` in one transaction: a digest not stored yet becomes a legacy key with
    /// the row's `new_id`; a stored legacy key gets the row's fields. With `dry_run` nothing
    /// is kept (the transaction is rolled back), but the outcomes are the same.
    pub async fn import_legacy_keys(
        &self,
        rows: &[LegacyImportRow],
        now: i64,
        dry_run: bool,
    ) -> Result<Vec<LegacyOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(rows.len());
        match self {
            Self::Sqlite(store) => {
                let mut tx = store.pool().begin().await?;
                let select = format!("SELECT {KEY_COLUMNS} FROM keys WHERE digest = ?");
                for row in rows {
                    let stored = sqlx::query(&select)
                        .bind(row.digest.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let stored = stored.as_ref().map(key_from_row).transpose()?;
                    outcomes.push(match plan(row, stored.as_ref(), now) {
                        Plan::Insert => {
                            super::sqlite::insert_key_with(&mut tx, &row.record(now)).await?;
                            LegacyOutcome::Created(row.new_id.clone())
                        }
                        Plan::Update(id) => {
                            let updated = sqlx::query(&update_sql(false))
                                .bind(row.name.as_str())
                                .bind(row.owner.as_str())
                                .bind(scopes_json(&row.scopes)?)
                                .bind(row.expires_at)
                                .bind(id.as_str())
                                .bind(now)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                            if updated == 1 {
                                LegacyOutcome::Updated(id)
                            } else {
                                LegacyOutcome::Ended(id)
                            }
                        }
                        Plan::Answer(outcome) => outcome,
                    });
                }
                if dry_run {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
            }
            Self::Postgres(store) => {
                let mut tx = store.pool().begin().await?;
                let select = format!("SELECT {KEY_COLUMNS} FROM keys WHERE digest = $1");
                for row in rows {
                    let stored = sqlx::query(&select)
                        .bind(row.digest.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let stored = stored.as_ref().map(key_from_row).transpose()?;
                    outcomes.push(match plan(row, stored.as_ref(), now) {
                        Plan::Insert => {
                            super::postgres::insert_key_with(&mut tx, &row.record(now)).await?;
                            LegacyOutcome::Created(row.new_id.clone())
                        }
                        Plan::Update(id) => {
                            let updated = sqlx::query(&update_sql(true))
                                .bind(row.name.as_str())
                                .bind(row.owner.as_str())
                                .bind(scopes_json(&row.scopes)?)
                                .bind(row.expires_at)
                                .bind(id.as_str())
                                .bind(now)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                            if updated == 1 {
                                LegacyOutcome::Updated(id)
                            } else {
                                LegacyOutcome::Ended(id)
                            }
                        }
                        Plan::Answer(outcome) => outcome,
                    });
                }
                if dry_run {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
            }
        }
        Ok(outcomes)
    }

    /// The legacy key stored under `digest` (lowercase hex SHA-256), if any. Keys of any
    /// other format are never answered here.
    pub async fn get_legacy_key(&self, digest: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = match self {
            Self::Sqlite(store) => {
                let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE format = ? AND digest = ?");
                let row = sqlx::query(&sql)
                    .bind(FORMAT_LEGACY)
                    .bind(digest)
                    .fetch_optional(store.pool())
                    .await?;
                row.as_ref().map(key_from_row).transpose()?
            }
            Self::Postgres(store) => {
                let sql =
                    format!("SELECT {KEY_COLUMNS} FROM keys WHERE format = $1 AND digest = $2");
                let row = sqlx::query(&sql)
                    .bind(FORMAT_LEGACY)
                    .bind(digest)
                    .fetch_optional(store.pool())
                    .await?;
                row.as_ref().map(key_from_row).transpose()?
            }
        };
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> LegacyImportRow {
        LegacyImportRow {
            digest: "ab".repeat(32),
            name: "n".into(),
            owner: "o".into(),
            scopes: vec!["read:x".into()],
            expires_at: None,
            new_id: "aaaaaaaaaaaaaaaa".into(),
        }
    }

    #[test]
    fn plans_follow_the_stored_key() {
        let row = row();
        assert!(matches!(plan(&row, None, 0), Plan::Insert));
        let mut stored = row.record(0);
        stored.id = "bbbbbbbbbbbbbbbb".into();
        assert!(matches!(
            plan(&row, Some(&stored), 0),
            Plan::Answer(LegacyOutcome::Unchanged(id)) if id == "bbbbbbbbbbbbbbbb"
        ));
        stored.name = "other".into();
        assert!(matches!(plan(&row, Some(&stored), 0), Plan::Update(_)));
        stored.expires_at = Some(10);
        assert!(
            matches!(
                plan(&row, Some(&stored), 10),
                Plan::Answer(LegacyOutcome::Ended(_))
            ),
            "an expired key is not revived"
        );
        stored.expires_at = None;
        stored.limits.not_after = Some(5);
        assert!(matches!(
            plan(&row, Some(&stored), 5),
            Plan::Answer(LegacyOutcome::Ended(_))
        ));
        stored.limits.not_after = None;
        stored.revoked_at = Some(0);
        assert!(matches!(
            plan(&row, Some(&stored), 0),
            Plan::Answer(LegacyOutcome::Ended(_))
        ));
        stored.format = "opaque".into();
        assert!(matches!(
            plan(&row, Some(&stored), 0),
            Plan::Answer(LegacyOutcome::NotLegacy)
        ));
    }
}
