//! The domain types of the key service: key records and their limits, signing keys, the
//! revocation feed's events and paging rules, audit rows, usage cells, legacy import rows.
//!
//! The lowest layer: it imports nothing from the crate but itself (and `keygate-core`).

pub mod audit;
pub mod block;
pub mod country;
pub mod feed;
pub mod key;
pub mod legacy;
pub mod request_signing;
pub mod role;
pub mod session;
pub mod signing;
pub mod usage;
pub mod webhook;

pub use audit::{AuditClass, AuditFilter, AuditRow, NewAuditRow};
pub use key::{
    KeyLimits, KeyPatch, KeyRecord, PageAfter, FORMAT_JWT, FORMAT_LEGACY, FORMAT_OPAQUE,
};
pub use key::{KeyQuota, Pool};
pub use legacy::{LegacyImportRow, LegacyOutcome};
pub use request_signing::RequestSigningRow;
pub use role::{RolePatch, RoleRecord};
pub use signing::SigningKeyRow;
pub use usage::{GatewayRow, GATEWAY_RETENTION_S, MAX_GATEWAYS};
pub use usage::{UsageCell, UsageDelta, BATCH_ID_RETENTION_S};
pub use webhook::{
    AlertKind, AttemptOutcome, ClaimedDelivery, DeliveryRecord, DeliveryStatus, WebhookRecord,
};
