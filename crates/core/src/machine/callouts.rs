//! The one map from a callout token to what waits on its answer. Every callout the filter
//! dispatches is registered here with its kind; the answer is routed by one lookup instead
//! of asking each module in turn whether the token is its own.

use crate::machine::fast_map::FastMap;

use crate::key::KeyId;

/// What a callout in flight was sent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callout {
    /// A key-record lookup for this key id (a legacy key's lookup by digest when `legacy`).
    Lookup { id: KeyId, legacy: bool },
    /// A JWKS fetch for the issuer at this index.
    Jwks(usize),
    /// A long-poll of the revocation feed.
    Feed,
    /// A usage batch.
    Usage,
    /// An ask for fleet leases (the buckets are the fleet machine's).
    Lease,
}

/// Callouts in flight on this worker.
#[derive(Debug, Default)]
pub struct Callouts {
    pending: FastMap<u32, Callout>,
}

impl Callouts {
    pub fn insert(&mut self, token: u32, callout: Callout) {
        self.pending.insert(token, callout);
    }

    /// What `token` was sent for, forgotten as it is answered; `None` for a token that is
    /// not (or no longer) ours.
    pub fn take(&mut self, token: u32) -> Option<Callout> {
        self.pending.remove(&token)
    }

    /// Is a callout of this kind in flight?
    pub fn any(&self, wanted: impl Fn(&Callout) -> bool) -> bool {
        self.pending.values().any(wanted)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_routed_once_to_what_waits_on_it() {
        let mut callouts = Callouts::default();
        let id = KeyId::from_bytes([7; crate::key::ID_LEN]);
        callouts.insert(1, Callout::Lookup { id, legacy: false });
        callouts.insert(2, Callout::Jwks(3));
        callouts.insert(3, Callout::Feed);
        assert!(callouts.any(|c| *c == Callout::Jwks(3)));
        assert!(!callouts.any(|c| *c == Callout::Usage));
        assert_eq!(callouts.take(2), Some(Callout::Jwks(3)));
        assert_eq!(callouts.take(2), None, "answered once");
        assert_eq!(callouts.take(99), None, "not ours");
        assert_eq!(callouts.len(), 2);
        assert_eq!(
            callouts.take(1),
            Some(Callout::Lookup { id, legacy: false })
        );
        assert_eq!(callouts.take(3), Some(Callout::Feed));
        assert!(callouts.is_empty());
    }
}
