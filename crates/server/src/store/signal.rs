//! The latest committed sequence number of the revocation feed, which the store publishes after
//! each commit (and, on PostgreSQL, on each notification from another replica).

use tokio::sync::watch;

/// The latest committed sequence number, shared by the store (which publishes after each
/// commit) and every held long-poll (each is one receiver).
#[derive(Debug)]
pub struct FeedSignal {
    latest: watch::Sender<u64>,
}

impl FeedSignal {
    pub fn new(current: u64) -> Self {
        Self {
            latest: watch::Sender::new(current),
        }
    }

    /// Records that `seq` is committed; wakes the receivers if it is newer.
    pub fn publish(&self, seq: u64) {
        self.latest.send_if_modified(|latest| {
            let newer = seq > *latest;
            if newer {
                *latest = seq;
            }
            newer
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_only_moves_forward() {
        let signal = FeedSignal::new(5);
        let mut rx = signal.subscribe();
        signal.publish(3);
        assert!(!rx.has_changed().unwrap());
        signal.publish(6);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 6);
        assert_eq!(signal.latest(), 6);
    }
}
