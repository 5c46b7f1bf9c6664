//! Legacy keys: keys issued by an earlier system, imported by their SHA-256 digest.
//!
//! They are ordinary key rows with `format = 'legacy'` and `prefix = ''`; the filter finds
//! them by digest ([`KeyStore::get_legacy_key`]). An import applies every row in one
//! transaction; a digest already stored is updated or left as it is, never duplicated.

use keygate_core::wire::KeyStatus;

use super::error::StoreError;
use super::handle::KeyStore;
use super::keys::{insert_key_with, select_by_digest};
use super::sql::Sql;
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
fn update_query(row: &LegacyImportRow, id: &str, now: i64) -> Result<Sql, StoreError> {
    let scopes = serde_json::to_string(&row.scopes).map_err(|_| StoreError::Corrupt("scopes"))?;
    Ok(Sql::new(
        "UPDATE keys SET name = $1, owner = $2, scopes = $3, expires_at = $4 \
         WHERE id = $5 AND revoked_at IS NULL AND rotated_to IS NULL \
         AND (expires_at IS NULL OR expires_at > $6) \
         AND (grace_until IS NULL OR grace_until > $6) \
         AND (not_after IS NULL OR not_after > $6)",
    )
    .arg(row.name.as_str())
    .arg(row.owner.as_str())
    .arg(scopes)
    .arg(row.expires_at)
    .arg(id)
    .arg(now))
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
        let mut tx = self.db.begin().await?;
        for row in rows {
            let stored = select_by_digest(&mut tx.conn(), &row.digest, None).await?;
            outcomes.push(match plan(row, stored.as_ref(), now) {
                Plan::Insert => {
                    insert_key_with(&mut tx, &row.record(now)).await?;
                    LegacyOutcome::Created(row.new_id.clone())
                }
                Plan::Update(id) => {
                    if tx.execute(&update_query(row, &id, now)?).await? == 1 {
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
        Ok(outcomes)
    }

    /// The legacy key stored under `digest` (lowercase hex SHA-256), if any. Keys of any
    /// other format are never answered here.
    pub async fn get_legacy_key(&self, digest: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.db.acquire().await?;
        select_by_digest(&mut conn.conn(), digest, Some(FORMAT_LEGACY)).await
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
