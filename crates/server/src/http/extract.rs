//! What the handlers take from a request before their own work: the management caller
//! ([`Access`]: an admin key or a management key, checked in constant time) and the service
//! token, the caller for the audit log, and a JSON body.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use keygate_core::key::KeyDigest;
use serde_json::Value;

use crate::http::state::AppState;
use crate::service::audit::{AuditEntry, OTHER_SOURCE};
use crate::service::error::{ApiError, Realm};

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Middleware of the management API: authenticates the caller before the handler reads
/// anything of the request, and puts the [`Access`] in the request extensions. A bearer admin
/// key or management key (see [`crate::service::access`]); refusals are audited as before.
pub async fn require_management(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let Some(token) = bearer_token(&parts.headers) else {
        record_denied_admin(&state, &parts, "missing").await;
        return Err(ApiError::MissingCredential(Realm::Admin));
    };
    let Some((access, _)) = crate::service::access::authenticate(state.service(), token).await?
    else {
        tracing::info!("management request with an invalid admin or management key refused");
        record_denied_admin(&state, &parts, "invalid").await;
        return Err(ApiError::InvalidCredential(Realm::Admin));
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
