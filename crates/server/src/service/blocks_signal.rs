//! What wakes the revocation feed's held long-polls when operator blocks change (see
//! [`crate::service::blocks`]), and the count of reported automatic blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// Wakes held feed long-polls when the operator blocks change (one counter per service).
#[derive(Debug)]
pub struct BlocksSignal {
    changes: watch::Sender<u64>,
    /// Automatic blocks reported to this replica since it started.
    reported: AtomicU64,
}

impl Default for BlocksSignal {
    fn default() -> Self {
        Self {
            changes: watch::Sender::new(0),
            reported: AtomicU64::new(0),
        }
    }
}

impl BlocksSignal {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn count_reported(&self) {
        self.reported.fetch_add(1, Ordering::Relaxed);
    }

    /// Automatic blocks reported to this replica since it started.
    pub fn reported(&self) -> u64 {
        self.reported.load(Ordering::Relaxed)
    }
}
