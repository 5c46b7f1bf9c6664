//! The audit log: every management action, with time, actor (the admin key's id),
//! source address, target key id and outcome. Never a secret: no key plaintext, no admin key,
//! no token in any field.
//!
//! Handlers append with [`record`]. The management router is also wrapped in
//! [`audit_management`], which appends one entry per create, rotate, revoke, expire,
//! signing-key rotation and legacy import from the request and its answer, so those handlers
//! need no audit code. Failed admin authentication is recorded by the admin check itself.
//!
//! Refused admin authentications come from anyone and cost nothing to send, so they are
//! aggregated: one row per source address and minute with a count ([`RefusedAdmin`]), the
//! request's method and path cut to a few hundred bytes, and at most [`MAX_REFUSED_SOURCES`]
//! sources a minute (the rest share one row whose source is `other`). The counts live in
//! memory until they are written: when their minute is over (by the next refusal or the
//! periodic flush), before the audit log is read, and when the service stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::AppState;
use crate::error::ApiError;
use crate::model::{AuditFilter, AuditRow, NewAuditRow};
use crate::timestamp::{format_rfc3339, parse_rfc3339};

/// Default page size of `GET /api/v1/audit`.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest page size of `GET /api/v1/audit`.
pub const MAX_PAGE: u32 = 500;
/// Longest text filter value accepted.
const MAX_FILTER_CHARS: usize = 128;
/// Largest management answer the audit middleware reads to find the target id.
const MAX_INSPECTED_BODY: usize = 16 * 1024 * 1024;

/// One management action to append to the audit log.
#[derive(Clone, Debug)]
pub struct AuditEntry<'a> {
    /// `create`, `rotate`, `revoke`, `expire`, `update`, `signing_key_rotate`, `import`,
    /// `admin_auth`.
    pub action: &'a str,
    /// The admin key's id (never the key).
    pub actor: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    /// The key id acted on.
    pub target: Option<String>,
    /// `ok`, `denied` or `error: ...`.
    pub outcome: &'a str,
    /// Anything else worth keeping, never secrets.
    pub detail: Option<Value>,
}

/// Appends `entry` to the audit log at the service's current time. A failed write is logged,
/// never raised: auditing must not fail (or panic) the request it describes.
pub async fn record(state: &AppState, entry: AuditEntry<'_>) {
    let detail = entry.detail.as_ref().map(Value::to_string);
    let row = NewAuditRow {
        at: state.now(),
        action: entry.action,
        actor: entry.actor.as_deref(),
        source: entry.source.as_deref(),
        target: entry.target.as_deref(),
        outcome: entry.outcome,
        detail: detail.as_deref(),
    };
    if let Err(error) = state.store().append_audit(&row).await {
        tracing::error!(
            action = entry.action,
            target = entry.target.as_deref().unwrap_or(""),
            outcome = entry.outcome,
            error = %error,
            "cannot append to the audit log"
        );
    }
}

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

/// The outcome text of an answer with `status`: `ok` for 2xx, `denied` for 401/403, else
/// `error: <problem slug or status>`.
pub fn outcome_of(status: StatusCode, problem_type: Option<&str>) -> String {
    if status.is_success() {
        "ok".to_owned()
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        "denied".to_owned()
    } else {
        let slug = problem_type
            .and_then(|kind| kind.strip_prefix("urn:keygate:problem:"))
            .unwrap_or("unknown");
        format!("error: {slug} ({})", status.as_u16())
    }
}

/// What an answer adds to its audit entry: a handler puts it in the response extensions for
/// [`audit_management`] to use instead of reading the body.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    pub target: Option<String>,
    pub detail: Option<Value>,
}

/// The audited action of a management route, if it is one this middleware records.
fn action_of(method: &Method, route: &str) -> Option<&'static str> {
    match (method.as_str(), route) {
        ("POST", "/api/v1/auth/keys") => Some("create"),
        ("POST", "/api/v1/auth/keys/{id}/rotate") => Some("rotate"),
        ("DELETE", "/api/v1/auth/keys/{id}") => Some("revoke"),
        ("POST", "/api/v1/auth/keys/{id}/expire") => Some("expire"),
        ("POST", "/api/v1/signing-keys/rotate") => Some("signing_key_rotate"),
        ("POST", "/api/v1/auth/keys/import") => Some("import"),
        _ => None,
    }
}

/// The `{id}` of a key route such as `/api/v1/auth/keys/{id}/rotate`, as sent.
fn path_key_id(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/auth/keys/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty() && id.len() <= 64).then(|| id.to_owned())
}

/// Target and detail of a successful answer, read from its JSON body. Only ids, formats,
/// kids and algorithms are copied: never the `key` member or anything else.
fn note_from_body(action: &str, request_target: Option<String>, body: &Value) -> AuditNote {
    let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
    match action {
        "create" => AuditNote {
            target: text("id"),
            detail: Some(serde_json::json!({ "format": text("format") })),
        },
        "rotate" => AuditNote {
            target: request_target,
            detail: Some(serde_json::json!({ "successor": text("id"), "format": text("format") })),
        },
        "signing_key_rotate" => AuditNote {
            target: None,
            detail: Some(serde_json::json!({
                "kid": text("kid"),
                "algorithm": text("algorithm"),
                "retired_kid": text("retired_kid"),
            })),
        },
        _ => AuditNote {
            target: request_target,
            detail: None,
        },
    }
}

/// Middleware of the management routes (inside the admin check): appends one audit entry per
/// audited action, from the request, the answer's status and, for successes, a few members of
/// the answer (see [`note_from_body`]) or the answer's [`AuditNote`].
pub async fn audit_management(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let action = route
        .as_deref()
        .and_then(|route| action_of(&parts.method, route));
    let Some(action) = action else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let caller = Caller::of(&parts);
    let request_target = route
        .as_deref()
        .filter(|route| route.contains("{id}"))
        .and_then(|_| path_key_id(parts.uri.path()));
    let response = next.run(Request::from_parts(parts, body)).await;
    let status = response.status();
    let (parts, body) = response.into_parts();
    let note = parts.extensions.get::<AuditNote>().cloned();
    let bytes = match axum::body::to_bytes(body, MAX_INSPECTED_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(action, error = %error, "cannot read a management answer to audit it");
            let entry = caller.entry(action, request_target, "error: unreadable answer", None);
            record(&state, entry).await;
            let mut failed = Response::new(Body::empty());
            *failed.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return failed;
        }
    };
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    let outcome = outcome_of(
        status,
        json.as_ref()
            .and_then(|body| body.get("type"))
            .and_then(Value::as_str),
    );
    let note = match (note, json) {
        (Some(note), _) => AuditNote {
            target: note.target.or(request_target),
            detail: note.detail,
        },
        (None, Some(body)) if status.is_success() => note_from_body(action, request_target, &body),
        (None, _) => AuditNote {
            target: request_target,
            detail: None,
        },
    };
    record(
        &state,
        caller.entry(action, note.target, &outcome, note.detail),
    )
    .await;
    Response::from_parts(parts, Body::from(bytes))
}

// ---------------------------------------------------------------------------------------------
// Refused admin authentications, aggregated

/// Longest request path kept in a refused-admin row (bytes; longer ones are cut and end `…`).
pub const MAX_REFUSED_PATH_BYTES: usize = 256;
/// Longest method kept in a refused-admin row.
const MAX_REFUSED_METHOD_BYTES: usize = 16;
/// Sources with a row of their own per minute; refusals from further sources share one row
/// whose source is [`OTHER_SOURCE`].
pub const MAX_REFUSED_SOURCES: usize = 256;
/// The source of the row that gathers refusals past [`MAX_REFUSED_SOURCES`], and of those
/// whose peer is not known.
pub const OTHER_SOURCE: &str = "other";
/// Rows waiting in memory at most (several minutes' worth while the database cannot be
/// written); past it, further refusals join the `other` row of their minute.
const MAX_WAITING_ROWS: usize = 4 * (MAX_REFUSED_SOURCES + 1);
/// How often the periodic flush writes the counts of minutes that are over.
pub const REFUSED_FLUSH_PERIOD: Duration = Duration::from_secs(30);

/// The refusals from one source in one minute.
#[derive(Clone, Debug, Default)]
struct Refusals {
    /// The audit row once written.
    row_id: Option<i64>,
    count: u64,
    /// `count` as last written.
    written: u64,
    /// Refusals by reason (`missing`, `invalid`).
    reasons: BTreeMap<&'static str, u64>,
    /// The first request's method and path, cut short.
    method: String,
    path: String,
    first_at: i64,
    last_at: i64,
}

impl Refusals {
    fn detail(&self) -> String {
        serde_json::json!({
            "count": self.count,
            "reasons": self.reasons,
            "method": self.method,
            "path": self.path,
            "first_at": format_rfc3339(self.first_at),
            "last_at": format_rfc3339(self.last_at),
        })
        .to_string()
    }
}

/// Refused admin authentications waiting to be written, by (minute, source).
#[derive(Debug, Default)]
pub struct RefusedAdmin {
    rows: Mutex<BTreeMap<(i64, String), Refusals>>,
    /// One flush at a time, so a row is inserted once and then only updated.
    flushing: tokio::sync::Mutex<()>,
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl RefusedAdmin {
    /// Counts one refusal at `now` from `source` (an IP address); answers whether a minute is
    /// over with counts still unwritten.
    fn note(&self, now: i64, source: &str, reason: &'static str, method: &str, path: &str) -> bool {
        let minute = now - now.rem_euclid(60);
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let own = (minute, source.to_owned());
        let sources_this_minute = rows.range((minute, String::new())..).count();
        let slot = if rows.contains_key(&own)
            || (sources_this_minute < MAX_REFUSED_SOURCES && rows.len() < MAX_WAITING_ROWS)
        {
            own
        } else {
            (minute, OTHER_SOURCE.to_owned())
        };
        let entry = rows.entry(slot).or_insert_with(|| Refusals {
            method: cut(method, MAX_REFUSED_METHOD_BYTES),
            path: cut(path, MAX_REFUSED_PATH_BYTES),
            first_at: now,
            ..Refusals::default()
        });
        entry.count += 1;
        *entry.reasons.entry(reason).or_default() += 1;
        entry.last_at = entry.last_at.max(now);
        rows.range(..(minute, String::new()))
            .any(|(_, r)| r.count > r.written)
    }

    /// Writes the counts not written yet: every row when `all`, else those of minutes before
    /// `now`'s. Rows of past minutes are forgotten once written.
    pub async fn flush(&self, state: &AppState, all: bool) {
        let _one_at_a_time = self.flushing.lock().await;
        let now = state.now();
        let minute = now - now.rem_euclid(60);
        let due: Vec<((i64, String), Refusals)> = {
            let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            rows.iter()
                .filter(|((at, _), r)| (all || *at < minute) && r.count > r.written)
                .map(|(key, r)| (key.clone(), r.clone()))
                .collect()
        };
        for ((row_minute, source), refusals) in due {
            let detail = refusals.detail();
            let written = match refusals.row_id {
                Some(id) => state
                    .store()
                    .update_audit_detail(id, &detail)
                    .await
                    .map(|()| id),
                None => {
                    let row = NewAuditRow {
                        at: refusals.first_at,
                        action: "admin_auth",
                        actor: None,
                        source: Some(source.as_str()),
                        target: None,
                        outcome: "denied",
                        detail: Some(&detail),
                    };
                    state.store().append_audit(&row).await
                }
            };
            let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            match written {
                Ok(id) => {
                    let key = (row_minute, source);
                    if let Some(entry) = rows.get_mut(&key) {
                        entry.row_id = Some(id);
                        entry.written = refusals.count;
                    }
                    let done = rows
                        .get(&key)
                        .is_some_and(|r| r.count == r.written && row_minute < minute);
                    if done {
                        rows.remove(&key);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot write refused admin requests to the audit log");
                }
            }
        }
        // Written rows of past minutes that nothing changed since.
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.retain(|(at, _), r| *at >= minute || r.count > r.written);
    }
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
/// row of the minute (no actor, no target); writes the rows of minutes that are over.
pub async fn record_denied_admin(state: &AppState, parts: &Parts, reason: &'static str) {
    let refused = state.refused_admin();
    let minute_over = refused.note(
        state.now(),
        &refusal_source(parts),
        reason,
        parts.method.as_str(),
        parts.uri.path(),
    );
    if minute_over {
        refused.flush(state, false).await;
    }
}

/// Writes the refusal counts of past minutes every `period` (the rows of the current minute
/// are written once it is over, or when the audit log is read). Runs until dropped.
pub async fn flush_refused_periodically(state: AppState, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        state.refused_admin().flush(&state, false).await;
    }
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/audit

/// The audit routes (admin): merge into the management router, inside the admin check.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list_audit))
}

#[derive(Debug, Deserialize)]
struct AuditParams {
    action: Option<String>,
    target: Option<String>,
    actor: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// One audit entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub id: i64,
    /// RFC 3339.
    pub at: Option<String>,
    pub action: String,
    pub actor: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<Value>,
}

impl AuditView {
    pub fn of(row: AuditRow) -> Self {
        Self {
            id: row.id,
            at: format_rfc3339(row.at),
            action: row.action,
            actor: row.actor,
            source: row.source,
            target: row.target,
            outcome: row.outcome,
            detail: row
                .detail
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()))),
        }
    }
}

/// A page of `GET /api/v1/audit`, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Every action the audit log records (the values `action` filters on).
pub const ACTIONS: [&str; 8] = [
    "create",
    "update",
    "rotate",
    "revoke",
    "expire",
    "import",
    "signing_key_rotate",
    "admin_auth",
];

/// The `action` filter: one of [`ACTIONS`], so a typo is an error rather than an empty page.
fn action_filter(value: Option<String>) -> Result<Option<String>, ApiError> {
    match text_filter(value)? {
        Some(action) if !ACTIONS.contains(&action.as_str()) => Err(ApiError::UnknownAuditAction),
        other => Ok(other),
    }
}

fn text_filter(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.chars().count() > MAX_FILTER_CHARS => Err(ApiError::BadAuditFilter),
        Some(text) if text.is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn time_filter(value: Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .filter(|text| !text.is_empty())
        .map(|text| parse_rfc3339(&text).ok_or(ApiError::BadAuditTime))
        .transpose()
}

fn parse_params(params: AuditParams) -> Result<AuditFilter, ApiError> {
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or(ApiError::BadLimit)?,
    };
    let before = params
        .cursor
        .as_deref()
        .map(|text| {
            text.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or(ApiError::BadCursor)
        })
        .transpose()?;
    Ok(AuditFilter {
        action: action_filter(params.action)?,
        target: text_filter(params.target)?,
        actor: text_filter(params.actor)?,
        outcome: text_filter(params.outcome)?,
        from: time_filter(params.from)?,
        to: time_filter(params.to)?,
        before,
        limit,
    })
}

async fn list_audit(
    State(state): State<AppState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let mut filter = parse_params(params)?;
    // The reader sees every refusal counted so far.
    state.refused_admin().flush(&state, true).await;
    let limit = filter.limit as usize;
    filter.limit += 1;
    let mut rows = state.store().list_audit(&filter).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|row| row.id.to_string())
    } else {
        None
    };
    Ok(Json(AuditPage {
        entries: rows.into_iter().map(AuditView::of).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_the_problem() {
        assert_eq!(outcome_of(StatusCode::CREATED, None), "ok");
        assert_eq!(outcome_of(StatusCode::UNAUTHORIZED, None), "denied");
        assert_eq!(
            outcome_of(StatusCode::NOT_FOUND, Some("urn:keygate:problem:not-found")),
            "error: not-found (404)"
        );
        assert_eq!(
            outcome_of(StatusCode::BAD_GATEWAY, None),
            "error: unknown (502)"
        );
    }

    #[test]
    fn bodies_give_ids_never_keys() {
        let body = serde_json::json!({"id": "abc", "format": "opaque", "key": "kg_secret"});
        let note = note_from_body("create", None, &body);
        assert_eq!(note.target.as_deref(), Some("abc"));
        assert!(!note.detail.unwrap().to_string().contains("kg_secret"));
        let note = note_from_body("rotate", Some("old".into()), &body);
        assert_eq!(note.target.as_deref(), Some("old"));
        assert_eq!(note.detail.unwrap()["successor"], "abc");
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 16), "short");
        let long = "é".repeat(40_000);
        let kept = cut(&long, MAX_REFUSED_PATH_BYTES);
        assert!(kept.len() <= MAX_REFUSED_PATH_BYTES, "{}", kept.len());
        assert!(kept.ends_with('…'));
    }

    #[test]
    fn refusals_fold_per_source_and_minute_and_stay_bounded() {
        let refused = RefusedAdmin::default();
        let path = format!("/api/v1/auth/keys/{}", "x".repeat(60_000));
        for i in 0..1000 {
            refused.note(120 + i % 60, "10.0.0.1", "missing", "GET", &path);
        }
        for i in 0..10_000u32 {
            let source = std::net::Ipv4Addr::from(0x0a01_0000 + i).to_string();
            refused.note(150, &source, "invalid", "GET", "/api/v1/auth/keys");
        }
        let rows = refused.rows.lock().unwrap();
        assert_eq!(rows.len(), MAX_REFUSED_SOURCES + 1, "sources plus `other`");
        let one = &rows[&(120, "10.0.0.1".to_owned())];
        assert_eq!(one.count, 1000);
        assert!(one.detail().len() < 1024, "{}", one.detail().len());
        let other = &rows[&(120, OTHER_SOURCE.to_owned())];
        assert_eq!(other.count, 10_000 - (MAX_REFUSED_SOURCES as u64 - 1));
        drop(rows);
        assert!(
            !refused.note(179, "10.0.0.1", "missing", "GET", "/"),
            "same minute"
        );
        assert!(
            refused.note(180, "10.0.0.1", "missing", "GET", "/"),
            "a new minute"
        );
    }

    #[test]
    fn key_ids_come_from_the_path() {
        assert_eq!(
            path_key_id("/api/v1/auth/keys/abcdefghijklmnop/rotate").as_deref(),
            Some("abcdefghijklmnop")
        );
        assert_eq!(path_key_id("/api/v1/signing-keys/rotate"), None);
    }

    #[test]
    fn params_are_checked() {
        let params = |limit: Option<&str>, cursor: Option<&str>, from: Option<&str>| AuditParams {
            action: Some("create".into()),
            target: None,
            actor: Some(String::new()),
            outcome: None,
            from: from.map(str::to_owned),
            to: None,
            limit: limit.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
        };
        let filter = parse_params(params(None, Some("42"), Some("2030-01-01T00:00:00Z"))).unwrap();
        assert_eq!(filter.limit, DEFAULT_PAGE);
        assert_eq!(filter.before, Some(42));
        assert_eq!(filter.actor, None);
        assert_eq!(filter.from, Some(1_893_456_000));
        assert!(matches!(
            parse_params(params(Some("0"), None, None)),
            Err(ApiError::BadLimit)
        ));
        assert!(matches!(
            parse_params(params(Some("501"), None, None)),
            Err(ApiError::BadLimit)
        ));
        assert!(matches!(
            parse_params(params(None, Some("x"), None)),
            Err(ApiError::BadCursor)
        ));
        assert!(matches!(
            parse_params(params(None, None, Some("yesterday"))),
            Err(ApiError::BadAuditTime)
        ));
    }
}
