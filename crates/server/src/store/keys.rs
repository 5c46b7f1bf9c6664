//! Key records: storing, reading and listing them, and the changes that end a key (revoke,
//! rotate, expire), each with its revocation-feed event in the same transaction.

use keygate_core::wire::KeyStatus;

use super::error::StoreError;
use super::feed::{begin_feed_write, insert_event, NewEvent};
use super::handle::KeyStore;
use super::rows::{encode_json_fields, encode_roles, key_from_row, LimitColumns, KEY_COLUMNS};
use super::sql::{Conn, Sql, Tx};
use crate::model::feed::EventKind;
use crate::model::{KeyRecord, PageAfter};

impl KeyStore {
    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        insert_key_with(&mut tx, key).await?;
        tx.commit().await
    }

    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = Sql::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1")).arg(id);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// The owners of the keys with these ids (`""` for a key without one); unknown ids are
    /// left out.
    pub async fn key_owners(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut owners = std::collections::BTreeMap::new();
        for chunk in ids.chunks(500) {
            let mut sql = Sql::new("SELECT id, owner FROM keys WHERE id IN ");
            sql.push_tuple(chunk.iter().map(|id| (*id).into()));
            for row in self.db.fetch_all(&sql).await? {
                owners.insert(row.get("id")?, row.get("owner")?);
            }
        }
        Ok(owners)
    }

    /// Keys in creation order after `after`, at most `limit`, optionally of one status at `now`.
    pub async fn list_keys(
        &self,
        after: Option<&PageAfter>,
        limit: u32,
        status: Option<KeyStatus>,
        now: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.list_keys_of(after, limit, status, None, now).await
    }

    /// Like [`list_keys`](Self::list_keys), of one owner's keys only when `owner` is given.
    pub async fn list_keys_of(
        &self,
        after: Option<&PageAfter>,
        limit: u32,
        status: Option<KeyStatus>,
        owner: Option<&str>,
        now: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut sql = Sql::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE 1 = 1"));
        if let Some(owner) = owner {
            sql.push(" AND owner = ").push_bind(owner);
        }
        if let Some(after) = after {
            let created_at = sql.param(after.created_at);
            sql.push(&format!(
                " AND (created_at > {created_at} OR (created_at = {created_at} AND id > "
            ))
            .push_bind(after.id.as_str())
            .push("))");
        }
        let expiry = self.db.dialect().effective_expiry();
        match status {
            None => {}
            Some(KeyStatus::Revoked) => {
                sql.push(" AND revoked_at IS NOT NULL");
            }
            Some(KeyStatus::Expired) => {
                sql.push(&format!(
                    " AND revoked_at IS NULL AND {expiry} IS NOT NULL AND {expiry} <= "
                ))
                .push_bind(now);
            }
            Some(KeyStatus::Active) => {
                sql.push(&format!(
                    " AND revoked_at IS NULL AND ({expiry} IS NULL OR {expiry} > "
                ))
                .push_bind(now)
                .push(")");
            }
        }
        sql.push(" ORDER BY created_at, id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Revokes a key (idempotent: a second revocation keeps the first time). The first
    /// revocation of a key that has not ended yet adds a `revoked` event.
    pub async fn revoke_key(&self, id: &str, now: i64) -> Result<KeyRecord, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        let Some(mut record) = select_key(&mut tx, id).await? else {
            return Err(StoreError::KeyNotFound);
        };
        if record.revoked_at.is_some() {
            return Ok(record);
        }
        let ended = record.status(now) != KeyStatus::Active;
        tx.execute(
            &Sql::new("UPDATE keys SET revoked_at = $1 WHERE id = $2")
                .arg(now)
                .arg(id),
        )
        .await?;
        record.revoked_at = Some(now);
        let seq = if ended {
            None
        } else {
            let event = NewEvent {
                kind: EventKind::Revoked,
                effective_at: now,
                until: record.expires_at,
            };
            Some(insert_event(&mut tx, id, &event, now).await?)
        };
        tx.commit().await?;
        self.published(seq);
        Ok(record)
    }

    /// Atomically ends `old_id` at `grace_until` and stores `new_key` as its successor, with a
    /// `rotated` event for `old_id`. Refuses keys that are revoked, expired or already rotated.
    pub async fn rotate_key(
        &self,
        old_id: &str,
        new_key: &KeyRecord,
        grace_until: i64,
        now: i64,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        let Some(mut old) = select_key(&mut tx, old_id).await? else {
            return Err(StoreError::KeyNotFound);
        };
        if let Some(refusal) = rotation_refusal(&old, now) {
            return Err(refusal);
        }
        tx.execute(
            &Sql::new("UPDATE keys SET grace_until = $1, rotated_to = $2 WHERE id = $3")
                .arg(grace_until)
                .arg(new_key.id.as_str())
                .arg(old_id),
        )
        .await?;
        old.grace_until = Some(grace_until);
        old.rotated_to = Some(new_key.id.clone());
        let mut successor = new_key.clone();
        successor.rotated_from = Some(old.id.clone());
        insert_key_with(&mut tx, &successor).await?;
        let event = NewEvent {
            kind: EventKind::Rotated,
            effective_at: old.effective_expiry().unwrap_or(grace_until),
            until: old.expires_at,
        };
        let seq = insert_event(&mut tx, old_id, &event, now).await?;
        tx.commit().await?;
        self.published(Some(seq));
        Ok((old, successor))
    }

    /// "Expire now": sets the key's own expiry to `now`, with an `expired` event. A key that is
    /// already revoked or expired is answered unchanged (idempotent, no event).
    pub async fn expire_key(&self, id: &str, now: i64) -> Result<KeyRecord, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        let Some(mut record) = select_key(&mut tx, id).await? else {
            return Err(StoreError::KeyNotFound);
        };
        if record.status(now) != KeyStatus::Active {
            return Ok(record);
        }
        tx.execute(
            &Sql::new("UPDATE keys SET expires_at = $1 WHERE id = $2")
                .arg(now)
                .arg(id),
        )
        .await?;
        let event = NewEvent {
            kind: EventKind::Expired,
            effective_at: now,
            until: record.expires_at,
        };
        record.expires_at = Some(now);
        let seq = insert_event(&mut tx, id, &event, now).await?;
        tx.commit().await?;
        self.published(Some(seq));
        Ok(record)
    }

    /// Number of keys per status at `now`: (active, revoked, expired).
    pub async fn count_keys_by_status(&self, now: i64) -> Result<(i64, i64, i64), StoreError> {
        let expiry = self.db.dialect().effective_expiry();
        let sql = Sql::new(format!(
            "SELECT \
             CAST(COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
             AS revoked, \
             CAST(COALESCE(SUM(CASE WHEN revoked_at IS NULL AND {expiry} <= $1 THEN 1 ELSE 0 END), 0) \
             AS BIGINT) AS expired, \
             CAST(COUNT(*) AS BIGINT) AS total FROM keys"
        ))
        .arg(now);
        let row = self.db.fetch_one(&sql).await?;
        let revoked: i64 = row.get("revoked")?;
        let expired: i64 = row.get("expired")?;
        let total: i64 = row.get("total")?;
        Ok((total - revoked - expired, revoked, expired))
    }
}

/// Why a rotation is refused, from the old key's state at `now`.
fn rotation_refusal(old: &KeyRecord, now: i64) -> Option<StoreError> {
    match old.status(now) {
        KeyStatus::Revoked => Some(StoreError::KeyRevoked),
        KeyStatus::Expired => Some(StoreError::KeyExpired),
        KeyStatus::Active if old.rotated_to.is_some() => Some(StoreError::KeyAlreadyRotated),
        KeyStatus::Active => None,
    }
}

/// The key `id`, read inside the caller's transaction.
pub(super) async fn select_key(tx: &mut Tx, id: &str) -> Result<Option<KeyRecord>, StoreError> {
    let sql = Sql::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1")).arg(id);
    let row = tx.fetch_optional(&sql).await?;
    row.as_ref().map(key_from_row).transpose()
}

/// The key stored under `digest` (lowercase hex SHA-256), optionally only of `format`.
pub(super) async fn select_by_digest(
    conn: &mut Conn<'_>,
    digest: &str,
    format: Option<&str>,
) -> Result<Option<KeyRecord>, StoreError> {
    let mut sql = Sql::new(format!("SELECT {KEY_COLUMNS} FROM keys WHERE "));
    if let Some(format) = format {
        sql.push("format = ").push_bind(format).push(" AND ");
    }
    sql.push("digest = ").push_bind(digest);
    let row = conn.fetch_optional(&sql).await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Stores a key record; for a JWT key, also extends the publication of the signing key that
/// signed it to the token's expiry. Runs inside the caller's transaction.
pub(super) async fn insert_key_with(tx: &mut Tx, key: &KeyRecord) -> Result<(), StoreError> {
    if let Some(kid) = key.signing_kid.as_deref() {
        super::signing::extend_publication(tx, kid, key.expires_at).await?;
    }
    let (scopes, metadata) = encode_json_fields(key)?;
    let limits = LimitColumns::of(&key.limits)?;
    super::roles::check_roles_exist(tx, &key.roles).await?;
    let roles = encode_roles(&key.roles)?;
    let mut sql = Sql::new(format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES "));
    sql.push_tuple([
        key.id.as_str().into(),
        key.prefix.as_str().into(),
        key.name.as_str().into(),
        key.owner.as_str().into(),
        scopes.into(),
        metadata.into(),
        key.digest.as_str().into(),
        key.format.as_str().into(),
        key.created_at.into(),
        key.expires_at.into(),
        key.grace_until.into(),
        key.revoked_at.into(),
        key.last_used_at.into(),
        key.rotated_from.as_deref().into(),
        key.rotated_to.as_deref().into(),
        key.algorithm.as_deref().into(),
        key.signing_kid.as_deref().into(),
        limits.rate_limit_rps.into(),
        limits.rate_limit_burst.into(),
        limits.allowed_cidrs.into(),
        limits.not_before.into(),
        limits.not_after.into(),
        roles.into(),
        limits.allowed_principals.into(),
        limits.global_rps.into(),
        limits.global_burst.into(),
        limits.quota_limit.into(),
        limits.quota_period.into(),
        limits.quota_anchor.into(),
        key.last_used_address.as_deref().into(),
        limits.allowed_countries.into(),
    ]);
    tx.execute(&sql).await?;
    Ok(())
}
