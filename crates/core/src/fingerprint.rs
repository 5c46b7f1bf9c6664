//! Fingerprints: a keyed 128-bit hash (SipHash-2-4) of a credential's text.
//!
//! The per-worker caches recognise a credential seen before by its fingerprint: a verified
//! JWT, or an opaque key already proven against its record's digest. A fingerprint costs a
//! fraction of a SHA-256 on the hot path and reveals nothing without the key, which is
//! random per VM and never leaves it (so a forged credential matches a cached fingerprint
//! with probability 2^-128). Fingerprints are never stored outside the worker's memory.

use siphasher::sip128::SipHasher24;

/// The fingerprint of a credential, under one [`Fingerprinter`]'s key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(u128);

/// Computes fingerprints under one secret key.
#[derive(Clone, Debug)]
pub struct Fingerprinter(SipHasher24);

impl Fingerprinter {
    /// `key` must be secret and random: the caller draws it once per VM.
    pub fn new(key: [u8; 16]) -> Self {
        Self(SipHasher24::new_with_key(&key))
    }

    pub fn of(&self, text: &[u8]) -> Fingerprint {
        Fingerprint(self.0.hash(text).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_match_and_keys_separate() {
        let one = Fingerprinter::new([1; 16]);
        let two = Fingerprinter::new([2; 16]);
        assert_eq!(one.of(b"kg_live_abc"), one.of(b"kg_live_abc"));
        assert_ne!(one.of(b"kg_live_abc"), one.of(b"kg_live_abd"));
        assert_ne!(one.of(b"kg_live_abc"), two.of(b"kg_live_abc"));
        assert_ne!(one.of(b""), one.of(b"\0"));
    }
}
