//! The nonces of request signatures seen within their window, in shared data so every worker
//! of an Envoy refuses a replay. Bounded: [`NONCE_SLOTS`] slots of at most `per_slot`
//! entries each (a fingerprint of key id and nonce, and the time the signature stops being
//! accepted). An entry leaves once that time is past. A full slot refuses new nonces (fail
//! closed: evicting one would let its replay through); so does a slot whose
//! compare-and-swap keeps failing.

use sha2::{Digest as _, Sha256};

use crate::host::Host;

/// Slots in shared data.
pub const NONCE_SLOTS: usize = 64;
/// Compare-and-swap rounds before giving up.
const ROUNDS: usize = 8;
const FINGERPRINT: usize = 16;
const ENTRY: usize = FINGERPRINT + 8;

/// What [`remember`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceOutcome {
    /// Not seen within its window: remembered now.
    Fresh,
    /// Seen before within its window.
    Replayed,
    /// The slot holds `per_slot` live nonces already.
    Full,
    /// The slot could not be updated.
    Contended,
}

/// The shared-data name of slot `slot`.
pub fn slot_key(slot: usize) -> String {
    format!("keygate.sig.nonce.{slot}")
}

/// Creates every slot, so that every write to one is a compare-and-swap.
pub fn create_slots(host: &impl Host) {
    for slot in 0..NONCE_SLOTS {
        let name = slot_key(slot);
        if host.get_shared(&name).1.is_none() {
            let _ = host.set_shared(&name, &[], None);
        }
    }
}

fn fingerprint(key_id: &str, nonce: &str) -> [u8; FINGERPRINT] {
    let mut hash = Sha256::new();
    hash.update(b"keygate signature nonce\0");
    hash.update(key_id.as_bytes());
    hash.update([0]);
    hash.update(nonce.as_bytes());
    let digest = hash.finalize();
    let mut out = [0u8; FINGERPRINT];
    out.copy_from_slice(&digest[..FINGERPRINT]);
    out
}

/// Remembers `nonce` of `key_id` until `until_s`, unless it is remembered already.
pub fn remember(
    host: &impl Host,
    key_id: &str,
    nonce: &str,
    until_s: u64,
    now_s: u64,
    per_slot: usize,
) -> NonceOutcome {
    let fp = fingerprint(key_id, nonce);
    let mut index = [0u8; 8];
    index.copy_from_slice(&fp[..8]);
    let name = slot_key((u64::from_be_bytes(index) % NONCE_SLOTS as u64) as usize);
    for _ in 0..ROUNDS {
        let (value, version) = host.get_shared(&name);
        let Some(version) = version else {
            // Not created yet (another worker's configure may still run): create it empty;
            // two workers doing so at once both write nothing.
            let _ = host.set_shared(&name, &[], None);
            continue;
        };
        let value = value.unwrap_or_default();
        let mut kept = Vec::with_capacity(value.len() + ENTRY);
        let mut live = 0;
        for entry in value.chunks_exact(ENTRY) {
            let mut until = [0u8; 8];
            until.copy_from_slice(&entry[FINGERPRINT..]);
            if u64::from_be_bytes(until) < now_s {
                continue;
            }
            if entry[..FINGERPRINT] == fp {
                return NonceOutcome::Replayed;
            }
            kept.extend_from_slice(entry);
            live += 1;
        }
        if live >= per_slot {
            return NonceOutcome::Full;
        }
        kept.extend_from_slice(&fp);
        kept.extend_from_slice(&until_s.to_be_bytes());
        if host.set_shared(&name, &kept, Some(version)).is_ok() {
            return NonceOutcome::Fresh;
        }
    }
    NonceOutcome::Contended
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    #[test]
    fn a_nonce_is_refused_twice_within_its_window_by_every_worker() {
        let host = FakeHost::at(0);
        create_slots(&host);
        let other = host.worker();
        assert_eq!(remember(&host, "k1", "n", 100, 10, 4), NonceOutcome::Fresh);
        assert_eq!(
            remember(&other, "k1", "n", 100, 50, 4),
            NonceOutcome::Replayed
        );
        assert_eq!(
            remember(&other, "k1", "n", 100, 100, 4),
            NonceOutcome::Replayed
        );
        // Another key's nonce of the same text is its own.
        assert_eq!(remember(&other, "k2", "n", 100, 50, 4), NonceOutcome::Fresh);
        // Once the window is past, the entry is gone.
        assert_eq!(remember(&host, "k1", "n", 300, 101, 4), NonceOutcome::Fresh);
    }

    #[test]
    fn a_full_slot_fails_closed_until_entries_expire() {
        let host = FakeHost::at(0);
        create_slots(&host);
        // Fill one slot: nonces landing in the slot of "k/0".
        let target = {
            let fp = fingerprint("k", "0");
            let mut index = [0u8; 8];
            index.copy_from_slice(&fp[..8]);
            u64::from_be_bytes(index) % NONCE_SLOTS as u64
        };
        let same_slot: Vec<String> = (0..)
            .map(|i: u32| i.to_string())
            .filter(|n| {
                let fp = fingerprint("k", n);
                let mut index = [0u8; 8];
                index.copy_from_slice(&fp[..8]);
                u64::from_be_bytes(index) % NONCE_SLOTS as u64 == target
            })
            .take(4)
            .collect();
        for n in &same_slot[..3] {
            assert_eq!(remember(&host, "k", n, 100, 0, 3), NonceOutcome::Fresh);
        }
        assert_eq!(
            remember(&host, "k", &same_slot[3], 100, 0, 3),
            NonceOutcome::Full
        );
        // A replay is still told as such.
        assert_eq!(
            remember(&host, "k", &same_slot[0], 100, 0, 3),
            NonceOutcome::Replayed
        );
        assert_eq!(
            remember(&host, "k", &same_slot[3], 200, 101, 3),
            NonceOutcome::Fresh
        );
        let stored = host.shared(&slot_key(target as usize)).unwrap();
        assert_eq!(stored.len(), ENTRY, "expired entries are dropped on write");
    }

    #[test]
    fn lost_compare_and_swaps_are_retried_then_refused() {
        let host = FakeHost::at(0);
        create_slots(&host);
        host.conflict_next_writes(2);
        assert_eq!(remember(&host, "k", "a", 100, 0, 8), NonceOutcome::Fresh);
        host.conflict_next_writes(ROUNDS);
        assert_eq!(
            remember(&host, "k", "b", 100, 0, 8),
            NonceOutcome::Contended
        );
        assert_eq!(remember(&host, "k", "b", 100, 0, 8), NonceOutcome::Fresh);
    }

    #[test]
    fn a_missing_slot_is_created() {
        let host = FakeHost::at(0);
        assert_eq!(remember(&host, "k", "a", 100, 0, 8), NonceOutcome::Fresh);
        assert_eq!(remember(&host, "k", "a", 100, 0, 8), NonceOutcome::Replayed);
    }

    #[test]
    fn junk_in_a_slot_is_read_safely() {
        let host = FakeHost::at(0);
        create_slots(&host);
        for slot in 0..NONCE_SLOTS {
            host.put_shared(&slot_key(slot), &[0xff; ENTRY + 5]);
        }
        // The whole entry of 0xff never expires and matches nothing; the tail is dropped.
        assert_eq!(remember(&host, "k", "a", 100, 0, 8), NonceOutcome::Fresh);
    }
}
