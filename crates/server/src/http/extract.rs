//! What the handlers take from a request before their own work: the management caller
//! ([`Access`]: an admin key or a management key, checked in constant time) and the service
//! token, the caller for the audit log, and a JSON body.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use keygate_core::key::KeyDigest;
use serde_json::Value;

use crate::http::state::AppState;
use crate::service::audit::{AuditEntry, OTHER_SOURCE};
use crate::service::error::{ApiError, Realm};
use crate::service::sessions::{LiveSession, SESSION_COOKIE};

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware of the management API: authenticates the caller before the handler reads
/// anything of the request, and puts the [`Access`] in the request extensions. A bearer admin
/// key or management key (see [`crate::service::access`]), else the session cookie of a login
/// (with the CSRF check of [`check_csrf`]); refusals are audited as
/// before.
pub async fn require_management(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let access = match bearer_token(&parts.headers) {
        Some(token) => {
            let found = crate::service::access::authenticate(state.service(), token).await?;
            let Some((access, _)) = found else {
                tracing::info!(
                    "management request with an invalid admin or management key refused"
                );
                record_denied_admin(&state, &parts, "invalid").await;
                return Err(ApiError::InvalidCredential(Realm::Admin));
            };
            access
        }
        None => {
            let Some(cookie) = session_cookie(&parts.headers) else {
                record_denied_admin(&state, &parts, "missing").await;
                return Err(ApiError::MissingCredential(Realm::Admin));
            };
            let Some(session) = crate::service::sessions::resolve(state.service(), cookie).await?
            else {
                record_denied_admin(&state, &parts, "invalid").await;
                return Err(ApiError::InvalidCredential(Realm::Admin));
            };
            check_csrf(&parts, &session)?;
            session.access
        }
    };
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(access);
    Ok(next.run(request).await)
}

/// Middleware of the admin-only management routes (inside [`require_management`]): an owner
/// caller gets 403 `forbidden`.
pub async fn admin_only(request: Request, next: Next) -> Result<Response, ApiError> {
    match request.extensions().get::<Access>() {
        Some(access) if access.is_admin() => Ok(next.run(request).await),
        _ => Err(ApiError::Forbidden),
    }
}

/// Middleware: the service token, checked before the handler reads anything of the request.
pub async fn require_service(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    require_service_token(&state, request.headers())?;
    Ok(next.run(request).await)
}

/// Checks the service token of a request with these headers.
pub fn require_service_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = bearer_token(headers).ok_or(ApiError::MissingCredential(Realm::Service))?;
    if state.is_service_token(&KeyDigest::of(presented.as_bytes())) {
        Ok(())
    } else {
        tracing::info!("lookup with an invalid service token refused");
        Err(ApiError::InvalidCredential(Realm::Service))
    }
}

// ---------------------------------------------------------------------------------------------
// The session cookie and its CSRF check

/// The header a request made with the session cookie carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session cookie of a request, if it sent one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
}

/// Refuses (403 `csrf`) a state-changing request made with the session cookie unless it
/// carries the session's CSRF token and, when it has an `Origin`, a same-origin one (a browser
/// that says `Sec-Fetch-Site: cross-site` is refused too).
pub fn check_csrf(parts: &Parts, session: &LiveSession) -> Result<(), ApiError> {
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let token = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if token.is_empty() || token.len() > 128 || !session.csrf_matches(token) {
        tracing::info!("request with the session cookie refused: no or wrong CSRF token");
        return Err(ApiError::Csrf);
    }
    if !same_origin(&parts.headers) {
        tracing::info!("request with the session cookie refused: cross-site");
        return Err(ApiError::Csrf);
    }
    Ok(())
}

/// Whether the request's `Origin` (if any) names the host it was sent to, and the browser
/// does not call it cross-site.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if text(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(origin) = origin.to_str().ok() else {
        return false;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (authority, text(header::HOST)) {
        (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Default page size of the listing endpoints (`GET /api/v1/auth/keys`, `GET /api/v1/audit`).
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page size of the listing endpoints.
pub const MAX_PAGE: u32 = 500;

/// A listing's `limit` parameter: [`DEFAULT_PAGE`] when absent, 1..=[`MAX_PAGE`] otherwise.
pub fn page_limit(text: Option<&str>) -> Result<u32, ApiError> {
    match text {
        None => Ok(DEFAULT_PAGE),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or(ApiError::BadLimit),
    }
}

/// The body of a request, or why it could not be read.
pub fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::UnreadableBody
        }
    })
}

/// A JSON body as `T`.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| match error.classify() {
        serde_json::error::Category::Data => ApiError::InvalidBody(error.to_string()),
        _ => ApiError::MalformedJson(error.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// The caller, for the audit log

/// Who sent a management request: the admin or management key's id (from the [`Access`] the
/// authentication set) and the TCP peer (when the server runs with connect info).
///
/// Use it as a handler argument (it never rejects) and build entries with [`Caller::entry`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub actor: Option<String>,
    pub source: Option<String>,
}

impl Caller {
    /// The caller of a request whose parts are `parts`.
    pub fn of(parts: &Parts) -> Self {
        let actor = parts
            .extensions
            .get::<Access>()
            .map(|access| access.actor().to_owned());
        Self {
            actor,
            source: source_of(parts),
        }
    }

    /// An entry for an action by this caller.
    pub fn entry<'a>(
        &self,
        action: &'a str,
        target: Option<String>,
        outcome: &'a str,
        detail: Option<Value>,
    ) -> AuditEntry<'a> {
        AuditEntry {
            action,
            actor: self.actor.clone(),
            source: self.source.clone(),
            target,
            outcome,
            detail,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts))
    }
}

pub use crate::service::access::Access;

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    /// The caller [`require_management`] authenticated; a route outside it is a bug, answered
    /// as a missing credential.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Access>()
            .cloned()
            .ok_or(ApiError::MissingCredential(Realm::Admin))
    }
}

/// The TCP peer of a request, when the server was started with connect info.
pub fn source_of(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.to_string())
}

/// The address failed logins are counted under (see [`refusal_source`]).
pub fn login_address(parts: &Parts) -> String {
    refusal_source(parts)
}

/// The address a refusal is counted under: the peer's IP (no port, so one client is one
/// source), or [`OTHER_SOURCE`] when the server runs without connect info.
fn refusal_source(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| OTHER_SOURCE.to_owned(), |info| info.0.ip().to_string())
}

/// Counts a refused admin authentication (`reason`: `missing` or `invalid`) in its source's
/// row of the minute (see [`crate::service::audit::RefusedAdmin`]).
async fn record_denied_admin(state: &AppState, parts: &Parts, reason: &'static str) {
    let service = state.service();
    service
        .refused_admin()
        .refuse(
            service.store(),
            service.clock().as_ref(),
            &refusal_source(parts),
            reason,
            parts.method.as_str(),
            parts.uri.path(),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_extracted_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
