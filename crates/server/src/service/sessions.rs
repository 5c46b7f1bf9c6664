//! Login sessions of the management page: `POST /ui/api/session` with an admin key or a
//! management key opens one; its id (256 random bits, base64url) travels in the
//! `keygate_session` cookie, and its CSRF token is derived from it. The store keeps only the
//! SHA-256 digests of both.
//!
//! A session ends at its TTL, at logout, or as soon as its key is revoked, expires or loses
//! its management scope (checked on every use, see [`resolve`]). Failed logins are counted per
//! client address: past [`AccessSettings::login_failures_per_minute`] in a minute, logins from
//! that address are refused (429) until the minute is over. Every login, failed login and
//! logout is audited (`session.login`, `session.login_failed`, `session.logout`), and the
//! first refusal of an address in its minute (`session.login_limited`); never a secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygate_core::key::KeyDigest;
use serde::Serialize;

use crate::model::session::SessionRow;
use crate::service::access::{authenticate, current_access, Access, CredentialKind};
use crate::service::audit::AuditEntry;
use crate::service::context::Service;
use crate::service::error::{ApiError, Realm};
pub use crate::service::session_config::{
    AccessArgs, AccessConfigError, AccessSettings, Sessions, DEFAULT_EVENT_SUBSCRIBERS,
    DEFAULT_LOGIN_FAILURES_PER_MINUTE, DEFAULT_SESSION_TTL_S, SESSION_TTL_RANGE_S,
};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "keygate_session";
/// Longest credential accepted at login (longer is a failed login without a lookup).
const MAX_LOGIN_KEY_CHARS: usize = 4096;

/// What `GET /ui/api/session` and a login answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// `admin` or `owner`.
    pub role: &'static str,
    pub owner: Option<String>,
    /// The id of the admin key or management key.
    pub actor: String,
    /// Send it as `X-CSRF-Token` on every state-changing request.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl SessionView {
    fn of(access: &Access, session_id: &str, expires_at: i64) -> Self {
        Self {
            role: access.role(),
            owner: access.owner().map(str::to_owned),
            actor: access.actor().to_owned(),
            csrf: csrf_of(session_id),
            expires_at,
        }
    }
}

/// The CSRF token of the session `session_id`: derived from it, so the server need not keep
/// it (only its digest), and unknowable without the HttpOnly cookie.
pub fn csrf_of(session_id: &str) -> String {
    let mut input = b"keygate-csrf:".to_vec();
    input.extend_from_slice(session_id.as_bytes());
    URL_SAFE_NO_PAD.encode(KeyDigest::of(&input).as_bytes())
}

fn new_session_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|error| ApiError::Internal(format!("OS random number generator: {error}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A client of a login: its address (for the failed-login count) and the full peer (for the
/// audit log).
#[derive(Clone, Debug)]
pub struct LoginClient {
    pub address: String,
    pub source: Option<String>,
}

fn entry<'a>(
    action: &'a str,
    client: &LoginClient,
    actor: Option<String>,
    outcome: &'a str,
    detail: Option<serde_json::Value>,
) -> AuditEntry<'a> {
    AuditEntry {
        action,
        actor: actor.clone(),
        source: client.source.clone(),
        target: actor,
        outcome,
        detail,
    }
}

/// Opens a session for `key`: answers what the page is told and the session id (the cookie).
pub async fn login(
    service: &Service,
    key: &str,
    client: &LoginClient,
) -> Result<(SessionView, String), ApiError> {
    let sessions = service.sessions();
    let now = service.now();
    let address = sessions.counted_address(&client.address).to_owned();
    if let Some((retry_after, first)) = sessions.limited(&address, now) {
        if first {
            tracing::info!(address = %address, "logins refused: too many failures this minute");
            let detail = serde_json::json!({ "address": address });
            let audit = entry(
                "session.login_limited",
                client,
                None,
                "denied",
                Some(detail),
            );
            crate::service::audit::record(service.store(), now, audit).await;
        }
        return Err(ApiError::TooManyLogins { retry_after });
    }
    let access = if key.is_empty() || key.chars().count() > MAX_LOGIN_KEY_CHARS {
        None
    } else {
        authenticate(service, key).await?
    };
    let Some((access, kind)) = access else {
        sessions.count_failure(&address, now);
        tracing::info!("login with an invalid key refused");
        let audit = entry("session.login_failed", client, None, "denied", None);
        crate::service::audit::record(service.store(), now, audit).await;
        return Err(ApiError::InvalidCredential(Realm::Admin));
    };
    let pruned = service.store().delete_expired_sessions(now).await?;
    if pruned > 0 {
        tracing::debug!(pruned, "expired sessions deleted");
    }
    let session_id = new_session_id()?;
    let expires_at = now.saturating_add(sessions.settings().session_ttl_s);
    let view = SessionView::of(&access, &session_id, expires_at);
    service
        .store()
        .insert_session(&SessionRow {
            id_digest: KeyDigest::of(session_id.as_bytes()).to_hex(),
            csrf_digest: KeyDigest::of(view.csrf.as_bytes()).to_hex(),
            kind: kind.as_str().to_owned(),
            actor: access.actor().to_owned(),
            source: client.source.clone(),
            created_at: now,
            expires_at,
        })
        .await?;
    let detail = serde_json::json!({ "role": access.role(), "owner": access.owner() });
    let audit = entry(
        "session.login",
        client,
        Some(access.actor().to_owned()),
        "ok",
        Some(detail),
    );
    crate::service::audit::record(service.store(), now, audit).await;
    tracing::info!(actor = %access.actor(), role = access.role(), "session opened");
    Ok((view, session_id))
}

/// A live session: its row, the access it gives now, and what the page is told.
#[derive(Clone, Debug)]
pub struct LiveSession {
    pub row: SessionRow,
    pub access: Access,
    pub view: SessionView,
}

impl LiveSession {
    /// Whether `token` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        KeyDigest::from_hex(&self.row.csrf_digest)
            .is_some_and(|stored| stored.ct_eq(&KeyDigest::of(token.as_bytes())))
    }
}

/// The live session whose id is `session_id`: `None` when there is none, it ended, or its key
/// no longer gives management access (such a session is deleted).
pub async fn resolve(service: &Service, session_id: &str) -> Result<Option<LiveSession>, ApiError> {
    if session_id.is_empty() || session_id.len() > 128 {
        return Ok(None);
    }
    let digest = KeyDigest::of(session_id.as_bytes()).to_hex();
    let Some(row) = service.store().get_session(&digest).await? else {
        return Ok(None);
    };
    let now = service.now();
    let access = match CredentialKind::parse(&row.kind) {
        Some(kind) if row.expires_at > now => current_access(service, kind, &row.actor).await?,
        _ => None,
    };
    let Some(access) = access else {
        service.store().delete_session(&digest).await?;
        tracing::debug!(actor = %row.actor, "session ended (expired, or its key no longer valid)");
        return Ok(None);
    };
    let view = SessionView::of(&access, session_id, row.expires_at);
    Ok(Some(LiveSession { row, access, view }))
}

/// Ends `session` (logout).
pub async fn logout(
    service: &Service,
    session: &LiveSession,
    source: Option<String>,
) -> Result<(), ApiError> {
    service
        .store()
        .delete_session(&session.row.id_digest)
        .await?;
    let actor = Some(session.access.actor().to_owned());
    let audit = AuditEntry {
        action: "session.logout",
        actor: actor.clone(),
        source,
        target: actor,
        outcome: "ok",
        detail: None,
    };
    crate::service::audit::record(service.store(), service.now(), audit).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_differ_by_session_and_are_not_the_id() {
        let a = csrf_of("session-a");
        assert_eq!(a, csrf_of("session-a"));
        assert_ne!(a, csrf_of("session-b"));
        assert!(!a.contains("session-a"));
        assert_eq!(a.len(), 43);
    }
}
