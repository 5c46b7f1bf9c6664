//! Webhook settings (`keygate serve` flags) and [`Alerts`], the state the clones of a
//! service share: the settings and the delivery worker's wake-up. What is delivered and how
//! is [`crate::service::alerts`].

use std::time::Duration;

use clap::Args;
use tokio::sync::Notify;

const DAY_S: i64 = 86_400;

/// Webhook flags of `keygate serve`.
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// Announce `key.expiring` this many days before a key expires (1-365).
    #[arg(long, env = "KEYGATE_WEBHOOK_EXPIRING_DAYS", default_value_t = 7)]
    pub webhook_expiring_days: u32,
    /// Seconds an attempt may take, connection included (1-60).
    #[arg(long, env = "KEYGATE_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub webhook_timeout_seconds: u64,
    /// Attempts before a delivery is marked failed (1-20).
    #[arg(long, env = "KEYGATE_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Attempts in flight at once, per replica (1-64).
    #[arg(long, env = "KEYGATE_WEBHOOK_CONCURRENCY", default_value_t = 4)]
    pub webhook_concurrency: u32,
    /// Days finished (delivered or failed) deliveries are kept (1-365).
    #[arg(long, env = "KEYGATE_WEBHOOK_RETENTION_DAYS", default_value_t = 7)]
    pub webhook_retention_days: u32,
}

impl Default for AlertArgs {
    fn default() -> Self {
        Self {
            webhook_expiring_days: 7,
            webhook_timeout_seconds: 10,
            webhook_max_attempts: 8,
            webhook_concurrency: 4,
            webhook_retention_days: 7,
        }
    }
}

/// Why the webhook settings are refused. Messages name the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlertConfigError {
    #[error("{0} is out of range (see keygate serve --help)")]
    OutOfRange(&'static str),
}

/// Validated webhook settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSettings {
    pub expiring_s: i64,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub concurrency: u32,
    pub retention_s: i64,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            expiring_s: 7 * DAY_S,
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            concurrency: 4,
            retention_s: 7 * DAY_S,
        }
    }
}

impl AlertSettings {
    pub fn from_args(args: &AlertArgs) -> Result<Self, AlertConfigError> {
        let check = |ok: bool, flag: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(AlertConfigError::OutOfRange(flag))
            }
        };
        check(
            (1..=365).contains(&args.webhook_expiring_days),
            "--webhook-expiring-days / KEYGATE_WEBHOOK_EXPIRING_DAYS",
        )?;
        check(
            (1..=60).contains(&args.webhook_timeout_seconds),
            "--webhook-timeout-seconds / KEYGATE_WEBHOOK_TIMEOUT_SECONDS",
        )?;
        check(
            (1..=20).contains(&args.webhook_max_attempts),
            "--webhook-max-attempts / KEYGATE_WEBHOOK_MAX_ATTEMPTS",
        )?;
        check(
            (1..=64).contains(&args.webhook_concurrency),
            "--webhook-concurrency / KEYGATE_WEBHOOK_CONCURRENCY",
        )?;
        check(
            (1..=365).contains(&args.webhook_retention_days),
            "--webhook-retention-days / KEYGATE_WEBHOOK_RETENTION_DAYS",
        )?;
        Ok(Self {
            expiring_s: i64::from(args.webhook_expiring_days) * DAY_S,
            timeout: Duration::from_secs(args.webhook_timeout_seconds),
            max_attempts: args.webhook_max_attempts,
            concurrency: args.webhook_concurrency,
            retention_s: i64::from(args.webhook_retention_days) * DAY_S,
        })
    }

    /// How long a claim holds: longer than an attempt, so a live worker keeps its claim.
    pub fn lease_s(&self) -> i64 {
        i64::try_from(self.timeout.as_secs())
            .unwrap_or(60)
            .saturating_mul(3)
            .saturating_add(30)
    }
}

/// The settings and the worker's wake-up, shared by the clones of a [`Service`].
#[derive(Debug, Default)]
pub struct Alerts {
    settings: AlertSettings,
    wake: Notify,
}

impl Alerts {
    pub fn new(settings: AlertSettings) -> Self {
        Self {
            settings,
            wake: Notify::new(),
        }
    }

    pub fn settings(&self) -> &AlertSettings {
        &self.settings
    }

    /// Wakes the delivery worker (something became due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`wake`](Self::wake) is called (or was, since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert_eq!(
            AlertSettings::from_args(&AlertArgs::default()).unwrap(),
            AlertSettings::default()
        );
        let bad = AlertArgs {
            webhook_max_attempts: 0,
            ..AlertArgs::default()
        };
        assert!(AlertSettings::from_args(&bad)
            .unwrap_err()
            .to_string()
            .contains("--webhook-max-attempts"));
    }
}
