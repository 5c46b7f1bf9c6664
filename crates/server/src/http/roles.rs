//! The role resource of the management API: `/api/v1/roles` (create, list) and
//! `/api/v1/roles/{name}` (show, update, delete). Creating, updating and deleting a role each
//! record an audit entry (`role_create`, `role_update`, `role_delete`; the target is the
//! role's name, the detail its new version, never its scopes).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::http::audit::outcome_of;
use crate::http::extract::{parse_json, read_body, Caller};
use crate::http::state::AppState;
use crate::model::RoleRecord;
use crate::service::error::ApiError;
use crate::service::roles::{self, CreateRoleRequest, UpdateRoleRequest};
use crate::timestamp::format_rfc3339;

/// A role as the management API shows it.
#[derive(Debug, Serialize)]
pub struct RoleView {
    pub name: String,
    pub scopes: Vec<String>,
    pub description: String,
    /// Grows with every change; the filters compare it with the version a cached key record
    /// was read at.
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl RoleView {
    pub fn of(role: RoleRecord) -> Self {
        Self {
            created_at: format_rfc3339(role.created_at),
            updated_at: format_rfc3339(role.updated_at),
            name: role.name,
            scopes: role.scopes,
            description: role.description,
            version: role.version,
        }
    }
}

/// `GET /api/v1/roles`.
#[derive(Debug, Serialize)]
pub struct RoleList {
    roles: Vec<RoleView>,
}

/// Records the audit entry of a role change.
async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    target: Option<String>,
    result: &Result<RoleRecord, ApiError>,
) {
    let (outcome, detail) = match result {
        Ok(role) => (
            "ok".to_owned(),
            Some(serde_json::json!({ "version": role.version })),
        ),
        Err(error) => {
            let slug = match error.status() {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::CONFLICT => "conflict",
                StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
                status if status.is_server_error() => "internal",
                _ => "invalid-request",
            };
            let outcome = outcome_of(error.status(), Some(&format!("urn:keygate:problem:{slug}")));
            (outcome, None)
        }
    };
    let entry = caller.entry(action, target, &outcome, detail);
    crate::service::audit::record(state.store(), state.now(), entry).await;
}

/// A path's role name, as audited: only a valid name is copied.
fn target_of(name: &str) -> Option<String> {
    roles::parse_role_name(name).ok()
}

pub async fn create_role(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let parsed = read_body(body).and_then(|body| parse_json::<CreateRoleRequest>(&body));
    let target = parsed
        .as_ref()
        .ok()
        .and_then(|request| target_of(&request.name));
    let result = match parsed {
        Ok(request) => roles::create(state.service(), request, state.now()).await,
        Err(error) => Err(error),
    };
    audit(&state, &caller, "role_create", target, &result).await;
    Ok((StatusCode::CREATED, Json(RoleView::of(result?))))
}

pub async fn list_roles(State(state): State<AppState>) -> Result<Json<RoleList>, ApiError> {
    let roles = roles::list(state.service()).await?;
    Ok(Json(RoleList {
        roles: roles.into_iter().map(RoleView::of).collect(),
    }))
}

pub async fn show_role(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<RoleView>, ApiError> {
    Ok(Json(RoleView::of(
        roles::show(state.service(), &name).await?,
    )))
}

pub async fn update_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RoleView>, ApiError> {
    let parsed = read_body(body).and_then(|body| parse_json::<UpdateRoleRequest>(&body));
    let result = match parsed {
        Ok(request) => roles::update(state.service(), &name, request, state.now()).await,
        Err(error) => Err(error),
    };
    audit(&state, &caller, "role_update", target_of(&name), &result).await;
    Ok(Json(RoleView::of(result?)))
}

pub async fn delete_role(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RoleView>, ApiError> {
    let result = roles::delete(state.service(), &name, state.now()).await;
    audit(&state, &caller, "role_delete", target_of(&name), &result).await;
    Ok(Json(RoleView::of(result?)))
}
