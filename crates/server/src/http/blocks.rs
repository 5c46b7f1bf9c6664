//! Blocked client addresses in the management API (admins only): `/api/v1/blocks` (add,
//! list) and `/api/v1/blocks/{id}` (remove). Adding and removing a block each record an audit
//! entry (`block_add`, `block_remove`; the target is the network, the detail the block's id
//! and expiry). The list shows operator and automatic blocks in force, with their source.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use crate::http::audit::outcome_of;
use crate::http::extract::{parse_json, read_body, Caller};
use crate::http::state::AppState;
use crate::model::block::BlockRecord;
use crate::service::blocks::{self, AddBlockRequest};
use crate::service::error::ApiError;
use crate::timestamp::format_rfc3339;

/// A block as the management API shows it.
#[derive(Debug, Serialize)]
pub struct BlockView {
    pub id: String,
    pub cidr: String,
    /// `operator` or `automatic`.
    pub source: &'static str,
    pub reason: String,
    /// Operator: the admin key's id; automatic: the gateway that reported it.
    pub created_by: Option<String>,
    /// Automatic: the authentication failures that blocked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<i64>,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
}

impl BlockView {
    pub fn of(block: BlockRecord) -> Self {
        Self {
            id: block.id.to_string(),
            created_at: format_rfc3339(block.created_at),
            expires_at: format_rfc3339(block.expires_at),
            cidr: block.cidr,
            source: block.source.as_str(),
            reason: block.reason,
            created_by: block.created_by,
            failures: block.failures,
        }
    }
}

/// `GET /api/v1/blocks`: the blocks in force, newest first, and how many of each source.
#[derive(Debug, Serialize)]
pub struct BlockList {
    blocks: Vec<BlockView>,
    operator: usize,
    automatic: usize,
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &'static str,
    target: Option<String>,
    result: &Result<BlockRecord, ApiError>,
) {
    let (outcome, detail) = match result {
        Ok(block) => (
            "ok".to_owned(),
            Some(serde_json::json!({
                "id": block.id.to_string(),
                "expires_at": format_rfc3339(block.expires_at),
            })),
        ),
        Err(error) => {
            let slug = match error.status() {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::CONFLICT => "too-many-blocks",
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

pub async fn add_block(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BlockView>), ApiError> {
    let now = state.now();
    let validated = read_body(body)
        .and_then(|body| parse_json::<AddBlockRequest>(&body))
        .and_then(|request| blocks::validate_add(request, caller.actor.clone(), now));
    let target = validated.as_ref().ok().map(|block| block.cidr.clone());
    let result = match validated {
        Ok(block) => blocks::add(state.service(), block).await,
        Err(error) => Err(error),
    };
    audit(&state, &caller, "block_add", target, &result).await;
    Ok((StatusCode::CREATED, Json(BlockView::of(result?))))
}

pub async fn list_blocks(State(state): State<AppState>) -> Result<Json<BlockList>, ApiError> {
    let blocks = blocks::list(state.service(), state.now()).await?;
    let operator = blocks
        .iter()
        .filter(|b| b.source == crate::model::block::BlockSource::Operator)
        .count();
    Ok(Json(BlockList {
        automatic: blocks.len() - operator,
        operator,
        blocks: blocks.into_iter().map(BlockView::of).collect(),
    }))
}

pub async fn remove_block(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<BlockView>, ApiError> {
    let result = blocks::remove(state.service(), &id, state.now()).await;
    let target = result.as_ref().ok().map(|block| block.cidr.clone());
    audit(&state, &caller, "block_remove", target, &result).await;
    Ok(Json(BlockView::of(result?)))
}
