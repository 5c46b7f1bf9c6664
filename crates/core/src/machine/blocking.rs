//! Threat detection as a request and the tick meet it: refusing a blocked client, counting a
//! denial against it, blocking it past the threshold, and refreshing the worker's copy of the
//! blocks. The counting table and the block lists themselves are in [`super::threat`] (which
//! the feed follower uses too, so it must not depend on the worker's state).

use std::net::IpAddr;

use crate::decision::DenyReason;
use crate::host::{Event, Host, LogLevel};
use crate::machine::state::Shared;
use crate::machine::threat::{
    add_block, client_from_headers, count_failure, counts_as_failure, Counted,
};

/// At the start of a request: the refusal of a blocked client, if any. Nothing is read while
/// no block is in force.
pub fn refusal(host: &impl Host, shared: &Shared, headers: &[(&str, &[u8])]) -> Option<DenyReason> {
    if shared.threat.borrow().view.is_empty() {
        return None;
    }
    let client = client_from_headers(host, &shared.config, headers)?;
    let now = shared.now(host);
    let until = shared.threat.borrow().view.blocked_until(client, now)?;
    host.count(Event::ThreatRefused, 1);
    Some(DenyReason::Blocked {
        retry_after_s: until.saturating_sub(now).div_ceil(1000).max(1),
    })
}

/// After a denial: counts it against the client when it is an authentication failure.
pub fn after_denial(
    host: &impl Host,
    shared: &Shared,
    reason: &DenyReason,
    client: impl FnOnce() -> Option<IpAddr>,
) {
    if !shared.config.threat.enabled || !counts_as_failure(reason) {
        return;
    }
    if let Some(client) = client() {
        record_failure(host, shared, client);
    }
}

/// Counts one authentication failure of `client` (the hook for failures found elsewhere,
/// such as bad request signatures) and blocks it past the threshold.
pub fn record_failure(host: &impl Host, shared: &Shared, client: IpAddr) {
    let settings = &shared.config.threat;
    if !settings.enabled {
        return;
    }
    let now = shared.now(host);
    let hash_key = shared.threat.borrow().hash_key;
    match count_failure(host, settings, &hash_key, client, now) {
        Counted::Counted(_) => {}
        Counted::Blocked(until) => {
            host.count(Event::ThreatBlocked, 1);
            if add_block(host, settings, client, until, now) {
                // The other workers take the block now rather than on their next tick.
                crate::machine::follower::tell_workers(host);
            } else {
                host.count(Event::ThreatContention, 1);
            }
            host.log(
                LogLevel::Warn,
                &format!(
                    "threat: blocked {client} for {} s after {} authentication failures \
                     within {} s",
                    settings.block_ms / 1000,
                    settings.threshold,
                    settings.window_ms / 1000
                ),
            );
            let mut threat = shared.threat.borrow_mut();
            threat.view.insert(client, until);
            host.gauge(Event::ThreatBlocks, threat.view.len() as u64);
        }
        Counted::AlreadyBlocked(until) => shared.threat.borrow_mut().view.insert(client, until),
        Counted::TableFull => host.count(Event::ThreatTableFull, 1),
        Counted::Contended => host.count(Event::ThreatContention, 1),
    }
}

/// On the tick: picks up the blocks other workers and the feed shared.
pub fn on_tick(host: &impl Host, shared: &Shared) {
    if !shared.config.threat.enabled && !shared.config.revocation_feed.enabled {
        return;
    }
    let now = shared.now(host);
    let mut threat = shared.threat.borrow_mut();
    let before = threat.view.len();
    threat.view.refresh(host, now);
    if threat.view.len() != before {
        host.gauge(Event::ThreatBlocks, threat.view.len() as u64);
    }
}
