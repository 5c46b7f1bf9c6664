//! `POST /v1/leases` (service token): the filters' fleet-wide limit leases. See
//! [`crate::service::leases`].

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use keygate_core::fleet::{LeaseRequest, LeaseResponse};

use crate::http::extract::{parse_json, read_body};
use crate::http::state::AppState;
use crate::service::error::ApiError;

pub async fn take_leases(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let body = read_body(body)?;
    let request: LeaseRequest = parse_json(&body)?;
    let answer = crate::service::leases::lease(state.service(), request).await?;
    Ok(Json(answer))
}
