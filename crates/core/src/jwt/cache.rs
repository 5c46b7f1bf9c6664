//! Verified tokens, remembered by the fingerprint of the token text until they expire.
//!
//! One cache per Envoy worker (no shared data: a hit must cost a hash lookup, not a copy and
//! a decode). Bounded: past `capacity`, the oldest entry is evicted first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::decision::Identity;
use crate::fingerprint::Fingerprint;

/// What a token is remembered by: the fingerprint of its text.
pub type TokenHash = Fingerprint;

/// What a verified token proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedToken {
    pub identity: Identity,
    /// Index of the issuer (in configuration order) that verified it.
    pub issuer: usize,
    /// The `kid` of the signing key that verified it.
    pub kid: Arc<str>,
    /// The token is used until this time (Unix seconds, exclusive).
    pub valid_until_s: u64,
}

#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<TokenHash, CachedToken>,
    order: VecDeque<TokenHash>,
    capacity: usize,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The cached verdict for `hash`, if it is still valid at `now_s`.
    pub fn get(&mut self, hash: &TokenHash, now_s: u64) -> Option<&CachedToken> {
        let expired = self.entries.get(hash)?.valid_until_s <= now_s;
        if expired {
            self.entries.remove(hash);
            return None;
        }
        self.entries.get(hash)
    }

    pub fn insert(&mut self, hash: TokenHash, token: CachedToken) {
        if self.entries.insert(hash, token).is_some() {
            return;
        }
        self.order.push_back(hash);
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            // `order` may name entries already dropped on expiry; skip those.
            if self.entries.len() > self.capacity {
                self.entries.remove(&oldest);
            }
        }
    }

    /// Drops the tokens of `issuer` whose signing key is no longer trusted (`keeps(kid)`
    /// false): a key that left the issuer's key set takes its cached verdicts with it.
    /// Returns how many were dropped.
    pub fn drop_removed_keys(&mut self, issuer: usize, keeps: impl Fn(&str) -> bool) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, token| token.issuer != issuer || keeps(&token.kid));
        let dropped = before - self.entries.len();
        if dropped > 0 {
            let entries = &self.entries;
            self.order.retain(|hash| entries.contains_key(hash));
        }
        dropped
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprinter;

    fn token_hash(token: &str) -> TokenHash {
        Fingerprinter::new([9; 16]).of(token.as_bytes())
    }

    fn cached(until: u64) -> CachedToken {
        signed(0, "kid-1", until)
    }

    fn signed(issuer: usize, kid: &str, until: u64) -> CachedToken {
        CachedToken {
            identity: Identity::new("s", "k", Vec::new(), None),
            issuer,
            kid: kid.into(),
            valid_until_s: until,
        }
    }

    #[test]
    fn tokens_of_a_removed_key_are_dropped() {
        let mut cache = TokenCache::new(8);
        let [old, new, other_issuer] = [token_hash("a"), token_hash("b"), token_hash("c")];
        cache.insert(old, signed(0, "old", 1000));
        cache.insert(new, signed(0, "new", 1000));
        // Another issuer's key of the same name is not this issuer's.
        cache.insert(other_issuer, signed(1, "old", 1000));
        assert_eq!(cache.drop_removed_keys(0, |kid| kid == "new"), 1);
        assert!(cache.get(&old, 0).is_none());
        assert!(cache.get(&new, 0).is_some());
        assert!(cache.get(&other_issuer, 0).is_some());
        assert_eq!(cache.order.len(), 2);
        assert_eq!(cache.drop_removed_keys(0, |kid| kid == "new"), 0);
    }

    #[test]
    fn hits_until_expiry() {
        let mut cache = TokenCache::new(4);
        let h = token_hash("a.b.c");
        cache.insert(h, cached(100));
        assert!(cache.get(&h, 99).is_some());
        assert!(cache.get(&h, 100).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn stays_bounded_evicting_the_oldest() {
        let mut cache = TokenCache::new(3);
        let hashes: Vec<_> = (0..10).map(|i| token_hash(&format!("t{i}"))).collect();
        for h in &hashes {
            cache.insert(*h, cached(1000));
            assert!(cache.len() <= 3);
            assert!(cache.order.len() <= 6);
        }
        assert!(cache.get(&hashes[9], 0).is_some());
        assert!(cache.get(&hashes[0], 0).is_none());
    }
}
