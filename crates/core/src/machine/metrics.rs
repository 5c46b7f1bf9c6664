//! Counters, visible on Envoy's `/stats` as `wasmcustom.keygate.*`: counted here and handed
//! to the host (which owns the metric ids, defined at configure).
//!
//! The counters of the allowed path ([`Metrics::BATCHED`]) are counted in this worker's
//! memory and handed to the host on the worker's tick ([`Metrics::flush`], at most a second
//! apart while any are pending): each hand-over is a host call, and the allowed path is the
//! one that must stay cheap. Denials and the rest go to the host at once.

use std::cell::Cell;

use crate::decision::DenyReason;
use crate::host::{Event, Host};

/// This worker's counting.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Counts not yet handed to the host, by `Event as usize`.
    pending: [Cell<u64>; Event::ALL.len()],
    /// Whether any count is pending.
    dirty: Cell<bool>,
}

impl Metrics {
    /// The events counted in memory and flushed on the tick.
    pub const BATCHED: [Event; 4] = [
        Event::Allowed,
        Event::AllowedPublic,
        Event::CacheHit,
        Event::TokenCacheHit,
    ];

    pub fn count(&self, host: &impl Host, event: Event) {
        self.count_by(host, event, 1);
    }

    pub fn count_by(&self, host: &impl Host, event: Event, by: u64) {
        match self.pending.get(event as usize) {
            Some(pending) if Self::BATCHED.contains(&event) => {
                pending.set(pending.get().saturating_add(by));
                self.dirty.set(true);
            }
            _ => host.count(event, by),
        }
    }

    pub fn count_denial(&self, host: &impl Host, reason: &DenyReason) {
        host.count_denial(false, reason.metric_name(), 1);
    }

    pub fn count_shadow_denial(&self, host: &impl Host, reason: &DenyReason) {
        host.count_denial(true, reason.metric_name(), 1);
    }

    /// Whether counts wait to be flushed (the tick must run).
    pub fn has_pending(&self) -> bool {
        self.dirty.get()
    }

    /// Hands the pending counts to the host: one call per event counted since the last flush.
    pub fn flush(&self, host: &impl Host) {
        if !self.dirty.replace(false) {
            return;
        }
        for event in Self::BATCHED {
            if let Some(pending) = self.pending.get(event as usize) {
                let by = pending.replace(0);
                if by > 0 {
                    host.count(event, by);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn the_allowed_path_is_counted_in_memory_and_flushed_whole() {
        let host = FakeHost::at(0);
        let metrics = Metrics::default();
        for _ in 0..3 {
            metrics.count(&host, Event::Allowed);
        }
        metrics.count(&host, Event::CacheHit);
        assert!(metrics.has_pending());
        assert_eq!(host.counted(Event::Allowed), 0, "not yet handed over");
        metrics.count(&host, Event::CalloutFailure);
        assert_eq!(host.counted(Event::CalloutFailure), 1, "others go at once");
        host.take_calls();
        metrics.flush(&host);
        assert_eq!(host.counted(Event::Allowed), 3);
        assert_eq!(host.counted(Event::CacheHit), 1);
        assert_eq!(host.take_calls(), ["count", "count"]);
        assert!(!metrics.has_pending());
        metrics.flush(&host);
        assert!(host.take_calls().is_empty(), "nothing pending, no call");
    }
}
