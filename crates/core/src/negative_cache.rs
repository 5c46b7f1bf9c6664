//! A bounded memory of "no such thing" answers, kept apart from the record cache so that
//! a flood of unknown credentials can never evict a real record.
//!
//! Per worker, no shared data: an entry costs a hash lookup. Bounded: past `capacity`, the
//! oldest entry goes first; expired entries are dropped when met.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
pub struct NegativeCache<K> {
    /// Key → until when (ms) the negative answer holds.
    entries: HashMap<K, u64>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> NegativeCache<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True while a negative answer for `key` holds at `now_ms`.
    pub fn contains(&mut self, key: &K, now_ms: u64) -> bool {
        match self.entries.get(key) {
            Some(until) if now_ms < *until => true,
            Some(_) => {
                self.entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers that `key` is unknown until `until_ms`.
    pub fn insert(&mut self, key: K, until_ms: u64) {
        if self.entries.insert(key, until_ms).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            // `order` may name entries already dropped on expiry; those cost nothing.
            if self.entries.len() > self.capacity {
                self.entries.remove(&oldest);
            }
        }
    }

    /// Forgets `key` (the key service now knows it).
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
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

    #[test]
    fn holds_until_expiry() {
        let mut cache = NegativeCache::new(4);
        cache.insert(1u32, 100);
        assert!(cache.contains(&1, 99));
        assert!(!cache.contains(&1, 100));
        assert!(cache.is_empty());
        assert!(!cache.contains(&2, 0));
        cache.insert(3, 100);
        cache.remove(&3);
        assert!(!cache.contains(&3, 0));
    }

    #[test]
    fn stays_bounded_dropping_the_oldest() {
        let mut cache = NegativeCache::new(3);
        for n in 0..100u32 {
            cache.insert(n, 1_000);
            assert!(cache.len() <= 3);
            assert!(cache.order.len() <= 6);
        }
        assert!(cache.contains(&99, 0));
        assert!(!cache.contains(&0, 0));
    }
}
