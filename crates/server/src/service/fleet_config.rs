//! Flags of `keygate serve` for fleet-wide limits: where the counts live (`--redis-url`) and
//! how leases are sized.

use std::sync::Arc;

use clap::Args;

use crate::service::counters::{Counters, LeaseSettings, MemoryCounters};
use crate::service::redis_counters::RedisCounters;

/// Fleet-wide limit flags of `keygate serve`.
#[derive(Clone, Args)]
pub struct FleetArgs {
    /// Keep the counts of fleet-wide limits (global limits, quotas, pools) in this Redis
    /// (`redis://[:password@]host:6379/0`, `rediss://` for TLS), shared by every key service
    /// replica. Without it, each key service counts in memory: right for one replica only.
    #[arg(
        long,
        env = "KEYGATE_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// How often each gateway should come back for a token bucket lease (50 to 10000 ms): the
    /// lease is `rate × interval ÷ gateways` tokens, at most `burst ÷ gateways`.
    #[arg(
        long,
        env = "KEYGATE_LEASE_INTERVAL_MS",
        default_value_t = 500,
        value_name = "MS"
    )]
    pub lease_interval_ms: u32,
    /// How long granted tokens may be spent (100 to 60000 ms).
    #[arg(
        long,
        env = "KEYGATE_LEASE_VALID_MS",
        default_value_t = 2_000,
        value_name = "MS"
    )]
    pub lease_valid_ms: u32,
    /// A gateway counts towards a bucket this long after its last ask (1000 to 600000 ms).
    #[arg(
        long,
        env = "KEYGATE_LEASE_GATEWAY_WINDOW_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    pub lease_gateway_window_ms: u32,
}

impl Default for FleetArgs {
    fn default() -> Self {
        let lease = LeaseSettings::default();
        Self {
            redis_url: None,
            lease_interval_ms: lease.interval_ms,
            lease_valid_ms: lease.valid_ms,
            lease_gateway_window_ms: lease.gateway_window_ms,
        }
    }
}

impl std::fmt::Debug for FleetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetArgs")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("lease_interval_ms", &self.lease_interval_ms)
            .field("lease_valid_ms", &self.lease_valid_ms)
            .field("lease_gateway_window_ms", &self.lease_gateway_window_ms)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FleetError {
    #[error("--lease-interval-ms must be 50 to 10000, --lease-valid-ms 100 to 60000 and --lease-gateway-window-ms 1000 to 600000")]
    BadLeaseSettings,
    #[error("--redis-url / KEYGATE_REDIS_URL is not a Redis URL (redis://host:6379/0)")]
    BadRedisUrl,
}

/// The checked fleet settings: the counters and the lease sizing.
#[derive(Clone)]
pub struct FleetSettings {
    pub counters: Arc<dyn Counters>,
    pub lease: LeaseSettings,
}

impl std::fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSettings")
            .field("counters", &self.counters.kind())
            .field("lease", &self.lease)
            .finish()
    }
}

impl FleetSettings {
    pub fn from_args(args: &FleetArgs) -> Result<Self, FleetError> {
        let lease = LeaseSettings {
            interval_ms: args.lease_interval_ms,
            valid_ms: args.lease_valid_ms,
            gateway_window_ms: args.lease_gateway_window_ms,
        };
        if !(50..=10_000).contains(&lease.interval_ms)
            || !(100..=60_000).contains(&lease.valid_ms)
            || !(1_000..=600_000).contains(&lease.gateway_window_ms)
        {
            return Err(FleetError::BadLeaseSettings);
        }
        let counters: Arc<dyn Counters> = match args.redis_url.as_deref() {
            Some(url) if !url.trim().is_empty() => {
                Arc::new(RedisCounters::new(url.trim()).map_err(|_| FleetError::BadRedisUrl)?)
            }
            _ => Arc::new(MemoryCounters::new()),
        };
        Ok(Self { counters, lease })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_count_in_memory_and_bad_values_are_refused() {
        let settings = FleetSettings::from_args(&FleetArgs::default()).unwrap();
        assert_eq!(settings.counters.kind(), "memory");
        let redis = FleetArgs {
            redis_url: Some("redis://:secret@127.0.0.1:6379/0".into()),
            ..FleetArgs::default()
        };
        assert_eq!(
            FleetSettings::from_args(&redis).unwrap().counters.kind(),
            "redis"
        );
        assert!(!format!("{redis:?}").contains("secret"));
        let bad_url = FleetArgs {
            redis_url: Some("http://nope".into()),
            ..FleetArgs::default()
        };
        assert_eq!(
            FleetSettings::from_args(&bad_url).err(),
            Some(FleetError::BadRedisUrl)
        );
        let bad = FleetArgs {
            lease_interval_ms: 10,
            ..FleetArgs::default()
        };
        assert_eq!(
            FleetSettings::from_args(&bad).err(),
            Some(FleetError::BadLeaseSettings)
        );
    }
}
