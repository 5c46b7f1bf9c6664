//! Legacy keys: keys issued by an earlier system, imported by their SHA-256 digest.

use super::key::{KeyRecord, FORMAT_LEGACY};

/// One validated row of an import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyImportRow {
    /// Lowercase hex SHA-256 of the key text.
    pub digest: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    /// The id the key gets if it is created (minted by the caller).
    pub new_id: String,
}

/// What importing one row did (or, in a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LegacyOutcome {
    Created(String),
    /// The digest was stored; its name, owner, scopes or expiry changed.
    Updated(String),
    /// The digest was stored with the same fields.
    Unchanged(String),
    /// The digest is stored as a key that is not a legacy key: refused.
    NotLegacy,
    /// The digest is stored as a legacy key that has ended (revoked, expired, rotated or past
    /// its `not_after`), with other fields: refused. An import never revives an ended key nor
    /// moves its expiry.
    Ended(String),
}

impl LegacyImportRow {
    /// The key record a row becomes when it is created at `now`.
    pub fn record(&self, now: i64) -> KeyRecord {
        KeyRecord {
            id: self.new_id.clone(),
            prefix: String::new(),
            name: self.name.clone(),
            owner: self.owner.clone(),
            scopes: self.scopes.clone(),
            digest: self.digest.clone(),
            format: FORMAT_LEGACY.to_owned(),
            created_at: now,
            expires_at: self.expires_at,
            ..KeyRecord::default()
        }
    }

    /// Whether `stored` already has this row's fields.
    pub fn matches(&self, stored: &KeyRecord) -> bool {
        self.name == stored.name
            && self.owner == stored.owner
            && self.scopes == stored.scopes
            && self.expires_at == stored.expires_at
    }
}
