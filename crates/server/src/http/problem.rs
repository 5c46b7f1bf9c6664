//! How a service error is answered over HTTP: its status, and an RFC 9457
//! `application/problem+json` body. Also the layer that makes every other error answer (the
//! router's 405, an extractor's rejection) a problem too.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::error::{ApiError, Realm};

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingCredential(_) | Self::InvalidCredential(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge | Self::ImportTooLarge | Self::UsageBatchTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::JwtSigningNotConfigured | Self::CountersUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::KeyNotFound | Self::RouteNotFound | Self::PoolNotFound => StatusCode::NOT_FOUND,
            Self::SigningKeyUnreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RotateRevoked | Self::RotateExpired | Self::RotateAlreadyRotated => {
                StatusCode::CONFLICT
            }
            Self::RoleNotFound | Self::SigningMaterialNotFound => StatusCode::NOT_FOUND,
            Self::BlockNotFound => StatusCode::NOT_FOUND,
            Self::TooManyBlocks => StatusCode::CONFLICT,
            Self::RoleExists | Self::RoleInUse | Self::TooManyRoles => StatusCode::CONFLICT,
            Self::Forbidden | Self::Csrf => StatusCode::FORBIDDEN,
            Self::TooManyLogins { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TooManySubscribers => StatusCode::SERVICE_UNAVAILABLE,
            Self::WebhookNotFound | Self::DeliveryNotFound => StatusCode::NOT_FOUND,
            Self::TooManyWebhooks => StatusCode::CONFLICT,
            Self::SecretScanningNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadReportSignature => StatusCode::UNAUTHORIZED,
            Self::TooManyReportedTokens => StatusCode::PAYLOAD_TOO_LARGE,
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
            Self::CountersUnavailable(_) => "counters-unavailable",
            Self::PoolNotFound => "not-found",
            Self::SigningKeyUnreadable(_) => "signing-key-unreadable",
            Self::KeyNotFound | Self::RouteNotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RotateRevoked | Self::RotateExpired | Self::RotateAlreadyRotated => {
                "key-not-rotatable"
            }
            Self::RoleNotFound | Self::SigningMaterialNotFound => "not-found",
            Self::BlockNotFound => "not-found",
            Self::TooManyBlocks => "too-many-blocks",
            Self::RoleExists => "role-exists",
            Self::RoleInUse => "role-in-use",
            Self::TooManyRoles => "too-many-roles",
            Self::Forbidden => "forbidden",
            Self::Csrf => "csrf",
            Self::TooManyLogins { .. } => "too-many-logins",
            Self::TooManySubscribers => "too-many-subscribers",
            Self::WebhookNotFound | Self::DeliveryNotFound => "not-found",
            Self::TooManyWebhooks => "too-many-webhooks",
            Self::SecretScanningNotConfigured => "secret-scanning-not-configured",
            Self::BadReportSignature => "unauthorized",
            Self::TooManyReportedTokens => "payload-too-large",
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
                "this endpoint needs an admin key: send Authorization: Bearer <admin key> (or a management key, or the session cookie of a login)".into()
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
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests",
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
            Self::Internal(cause)
            | Self::SigningKeyUnreadable(cause)
            | Self::CountersUnavailable(cause) => {
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
            Self::TooManyLogins { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
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
