//! Counters and gauges, visible on Envoy's `/stats` as `wasmcustom.keygate.*`.

use std::collections::HashMap;

use keygate_core::decision::DenyReason;
use keygate_core::jwt::JwtError;

use crate::host;

pub use keygate_core::host::Event;

#[derive(Debug)]
pub struct Metrics {
    /// Indexed by `Event as usize` (the order of [`Event::ALL`]).
    events: [Option<u32>; Event::ALL.len()],
    denied: HashMap<&'static str, Option<u32>>,
    shadow_denied: HashMap<&'static str, Option<u32>>,
}

impl Metrics {
    pub fn define() -> Self {
        let events = Event::ALL.map(|event| {
            if event.is_gauge() {
                host::define_gauge(event.name())
            } else {
                host::define_counter(event.name())
            }
        });
        host::set_event_ids(events);
        Self {
            events,
            denied: reason_counters("keygate.denied"),
            shadow_denied: reason_counters("keygate.shadow.denied"),
        }
    }

    fn id(&self, event: Event) -> Option<u32> {
        self.events.get(event as usize).copied().flatten()
    }

    pub fn count(&self, event: Event) {
        self.count_by(event, 1);
    }

    pub fn count_by(&self, event: Event, by: u64) {
        host::increment_by(self.id(event), by);
    }

    pub fn count_denial(&self, reason: &DenyReason) {
        host::increment(self.denied.get(reason.metric_name()).copied().flatten());
    }

    pub fn count_shadow_denial(&self, reason: &DenyReason) {
        host::increment(
            self.shadow_denied
                .get(reason.metric_name())
                .copied()
                .flatten(),
        );
    }
}

/// One counter per deny reason (opaque keys and JWTs) under `prefix`.
fn reason_counters(prefix: &str) -> HashMap<&'static str, Option<u32>> {
    DenyReason::METRIC_NAMES
        .iter()
        .chain(JwtError::METRIC_NAMES.iter())
        .map(|name| (*name, host::define_counter(&format!("{prefix}.{name}"))))
        .collect()
}
