//! One error type for the HTTP API, answered as RFC 9457 `application/problem+json`.
//!
//! Details are written for the client: they say what to fix, never echo a credential, and
//! never expose internals. Internal causes go to the log only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::scope::ScopeError;
use serde::Serialize;

use crate::signing::SigningError;
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
    #[error("action must be one of create, update, rotate, revoke, expire, import, signing_key_rotate, admin_auth")]
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
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingCredential(_) | Self::InvalidCredential(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge | Self::ImportTooLarge | Self::UsageBatchTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::JwtSigningNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Self::SigningKeyUnreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::KeyNotFound | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RotateRevoked | Self::RotateExpired | Self::RotateAlreadyRotated => {
                StatusCode::CONFLICT
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The short problem type slug (the `type` is `urn:keygate:problem:<slug>`).
    fn slug(&self) -> &'static str {
        match self {
            Self::MissingCredential(_) | Self::InvalidCredential(_) => "unauthorized",
            Self::MalformedJson(_) => "malformed-json",
            Self::PayloadTooLarge | Self::ImportTooLarge | Self::UsageBatchTooLarge => {
                "payload-too-large"
            }
            Self::JwtSigningNotConfigured => "jwt-signing-not-configured",
            Self::SigningKeyUnreadable(_) => "signing-key-unreadable",
            Self::KeyNotFound | Self::RouteNotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RotateRevoked | Self::RotateExpired | Self::RotateAlreadyRotated => {
                "key-not-rotatable"
            }
            Self::Internal(_) => "internal",
            _ => "invalid-request",
        }
    }

    fn title(&self) -> &'static str {
        title_of(self.status())
    }

    fn detail(&self) -> String {
        match self {
            Self::MissingCredential(Realm::Admin) => {
                "this endpoint needs an admin key: send Authorization: Bearer <admin key>".into()
            }
            Self::MissingCredential(Realm::Service) => {
                "this endpoint needs the service token: send Authorization: Bearer <service token>"
                    .into()
            }
            Self::InvalidCredential(Realm::Admin) => "the admin key is not valid".into(),
            Self::InvalidCredential(Realm::Service) => "the service token is not valid".into(),
            Self::Internal(_) => "the key service failed to handle the request; see its log".into(),
            other => other.to_string(),
        }
    }
}

fn title_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
        StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
        StatusCode::CONFLICT => "Conflict",
        status if status.is_server_error() => "Internal server error",
        _ => "Invalid request",
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(cause) | Self::SigningKeyUnreadable(cause) => {
                tracing::error!(cause = %cause, "request failed");
            }
            other => tracing::debug!(status = status.as_u16(), problem = %other, "request refused"),
        }
        let problem = Problem {
            kind: format!("urn:keygate:problem:{}", self.slug()),
            title: self.title(),
            status: status.as_u16(),
            detail: self.detail(),
        };
        let mut response = problem.into_response();
        let headers = response.headers_mut();
        match self {
            Self::MissingCredential(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate\""),
                );
            }
            Self::InvalidCredential(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate\", error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl Problem<'_> {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The longest plain-text rejection kept as a problem's detail.
const MAX_REJECTION_DETAIL: usize = 1024;

/// Makes every error answer `application/problem+json`: an answer of 400 or more that is not
/// one already (the router's empty 405, an extractor's plain-text rejection, a layer's 413)
/// gets a problem body with the same status and headers. Client-error text from the framework
/// is kept as the detail (it describes the request, never a secret); server-error text is not.
pub async fn problem_for_every_error(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if status.as_u16() < 400 || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_DETAIL)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty() && status.is_client_error());
    let detail = match (status, text) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allowed = parts
                .headers
                .get(header::ALLOW)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !value.is_empty());
            match allowed {
                Some(allowed) => {
                    format!("this method is not allowed on this resource; allowed: {allowed}")
                }
                None => ApiError::MethodNotAllowed.to_string(),
            }
        }
        (_, Some(text)) => text,
        (StatusCode::NOT_FOUND, None) => ApiError::RouteNotFound.to_string(),
        (StatusCode::PAYLOAD_TOO_LARGE, None) => ApiError::PayloadTooLarge.to_string(),
        (status, None) if status.is_server_error() => ApiError::Internal(String::new()).detail(),
        (status, None) => format!("the request was refused (HTTP {})", status.as_u16()),
    };
    let slug = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        status if status.is_server_error() => "internal",
        _ => "invalid-request",
    };
    let problem = Problem {
        kind: format!("urn:keygate:problem:{slug}"),
        title: title_of(status),
        status: status.as_u16(),
        detail,
    };
    let fresh = problem.into_response();
    let (fresh_parts, fresh_body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &fresh_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    Response::from_parts(parts, fresh_body)
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyNotFound => Self::KeyNotFound,
            StoreError::KeyRevoked => Self::RotateRevoked,
            StoreError::KeyExpired => Self::RotateExpired,
            StoreError::KeyAlreadyRotated => Self::RotateAlreadyRotated,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_stay_out_of_the_response() {
        let error = ApiError::Internal("disk on fire at /secret/path".into());
        assert!(!error.detail().contains("/secret/path"));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let response = ApiError::MissingCredential(Realm::Admin).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
