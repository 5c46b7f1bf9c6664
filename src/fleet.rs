//! Fleet-wide limits, the glue: the leases, asks, waits and fallback are the core's
//! ([`keygate_core::machine::fleet`]); this module hands it the host, routes its callouts and
//! resumes the requests that waited for a lease.

use keygate_core::decision::Identity;
use keygate_core::machine::callouts::Callout;
use keygate_core::machine::fleet::{Asking, FleetLimits, Verdict};

pub use keygate_core::machine::fleet::Fleet;

use crate::answer::complete;
use crate::host::{self, ProxyHost};
use crate::state::{Forwarding, Shared, Step};

/// A request parked until its bucket has a lease.
pub struct Waiter {
    pub context_id: u32,
    pub forwarding: Forwarding,
    pub identity: Identity,
}

/// This worker's fleet state; the gateway id is drawn here and kept by the first worker.
pub fn start() -> Fleet<Box<Waiter>> {
    let candidate = host::random_bytes::<12>()
        .map(|bytes| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_else(|| format!("gw-{}", host::now_ms()));
    Fleet::new(&ProxyHost, candidate).deferred()
}

fn asking(shared: &Shared) -> Asking<'_> {
    Asking {
        settings: &shared.config.fleet,
        key_service: &shared.config.key_service,
        service_token: &shared.secrets.service_token,
    }
}

fn sent(shared: &Shared, token: Option<u32>) {
    if let Some(token) = token {
        shared.callouts.borrow_mut().insert(token, Callout::Lease);
    }
}

/// Spends from the key's fleet buckets for the current request.
pub fn check(shared: &Shared, limits: &FleetLimits, forwarding: &Forwarding) -> Verdict {
    let (verdict, token) = shared.fleet.borrow_mut().check(
        &ProxyHost,
        &asking(shared),
        limits,
        forwarding.cost,
        forwarding.fleet_may_wait,
    );
    sent(shared, token);
    verdict
}

/// Parks the current request; gives it back when too many wait already.
pub fn park(shared: &Shared, waiter: Box<Waiter>) -> Result<(), Box<Waiter>> {
    shared
        .fleet
        .borrow_mut()
        .park(waiter, host::now_ms(), &shared.config.fleet)
}

/// A lease ask answered: the parked requests are decided again.
pub fn on_response(shared: &Shared, token: u32, body_size: usize) {
    let woken = shared
        .fleet
        .borrow_mut()
        .on_response(&ProxyHost, token, body_size);
    for waiter in woken {
        resume(shared, waiter);
    }
}

/// Every tick (in the root context): the queued asks go out first; requests that wait are decided
/// again (another worker's ask may have been answered), those past their wait by the
/// fallback.
pub fn on_tick(shared: &Shared) {
    flush(shared);
    if !shared.fleet.borrow().has_waiters() {
        return;
    }
    let woken = shared.fleet.borrow_mut().on_tick(host::now_ms());
    // Asks these requests queue go with the next tick: resuming them made their contexts
    // the effective one, and an ask must be sent from the root's.
    for (mut waiter, may_wait) in woken {
        waiter.forwarding.fleet_may_wait = may_wait;
        resume(shared, waiter);
    }
}

/// Sends the queued asks (from the root context: their answers must outlive the requests
/// that asked).
fn flush(shared: &Shared) {
    let token = shared.fleet.borrow_mut().flush(&ProxyHost, &asking(shared));
    sent(shared, token);
}

/// Asks are waiting for the tick.
pub fn has_queued(shared: &Shared) -> bool {
    shared.fleet.borrow().has_queued()
}

fn resume(shared: &Shared, waiter: Box<Waiter>) {
    let waiter = *waiter;
    let step = Step::Decided(waiter.forwarding, Ok(waiter.identity));
    complete(shared, waiter.context_id, step);
}
