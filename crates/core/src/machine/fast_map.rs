//! A cheap hasher for this worker's maps whose keys no client chooses: context ids, callout
//! tokens, and usage rows (ids of proven keys, minutes, route names). The std maps' SipHash
//! costs more than the rest of a cached request's map work; a map keyed by text a client
//! chose (a presented key id, an address) keeps the keyed SipHash, so no one can aim
//! collisions at it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The FxHash of rustc: a rotate, a xor and a multiply per word. Unkeyed, so only for keys
/// no client chooses (see the module).
#[derive(Clone, Copy, Default)]
pub struct FastHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn maps_keep_and_find_what_they_hold() {
        let mut notes: FastMap<u32, u32> = FastMap::default();
        for id in 0..10_000 {
            notes.insert(id, id * 2);
        }
        assert!((0..10_000).all(|id| notes.get(&id) == Some(&(id * 2))));
        assert_eq!(notes.remove(&77), Some(154));
        assert_eq!(notes.get(&77), None);
        let mut rows: FastMap<String, u64> = FastMap::default();
        for n in 0..1_000 {
            rows.insert(format!("key-{n}"), n);
        }
        assert!((0..1_000).all(|n| rows.get(format!("key-{n}").as_str()) == Some(&n)));
    }

    #[test]
    fn texts_that_differ_hash_differently() {
        let hash = |text: &str| BuildHasherDefault::<FastHasher>::default().hash_one(text);
        assert_ne!(hash("abcdefgh"), hash("abcdefgi"));
        assert_ne!(hash("abcdefghi"), hash("abcdefghj"));
        assert_ne!(hash(""), hash("a"));
        assert_eq!(hash("route[0]"), hash("route[0]"));
    }
}
