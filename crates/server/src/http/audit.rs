//! The audit of the management API: a middleware around the management routes appends one
//! entry per create, rotate, revoke, expire, signing-key rotation and legacy import from the
//! request and its answer, so those handlers need no audit code; and `GET /api/v1/audit`.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use crate::http::extract::{page_limit, Access, Caller};
use crate::http::state::AppState;
use crate::model::AuditFilter;
use crate::service::audit::{AuditPage, ACTIONS};
use crate::service::error::ApiError;
use crate::timestamp::parse_rfc3339;

/// Longest text filter value accepted.
const MAX_FILTER_CHARS: usize = 128;
/// Largest management answer the audit middleware reads to find the target id.
const MAX_INSPECTED_BODY: usize = 16 * 1024 * 1024;

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
        ("PUT", "/api/v1/auth/keys/{id}/signing-material") => Some("signing_material_set"),
        ("DELETE", "/api/v1/auth/keys/{id}/signing-material") => Some("signing_material_remove"),
        ("POST", "/api/v1/webhooks") => Some("webhook_create"),
        ("DELETE", "/api/v1/webhooks/{id}") => Some("webhook_delete"),
        ("POST", "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver") => {
            Some("webhook_redeliver")
        }
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
        "signing_material_set" => AuditNote {
            target: request_target,
            detail: Some(serde_json::json!({ "alg": text("alg") })),
        },
        _ => AuditNote {
            target: request_target,
            detail: None,
        },
    }
}

/// Middleware of the management routes (inside the admin check): appends one audit entry per
/// audited action, from the request, the answer's status and, for successes, a few members of
/// the answer (see `note_from_body`) or the answer's [`AuditNote`].
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
            crate::service::audit::record(state.store(), state.now(), entry).await;
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
    let entry = caller.entry(action, note.target, &outcome, note.detail);
    crate::service::audit::record(state.store(), state.now(), entry).await;
    Response::from_parts(parts, Body::from(bytes))
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/audit

/// The query of `GET /api/v1/audit`.
#[derive(Debug, Deserialize)]
pub struct AuditParams {
    action: Option<String>,
    target: Option<String>,
    actor: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

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
    let limit = page_limit(params.limit.as_deref())?;
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
        owner: None,
    })
}

/// `GET /api/v1/audit`: an owner caller sees only the entries whose target is one of its keys
/// (filtered in the query, so pages stay full).
pub async fn list_audit(
    State(state): State<AppState>,
    access: Access,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let mut filter = parse_params(params)?;
    filter.owner = access.owner().map(str::to_owned);
    let service = state.service();
    let page = crate::service::audit::list(
        service.store(),
        service.clock().as_ref(),
        service.refused_admin(),
        filter,
    )
    .await?;
    Ok(Json(page))
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
        assert_eq!(filter.limit, crate::http::extract::DEFAULT_PAGE);
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
