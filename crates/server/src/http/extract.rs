//! What the handlers take from a request before their own work: the admin key and the
//! service token (checked in constant time), the caller for the audit log, and a JSON body.

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

/// Middleware: the admin key, checked before the handler reads anything of the request.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let Some(presented) = bearer_token(&parts.headers).map(|token| KeyDigest::of(token.as_bytes()))
    else {
        record_denied_admin(&state, &parts, "missing").await;
        return Err(ApiError::MissingCredential(Realm::Admin));
    };
    let admins = state.store().active_admin_keys().await?;
    // Compare against every admin digest so the time taken does not depend on which matched.
    let matched = admins.iter().fold(None, |found, (id, digest)| {
        if digest.ct_eq(&presented) {
            Some(id)
        } else {
            found
        }
    });
    let Some(admin_id) = matched else {
        tracing::info!("management request with an invalid admin key refused");
        record_denied_admin(&state, &parts, "invalid").await;
        return Err(ApiError::InvalidCredential(Realm::Admin));
    };
    let mut request = Request::from_parts(parts, body);
    let actor = AdminActor(admin_id.clone());
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
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

/// Who sent a management request: the admin key's id (set by the admin check once it
/// matched) and the TCP peer (when the server runs with connect info).
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
        let actor = parts.extensions.get::<AdminActor>().map(|a| a.0.clone());
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

/// The id of the admin key a management request authenticated with: a request extension set
/// by the admin check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminActor(pub String);

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
