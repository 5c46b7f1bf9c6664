//! The webhook operations: register, list, show and remove endpoints; list a webhook's
//! deliveries and redeliver one. Admins only. See [`crate::service::alerts`] for what is
//! delivered and how.

use serde::Deserialize;

use crate::model::{AlertKind, DeliveryRecord, WebhookRecord};
use crate::service::alerts::{random_id, MAX_WEBHOOKS};
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::webhook_secrets::seal_secret;

/// Longest webhook URL.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// Most deliveries one listing shows.
pub const MAX_DELIVERY_PAGE: u32 = 500;

/// The body of `POST /api/v1/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    pub url: String,
    /// Event names (see [`AlertKind`]); `["*"]` for all of them.
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadWebhook(message.into())
}

/// Checks a webhook URL: absolute `http` or `https`, with a host, no fragment.
pub fn validate_url(text: &str) -> Result<(), ApiError> {
    if text.chars().count() > MAX_URL_CHARS {
        return Err(bad(format!(
            "url must be at most {MAX_URL_CHARS} characters"
        )));
    }
    let url = url::Url::parse(text)
        .map_err(|_| bad("url must be an absolute http:// or https:// URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("url must be an absolute http:// or https:// URL"));
    }
    if url.fragment().is_some() {
        return Err(bad("url must not have a fragment"));
    }
    Ok(())
}

/// The event names, checked, deduplicated and in the API's order.
pub fn validate_events(names: &[String]) -> Result<Vec<String>, ApiError> {
    if names.is_empty() {
        return Err(bad(
            "events must name at least one event (or \"*\" for all)",
        ));
    }
    if names.len() > 32 {
        return Err(bad("events must have at most 32 entries"));
    }
    let mut wanted = Vec::new();
    for name in names {
        if name == "*" {
            return Ok(AlertKind::ALL
                .iter()
                .map(|kind| kind.as_str().to_owned())
                .collect());
        }
        let Some(kind) = AlertKind::parse(name) else {
            let known: Vec<&str> = AlertKind::ALL.iter().map(|kind| kind.as_str()).collect();
            return Err(bad(format!(
                "events: unknown event {:?}; known: {}",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        };
        wanted.push(kind);
    }
    Ok(AlertKind::ALL
        .iter()
        .filter(|kind| wanted.contains(kind))
        .map(|kind| kind.as_str().to_owned())
        .collect())
}

/// Registers a webhook; answers it (its secret in plaintext, to show once; it is stored
/// sealed).
pub async fn create(
    service: &Service,
    request: CreateWebhookRequest,
) -> Result<WebhookRecord, ApiError> {
    validate_url(&request.url)?;
    let events = validate_events(&request.events)?;
    let description = request.description.unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION_CHARS
        || description.chars().any(char::is_control)
    {
        return Err(bad(format!(
            "description must be at most {MAX_DESCRIPTION_CHARS} characters with no control characters"
        )));
    }
    if service.store().list_webhooks().await?.len() >= MAX_WEBHOOKS {
        return Err(ApiError::TooManyWebhooks);
    }
    let random = |n| random_id(n).map_err(|e| ApiError::Internal(format!("random: {e}")));
    let webhook = WebhookRecord {
        id: random(10)?,
        url: request.url,
        events,
        secret: format!("whsec_{}", random(32)?),
        description,
        created_at: service.now(),
    };
    let stored = WebhookRecord {
        secret: seal_secret(service, &webhook.id, &webhook.secret)?,
        ..webhook.clone()
    };
    service.store().insert_webhook(&stored).await?;
    tracing::info!(webhook = %webhook.id, "webhook registered");
    Ok(webhook)
}

pub async fn list(service: &Service) -> Result<Vec<WebhookRecord>, ApiError> {
    Ok(service.store().list_webhooks().await?)
}

pub async fn show(service: &Service, id: &str) -> Result<WebhookRecord, ApiError> {
    service
        .store()
        .get_webhook(id)
        .await?
        .ok_or(ApiError::WebhookNotFound)
}

pub async fn remove(service: &Service, id: &str) -> Result<(), ApiError> {
    if service.store().delete_webhook(id).await? {
        tracing::info!(webhook = %id, "webhook removed");
        Ok(())
    } else {
        Err(ApiError::WebhookNotFound)
    }
}

/// The webhook's deliveries, newest first.
pub async fn deliveries(
    service: &Service,
    id: &str,
    limit: u32,
) -> Result<Vec<DeliveryRecord>, ApiError> {
    show(service, id).await?;
    Ok(service
        .store()
        .list_deliveries(id, limit.min(MAX_DELIVERY_PAGE))
        .await?)
}

/// Sends a delivery again (same idempotency id, attempts counted afresh), now.
pub async fn redeliver(
    service: &Service,
    id: &str,
    delivery: &str,
) -> Result<DeliveryRecord, ApiError> {
    show(service, id).await?;
    if !service
        .store()
        .redeliver(id, delivery, service.now())
        .await?
    {
        return Err(ApiError::DeliveryNotFound);
    }
    service.alerts().wake();
    service
        .store()
        .get_delivery(id, delivery)
        .await?
        .ok_or(ApiError::DeliveryNotFound)
}
