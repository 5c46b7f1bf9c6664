//! Webhooks and their outbox: the `webhooks`, `webhook_deliveries` and `key_expiry_notices`
//! tables.
//!
//! A worker claims due deliveries with a lease: one `UPDATE` whose condition (due, or claimed
//! with a lease that ended) is checked again on the row it changes, so two replicas that race
//! for a row never both claim it (PostgreSQL re-reads a row another transaction changed;
//! SQLite has one writer). An attempt's result is written only under the claim's lease token,
//! so a worker whose lease ran out cannot overwrite the row another worker claimed since.

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::{Sql, StoredRow, PRUNE_CHUNK};
use crate::model::{
    AttemptOutcome, ClaimedDelivery, DeliveryRecord, DeliveryStatus, WebhookRecord,
};

const WEBHOOK_COLUMNS: &str = "id, url, events, secret, description, created_at";
const DELIVERY_COLUMNS: &str = "id, webhook_id, event, body, created_at, status, attempts, \
     next_attempt_at, last_status, last_error, finished_at";

fn webhook_from_row(row: &StoredRow) -> Result<WebhookRecord, StoreError> {
    let events: String = row.get("events")?;
    Ok(WebhookRecord {
        id: row.get("id")?,
        url: row.get("url")?,
        events: serde_json::from_str(&events)
            .map_err(|_| StoreError::Corrupt("webhooks.events"))?,
        secret: row.get("secret")?,
        description: row.get("description")?,
        created_at: row.get("created_at")?,
    })
}

fn delivery_from_row(row: &StoredRow) -> Result<DeliveryRecord, StoreError> {
    let status: String = row.get("status")?;
    let attempts: i64 = row.get("attempts")?;
    let last_status: Option<i64> = row.get("last_status")?;
    Ok(DeliveryRecord {
        id: row.get("id")?,
        webhook_id: row.get("webhook_id")?,
        event: row.get("event")?,
        body: row.get("body")?,
        created_at: row.get("created_at")?,
        status: DeliveryStatus::parse(&status)
            .ok_or(StoreError::Corrupt("webhook_deliveries.status"))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt("webhook_deliveries.attempts"))?,
        next_attempt_at: row.get("next_attempt_at")?,
        last_status: last_status
            .map(u16::try_from)
            .transpose()
            .map_err(|_| StoreError::Corrupt("webhook_deliveries.last_status"))?,
        last_error: row.get("last_error")?,
        finished_at: row.get("finished_at")?,
    })
}

impl KeyStore {
    pub async fn insert_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError> {
        let events = serde_json::to_string(&webhook.events)
            .map_err(|_| StoreError::Corrupt("webhooks.events"))?;
        let sql = Sql::new(format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .arg(webhook.id.as_str())
        .arg(webhook.url.as_str())
        .arg(events)
        .arg(webhook.secret.as_str())
        .arg(webhook.description.as_str())
        .arg(webhook.created_at);
        self.db.execute(&sql).await?;
        Ok(())
    }

    /// Every webhook, oldest first (there are at most a few hundred).
    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
        ));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(webhook_from_row).collect()
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        ))
        .arg(id);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// Deletes a webhook and its deliveries; answers whether there was one.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        tx.execute(&Sql::new("DELETE FROM webhook_deliveries WHERE webhook_id = $1").arg(id))
            .await?;
        let gone = tx
            .execute(&Sql::new("DELETE FROM webhooks WHERE id = $1").arg(id))
            .await?;
        tx.commit().await?;
        Ok(gone > 0)
    }

    /// Deliveries not finished yet (pending or being sent), over every webhook.
    pub async fn count_open_deliveries(&self) -> Result<u64, StoreError> {
        let sql = Sql::new(
            "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status IN ('pending', 'sending')",
        );
        let n: i64 = self.db.fetch_one(&sql).await?.get("n")?;
        super::error::u64_of(n, "webhook_deliveries count")
    }

    /// Adds deliveries to the outbox, all or none.
    pub async fn enqueue_deliveries(
        &self,
        deliveries: &[DeliveryRecord],
    ) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        for d in deliveries {
            let sql = Sql::new(format!(
                "INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .arg(d.id.as_str())
            .arg(d.webhook_id.as_str())
            .arg(d.event.as_str())
            .arg(d.body.as_str())
            .arg(d.created_at)
            .arg(d.status.as_str())
            .arg(i64::from(d.attempts))
            .arg(d.next_attempt_at)
            .arg(d.last_status.map(i64::from))
            .arg(d.last_error.as_deref())
            .arg(d.finished_at);
            tx.execute(&sql).await?;
        }
        tx.commit().await
    }

    /// Claims at most `limit` due deliveries (pending and due, or claimed under a lease that
    /// ended) for `lease_token` until `lease_until`; answers them with their webhook's URL
    /// and secret.
    pub async fn claim_deliveries(
        &self,
        now: i64,
        lease_token: &str,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let due = "((status = 'pending' AND next_attempt_at <= $3) \
                   OR (status = 'sending' AND lease_until <= $3))";
        let claim = Sql::new(format!(
            "UPDATE webhook_deliveries SET status = 'sending', lease_token = $1, lease_until = $2 \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE {due} \
             ORDER BY next_attempt_at, id LIMIT $4) AND {due}"
        ))
        .arg(lease_token)
        .arg(lease_until)
        .arg(now)
        .arg(i64::from(limit));
        if self.db.execute(&claim).await? == 0 {
            return Ok(Vec::new());
        }
        let read = Sql::new(
            "SELECT d.id, d.webhook_id, d.event, d.body, d.created_at, d.status, d.attempts, \
             d.next_attempt_at, d.last_status, d.last_error, d.finished_at, \
             w.url AS url, w.secret AS secret \
             FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.lease_token = $1 AND d.status = 'sending' ORDER BY d.next_attempt_at, d.id",
        )
        .arg(lease_token);
        let rows = self.db.fetch_all(&read).await?;
        rows.iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    delivery: delivery_from_row(row)?,
                    lease_token: lease_token.to_owned(),
                    url: row.get("url")?,
                    secret: row.get("secret")?,
                })
            })
            .collect()
    }

    /// Records an attempt of a claimed delivery; answers false when the claim was lost (its
    /// lease ended and another worker claimed it).
    pub async fn finish_attempt(
        &self,
        claimed: &ClaimedDelivery,
        now: i64,
        outcome: &AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let (status, last_status, last_error, next_attempt_at, finished_at) = match outcome {
            AttemptOutcome::Delivered { status } => (
                DeliveryStatus::Delivered,
                Some(i64::from(*status)),
                None,
                claimed.delivery.next_attempt_at,
                Some(now),
            ),
            AttemptOutcome::Failed {
                status,
                error,
                retry_at,
            } => match retry_at {
                Some(at) => (
                    DeliveryStatus::Pending,
                    status.map(i64::from),
                    Some(error.as_str()),
                    *at,
                    None,
                ),
                None => (
                    DeliveryStatus::Failed,
                    status.map(i64::from),
                    Some(error.as_str()),
                    claimed.delivery.next_attempt_at,
                    Some(now),
                ),
            },
        };
        let sql = Sql::new(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, \
             last_status = $2, last_error = $3, next_attempt_at = $4, finished_at = $5, \
             lease_token = NULL, lease_until = NULL \
             WHERE id = $6 AND lease_token = $7 AND status = 'sending'",
        )
        .arg(status.as_str())
        .arg(last_status)
        .arg(last_error)
        .arg(next_attempt_at)
        .arg(finished_at)
        .arg(claimed.delivery.id.as_str())
        .arg(claimed.lease_token.as_str());
        Ok(self.db.execute(&sql).await? > 0)
    }

    /// The deliveries of a webhook, newest first, at most `limit`.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .arg(webhook_id)
        .arg(i64::from(limit));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn get_delivery(
        &self,
        webhook_id: &str,
        id: &str,
    ) -> Result<Option<DeliveryRecord>, StoreError> {
        let sql = Sql::new(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2"
        ))
        .arg(webhook_id)
        .arg(id);
        let row = self.db.fetch_optional(&sql).await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    /// Makes a delivery due again at `now` with a fresh count of attempts (the same
    /// idempotency id); answers false when there is no such delivery or it is being sent.
    pub async fn redeliver(
        &self,
        webhook_id: &str,
        id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let sql = Sql::new(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, \
             next_attempt_at = $1, finished_at = NULL, lease_token = NULL, lease_until = NULL \
             WHERE webhook_id = $2 AND id = $3 AND status <> 'sending'",
        )
        .arg(now)
        .arg(webhook_id)
        .arg(id);
        Ok(self.db.execute(&sql).await? > 0)
    }

    /// Deletes finished deliveries (delivered or failed) older than `before`.
    pub async fn prune_deliveries(&self, before: i64) -> Result<u64, StoreError> {
        let sql = Sql::new(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE finished_at IS NOT NULL AND finished_at < $1 ORDER BY finished_at LIMIT $2)",
        )
        .arg(before)
        .arg(PRUNE_CHUNK);
        let mut deleted = self.db.delete_in_chunks(&sql).await?;
        let notices = Sql::new(
            "DELETE FROM key_expiry_notices WHERE key_id IN (SELECT key_id FROM \
             key_expiry_notices WHERE expires_at < $1 ORDER BY expires_at LIMIT $2)",
        )
        .arg(before)
        .arg(PRUNE_CHUNK);
        deleted += self.db.delete_in_chunks(&notices).await?;
        Ok(deleted)
    }

    /// Keys not revoked whose own expiry falls in `(now, until]` and that were not announced
    /// for that expiry yet: `(id, owner, name, expires_at)`, at most `limit`.
    pub async fn keys_expiring_unannounced(
        &self,
        now: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        let sql = Sql::new(
            "SELECT id, owner, name, expires_at FROM keys k WHERE revoked_at IS NULL \
             AND expires_at IS NOT NULL AND expires_at > $1 AND expires_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM key_expiry_notices n \
             WHERE n.key_id = k.id AND n.expires_at = k.expires_at) \
             ORDER BY expires_at, id LIMIT $3",
        )
        .arg(now)
        .arg(until)
        .arg(i64::from(limit));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.get("id")?,
                    row.get("owner")?,
                    row.get("name")?,
                    row.get("expires_at")?,
                ))
            })
            .collect()
    }

    /// Records that the key was announced for this expiry; answers false when it already
    /// was (by this replica or another).
    pub async fn note_expiry_announced(
        &self,
        key_id: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let sql = Sql::new(
            "INSERT INTO key_expiry_notices (key_id, expires_at) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .arg(key_id)
        .arg(expires_at);
        Ok(self.db.execute(&sql).await? > 0)
    }
}
