//! The role operations: create, list, show, update, delete. A role is a named scope set that
//! keys hold (see [`crate::model::role`]); each change reaches the filters through the
//! revocation feed, so records cached before it are looked up again.

use serde::Deserialize;

use crate::model::role::{
    is_valid_role_name, MAX_ROLES_PER_KEY, MAX_ROLE_DESCRIPTION_CHARS, MAX_ROLE_SCOPES,
};
use crate::model::{RolePatch, RoleRecord};
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::validate::{valid_text, validate_scopes};

/// The body of `POST /api/v1/roles`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoleRequest {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// The body of `PATCH /api/v1/roles/{name}`: `scopes` replaces the role's scopes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoleRequest {
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A role name as given in a request or a path.
pub fn parse_role_name(name: &str) -> Result<String, ApiError> {
    if is_valid_role_name(name) {
        Ok(name.to_owned())
    } else {
        Err(ApiError::BadRoleName)
    }
}

/// The scopes of a role: the key scope grammar, at most [`MAX_ROLE_SCOPES`], sorted and
/// deduplicated.
fn role_scopes(items: &[String]) -> Result<Vec<String>, ApiError> {
    if items.len() > MAX_ROLE_SCOPES {
        return Err(ApiError::TooManyScopes);
    }
    let scopes = validate_scopes(items)?;
    Ok(scopes.iter().map(|s| s.as_str().to_owned()).collect())
}

fn description(text: Option<String>) -> Result<Option<String>, ApiError> {
    match text {
        Some(text) if !valid_text(&text, MAX_ROLE_DESCRIPTION_CHARS) => {
            Err(ApiError::BadRoleDescription)
        }
        other => Ok(other),
    }
}

/// The roles a key is to hold: valid names, at most [`MAX_ROLES_PER_KEY`], sorted and
/// deduplicated (whether they exist is checked when the key is stored).
pub fn validate_key_roles(items: &[String]) -> Result<Vec<String>, ApiError> {
    let mut roles = items
        .iter()
        .map(|name| parse_role_name(name))
        .collect::<Result<Vec<_>, _>>()?;
    roles.sort_unstable();
    roles.dedup();
    if roles.len() > MAX_ROLES_PER_KEY {
        return Err(ApiError::TooManyKeyRoles);
    }
    Ok(roles)
}

pub fn validate_create(request: CreateRoleRequest) -> Result<RoleRecord, ApiError> {
    Ok(RoleRecord {
        name: parse_role_name(&request.name)?,
        scopes: role_scopes(&request.scopes)?,
        description: description(request.description)?.unwrap_or_default(),
        ..RoleRecord::default()
    })
}

pub fn validate_update(request: UpdateRoleRequest) -> Result<RolePatch, ApiError> {
    Ok(RolePatch {
        scopes: request.scopes.as_deref().map(role_scopes).transpose()?,
        description: description(request.description)?,
    })
}

pub async fn create(
    service: &Service,
    request: CreateRoleRequest,
    now: i64,
) -> Result<RoleRecord, ApiError> {
    let role = validate_create(request)?;
    let role = service.store().create_role(&role, now).await?;
    tracing::info!(role = %role.name, version = role.version, "role created");
    Ok(role)
}

pub async fn list(service: &Service) -> Result<Vec<RoleRecord>, ApiError> {
    Ok(service.store().list_roles().await?)
}

pub async fn show(service: &Service, name: &str) -> Result<RoleRecord, ApiError> {
    let name = parse_role_name(name)?;
    service
        .store()
        .get_role(&name)
        .await?
        .ok_or(ApiError::RoleNotFound)
}

pub async fn update(
    service: &Service,
    name: &str,
    request: UpdateRoleRequest,
    now: i64,
) -> Result<RoleRecord, ApiError> {
    let name = parse_role_name(name)?;
    let patch = validate_update(request)?;
    let role = service.store().update_role(&name, &patch, now).await?;
    tracing::info!(role = %role.name, version = role.version, "role updated");
    Ok(role)
}

pub async fn delete(service: &Service, name: &str, now: i64) -> Result<RoleRecord, ApiError> {
    let name = parse_role_name(name)?;
    let role = service.store().delete_role(&name, now).await?;
    tracing::info!(role = %role.name, "role deleted");
    Ok(role)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: serde_json::Value) -> Result<RoleRecord, ApiError> {
        validate_create(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn role_requests_use_the_key_scope_grammar_and_bounds() {
        let role = create(serde_json::json!({
            "name": "analyst", "scopes": ["models:read", "datasets:read", "models:read"]
        }))
        .unwrap();
        assert_eq!(role.scopes, ["datasets:read", "models:read"]);
        assert!(matches!(
            create(serde_json::json!({"name": "Bad Name", "scopes": []})),
            Err(ApiError::BadRoleName)
        ));
        assert!(matches!(
            create(serde_json::json!({"name": "a", "scopes": ["has space"]})),
            Err(ApiError::BadScope { index: 0, .. })
        ));
        let many: Vec<String> = (0..=MAX_ROLE_SCOPES).map(|i| format!("s{i}")).collect();
        assert!(matches!(
            create(serde_json::json!({"name": "a", "scopes": many})),
            Err(ApiError::TooManyScopes)
        ));
        assert!(matches!(
            create(serde_json::json!({"name": "a", "scopes": [], "description": "x\u{7}"})),
            Err(ApiError::BadRoleDescription)
        ));
        assert!(serde_json::from_value::<CreateRoleRequest>(
            serde_json::json!({"name": "a", "scopes": [], "version": 3})
        )
        .is_err());
    }

    #[test]
    fn a_key_holds_few_valid_role_names() {
        let names = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        assert_eq!(
            validate_key_roles(&["b".into(), "a".into(), "b".into()]).unwrap(),
            ["a", "b"]
        );
        assert!(validate_key_roles(&names(MAX_ROLES_PER_KEY)).is_ok());
        assert!(matches!(
            validate_key_roles(&names(MAX_ROLES_PER_KEY + 1)),
            Err(ApiError::TooManyKeyRoles)
        ));
        assert!(matches!(
            validate_key_roles(&["x y".into()]),
            Err(ApiError::BadRoleName)
        ));
    }
}
