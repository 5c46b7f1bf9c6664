//! Blocked client addresses: operator blocks (add, list, remove), the automatic blocks the
//! filters report, and the operator blocks every filter gets through the revocation feed.
//!
//! An operator block reaches the filters in the feed answer's `blocks` member: a long-poll
//! held on this replica is woken by [`BlocksSignal`] the moment a block is added or removed,
//! and answers the whole list of operator blocks in force (bounded by
//! [`MAX_OPERATOR_BLOCKS`]) when the follower's `blocks=<version>` differs from the list's.
//! On another replica a held long-poll sees the change at its next answer (at most the
//! follower's `wait` later). Every block ends by itself at its expiry, in the filters too.
//! The signal itself is [`crate::service::blocks_signal`].

use keygate_core::machine::threat::{BlockReport, FeedBlocks, OperatorBlock};
use serde::Deserialize;

use crate::model::block::{
    normalize_cidr, BlockRecord, BlockSource, DEFAULT_BLOCK_SECONDS, MAX_BLOCK_SECONDS,
    MAX_OPERATOR_BLOCKS, MAX_REASON_CHARS, MAX_REPORTED_BLOCKS,
};
use crate::model::webhook::AlertKind;
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::validate::valid_text;

/// The body of `POST /api/v1/blocks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBlockRequest {
    /// An address or a CIDR.
    pub cidr: String,
    /// How long the block lasts (default an hour, at most 30 days).
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Validates an operator block made by `actor` at `now`.
pub fn validate_add(
    request: AddBlockRequest,
    actor: Option<String>,
    now: i64,
) -> Result<BlockRecord, ApiError> {
    let cidr = normalize_cidr(request.cidr.trim()).ok_or(ApiError::BadBlock(
        "cidr must be an IPv4 or IPv6 address or network (203.0.113.0/24)",
    ))?;
    let seconds = request.expires_in_seconds.unwrap_or(DEFAULT_BLOCK_SECONDS);
    if !(1..=MAX_BLOCK_SECONDS).contains(&seconds) {
        return Err(ApiError::BadBlock(
            "expires_in_seconds must be from 1 to 2592000 (30 days)",
        ));
    }
    let reason = request.reason.unwrap_or_default();
    if !valid_text(&reason, MAX_REASON_CHARS) {
        return Err(ApiError::BadBlock(
            "reason must be at most 256 characters with no control characters",
        ));
    }
    Ok(BlockRecord {
        id: 0,
        cidr,
        source: BlockSource::Operator,
        reason,
        created_by: actor,
        failures: None,
        created_at: now,
        expires_at: now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX)),
    })
}

pub async fn add(service: &Service, block: BlockRecord) -> Result<BlockRecord, ApiError> {
    let now = block.created_at;
    if service.store().count_operator_blocks(now).await? >= MAX_OPERATOR_BLOCKS {
        return Err(ApiError::TooManyBlocks);
    }
    let block = service.store().insert_block(&block).await?;
    service.blocks().changed();
    tracing::info!(id = block.id, cidr = %block.cidr, expires_at = block.expires_at, "address blocked by an operator");
    address_blocked(service, &block).await;
    Ok(block)
}

/// The blocks in force, operator and automatic, newest first.
pub async fn list(service: &Service, now: i64) -> Result<Vec<BlockRecord>, ApiError> {
    Ok(service.store().list_blocks(now).await?)
}

/// Removes block `id`. An operator block is deleted. An automatic block is lifted: every
/// automatic block of its address is marked, and the revocation feed tells every filter to
/// drop them and to count that address's failures from zero (the rows stay until they would
/// have ended, and are no longer listed).
pub async fn remove(service: &Service, id: &str, now: i64) -> Result<BlockRecord, ApiError> {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::BlockNotFound)?;
    let block = service
        .store()
        .get_block(id)
        .await?
        .ok_or(ApiError::BlockNotFound)?;
    match block.source {
        BlockSource::Operator => {
            service
                .store()
                .delete_block(id)
                .await?
                .ok_or(ApiError::BlockNotFound)?;
            tracing::info!(id = block.id, cidr = %block.cidr, "address block removed");
        }
        BlockSource::Automatic => {
            let lifted = service
                .store()
                .lift_automatic_blocks(&block.cidr, now)
                .await?;
            tracing::info!(id = block.id, cidr = %block.cidr, lifted, "automatic address block lifted");
        }
    }
    service.blocks().changed();
    Ok(block)
}

/// Automatic blocks a filter reported (`gateway`: its name, if it gave one): stored, so they
/// are listed and counted, and each told to [`address_blocked`]. Entries that do not parse,
/// or that end in the past or more than a day on, are skipped.
pub async fn report(
    service: &Service,
    gateway: Option<&str>,
    reports: &[BlockReport],
    now: i64,
) -> Result<usize, ApiError> {
    let mut stored = 0;
    for report in reports.iter().take(MAX_REPORTED_BLOCKS) {
        let Some(cidr) = normalize_cidr(&report.address) else {
            continue;
        };
        let Ok(expires_at) = i64::try_from(report.until) else {
            continue;
        };
        if expires_at <= now || expires_at > now.saturating_add(7 * 86_400) {
            continue;
        }
        let block = BlockRecord {
            id: 0,
            cidr,
            source: BlockSource::Automatic,
            reason: "authentication failures".into(),
            created_by: gateway.map(str::to_owned),
            failures: Some(i64::from(report.failures)),
            created_at: now,
            expires_at,
        };
        let block = service.store().insert_block(&block).await?;
        service.blocks().count_reported();
        tracing::warn!(cidr = %block.cidr, gateway = gateway.unwrap_or("-"), failures = report.failures, "address blocked automatically by a gateway");
        address_blocked(service, &block).await;
        stored += 1;
    }
    Ok(stored)
}

/// An address was blocked (by an operator, or automatically by a filter): the `address.blocked`
/// webhook event, and for an automatic block also `auth.failure_spike` (what blocked it was a
/// spike of authentication failures from that address). Never fails the block.
pub async fn address_blocked(service: &Service, block: &BlockRecord) {
    let data = serde_json::json!({
        "cidr": block.cidr,
        "source": block.source.as_str(),
        "reason": block.reason,
        "gateway": (block.source == BlockSource::Automatic).then_some(block.created_by.as_deref()).flatten(),
        "failures": block.failures,
        "expires_at": crate::timestamp::format_rfc3339(block.expires_at),
    });
    crate::service::alerts::raise(
        service,
        AlertKind::AddressBlocked,
        &block.cidr,
        data.clone(),
    )
    .await;
    if block.source == BlockSource::Automatic {
        crate::service::alerts::raise(service, AlertKind::AuthFailureSpike, &block.cidr, data)
            .await;
    }
}

/// The operator blocks in force, as the feed carries them.
pub async fn feed_blocks(service: &Service, now: i64) -> Result<FeedBlocks, ApiError> {
    let list = service
        .store()
        .operator_blocks(now)
        .await?
        .into_iter()
        .map(|block| OperatorBlock {
            cidr: block.cidr,
            until: u64::try_from(block.expires_at).unwrap_or(0),
        })
        .collect();
    let lifted = service
        .store()
        .lifted_blocks(now)
        .await?
        .into_iter()
        .map(|(cidr, until)| OperatorBlock {
            cidr,
            until: u64::try_from(until).unwrap_or(0),
        })
        .collect();
    Ok(FeedBlocks::of(list, lifted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(body: serde_json::Value) -> Result<BlockRecord, ApiError> {
        validate_add(
            serde_json::from_value(body).unwrap(),
            Some("admin".into()),
            1_000,
        )
    }

    #[test]
    fn operator_blocks_are_checked() {
        let block = add(serde_json::json!({"cidr": "203.0.113.9/24"})).unwrap();
        assert_eq!(block.cidr, "203.0.113.0/24");
        assert_eq!(block.expires_at, 1_000 + 3_600);
        assert_eq!(block.source, BlockSource::Operator);
        let block = add(serde_json::json!({"cidr": "2001:db8::1", "expires_in_seconds": 60, "reason": "scanner"})).unwrap();
        assert_eq!(
            (block.cidr.as_str(), block.expires_at),
            ("2001:db8::1/128", 1_060)
        );
        for bad in [
            serde_json::json!({"cidr": "10.0.0.0/33"}),
            serde_json::json!({"cidr": "x"}),
            serde_json::json!({"cidr": "10.0.0.1", "expires_in_seconds": 0}),
            serde_json::json!({"cidr": "10.0.0.1", "expires_in_seconds": MAX_BLOCK_SECONDS + 1}),
            serde_json::json!({"cidr": "10.0.0.1", "reason": "a\u{7}"}),
        ] {
            assert!(matches!(add(bad), Err(ApiError::BadBlock(_))));
        }
        assert!(serde_json::from_value::<AddBlockRequest>(
            serde_json::json!({"cidr": "10.0.0.1", "source": "automatic"})
        )
        .is_err());
    }
}
