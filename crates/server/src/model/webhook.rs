//! Webhooks on security events: the endpoints, the kinds of event they may want, and the
//! deliveries of the outbox.

use std::fmt;

/// A kind of security event a webhook can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AlertKind {
    KeyCreated,
    KeyRotated,
    KeyRevoked,
    /// A key expires within the configured number of days (announced once per expiry).
    KeyExpiring,
    AddressBlocked,
    AuthFailureSpike,
    KeyNewCountry,
    /// A key was reported leaked (and revoked) through the secret-scanning endpoint.
    KeyLeaked,
}

impl AlertKind {
    /// Every kind, in the order the API lists them.
    pub const ALL: [Self; 8] = [
        Self::KeyCreated,
        Self::KeyRotated,
        Self::KeyRevoked,
        Self::KeyExpiring,
        Self::AddressBlocked,
        Self::AuthFailureSpike,
        Self::KeyNewCountry,
        Self::KeyLeaked,
    ];

    /// The event's name, as in a webhook's `events` and a delivery's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyCreated => "key.created",
            Self::KeyRotated => "key.rotated",
            Self::KeyRevoked => "key.revoked",
            Self::KeyExpiring => "key.expiring",
            Self::AddressBlocked => "address.blocked",
            Self::AuthFailureSpike => "auth.failure_spike",
            Self::KeyNewCountry => "key.new_country",
            Self::KeyLeaked => "key.leaked",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered webhook endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    /// Names of the event kinds it receives.
    pub events: Vec<String>,
    /// The HMAC-SHA256 key of its signatures (shown once at creation).
    pub secret: String,
    pub description: String,
    pub created_at: i64,
}

impl WebhookRecord {
    pub fn wants(&self, kind: AlertKind) -> bool {
        self.events.iter().any(|name| name == kind.as_str())
    }
}

impl fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("events", &self.events)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Due at `next_attempt_at`.
    Pending,
    /// Claimed by a worker until its lease ends (then due again).
    Sending,
    Delivered,
    /// Every attempt failed.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Sending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// One event for one webhook, in the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The idempotency id: the same in every attempt.
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    /// The JSON body POSTed.
    pub body: String,
    pub created_at: i64,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
}

/// A delivery a worker claimed: the row, the lease that proves the claim, and where to send.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRecord,
    pub lease_token: String,
    pub url: String,
    pub secret: String,
}

impl fmt::Debug for ClaimedDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimedDelivery")
            .field("delivery", &self.delivery.id)
            .field("webhook", &self.delivery.webhook_id)
            .finish_non_exhaustive()
    }
}

/// What an attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered {
        status: u16,
    },
    /// Retry at `retry_at`, or give up when it is `None`.
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: Option<i64>,
    },
}
