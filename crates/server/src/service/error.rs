//! The service's domain errors: one enum for every refusal and failure of an operation.
//!
//! Details are written for the client: they say what to fix, never echo a credential, and
//! never expose internals. Internal causes go to the log only. How each one is answered over
//! HTTP (status, RFC 9457 problem) is [`crate::http::problem`]'s business.

use keygate_core::scope::ScopeError;

use crate::service::signing::SigningError;
use crate::store::StoreError;

/// Which credential an endpoint wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Realm {
    /// The management API: an admin key.
    Admin,
    /// The filter's lookup, revocation feed and stats endpoints: the service token.
    Service,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("missing credential")]
    MissingCredential(Realm),
    #[error("invalid credential")]
    InvalidCredential(Realm),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body does not match the expected fields: {0}")]
    InvalidBody(String),
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("the request body could not be read")]
    UnreadableBody,
    #[error("name must be 1 to 128 characters with no control characters")]
    BadName,
    #[error("owner must be at most 128 characters with no control characters")]
    BadOwner,
    #[error("scopes[{index}] is invalid: {reason}")]
    BadScope { index: usize, reason: ScopeError },
    #[error("at most 32 scopes are allowed")]
    TooManyScopes,
    #[error("give either expires_in or expires_at, not both")]
    ExpiryConflict,
    #[error("expires_in must be a duration greater than 0 and at most 10 years: whole seconds (3600) or a string such as \"3600\", \"90m\", \"12h\" or \"30d\"")]
    BadExpiresIn,
    #[error("expires_at must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z")]
    UnparsableExpiresAt,
    #[error("expires_at must be in the future")]
    ExpiresAtInPast,
    #[error("metadata must be a JSON object")]
    MetadataNotObject,
    #[error("metadata must have at most 32 keys")]
    MetadataTooManyKeys,
    #[error("metadata must be at most 4096 bytes once serialized")]
    MetadataTooLarge,
    #[error("format must be \"opaque\" or \"jwt\"")]
    UnknownFormat,
    #[error("algorithm must be one of ES256, EdDSA, RS256")]
    UnknownAlgorithm,
    #[error("algorithm applies only to format jwt")]
    AlgorithmWithoutJwt,
    #[error("a JWT key needs an expiry: give expires_in or expires_at (the operator can allow JWT keys without expiry with --allow-jwt-without-expiry / KEYGATE_ALLOW_JWT_WITHOUT_EXPIRY=true)")]
    JwtExpiryRequired,
    #[error("JWT signing is not configured: set KEYGATE_SIGNING_KEY_SECRET (64 hex digits) and restart the key service")]
    JwtSigningNotConfigured,
    #[error("a signing key cannot be decrypted with KEYGATE_SIGNING_KEY_SECRET (wrong secret?); see the key service log")]
    SigningKeyUnreadable(String),
    #[error("grace must be a duration from 0 to 30 days: whole seconds (3600) or a string such as \"0\", \"90m\", \"24h\" or \"7d\"")]
    BadGrace,
    #[error("the query string is malformed")]
    MalformedQuery,
    #[error("limit must be an integer from 1 to 500")]
    BadLimit,
    #[error("cursor is not one this server issued; pass next_cursor from a previous page")]
    BadCursor,
    #[error("status must be one of active, revoked, expired")]
    BadStatusFilter,
    #[error("since must be a non-negative integer (the seq of the previous answer, or 0)")]
    BadSince,
    #[error("wait must be an integer number of seconds from 0 to 60")]
    BadWait,
    #[error("window must be an integer number of seconds from 0 to 2592000")]
    BadWindow,
    #[error("a key id is 16 characters of a-z and 2-7")]
    BadKeyId,
    #[error("no key with this id")]
    KeyNotFound,
    #[error("no such resource")]
    RouteNotFound,
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("a revoked key cannot be rotated")]
    RotateRevoked,
    #[error("an expired key cannot be rotated")]
    RotateExpired,
    #[error("this key was already rotated; rotate its successor (rotated_to) instead")]
    RotateAlreadyRotated,
    #[error("action, target, actor and outcome filters must be at most 128 characters")]
    BadAuditFilter,
    #[error("action must be one of create, update, rotate, revoke, expire, import, signing_key_rotate, admin_auth, role_create, role_update, role_delete, pool_set, pool_delete, session.login, session.login_failed, session.login_limited, session.logout, webhook_create, webhook_delete, webhook_redeliver, key_leaked")]
    UnknownAuditAction,
    #[error("from and to must be RFC 3339 timestamps such as 2030-01-01T00:00:00Z")]
    BadAuditTime,
    #[error("an import holds at most 10000 rows and 5 MiB")]
    ImportTooLarge,
    #[error("format must be \"csv\" or \"json\"")]
    UnknownImportFormat,
    #[error("the import cannot be read: {0}")]
    UnreadableImport(String),
    #[error("allowed_cidrs must have at most 64 entries")]
    TooManyCidrs,
    #[error("allowed_cidrs[{index}] ({entry:?}) is not an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or 2001:db8::/32")]
    BadCidr { index: usize, entry: String },
    #[error("allowed_countries must have at most 250 entries")]
    TooManyCountries,
    #[error("allowed_countries[{index}] ({entry:?}) is not an ISO 3166-1 alpha-2 country code such as DE or US")]
    BadCountry { index: usize, entry: String },
    #[error("allowed_principals must have at most 64 entries")]
    TooManyPrincipals,
    #[error("allowed_principals[{index}] is not a principal such as spiffe://cluster.local/ns/payments/sa/api or a pattern ending in one whole '/*' segment: {reason}")]
    BadPrincipal { index: usize, reason: String },
    #[error("rate_limit needs requests_per_second greater than 0 and at most 1000000, and burst from 1 to 1000000")]
    BadRateLimit,
    #[error("{0} must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z")]
    BadTimestamp(&'static str),
    #[error("not_before must be earlier than not_after")]
    EmptyValidityWindow,
    #[error("the scopes of a JWT key are in its signed token and cannot change; rotate or create a key instead")]
    JwtScopesFixed,
    #[error("a usage batch must be at most 1 MiB")]
    UsageBatchTooLarge,
    #[error("a usage batch must have at most 10000 rows")]
    TooManyUsageRows,
    #[error("batch_id must be 1 to 128 printable ASCII characters")]
    BadBatchId,
    #[error("rows[{index}]: {reason}")]
    BadUsageRow { index: usize, reason: &'static str },
    #[error("{0}")]
    BadUsageQuery(&'static str),
    #[error("a role name is 1 to 64 characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit")]
    BadRoleName,
    #[error("description must be at most 256 characters with no control characters")]
    BadRoleDescription,
    #[error("no role with this name")]
    RoleNotFound,
    #[error("a role with this name already exists")]
    RoleExists,
    #[error("the role is held by keys that are not revoked; remove it from them first (keygate keys update ID --role ...)")]
    RoleInUse,
    #[error("the key service holds at most 1000 roles")]
    TooManyRoles,
    #[error("a key holds at most 8 roles")]
    TooManyKeyRoles,
    #[error("roles names a role that does not exist: {0:?}")]
    UnknownRole(String),
    #[error("a JWT key carries its scopes in its signed token: it cannot hold roles")]
    JwtRoles,
    #[error("global_limit needs requests_per_second greater than 0 and at most 1000000, and burst from 1 to 1000000")]
    BadGlobalLimit,
    #[error("quota needs a limit from 1 to 1000000000000 and a period: seconds (3600), \"12h\", \"7d\", or day, week, month (30 days), at most 10 years")]
    BadQuota,
    #[error("an owner is 1 to 128 characters with no control characters")]
    BadPoolOwner,
    #[error("pool needs requests_per_second greater than 0 and at most 1000000, and burst from 1 to 1000000")]
    BadPoolLimit,
    #[error("no pool for this owner")]
    PoolNotFound,
    #[error("{0}")]
    BadLease(String),
    #[error("the lease counters are unavailable; enforce the local fallback and retry")]
    CountersUnavailable(String),
    #[error("this operation is for admins only; an owner's management key cannot do it")]
    Forbidden,
    #[error("a request made with the session cookie must carry the X-CSRF-Token header of the session, and a same-origin Origin header if any")]
    Csrf,
    #[error("too many failed logins from this address; retry after {retry_after} seconds")]
    TooManyLogins { retry_after: u64 },
    #[error("too many live event subscribers; retry later")]
    TooManySubscribers,
    #[error("{0}")]
    BadSigningMaterial(String),
    #[error("this key has no signing material")]
    SigningMaterialNotFound,
    #[error("{0}")]
    BadBlock(&'static str),
    #[error("no block with this id")]
    BlockNotFound,
    #[error("the key service holds at most 1000 operator blocks in force; remove some or let them expire")]
    TooManyBlocks,
    #[error("{0}")]
    BadWebhook(String),
    #[error("no webhook with this id")]
    WebhookNotFound,
    #[error("no delivery with this id for this webhook, or it is being sent right now")]
    DeliveryNotFound,
    #[error("the key service holds at most 100 webhooks")]
    TooManyWebhooks,
    #[error("secret scanning is not configured: give --secret-scanning-keys / KEYGATE_SECRET_SCANNING_KEYS")]
    SecretScanningNotConfigured,
    #[error("the report's Github-Public-Key-Identifier and Github-Public-Key-Signature do not verify against a configured key")]
    BadReportSignature,
    #[error("a report holds at most 1000 tokens")]
    TooManyReportedTokens,
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyNotFound => Self::KeyNotFound,
            StoreError::KeyRevoked => Self::RotateRevoked,
            StoreError::KeyExpired => Self::RotateExpired,
            StoreError::KeyAlreadyRotated => Self::RotateAlreadyRotated,
            StoreError::RoleNotFound => Self::RoleNotFound,
            StoreError::RoleExists => Self::RoleExists,
            StoreError::RoleInUse => Self::RoleInUse,
            StoreError::TooManyRoles => Self::TooManyRoles,
            StoreError::UnknownRole(name) => Self::UnknownRole(name),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<SigningError> for ApiError {
    fn from(error: SigningError) -> Self {
        match error {
            SigningError::NotConfigured => Self::JwtSigningNotConfigured,
            SigningError::Store(error) => error.into(),
            error @ (SigningError::Undecryptable { .. } | SigningError::Corrupt { .. }) => {
                Self::SigningKeyUnreadable(error.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}
