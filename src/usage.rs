//! Usage analytics, the glue: the counting, merging and the outbox are the core's
//! ([`keygate_core::machine::usage`]); this module hands it the host and routes its callouts.

use keygate_core::machine::callouts::Callout;
use keygate_core::machine::usage::Reporting;

pub use keygate_core::machine::usage::Usage;

use crate::host::ProxyHost;
use crate::state::Shared;

fn reporting(shared: &Shared) -> Reporting<'_> {
    Reporting {
        settings: &shared.config.usage,
        key_service: &shared.config.key_service,
        service_token: &shared.secrets.service_token,
    }
}

fn sent(shared: &Shared, token: Option<u32>) {
    if let Some(token) = token {
        shared.callouts.borrow_mut().insert(token, Callout::Usage);
    }
}

/// Every tick: merge this worker's counts into shared data; the flusher sends a batch.
pub fn on_tick(shared: &Shared) {
    let token = shared
        .usage
        .borrow_mut()
        .on_tick(&ProxyHost, &reporting(shared));
    sent(shared, token);
}

/// A batch answered.
pub fn on_response(shared: &Shared) {
    let token = shared
        .usage
        .borrow_mut()
        .on_response(&ProxyHost, &reporting(shared));
    sent(shared, token);
}
