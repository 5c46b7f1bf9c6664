//! Counters, visible on Envoy's `/stats` as `wasmcustom.keygate.*`: counted here and handed
//! to the host (which owns the metric ids, defined at configure).

use crate::decision::DenyReason;
use crate::host::{Event, Host};

/// This worker's counting.
#[derive(Debug, Default)]
pub struct Metrics;

impl Metrics {
    pub fn count(&self, host: &impl Host, event: Event) {
        self.count_by(host, event, 1);
    }

    pub fn count_by(&self, host: &impl Host, event: Event, by: u64) {
        host.count(event, by);
    }

    pub fn count_denial(&self, host: &impl Host, reason: &DenyReason) {
        host.count_denial(false, reason.metric_name(), 1);
    }

    pub fn count_shadow_denial(&self, host: &impl Host, reason: &DenyReason) {
        host.count_denial(true, reason.metric_name(), 1);
    }
}
