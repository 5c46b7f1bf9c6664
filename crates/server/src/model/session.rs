//! A login session of the management page, as stored: digests only.

/// One row of `sessions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// Hex SHA-256 of the session id (the cookie value).
    pub id_digest: String,
    /// Hex SHA-256 of the session's CSRF token.
    pub csrf_digest: String,
    /// `admin_key` or `key` (a management key).
    pub kind: String,
    /// The id of the admin key or management key that logged in.
    pub actor: String,
    /// The client address of the login.
    pub source: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}
