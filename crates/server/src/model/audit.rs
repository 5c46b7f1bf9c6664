//! Audit log rows: as stored, to append, to list and to prune.

/// One audit row as stored. `detail` is JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub action: String,
    pub actor: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

/// A row to append: everything but the id.
#[derive(Clone, Copy, Debug)]
pub struct NewAuditRow<'a> {
    pub at: i64,
    pub action: &'a str,
    pub actor: Option<&'a str>,
    pub source: Option<&'a str>,
    pub target: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: Option<&'a str>,
}

/// Which rows to list: every filter that is set must match; at most `limit`, with ids below
/// `before` (the cursor), newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub target: Option<String>,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    /// Inclusive lower bound of `at`.
    pub from: Option<i64>,
    /// Inclusive upper bound of `at`.
    pub to: Option<i64>,
    pub before: Option<i64>,
    pub limit: u32,
    /// Only rows whose target is a key of this owner (an owner caller's view).
    pub owner: Option<String>,
}

/// Which audit rows a prune deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditClass {
    /// Refused admin authentications (`action = 'admin_auth'`).
    RefusedAdmin,
    /// Every other row: the management actions.
    Management,
}
