//! Retention: a background task deletes what only grows with time, so a year of uptime does
//! not fill the disk.
//!
//! Each kind of data is one [`PruneStep`]; [`steps`] lists those the settings enable, and
//! [`prune_periodically`] runs them all every interval (the first run at start). Adding a
//! kind of data is one more variant and its arm in [`PruneStep::run`]. Deletes go a chunk at
//! a time, so a long prune never holds SQLite's one writer for long.
//!
//! | data | default | flag / environment |
//! |---|---|---|
//! | audit log (management actions) | 365 days | `--audit-retention-days` / `KEYGATE_AUDIT_RETENTION_DAYS` |
//! | refused admin authentications | 30 days | `--refused-admin-retention-days` / `KEYGATE_REFUSED_ADMIN_RETENTION_DAYS` |
//! | usage counts | 90 days | `--usage-retention-days` / `KEYGATE_USAGE_RETENTION_DAYS` |
//! | revocation feed events | 24 hours | `--feed-retention-hours` / `KEYGATE_FEED_RETENTION_HOURS` (pruned every minute, see `feed::compact_periodically`) |
//! | how often | 3600 s | `--retention-interval-seconds` / `KEYGATE_RETENTION_INTERVAL_SECONDS` |
//!
//! A retention of 0 days keeps that data for good.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::clock::Clock;
use crate::model::AuditClass;
use crate::store::{KeyStore, StoreError};

const DAY_S: i64 = 86_400;
/// Longest retention accepted: 100 years.
const MAX_DAYS: u32 = 36_500;

/// Retention flags of `keygate serve`.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Days the audit log keeps management actions (0: for good).
    #[arg(long, env = "KEYGATE_AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub audit_retention_days: u32,
    /// Days the audit log keeps refused admin authentications (0: for good).
    #[arg(
        long,
        env = "KEYGATE_REFUSED_ADMIN_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub refused_admin_retention_days: u32,
    /// Days usage counts are kept (0: for good).
    #[arg(long, env = "KEYGATE_USAGE_RETENTION_DAYS", default_value_t = 90)]
    pub usage_retention_days: u32,
    /// Seconds between two prunes (60 to 86400).
    #[arg(
        long,
        env = "KEYGATE_RETENTION_INTERVAL_SECONDS",
        default_value_t = 3600
    )]
    pub retention_interval_seconds: u64,
    /// Hours the revocation feed keeps an event (1 to 8760). A follower that missed pruned
    /// events looks its older records up again.
    #[arg(long, env = "KEYGATE_FEED_RETENTION_HOURS", default_value_t = 24)]
    pub feed_retention_hours: u32,
}

impl Default for RetentionArgs {
    fn default() -> Self {
        Self {
            audit_retention_days: 365,
            refused_admin_retention_days: 30,
            usage_retention_days: 90,
            retention_interval_seconds: 3600,
            feed_retention_hours: 24,
        }
    }
}

/// Why the retention settings are refused. Messages name the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetentionError {
    #[error("{0} must be at most {MAX_DAYS} days (0 keeps the data for good)")]
    TooLong(&'static str),
    #[error(
        "--retention-interval-seconds / KEYGATE_RETENTION_INTERVAL_SECONDS must be 60 to 86400"
    )]
    BadInterval,
    #[error("--feed-retention-hours / KEYGATE_FEED_RETENTION_HOURS must be 1 to 8760")]
    BadFeedRetention,
}

/// Validated retention settings: how long each kind of data is kept (`None`: for good).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionSettings {
    pub audit_s: Option<i64>,
    pub refused_admin_s: Option<i64>,
    pub usage_s: Option<i64>,
    pub interval: Duration,
    /// How long the revocation feed keeps an event.
    pub feed: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        // The defaults are valid by construction.
        Self::from_args(&RetentionArgs::default()).unwrap_or(Self {
            audit_s: None,
            refused_admin_s: None,
            usage_s: None,
            interval: Duration::from_secs(3600),
            feed: crate::service::feed::DEFAULT_RETENTION,
        })
    }
}

impl RetentionSettings {
    pub fn from_args(args: &RetentionArgs) -> Result<Self, RetentionError> {
        let keep = |days: u32, flag: &'static str| {
            if days > MAX_DAYS {
                Err(RetentionError::TooLong(flag))
            } else {
                Ok((days > 0).then(|| i64::from(days) * DAY_S))
            }
        };
        if !(60..=86_400).contains(&args.retention_interval_seconds) {
            return Err(RetentionError::BadInterval);
        }
        if !(1..=8760).contains(&args.feed_retention_hours) {
            return Err(RetentionError::BadFeedRetention);
        }
        Ok(Self {
            audit_s: keep(
                args.audit_retention_days,
                "--audit-retention-days / KEYGATE_AUDIT_RETENTION_DAYS",
            )?,
            refused_admin_s: keep(
                args.refused_admin_retention_days,
                "--refused-admin-retention-days / KEYGATE_REFUSED_ADMIN_RETENTION_DAYS",
            )?,
            usage_s: keep(
                args.usage_retention_days,
                "--usage-retention-days / KEYGATE_USAGE_RETENTION_DAYS",
            )?,
            interval: Duration::from_secs(args.retention_interval_seconds),
            feed: Duration::from_secs(u64::from(args.feed_retention_hours) * 3600),
        })
    }
}

/// One kind of data pruned by age: rows older than `keep_s` seconds before now go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PruneStep {
    /// Audit rows of management actions.
    AuditLog { keep_s: i64 },
    /// Audit rows of refused admin authentications.
    RefusedAdmin { keep_s: i64 },
    /// Usage counts (per key and minute).
    UsageCounts { keep_s: i64 },
}

impl PruneStep {
    /// The name in logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AuditLog { .. } => "audit log",
            Self::RefusedAdmin { .. } => "refused admin authentications",
            Self::UsageCounts { .. } => "usage counts",
        }
    }

    /// Deletes what is older than the retention at `now`; answers how many rows went.
    pub async fn run(&self, store: &KeyStore, now: i64) -> Result<u64, StoreError> {
        match *self {
            Self::AuditLog { keep_s } => {
                store
                    .prune_audit(AuditClass::Management, now.saturating_sub(keep_s))
                    .await
            }
            Self::RefusedAdmin { keep_s } => {
                store
                    .prune_audit(AuditClass::RefusedAdmin, now.saturating_sub(keep_s))
                    .await
            }
            Self::UsageCounts { keep_s } => store.prune_usage(now.saturating_sub(keep_s)).await,
        }
    }
}

/// The prune steps `settings` enable (a kind kept for good has none).
pub fn steps(settings: &RetentionSettings) -> Vec<PruneStep> {
    [
        settings
            .audit_s
            .map(|keep_s| PruneStep::AuditLog { keep_s }),
        settings
            .refused_admin_s
            .map(|keep_s| PruneStep::RefusedAdmin { keep_s }),
        settings
            .usage_s
            .map(|keep_s| PruneStep::UsageCounts { keep_s }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Runs every step once at the clock's time; a failed step is logged and the others still
/// run. Answers the rows each step deleted (`None`: it failed).
pub async fn prune_once(
    store: &KeyStore,
    clock: &dyn Clock,
    steps: &[PruneStep],
) -> Vec<Option<u64>> {
    let now = clock.now();
    let mut deleted = Vec::with_capacity(steps.len());
    for step in steps {
        match step.run(store, now).await {
            Ok(rows) => {
                if rows > 0 {
                    tracing::info!(step = step.name(), rows, "retention: old rows deleted");
                }
                deleted.push(Some(rows));
            }
            Err(error) => {
                tracing::error!(step = step.name(), %error, "retention: prune failed");
                deleted.push(None);
            }
        }
    }
    deleted
}

/// Prunes now and every `interval`, until dropped (`keygate serve` aborts it on shutdown).
pub async fn prune_periodically(
    store: KeyStore,
    clock: Arc<dyn Clock>,
    steps: Vec<PruneStep>,
    interval: Duration,
) {
    if steps.is_empty() {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        prune_once(&store, clock.as_ref(), &steps).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_zero_and_bounds() {
        let defaults = RetentionSettings::default();
        assert_eq!(defaults.audit_s, Some(365 * DAY_S));
        assert_eq!(defaults.refused_admin_s, Some(30 * DAY_S));
        assert_eq!(defaults.usage_s, Some(90 * DAY_S));
        assert_eq!(defaults.interval, Duration::from_secs(3600));
        assert_eq!(steps(&defaults).len(), 3);

        let forever = RetentionArgs {
            usage_retention_days: 0,
            ..RetentionArgs::default()
        };
        let settings = RetentionSettings::from_args(&forever).unwrap();
        assert_eq!(settings.usage_s, None);
        assert!(!steps(&settings)
            .iter()
            .any(|s| matches!(s, PruneStep::UsageCounts { .. })));

        let too_long = RetentionArgs {
            audit_retention_days: MAX_DAYS + 1,
            ..RetentionArgs::default()
        };
        let error = RetentionSettings::from_args(&too_long).unwrap_err();
        assert!(error.to_string().contains("--audit-retention-days"));
        let too_often = RetentionArgs {
            retention_interval_seconds: 1,
            ..RetentionArgs::default()
        };
        assert_eq!(
            RetentionSettings::from_args(&too_often).unwrap_err(),
            RetentionError::BadInterval
        );
    }

    #[test]
    fn feed_retention_is_hours_and_never_forever() {
        assert_eq!(
            RetentionSettings::default().feed,
            Duration::from_secs(24 * 3600)
        );
        let week = RetentionArgs {
            feed_retention_hours: 168,
            ..RetentionArgs::default()
        };
        assert_eq!(
            RetentionSettings::from_args(&week).unwrap().feed,
            Duration::from_secs(168 * 3600)
        );
        for hours in [0, 8761] {
            let args = RetentionArgs {
                feed_retention_hours: hours,
                ..RetentionArgs::default()
            };
            assert_eq!(
                RetentionSettings::from_args(&args).unwrap_err(),
                RetentionError::BadFeedRetention
            );
        }
    }
}
