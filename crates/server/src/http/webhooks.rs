//! Webhooks: `/api/v1/webhooks` (register, list), `/api/v1/webhooks/{id}` (show, remove),
//! `/api/v1/webhooks/{id}/deliveries` (list) and
//! `/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver`. Admins only. Registering,
//! removing and redelivering each record an audit entry (`webhook_create`,
//! `webhook_delete`, `webhook_redeliver`; the target is the webhook id). The secret is in
//! the answer to the registration only. Removing answers the removed webhook.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::audit::AuditNote;
use crate::http::extract::{page_limit, parse_json, read_body};
use crate::http::state::AppState;
use crate::model::{DeliveryRecord, WebhookRecord};
use crate::service::error::ApiError;
use crate::service::webhooks::{self, CreateWebhookRequest};
use crate::timestamp::format_rfc3339;

/// A webhook as the API shows it; `secret` only in the answer to its registration.
#[derive(Debug, Serialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookView {
    fn of(webhook: WebhookRecord, with_secret: bool) -> Self {
        Self {
            id: webhook.id,
            url: webhook.url,
            events: webhook.events,
            description: webhook.description,
            created_at: format_rfc3339(webhook.created_at),
            secret: with_secret.then_some(webhook.secret),
        }
    }
}

/// A delivery as the API shows it (without its body).
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub status: &'static str,
    pub attempts: u32,
    pub created_at: Option<String>,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub finished_at: Option<String>,
}

impl DeliveryView {
    fn of(delivery: DeliveryRecord) -> Self {
        let pending = delivery.status == crate::model::DeliveryStatus::Pending;
        Self {
            id: delivery.id,
            webhook_id: delivery.webhook_id,
            event: delivery.event,
            status: delivery.status.as_str(),
            attempts: delivery.attempts,
            created_at: format_rfc3339(delivery.created_at),
            next_attempt_at: pending
                .then(|| format_rfc3339(delivery.next_attempt_at))
                .flatten(),
            last_status: delivery.last_status,
            last_error: delivery.last_error,
            finished_at: delivery.finished_at.and_then(format_rfc3339),
        }
    }
}

fn noted(response: impl IntoResponse, target: &str) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(AuditNote {
        target: Some(target.to_owned()),
        detail: None,
    });
    response
}

pub async fn create_webhook(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CreateWebhookRequest = parse_json(&read_body(body)?)?;
    let webhook = webhooks::create(state.service(), request).await?;
    let id = webhook.id.clone();
    let events = webhook.events.clone();
    let mut response = (StatusCode::CREATED, Json(WebhookView::of(webhook, true))).into_response();
    response.extensions_mut().insert(AuditNote {
        target: Some(id),
        detail: Some(json!({ "events": events })),
    });
    Ok(response)
}

pub async fn list_webhooks(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let webhooks: Vec<WebhookView> = webhooks::list(state.service())
        .await?
        .into_iter()
        .map(|webhook| WebhookView::of(webhook, false))
        .collect();
    Ok(Json(json!({ "webhooks": webhooks })))
}

pub async fn show_webhook(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let webhook = webhooks::show(state.service(), &id).await?;
    Ok(Json(WebhookView::of(webhook, false)))
}

pub async fn delete_webhook(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let webhook = webhooks::show(state.service(), &id).await?;
    webhooks::remove(state.service(), &id).await?;
    Ok(noted(Json(WebhookView::of(webhook, false)), &id))
}

/// The query of `GET /api/v1/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize)]
pub struct DeliveryParams {
    limit: Option<String>,
}

pub async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::MalformedQuery)?;
    let limit = page_limit(params.limit.as_deref())?;
    let deliveries: Vec<DeliveryView> = webhooks::deliveries(state.service(), &id, limit)
        .await?
        .into_iter()
        .map(DeliveryView::of)
        .collect();
    Ok(Json(json!({ "deliveries": deliveries })))
}

pub async fn redeliver(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let delivery = webhooks::redeliver(state.service(), &id, &delivery).await?;
    Ok(noted(
        (StatusCode::ACCEPTED, Json(DeliveryView::of(delivery))),
        &id,
    ))
}
