//! The nonces of request signatures seen within their window, in shared data so every worker
//! of an Envoy refuses a replay. Bounded: a [`Layout`] of slots of at most `per_slot` entries
//! each (a fingerprint of key id and nonce, and the time the signature stops being
//! accepted). An entry leaves once that time is past. A full slot refuses new nonces (fail
//! closed: evicting one would let its replay through); so does a slot whose
//! compare-and-swap keeps failing.
//!
//! A request reads and rewrites one slot, so the slot count grows with the capacity
//! (about [`TARGET_PER_SLOT`] entries each) and a request's cost does not. The fingerprint is
//! keyed with a secret derived from the gateway key: a client that chooses its nonces cannot
//! aim them all at one slot to fill it for everybody else.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::host::Host;

/// Entries a slot holds when the capacity allows (6 KiB read and written per request).
pub const TARGET_PER_SLOT: usize = 256;
/// The fewest and the most slots in shared data.
pub const MIN_SLOTS: usize = 64;
pub const MAX_SLOTS: usize = 4096;

/// How the nonce capacity is spread over shared-data slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub slots: usize,
    pub per_slot: usize,
}

impl Layout {
    /// The layout for `max_nonces` remembered at once.
    pub fn for_capacity(max_nonces: usize) -> Self {
        let slots = max_nonces
            .div_ceil(TARGET_PER_SLOT)
            .clamp(MIN_SLOTS, MAX_SLOTS);
        Self {
            slots,
            per_slot: max_nonces.div_ceil(slots).max(1),
        }
    }
}
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
pub fn create_slots(host: &impl Host, layout: Layout) {
    for slot in 0..layout.slots {
        let name = slot_key(slot);
        if host.get_shared(&name).1.is_none() {
            let _ = host.set_shared(&name, &[], None);
        }
    }
}

fn fingerprint(secret: &[u8; 16], key_id: &str, nonce: &str) -> [u8; FINGERPRINT] {
    let mut out = [0u8; FINGERPRINT];
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return out;
    };
    mac.update(b"keygate signature nonce\0");
    mac.update(key_id.as_bytes());
    mac.update(&[0]);
    mac.update(nonce.as_bytes());
    out.copy_from_slice(&mac.finalize().into_bytes()[..FINGERPRINT]);
    out
}

fn slot_of(fp: &[u8; FINGERPRINT], layout: Layout) -> usize {
    let mut index = [0u8; 8];
    index.copy_from_slice(&fp[..8]);
    (u64::from_be_bytes(index) % layout.slots.max(1) as u64) as usize
}

/// Where a nonce goes and what it is kept as.
#[derive(Clone, Copy, Debug)]
pub struct NonceStore<'a> {
    pub layout: Layout,
    /// The fingerprint's key (derived from the gateway key).
    pub secret: &'a [u8; 16],
}

/// Remembers `nonce` of `key_id` until `until_s`, unless it is remembered already.
pub fn remember(
    host: &impl Host,
    store: NonceStore<'_>,
    key_id: &str,
    nonce: &str,
    until_s: u64,
    now_s: u64,
) -> NonceOutcome {
    let per_slot = store.layout.per_slot;
    let fp = fingerprint(store.secret, key_id, nonce);
    let name = slot_key(slot_of(&fp, store.layout));
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

    const SECRET: [u8; 16] = [7; 16];

    fn layout(per_slot: usize) -> Layout {
        Layout {
            slots: MIN_SLOTS,
            per_slot,
        }
    }

    fn store(per_slot: usize) -> NonceStore<'static> {
        NonceStore {
            layout: layout(per_slot),
            secret: &SECRET,
        }
    }

    #[test]
    fn a_nonce_is_refused_twice_within_its_window_by_every_worker() {
        let host = FakeHost::at(0);
        create_slots(&host, layout(8));
        let other = host.worker();
        assert_eq!(
            remember(&host, store(4), "k1", "n", 100, 10),
            NonceOutcome::Fresh
        );
        assert_eq!(
            remember(&other, store(4), "k1", "n", 100, 50),
            NonceOutcome::Replayed
        );
        assert_eq!(
            remember(&other, store(4), "k1", "n", 100, 100),
            NonceOutcome::Replayed
        );
        // Another key's nonce of the same text is its own.
        assert_eq!(
            remember(&other, store(4), "k2", "n", 100, 50),
            NonceOutcome::Fresh
        );
        // Once the window is past, the entry is gone.
        assert_eq!(
            remember(&host, store(4), "k1", "n", 300, 101),
            NonceOutcome::Fresh
        );
    }

    #[test]
    fn a_full_slot_fails_closed_until_entries_expire() {
        let host = FakeHost::at(0);
        create_slots(&host, layout(8));
        // Fill one slot: nonces landing in the slot of "k/0".
        let target = { slot_of(&fingerprint(&SECRET, "k", "0"), layout(3)) };
        let same_slot: Vec<String> = (0..)
            .map(|i: u32| i.to_string())
            .filter(|n| slot_of(&fingerprint(&SECRET, "k", n), layout(3)) == target)
            .take(4)
            .collect();
        for n in &same_slot[..3] {
            assert_eq!(
                remember(&host, store(3), "k", n, 100, 0),
                NonceOutcome::Fresh
            );
        }
        assert_eq!(
            remember(&host, store(3), "k", &same_slot[3], 100, 0),
            NonceOutcome::Full
        );
        // A replay is still told as such.
        assert_eq!(
            remember(&host, store(3), "k", &same_slot[0], 100, 0),
            NonceOutcome::Replayed
        );
        assert_eq!(
            remember(&host, store(3), "k", &same_slot[3], 200, 101),
            NonceOutcome::Fresh
        );
        let stored = host.shared(&slot_key(target)).unwrap();
        assert_eq!(stored.len(), ENTRY, "expired entries are dropped on write");
    }

    #[test]
    fn lost_compare_and_swaps_are_retried_then_refused() {
        let host = FakeHost::at(0);
        create_slots(&host, layout(8));
        host.conflict_next_writes(2);
        assert_eq!(
            remember(&host, store(8), "k", "a", 100, 0),
            NonceOutcome::Fresh
        );
        host.conflict_next_writes(ROUNDS);
        assert_eq!(
            remember(&host, store(8), "k", "b", 100, 0),
            NonceOutcome::Contended
        );
        assert_eq!(
            remember(&host, store(8), "k", "b", 100, 0),
            NonceOutcome::Fresh
        );
    }

    #[test]
    fn a_missing_slot_is_created() {
        let host = FakeHost::at(0);
        assert_eq!(
            remember(&host, store(8), "k", "a", 100, 0),
            NonceOutcome::Fresh
        );
        assert_eq!(
            remember(&host, store(8), "k", "a", 100, 0),
            NonceOutcome::Replayed
        );
    }

    #[test]
    fn junk_in_a_slot_is_read_safely() {
        let host = FakeHost::at(0);
        create_slots(&host, layout(8));
        for slot in 0..MIN_SLOTS {
            host.put_shared(&slot_key(slot), &[0xff; ENTRY + 5]);
        }
        // The whole entry of 0xff never expires and matches nothing; the tail is dropped.
        assert_eq!(
            remember(&host, store(8), "k", "a", 100, 0),
            NonceOutcome::Fresh
        );
    }

    #[test]
    fn the_slot_count_grows_with_the_capacity_and_a_slot_stays_small() {
        assert_eq!(
            Layout::for_capacity(16_384),
            Layout {
                slots: 64,
                per_slot: 256
            }
        );
        assert_eq!(
            Layout::for_capacity(64),
            Layout {
                slots: 64,
                per_slot: 1
            }
        );
        let big = Layout::for_capacity(1_048_576);
        assert_eq!(big.slots, MAX_SLOTS);
        assert_eq!(big.per_slot, 256);
        for max in [64, 100, 16_384, 100_000, 1_048_576] {
            let layout = Layout::for_capacity(max);
            assert!(layout.slots * layout.per_slot >= max, "{max}: {layout:?}");
            assert!(layout.per_slot <= TARGET_PER_SLOT, "{max}: {layout:?}");
        }
    }

    #[test]
    fn the_slot_depends_on_the_gateway_secret() {
        // A client that ground nonces into one slot under one secret spreads them under
        // another: 32 nonces of one slot land in more than one slot elsewhere.
        let wide = Layout::for_capacity(1_048_576);
        let target = slot_of(&fingerprint(&SECRET, "k", "0"), wide);
        let aimed: Vec<String> = (0u32..)
            .map(|i| i.to_string())
            .filter(|n| slot_of(&fingerprint(&SECRET, "k", n), wide) == target)
            .take(32)
            .collect();
        let other = [9u8; 16];
        let slots: std::collections::HashSet<usize> = aimed
            .iter()
            .map(|n| slot_of(&fingerprint(&other, "k", n), wide))
            .collect();
        assert!(slots.len() > 16, "{} slots", slots.len());
    }
}
