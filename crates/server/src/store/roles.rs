//! Roles (`roles` table) and the roles keys hold (`keys.roles`). Every change to a role adds a
//! `role_changed` event to the revocation feed in the same transaction; its sequence number
//! is the role's new version, so versions only grow, across a delete and a re-create too.

use super::error::{i64_of, u64_of, StoreError};
use super::feed::{announce, begin_feed_write, ROLE_CHANGED};
use super::handle::KeyStore;
use super::sql::{Dialect, Sql, StoredRow, Tx};
use crate::model::role::MAX_ROLES;
use crate::model::{RolePatch, RoleRecord};

const ROLE_COLUMNS: &str = "name, scopes, description, version, created_at, updated_at";

impl KeyStore {
    /// Every role, by name (at most [`MAX_ROLES`]).
    pub async fn list_roles(&self) -> Result<Vec<RoleRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {ROLE_COLUMNS} FROM roles ORDER BY name LIMIT $1"
        ))
        .arg(i64::try_from(MAX_ROLES).unwrap_or(i64::MAX));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(role_from_row).collect()
    }

    pub async fn get_role(&self, name: &str) -> Result<Option<RoleRecord>, StoreError> {
        let sql = Sql::new(format!("SELECT {ROLE_COLUMNS} FROM roles WHERE name = $1")).arg(name);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(role_from_row).transpose()
    }

    /// The roles of these names that exist (for a key's lookup).
    pub async fn roles_named(&self, names: &[String]) -> Result<Vec<RoleRecord>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(format!("SELECT {ROLE_COLUMNS} FROM roles WHERE name IN "));
        sql.push_tuple(names.iter().map(Into::into));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(role_from_row).collect()
    }

    /// Stores a new role (refused when the name is taken or [`MAX_ROLES`] exist); answers it
    /// with its version.
    pub async fn create_role(&self, role: &RoleRecord, now: i64) -> Result<RoleRecord, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        if select_role(&mut tx, &role.name, false).await?.is_some() {
            return Err(StoreError::RoleExists);
        }
        let count: i64 = tx
            .fetch_one(&Sql::new("SELECT COUNT(*) AS n FROM roles"))
            .await?
            .get("n")?;
        if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_ROLES {
            return Err(StoreError::TooManyRoles);
        }
        let version = insert_role_event(&mut tx, &role.name, now).await?;
        let scopes = encode_scopes(&role.scopes)?;
        let mut sql = Sql::new(format!("INSERT INTO roles ({ROLE_COLUMNS}) VALUES "));
        sql.push_tuple([
            role.name.as_str().into(),
            scopes.into(),
            role.description.as_str().into(),
            i64_of(version).into(),
            now.into(),
            now.into(),
        ]);
        tx.execute(&sql).await?;
        tx.commit().await?;
        self.published(Some(version));
        Ok(RoleRecord {
            version,
            created_at: now,
            updated_at: now,
            ..role.clone()
        })
    }

    /// Applies `patch` to role `name`; answers the role at its new version.
    pub async fn update_role(
        &self,
        name: &str,
        patch: &RolePatch,
        now: i64,
    ) -> Result<RoleRecord, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        let Some(mut role) = select_role(&mut tx, name, true).await? else {
            return Err(StoreError::RoleNotFound);
        };
        if let Some(scopes) = &patch.scopes {
            role.scopes.clone_from(scopes);
        }
        if let Some(description) = &patch.description {
            role.description.clone_from(description);
        }
        let version = insert_role_event(&mut tx, name, now).await?;
        let sql = Sql::new(
            "UPDATE roles SET scopes = $1, description = $2, version = $3, updated_at = $4 \
             WHERE name = $5",
        )
        .arg(encode_scopes(&role.scopes)?)
        .arg(role.description.as_str())
        .arg(i64_of(version))
        .arg(now)
        .arg(name);
        tx.execute(&sql).await?;
        tx.commit().await?;
        self.published(Some(version));
        role.version = version;
        role.updated_at = now;
        Ok(role)
    }

    /// Deletes role `name`; refused while a key that is not revoked holds it.
    pub async fn delete_role(&self, name: &str, now: i64) -> Result<RoleRecord, StoreError> {
        let mut tx = begin_feed_write(&self.db).await?;
        // Locked before the holders are counted: a key being created with the role holds
        // it shared until it commits, so it is counted.
        let Some(role) = select_role(&mut tx, name, true).await? else {
            return Err(StoreError::RoleNotFound);
        };
        if role_is_held(&mut tx, name).await? {
            return Err(StoreError::RoleInUse);
        }
        tx.execute(&Sql::new("DELETE FROM roles WHERE name = $1").arg(name))
            .await?;
        let version = insert_role_event(&mut tx, name, now).await?;
        tx.commit().await?;
        self.published(Some(version));
        Ok(role)
    }
}

/// Refuses `names` unless every one is a role, inside the caller's transaction (on
/// PostgreSQL the roles are held shared until it ends, so none is deleted meanwhile).
pub(super) async fn check_roles_exist(tx: &mut Tx, names: &[String]) -> Result<(), StoreError> {
    if names.is_empty() {
        return Ok(());
    }
    let mut sql = Sql::new("SELECT name FROM roles WHERE name IN ");
    sql.push_tuple(names.iter().map(Into::into));
    if tx.dialect() == Dialect::Postgres {
        sql.push(" FOR SHARE");
    }
    let rows = tx.fetch_all(&sql).await?;
    let found: Vec<String> = rows
        .iter()
        .map(|row| row.get::<String>("name"))
        .collect::<Result<_, _>>()?;
    match names.iter().find(|name| !found.contains(name)) {
        Some(missing) => Err(StoreError::UnknownRole(missing.clone())),
        None => Ok(()),
    }
}

async fn select_role(
    tx: &mut Tx,
    name: &str,
    for_update: bool,
) -> Result<Option<RoleRecord>, StoreError> {
    let mut sql = Sql::new(format!("SELECT {ROLE_COLUMNS} FROM roles WHERE name = $1")).arg(name);
    if for_update && tx.dialect() == Dialect::Postgres {
        sql.push(" FOR UPDATE");
    }
    let row = tx.fetch_optional(&sql).await?;
    row.as_ref().map(role_from_row).transpose()
}

/// Whether a key that is not revoked holds role `name` (role names need no escaping inside
/// the JSON text, and `_` is escaped for `LIKE`).
async fn role_is_held(tx: &mut Tx, name: &str) -> Result<bool, StoreError> {
    let pattern = format!("%\"{}\"%", name.replace('_', "\\_"));
    let sql = Sql::new(
        "SELECT 1 AS held FROM keys WHERE revoked_at IS NULL AND roles LIKE $1 ESCAPE '\\' \
         LIMIT 1",
    )
    .arg(pattern);
    Ok(tx.fetch_optional(&sql).await?.is_some())
}

/// Adds a `role_changed` event for role `name`; answers its sequence number (the role's new
/// version).
async fn insert_role_event(tx: &mut Tx, name: &str, now: i64) -> Result<u64, StoreError> {
    let sql = Sql::new(
        "INSERT INTO revocation_events (key_id, kind, effective_at, key_expires_at, created_at) \
         VALUES ($1, $2, $3, NULL, $3) RETURNING seq",
    )
    .arg(name)
    .arg(ROLE_CHANGED)
    .arg(now);
    let seq: i64 = tx.fetch_one(&sql).await?.get("seq")?;
    tx.execute(&Sql::new("UPDATE feed_state SET last_seq = $1 WHERE id = 1").arg(seq))
        .await?;
    announce(tx, seq).await?;
    u64_of(seq, "revocation_events.seq")
}

fn encode_scopes(scopes: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(scopes).map_err(|_| StoreError::Corrupt("roles.scopes"))
}

fn role_from_row(row: &StoredRow) -> Result<RoleRecord, StoreError> {
    let scopes: String = row.get("scopes")?;
    Ok(RoleRecord {
        name: row.get("name")?,
        scopes: serde_json::from_str(&scopes).map_err(|_| StoreError::Corrupt("roles.scopes"))?,
        description: row.get("description")?,
        version: u64_of(row.get("version")?, "roles.version")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}
