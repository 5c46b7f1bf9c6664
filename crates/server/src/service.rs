//! The service layer: the key service's operations and their domain errors, over the store.
//!
//! Nothing here knows of HTTP requests or answers; [`crate::http`] parses requests, calls
//! these operations and answers their results. Every operation works with a [`context::Service`].

pub mod access;
pub mod alert_config;
pub mod alerts;
pub mod audit;
pub mod blocks;
pub mod blocks_signal;
pub mod context;
pub mod counters;
pub mod countries;
pub mod error;
pub mod events;
pub mod feed;
pub mod fleet_config;
pub mod keys;
pub mod leases;
pub mod legacy;
pub mod limits;
pub mod metrics;
pub mod pools;
pub mod redis_counters;
pub mod report_keys;
pub mod request_signing;
pub mod retention;
pub mod roles;
pub mod secret_scanning;
pub mod session_config;
pub mod sessions;
pub mod signing;
pub mod usage;
pub mod validate;
pub mod webhook_secrets;
pub mod webhooks;
