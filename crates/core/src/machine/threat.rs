//! Threat detection and blocking: authentication failures counted per client address in
//! shared data, addresses blocked past a threshold, and the block list every request is
//! checked against before its credential is read.
//!
//! **What counts.** A request refused as malformed (bad credential, malformed key), forged
//! (bad tag), unknown (key id the key service does not know, or a known id with the wrong
//! secret), or a JWT whose signature, key id or form does not verify ([`counts_as_failure`]).
//! Other parts call [`record_failure`] for failures of their own (bad request signatures).
//! The address is the trusted client address the allow-lists use (`client_address`).
//!
//! **The counting table** is a fixed number of shared-data slots (`threat.max_addresses`
//! divided by [`WAYS`]), each holding at most [`WAYS`] addresses, updated by
//! compare-and-swap (a lost race is retried; after [`MAX_CAS_ROUNDS`] the failure is not
//! counted: `keygate.threat.contention`). Each address has a sliding window of two fixed
//! windows (the current and the previous, weighted by the part of it still inside the
//! window). An address's slot is chosen by a keyed hash (derived from the gateway key), so a
//! client cannot pick addresses that fall into another's slot.
//!
//! **Eviction.** A new address in a full slot replaces the entry with the fewest recent
//! failures that is not blocked; a slot full of blocked addresses counts no new one
//! (`keygate.threat.table_full`, the failure goes uncounted: the table fails open, the
//! rest of the filter still refuses the request). An attacker cannot cheaply clear its own
//! count: its entry goes last, and only for addresses that fall into its slot (which it cannot
//! choose) with more recent failures than its own, each of them closer to a block itself.
//!
//! **Blocks** are kept in a second list in shared data (`threat.max_blocks` entries; when full,
//! the block that ends first gives way) beside the operator blocks the revocation feed
//! brings. Every worker keeps a copy, reloaded on its tick when the shared version moves,
//! and takes its own new blocks (and blocks it finds in the counting table) at once. A request
//! is checked against that copy before anything else is read: while no block is in force
//! the check is one branch (no host call, no shared-data read); while one is, it costs the
//! read of the client address (`source.address`, one property read), never a shared-data
//! read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher24;

use crate::config::FilterConfig;
use crate::decision::DenyReason;
use crate::host::Host;
use crate::jwt::JwtError;
use crate::limits::{client_address, Cidr, ForwardedFor};

/// Addresses per counting slot.
pub const WAYS: usize = 8;
/// Compare-and-swap rounds before a failure (or a block) is given up.
pub const MAX_CAS_ROUNDS: usize = 16;
/// The automatic blocks, shared by the workers of one Envoy.
pub const AUTO_KEY: &str = "keygate.threat.blocks";
/// The operator blocks, as the revocation feed's follower last wrote them.
pub const OPERATOR_KEY: &str = "keygate.threat.operator";
/// The automatic blocks an operator lifted, as the revocation feed's follower last wrote them.
pub const LIFTED_KEY: &str = "keygate.threat.lifted";
/// Bytes of one counting entry: address, window index, two counts, end of block.
const ENTRY_LEN: usize = 16 + 8 + 2 + 2 + 8;
/// Bytes of one automatic block: address and end.
const BLOCK_LEN: usize = 16 + 8;
/// Automatic blocks reported to the key service at most, waiting (newest dropped past it).
pub const MAX_PENDING_REPORTS: usize = 1024;

fn slot_key(slot: u32) -> String {
    format!("keygate.threat.{slot}")
}

/// `threat` in the filter configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreatSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    #[serde(default = "default_window")]
    pub window_seconds: u64,
    #[serde(default = "default_block")]
    pub block_seconds: u64,
    #[serde(default = "default_max_addresses")]
    pub max_addresses: u32,
    #[serde(default = "default_max_blocks")]
    pub max_blocks: u32,
}

fn default_threshold() -> u32 {
    50
}
fn default_window() -> u64 {
    60
}
fn default_block() -> u64 {
    300
}
fn default_max_addresses() -> u32 {
    16_384
}
fn default_max_blocks() -> u32 {
    4_096
}

impl Default for ThreatSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: default_threshold(),
            window_seconds: default_window(),
            block_seconds: default_block(),
            max_addresses: default_max_addresses(),
            max_blocks: default_max_blocks(),
        }
    }
}

impl ThreatSpec {
    pub fn settings(&self) -> ThreatSettings {
        ThreatSettings {
            enabled: self.enabled,
            threshold: self.threshold,
            window_ms: self.window_seconds * 1000,
            block_ms: self.block_seconds * 1000,
            slots: (self.max_addresses / WAYS as u32).max(1),
            max_blocks: self.max_blocks as usize,
        }
    }
}

/// Threat detection as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreatSettings {
    /// Failures are counted and addresses blocked (operator blocks apply either way).
    pub enabled: bool,
    /// Failures within the window that block an address.
    pub threshold: u32,
    pub window_ms: u64,
    /// How long an automatic block lasts.
    pub block_ms: u64,
    /// Counting slots in shared data ([`WAYS`] addresses each).
    pub slots: u32,
    /// Automatic blocks held at most (and operator blocks, separately).
    pub max_blocks: usize,
}

impl Default for ThreatSettings {
    fn default() -> Self {
        ThreatSpec::default().settings()
    }
}

/// An address as stored: IPv4 (and IPv4-mapped IPv6) as `::ffff:a.b.c.d`.
fn address_bytes(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One address in a counting slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address: [u8; 16],
    /// Index of the current window (`now / window_ms`).
    window: u64,
    current: u16,
    previous: u16,
    /// Blocked until then (ms); 0 or past: not blocked.
    blocked_until_ms: u64,
}

impl Entry {
    fn new(address: [u8; 16], window: u64) -> Self {
        Self {
            address,
            window,
            current: 0,
            previous: 0,
            blocked_until_ms: 0,
        }
    }

    /// Moves the counts to window `window`.
    fn roll(&mut self, window: u64) {
        if window <= self.window {
            return;
        }
        self.previous = if window == self.window + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.window = window;
    }

    /// Failures in the sliding window ending now: the current window's, and the previous
    /// one's weighted by the part of it still inside the sliding window.
    fn estimate(&self, now_ms: u64, window_ms: u64) -> u64 {
        let mut rolled = *self;
        rolled.roll(now_ms / window_ms);
        let remaining = window_ms - now_ms % window_ms;
        u64::from(rolled.current) + u64::from(rolled.previous) * remaining / window_ms
    }

    fn blocked(&self, now_ms: u64) -> bool {
        self.blocked_until_ms > now_ms
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.address);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&self.previous.to_be_bytes());
        out.extend_from_slice(&self.blocked_until_ms.to_be_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            address: bytes.get(0..16)?.try_into().ok()?,
            window: u64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?),
            current: u16::from_be_bytes(bytes.get(24..26)?.try_into().ok()?),
            previous: u16::from_be_bytes(bytes.get(26..28)?.try_into().ok()?),
            blocked_until_ms: u64::from_be_bytes(bytes.get(28..36)?.try_into().ok()?),
        })
    }
}

fn decode_slot(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .chunks_exact(ENTRY_LEN)
        .take(WAYS)
        .filter_map(Entry::decode)
        .collect()
}

fn encode_slot(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for entry in entries {
        entry.encode_into(&mut out);
    }
    out
}

/// The counting slot of `address` under the hash key.
fn slot_of(hash_key: &[u8; 16], address: &[u8; 16], slots: u32) -> u32 {
    let mut hasher = SipHasher24::new_with_key(hash_key);
    hasher.write(address);
    (hasher.finish() % u64::from(slots.max(1))) as u32
}

/// Creates every counting slot, so that every write to one is a compare-and-swap.
pub fn create_slots(host: &impl Host, settings: &ThreatSettings) {
    if !settings.enabled {
        return;
    }
    for slot in 0..settings.slots {
        let name = slot_key(slot);
        if host.get_shared(&name).1.is_none() {
            let _ = host.set_shared(&name, &[], None);
        }
    }
}

/// What counting one failure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Counted; this many failures in the window now.
    Counted(u64),
    /// This failure crossed the threshold: blocked until then (ms).
    Blocked(u64),
    /// The address was blocked already (another worker blocked it) until then (ms).
    AlreadyBlocked(u64),
    /// Its slot is full of blocked addresses: not counted.
    TableFull,
    /// Every compare-and-swap round was lost: not counted.
    Contended,
}

/// Counts one authentication failure of `address` in the shared table.
pub fn count_failure(
    host: &impl Host,
    settings: &ThreatSettings,
    hash_key: &[u8; 16],
    address: IpAddr,
    now_ms: u64,
) -> Counted {
    let address = address_bytes(address);
    let key = slot_key(slot_of(hash_key, &address, settings.slots));
    let window = now_ms / settings.window_ms;
    for _ in 0..MAX_CAS_ROUNDS {
        let (value, cas) = host.get_shared(&key);
        let mut entries = decode_slot(value.as_deref().unwrap_or_default());
        let index = match entries.iter().position(|e| e.address == address) {
            Some(index) => index,
            None => {
                if entries.len() >= WAYS {
                    let victim = entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| !e.blocked(now_ms))
                        .min_by_key(|(_, e)| e.estimate(now_ms, settings.window_ms))
                        .map(|(i, _)| i);
                    match victim {
                        Some(victim) => {
                            entries.swap_remove(victim);
                        }
                        None => return Counted::TableFull,
                    }
                }
                entries.push(Entry::new(address, window));
                entries.len() - 1
            }
        };
        let Some(entry) = entries.get_mut(index) else {
            return Counted::Contended;
        };
        if entry.blocked(now_ms) {
            return Counted::AlreadyBlocked(entry.blocked_until_ms);
        }
        entry.roll(window);
        entry.current = entry.current.saturating_add(1);
        let failures = entry.estimate(now_ms, settings.window_ms);
        let outcome = if failures >= u64::from(settings.threshold) {
            entry.blocked_until_ms = now_ms + settings.block_ms;
            entry.current = 0;
            entry.previous = 0;
            Counted::Blocked(entry.blocked_until_ms)
        } else {
            Counted::Counted(failures)
        };
        if host.set_shared(&key, &encode_slot(&entries), cas).is_ok() {
            return outcome;
        }
    }
    Counted::Contended
}

fn decode_blocks(bytes: &[u8]) -> Vec<([u8; 16], u64)> {
    bytes
        .chunks_exact(BLOCK_LEN)
        .filter_map(|chunk| {
            let address: [u8; 16] = chunk.get(0..16)?.try_into().ok()?;
            let until = u64::from_be_bytes(chunk.get(16..24)?.try_into().ok()?);
            Some((address, until))
        })
        .collect()
}

fn encode_blocks(blocks: &[([u8; 16], u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks.len() * BLOCK_LEN);
    for (address, until) in blocks {
        out.extend_from_slice(address);
        out.extend_from_slice(&until.to_be_bytes());
    }
    out
}

/// Adds an automatic block to the shared list (expired ones dropped; when full, the block
/// that ends first gives way). Returns false when every compare-and-swap round was lost.
pub fn add_block(
    host: &impl Host,
    settings: &ThreatSettings,
    address: IpAddr,
    until_ms: u64,
    now_ms: u64,
) -> bool {
    let address = address_bytes(address);
    for _ in 0..MAX_CAS_ROUNDS {
        let (value, cas) = host.get_shared(AUTO_KEY);
        let mut blocks = decode_blocks(value.as_deref().unwrap_or_default());
        blocks.retain(|(a, until)| *until > now_ms && *a != address);
        while blocks.len() >= settings.max_blocks.max(1) {
            let Some(first) = blocks
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(i, _)| i)
            else {
                break;
            };
            blocks.swap_remove(first);
        }
        blocks.push((address, until_ms));
        if host
            .set_shared(AUTO_KEY, &encode_blocks(&blocks), cas)
            .is_ok()
        {
            return true;
        }
    }
    false
}

/// An operator block as the revocation feed carries it (and the key service stores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorBlock {
    /// An address or a CIDR (`203.0.113.0/24`).
    pub cidr: String,
    /// Unix seconds at which the block ends by itself.
    pub until: u64,
}

/// The operator blocks in force, as a feed answer carries them (member `blocks`, beside
/// `events` and `roles`, so a filter that predates it ignores it). Sent when the follower
/// asks with a `blocks=<version>` other than the current one: the whole list (it is bounded
/// by the key service), the automatic blocks an operator lifted, and its version, a hash of
/// both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedBlocks {
    pub version: u64,
    pub list: Vec<OperatorBlock>,
    /// Automatic blocks an operator removed before they ended: every automatic block of an
    /// address in `cidr` that ends by `until` (Unix seconds) is lifted at every Envoy, and
    /// the address's failure count starts again. Absent from older services' answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lifted: Vec<OperatorBlock>,
}

impl FeedBlocks {
    /// The lists and their version (FNV-1a of their JSON; never 0, which means "none yet").
    pub fn of(list: Vec<OperatorBlock>, lifted: Vec<OperatorBlock>) -> Self {
        let mut json = serde_json::to_vec(&list).unwrap_or_default();
        if !lifted.is_empty() {
            json.extend(serde_json::to_vec(&lifted).unwrap_or_default());
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in json {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            version: hash.max(1),
            list,
            lifted,
        }
    }
}

/// The `blocks` member of a feed answer, when it has one.
pub fn feed_blocks(body: &[u8]) -> Option<FeedBlocks> {
    #[derive(Deserialize)]
    struct Member {
        #[serde(default)]
        blocks: Option<FeedBlocks>,
    }
    // Most answers carry none: the body is parsed a second time only when it names it.
    if !body.windows(9).any(|w| w == b"\"blocks\":") {
        return None;
    }
    serde_json::from_slice::<Member>(body).ok()?.blocks
}

/// The follower writes the operator blocks the feed brought (at most `max_blocks`; the ones
/// that end last are dropped past it).
pub fn share_operator_blocks(
    host: &impl Host,
    settings: &ThreatSettings,
    blocks: &[OperatorBlock],
) {
    let mut blocks = blocks.to_vec();
    blocks.sort_by_key(|b| b.until);
    blocks.truncate(settings.max_blocks);
    let Ok(encoded) = serde_json::to_vec(&blocks) else {
        return;
    };
    // Written only when it changed, so that the workers reload it only then.
    if host.get_shared(OPERATOR_KEY).0.as_deref() != Some(encoded.as_slice()) {
        let _ = host.set_shared(OPERATOR_KEY, &encoded, None);
    }
}

/// The header of a feed request that reports automatic blocks: a JSON array of
/// [`BlockReport`]s (at most [`MAX_REPORTS_PER_REQUEST`]).
pub const BLOCKED_HEADER: &str = "x-keygate-blocked";
/// Automatic blocks reported in one feed request at most (the rest go with the next ones).
pub const MAX_REPORTS_PER_REQUEST: usize = 32;

/// The automatic blocks of this Envoy (the shared list) the follower has not reported yet,
/// as the [`BLOCKED_HEADER`] value; marks them reported. Best effort: a request that fails
/// loses its reports (the blocks hold in the filter all the same).
pub fn unreported(host: &impl Host, threat: &mut ThreatState, now_ms: u64) -> Option<String> {
    let (value, _) = host.get_shared(AUTO_KEY);
    let blocks = decode_blocks(value.as_deref().unwrap_or_default());
    threat.reported.retain(|(_, until)| *until > now_ms);
    let mut reports = Vec::new();
    for (address, until) in blocks {
        if until <= now_ms || threat.reported.contains(&(address, until)) {
            continue;
        }
        if reports.len() >= MAX_REPORTS_PER_REQUEST || threat.reported.len() >= MAX_PENDING_REPORTS
        {
            break;
        }
        threat.reported.insert((address, until));
        let v6 = std::net::Ipv6Addr::from(address);
        let address = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        reports.push(BlockReport {
            address: address.to_string(),
            until: until / 1000,
            failures: threat.settings.threshold,
        });
    }
    if reports.is_empty() {
        return None;
    }
    serde_json::to_string(&reports).ok()
}

/// The follower got the operator blocks from the feed: shares them with every worker, and
/// lifts the automatic blocks an operator removed.
pub fn take_operator_blocks(host: &impl Host, threat: &mut ThreatState, blocks: FeedBlocks) {
    share_operator_blocks(host, &threat.settings, &blocks.list);
    lift(host, &threat.settings, &blocks.lifted);
    threat.feed_blocks_version = blocks.version;
}

/// A lifted block as the filter checks it: the network, and the end (ms) of the last block
/// it lifts. The key service keeps a block's end in seconds, so the whole second counts.
fn lifted_of(blocks: &[OperatorBlock]) -> Vec<(Cidr, u64)> {
    blocks
        .iter()
        .filter_map(|b| {
            let until_ms = b.until.saturating_add(1).saturating_mul(1000);
            Some((Cidr::parse(&b.cidr)?, until_ms))
        })
        .collect()
}

fn is_lifted(lifted: &[(Cidr, u64)], address: &[u8; 16], until_ms: u64) -> bool {
    let v6 = std::net::Ipv6Addr::from(*address);
    let address = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    lifted
        .iter()
        .any(|(cidr, lifted_until)| until_ms <= *lifted_until && cidr.contains(address))
}

/// Lifts the automatic blocks an operator removed (at most `max_blocks` entries): shares the
/// list for the workers' copies, drops the blocks from the shared list, and clears them from
/// the counting table, so the next failure from such an address counts from zero. Done when
/// the list changes (a scan of the table, so only then).
pub fn lift(host: &impl Host, settings: &ThreatSettings, blocks: &[OperatorBlock]) {
    let mut blocks = blocks.to_vec();
    blocks.sort_by_key(|b| std::cmp::Reverse(b.until));
    blocks.truncate(settings.max_blocks);
    let Ok(encoded) = serde_json::to_vec(&blocks) else {
        return;
    };
    if host.get_shared(LIFTED_KEY).0.as_deref() == Some(encoded.as_slice()) {
        return;
    }
    let _ = host.set_shared(LIFTED_KEY, &encoded, None);
    let lifted = lifted_of(&blocks);
    if lifted.is_empty() {
        return;
    }
    for _ in 0..MAX_CAS_ROUNDS {
        let (value, cas) = host.get_shared(AUTO_KEY);
        let list = decode_blocks(value.as_deref().unwrap_or_default());
        let kept: Vec<_> = list
            .iter()
            .copied()
            .filter(|(address, until)| !is_lifted(&lifted, address, *until))
            .collect();
        if kept.len() == list.len()
            || host
                .set_shared(AUTO_KEY, &encode_blocks(&kept), cas)
                .is_ok()
        {
            break;
        }
    }
    if !settings.enabled {
        return;
    }
    for slot in 0..settings.slots {
        let key = slot_key(slot);
        for _ in 0..MAX_CAS_ROUNDS {
            let (value, cas) = host.get_shared(&key);
            let mut entries = decode_slot(value.as_deref().unwrap_or_default());
            let mut changed = false;
            for entry in entries.iter_mut() {
                if entry.blocked_until_ms > 0
                    && is_lifted(&lifted, &entry.address, entry.blocked_until_ms)
                {
                    *entry = Entry::new(entry.address, entry.window);
                    changed = true;
                }
            }
            if !changed || host.set_shared(&key, &encode_slot(&entries), cas).is_ok() {
                break;
            }
        }
    }
}

/// One worker's copy of the blocks in force.
#[derive(Debug, Default)]
pub struct BlockView {
    /// Automatic blocks (and blocks this worker found), by address: until (ms).
    addresses: HashMap<[u8; 16], u64>,
    /// Operator blocks: network, until (ms).
    networks: Vec<(Cidr, u64)>,
    /// Automatic blocks an operator lifted: network, end (ms) of the last block it lifts.
    lifted: Vec<(Cidr, u64)>,
    auto_version: Option<u32>,
    operator_version: Option<u32>,
    lifted_version: Option<u32>,
}

impl BlockView {
    /// No block in force: a request is not checked at all.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.networks.is_empty()
    }

    /// Until when (ms) `address` is blocked, if it is.
    pub fn blocked_until(&self, address: IpAddr, now_ms: u64) -> Option<u64> {
        let own = self
            .addresses
            .get(&address_bytes(address))
            .copied()
            .filter(|until| *until > now_ms);
        let network = self
            .networks
            .iter()
            .filter(|(cidr, until)| *until > now_ms && cidr.contains(address))
            .map(|(_, until)| *until)
            .max();
        own.max(network)
    }

    /// Takes a block at once (this worker made it, or found it in the counting table).
    pub fn insert(&mut self, address: IpAddr, until_ms: u64) {
        let slot = self.addresses.entry(address_bytes(address)).or_default();
        *slot = (*slot).max(until_ms);
    }

    /// Blocks in force (gauge).
    pub fn len(&self) -> usize {
        self.addresses.len() + self.networks.len()
    }

    /// On the tick: reloads the shared lists whose version moved, drops ended blocks.
    pub fn refresh(&mut self, host: &impl Host, now_ms: u64) {
        let (value, version) = host.get_shared(AUTO_KEY);
        if version != self.auto_version {
            self.auto_version = version;
            let mut addresses: HashMap<[u8; 16], u64> = HashMap::new();
            for (address, until) in decode_blocks(value.as_deref().unwrap_or_default()) {
                addresses.insert(address, until);
            }
            // Blocks this worker found itself and the list lost (evicted) stay until they end.
            for (address, until) in &self.addresses {
                let slot = addresses.entry(*address).or_default();
                *slot = (*slot).max(*until);
            }
            self.addresses = addresses;
        }
        let (value, version) = host.get_shared(OPERATOR_KEY);
        if version != self.operator_version {
            self.operator_version = version;
            let blocks: Vec<OperatorBlock> = value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            self.networks = blocks
                .iter()
                .filter_map(|b| Some((Cidr::parse(&b.cidr)?, b.until.saturating_mul(1000))))
                .collect();
        }
        let (value, version) = host.get_shared(LIFTED_KEY);
        if version != self.lifted_version {
            self.lifted_version = version;
            let blocks: Vec<OperatorBlock> = value
                .as_deref()
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            self.lifted = lifted_of(&blocks);
        }
        if !self.lifted.is_empty() {
            let lifted = &self.lifted;
            self.addresses
                .retain(|address, until| !is_lifted(lifted, address, *until));
            self.lifted.retain(|(_, until)| *until > now_ms);
        }
        self.addresses.retain(|_, until| *until > now_ms);
        self.networks.retain(|(_, until)| *until > now_ms);
    }
}

/// An automatic block this worker made, waiting to be reported to the key service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockReport {
    pub address: String,
    /// Unix seconds at which it ends.
    pub until: u64,
    /// Failures counted when it was blocked (the threshold).
    pub failures: u32,
}

/// What one worker keeps of threat detection.
#[derive(Debug)]
pub struct ThreatState {
    pub view: BlockView,
    /// The key of the counting table's hash (derived from the gateway key).
    pub hash_key: [u8; 16],
    pub settings: ThreatSettings,
    /// The version of the operator blocks this worker last got from the feed (0: none).
    pub feed_blocks_version: u64,
    /// Automatic blocks this worker reported to the key service (as the follower).
    pub reported: std::collections::HashSet<([u8; 16], u64)>,
}

impl ThreatState {
    pub fn new(hash_key: [u8; 16], settings: &ThreatSettings) -> RefCell<Self> {
        RefCell::new(Self {
            view: BlockView::default(),
            hash_key,
            settings: settings.clone(),
            feed_blocks_version: 0,
            reported: std::collections::HashSet::new(),
        })
    }
}

/// Does a denial for `reason` count as an authentication failure of the client?
pub fn counts_as_failure(reason: &DenyReason) -> bool {
    match reason {
        DenyReason::BadRequest(_)
        | DenyReason::MalformedKey
        | DenyReason::ForgedKey
        | DenyReason::UnknownKey
        | DenyReason::DigestMismatch => true,
        DenyReason::InvalidToken(err) => matches!(
            err,
            JwtError::BadSignature
                | JwtError::Malformed(_)
                | JwtError::UnknownKeyId
                | JwtError::MissingKeyId
                | JwtError::AlgorithmNotAllowed
                | JwtError::AlgorithmMismatch
                | JwtError::TooLarge
        ),
        _ => false,
    }
}

/// The client address of the request whose headers these are (the same as the allow-lists
/// read: `source.address`, and `X-Forwarded-For` under `trusted_hops`).
pub fn client_from_headers(
    host: &impl Host,
    config: &FilterConfig,
    headers: &[(&str, &[u8])],
) -> Option<IpAddr> {
    let source = host.property(&["source", "address"]);
    let source = source.as_deref().and_then(|s| std::str::from_utf8(s).ok());
    if config.trusted_hops == 0 {
        return client_address(source, None, 0);
    }
    let header = headers
        .iter()
        .find(|(name, _)| *name == "x-forwarded-for")
        .and_then(|(_, value)| std::str::from_utf8(value).ok());
    ForwardedFor::read(header, config.trusted_hops).client(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::host::{Event, LogLevel};
    use crate::machine::state::Shared;

    const KEY: [u8; 16] = [9; 16];
    const T0: u64 = 1_700_000_000_000;

    fn settings(threshold: u32) -> ThreatSettings {
        ThreatSettings {
            enabled: true,
            threshold,
            window_ms: 60_000,
            block_ms: 300_000,
            slots: 4,
            max_blocks: 4,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_threshold_blocks_and_the_block_ends() {
        let host = FakeHost::at(T0);
        let s = settings(3);
        create_slots(&host, &s);
        let a = ip("198.51.100.7");
        assert_eq!(count_failure(&host, &s, &KEY, a, T0), Counted::Counted(1));
        assert_eq!(
            count_failure(&host, &s, &KEY, a, T0 + 1),
            Counted::Counted(2)
        );
        assert_eq!(
            count_failure(&host, &s, &KEY, a, T0 + 2),
            Counted::Blocked(T0 + 2 + 300_000)
        );
        // Another worker counting the same address learns of the block.
        let other = host.worker();
        assert_eq!(
            count_failure(&other, &s, &KEY, a, T0 + 3),
            Counted::AlreadyBlocked(T0 + 2 + 300_000)
        );
        // Once the cool-down is over, counting starts from nothing.
        assert_eq!(
            count_failure(&host, &s, &KEY, a, T0 + 2 + 300_000),
            Counted::Counted(1)
        );
    }

    #[test]
    fn the_window_slides() {
        let host = FakeHost::at(0);
        let s = settings(10);
        create_slots(&host, &s);
        let a = ip("2001:db8::1");
        // Four failures late in window 0.
        for i in 0..4 {
            assert_eq!(
                count_failure(&host, &s, &KEY, a, 59_000 + i),
                Counted::Counted(i + 1)
            );
        }
        // A quarter into window 1 three quarters of them still count: 3 + this one.
        assert_eq!(
            count_failure(&host, &s, &KEY, a, 75_000),
            Counted::Counted(4)
        );
        // Two windows later nothing of them is left.
        assert_eq!(
            count_failure(&host, &s, &KEY, a, 200_000),
            Counted::Counted(1)
        );
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let host = FakeHost::at(T0);
        let s = settings(2);
        create_slots(&host, &s);
        count_failure(&host, &s, &KEY, ip("192.0.2.1"), T0);
        assert!(matches!(
            count_failure(&host, &s, &KEY, ip("::ffff:192.0.2.1"), T0),
            Counted::Blocked(_)
        ));
    }

    #[test]
    fn lost_races_are_retried_then_given_up() {
        let host = FakeHost::at(T0);
        let s = settings(5);
        create_slots(&host, &s);
        let a = ip("203.0.113.5");
        host.conflict_next_writes(MAX_CAS_ROUNDS - 1);
        assert_eq!(count_failure(&host, &s, &KEY, a, T0), Counted::Counted(1));
        host.conflict_next_writes(MAX_CAS_ROUNDS);
        assert_eq!(count_failure(&host, &s, &KEY, a, T0), Counted::Contended);
        assert_eq!(count_failure(&host, &s, &KEY, a, T0), Counted::Counted(2));
    }

    /// Addresses that fall into the slot of `target`.
    fn slot_mates(s: &ThreatSettings, target: IpAddr, n: usize) -> Vec<IpAddr> {
        let slot = slot_of(&KEY, &address_bytes(target), s.slots);
        (1u32..)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .filter(|a| *a != target && slot_of(&KEY, &address_bytes(*a), s.slots) == slot)
            .take(n)
            .collect()
    }

    #[test]
    fn a_full_slot_evicts_the_fewest_failures_and_never_a_block() {
        let host = FakeHost::at(T0);
        let s = settings(3);
        create_slots(&host, &s);
        let attacker = ip("198.51.100.66");
        count_failure(&host, &s, &KEY, attacker, T0);
        count_failure(&host, &s, &KEY, attacker, T0);
        // Fill the slot with addresses of one failure each: each newcomer evicts one of
        // them, never the attacker's two.
        for mate in slot_mates(&s, attacker, WAYS * 3) {
            assert_eq!(
                count_failure(&host, &s, &KEY, mate, T0),
                Counted::Counted(1)
            );
        }
        assert!(matches!(
            count_failure(&host, &s, &KEY, attacker, T0),
            Counted::Blocked(_)
        ));
        // A slot whose every address is blocked counts no newcomer.
        let target = ip("198.51.100.99");
        let mates = slot_mates(&s, target, WAYS);
        for mate in &mates {
            for _ in 0..3 {
                count_failure(&host, &s, &KEY, *mate, T0);
            }
        }
        assert_eq!(
            count_failure(&host, &s, &KEY, target, T0),
            Counted::TableFull
        );
        // When the blocks end, their entries give way again.
        assert_eq!(
            count_failure(&host, &s, &KEY, target, T0 + 300_001),
            Counted::Counted(1)
        );
    }

    #[test]
    fn the_block_list_is_bounded_and_shared() {
        let host = FakeHost::at(T0);
        let s = settings(3);
        for i in 0..6u64 {
            let a = ip(&format!("192.0.2.{i}"));
            assert!(add_block(&host, &s, a, T0 + 1_000 * (i + 1), T0));
        }
        let mut view = BlockView::default();
        view.refresh(&host, T0);
        // Four kept: the two that end first gave way.
        assert_eq!(view.len(), 4);
        assert_eq!(view.blocked_until(ip("192.0.2.0"), T0), None);
        assert_eq!(view.blocked_until(ip("192.0.2.5"), T0), Some(T0 + 6_000));
        // Blocks end by themselves.
        view.refresh(&host, T0 + 4_500);
        assert_eq!(view.len(), 2);
        view.refresh(&host, T0 + 10_000);
        assert!(view.is_empty());
        host.conflict_next_writes(MAX_CAS_ROUNDS);
        assert!(!add_block(&host, &s, ip("192.0.2.9"), T0 + 20_000, T0));
    }

    #[test]
    fn operator_blocks_cover_networks_and_end() {
        let host = FakeHost::at(T0);
        let s = settings(3);
        let blocks = [OperatorBlock {
            cidr: "203.0.113.0/24".into(),
            until: T0 / 1000 + 60,
        }];
        share_operator_blocks(&host, &s, &blocks);
        let mut view = BlockView::default();
        view.refresh(&host, T0);
        assert_eq!(
            view.blocked_until(ip("203.0.113.77"), T0),
            Some(T0 + 60_000)
        );
        assert_eq!(
            view.blocked_until(ip("::ffff:203.0.113.1"), T0),
            Some(T0 + 60_000)
        );
        assert_eq!(view.blocked_until(ip("203.0.114.1"), T0), None);
        // Removed by the operator: the next share empties it.
        share_operator_blocks(&host, &s, &[]);
        view.refresh(&host, T0);
        assert!(view.is_empty());
        share_operator_blocks(&host, &s, &blocks);
        view.refresh(&host, T0 + 60_000);
        assert!(view.is_empty(), "expired by itself");
    }

    #[test]
    fn what_counts_as_a_failure() {
        assert!(counts_as_failure(&DenyReason::UnknownKey));
        assert!(counts_as_failure(&DenyReason::ForgedKey));
        assert!(counts_as_failure(&DenyReason::MalformedKey));
        assert!(counts_as_failure(&DenyReason::DigestMismatch));
        assert!(counts_as_failure(&DenyReason::InvalidToken(
            JwtError::BadSignature
        )));
        assert!(!counts_as_failure(&DenyReason::InvalidToken(
            JwtError::Expired
        )));
        assert!(!counts_as_failure(&DenyReason::MissingCredential));
        assert!(!counts_as_failure(&DenyReason::Revoked));
        assert!(!counts_as_failure(&DenyReason::RateLimited {
            retry_after_s: 1
        }));
    }

    mod through_the_worker {
        use super::*;
        use crate::host::fake::Effect;
        use crate::machine::test_support::{start_with, NOW_MS};
        use crate::machine::worker;
        use serde_json::json;

        fn status_of(host: &FakeHost) -> Option<(u32, Option<String>)> {
            host.take_effects().into_iter().find_map(|e| match e {
                Effect::LocalReply {
                    status, headers, ..
                } => Some((
                    status,
                    headers
                        .iter()
                        .find(|(n, _)| n == "retry-after")
                        .map(|(_, v)| v.clone()),
                )),
                _ => None,
            })
        }

        fn spray(host: &FakeHost, shared: &Shared, context_id: u32, forwarded_for: &str) -> bool {
            let headers: [(&str, &[u8]); 4] = [
                (":method", b"GET"),
                (":path", b"/v1/hello"),
                ("x-api-key", b"kg_live_notakeyatall"),
                ("x-forwarded-for", forwarded_for.as_bytes()),
            ];
            let went_on = worker::on_request_headers(host, shared, context_id, &headers);
            worker::on_log(shared, context_id);
            went_on
        }

        /// A worker that blocks an address tells the others on their queues: they refuse it
        /// at once, with no tick.
        #[test]
        fn a_block_reaches_the_other_workers_on_their_queues() {
            let config = json!({
                "routes": [{"prefix": "/", "scopes": ["a"]}],
                "client_address": {"trusted_hops": 1},
                "threat": {"enabled": true, "threshold": 3, "block_seconds": 30},
            });
            let host = FakeHost::at(NOW_MS);
            host.set_property(&["source", "address"], b"10.0.0.1:5000");
            let shared = start_with(&host, &config);
            let other_host = host.worker();
            other_host.set_property(&["source", "address"], b"10.0.0.1:5000");
            let other = start_with(&other_host, &config);
            for i in 0..3 {
                assert!(!spray(&host, &shared, 10 + i, "198.51.100.7"));
            }
            assert_eq!(host.counted(Event::ThreatBlocked), 1);
            assert_eq!(other_host.queued("keygate.feed.w2"), Some(1));
            other_host.take_effects();
            let queue = other_host.register_queue("keygate.feed.w2").unwrap();
            worker::on_queue_ready(&other_host, &other, queue);
            assert!(!spray(&other_host, &other, 30, "198.51.100.7"));
            assert_eq!(status_of(&other_host), Some((429, Some("30".into()))));
        }

        #[test]
        fn a_spraying_address_is_blocked_and_another_is_not() {
            let host = FakeHost::at(NOW_MS);
            host.set_property(&["source", "address"], b"10.0.0.1:5000");
            let shared = start_with(
                &host,
                &json!({
                    "routes": [{"prefix": "/", "scopes": ["a"]}],
                    "client_address": {"trusted_hops": 1},
                    "threat": {"enabled": true, "threshold": 3, "block_seconds": 30},
                }),
            );
            host.take_effects();
            for i in 0..3 {
                assert!(!spray(&host, &shared, 10 + i, "198.51.100.7"));
                assert_eq!(host.counted(Event::ThreatBlocked), u64::from(i == 2));
                assert_eq!(status_of(&host), Some((401, None)));
            }
            // Refused before its credential is read: 429 with the block's remaining time.
            assert!(!spray(&host, &shared, 20, "198.51.100.7"));
            assert_eq!(host.counted(Event::ThreatRefused), 1);
            assert_eq!(status_of(&host), Some((429, Some("30".into()))));
            // Another address is still answered on its own merits.
            assert!(!spray(&host, &shared, 21, "198.51.100.8"));
            assert_eq!(status_of(&host), Some((401, None)));
            // A second worker learns the block on its tick.
            let other_host = host.worker();
            let other = start_with(
                &other_host,
                &json!({
                    "routes": [{"prefix": "/", "scopes": ["a"]}],
                    "client_address": {"trusted_hops": 1},
                    "threat": {"enabled": true, "threshold": 3, "block_seconds": 30},
                }),
            );
            worker::on_tick(&other_host, &other);
            other_host.take_effects();
            assert!(!spray(&other_host, &other, 30, "198.51.100.7"));
            assert_eq!(status_of(&other_host), Some((429, Some("30".into()))));
            // The cool-down ends by itself.
            host.advance(30_000);
            worker::on_tick(&host, &shared);
            host.take_effects();
            assert!(!spray(&host, &shared, 22, "198.51.100.7"));
            assert_eq!(status_of(&host), Some((401, None)));
            // The block is reported once, with the feed's next request.
            let mut threat = shared.threat.borrow_mut();
            let reported = unreported(&host, &mut threat, NOW_MS).unwrap();
            let reports: Vec<BlockReport> = serde_json::from_str(&reported).unwrap();
            assert_eq!(reports.len(), 1);
            assert_eq!(reports[0].address, "198.51.100.7");
            assert_eq!(reports[0].until, NOW_MS / 1000 + 30);
            assert_eq!(unreported(&host, &mut threat, NOW_MS), None);
        }

        #[test]
        fn off_counts_nothing_and_shadow_mode_only_tells() {
            let host = FakeHost::at(NOW_MS);
            host.set_property(&["source", "address"], b"198.51.100.7:5000");
            let shared = start_with(
                &host,
                &json!({"routes": [{"prefix": "/", "scopes": ["a"]}]}),
            );
            for i in 0..60 {
                spray(&host, &shared, i, "");
            }
            assert_eq!(host.counted(Event::ThreatBlocked), 0);
            assert!(host.shared(AUTO_KEY).is_none());

            let host = FakeHost::at(NOW_MS);
            host.set_property(&["source", "address"], b"198.51.100.7:5000");
            let shared = start_with(
                &host,
                &json!({
                    "routes": [{"prefix": "/", "scopes": ["a"]}],
                    "mode": "shadow",
                    "threat": {"enabled": true, "threshold": 2},
                }),
            );
            spray(&host, &shared, 1, "");
            spray(&host, &shared, 2, "");
            assert_eq!(host.counted(Event::ThreatBlocked), 1);
            assert!(host.logged(LogLevel::Warn)[0].contains("blocked 198.51.100.7"));
            host.take_effects();
            assert!(spray(&host, &shared, 3, ""), "shadow mode lets it on");
            assert!(host
                .take_effects()
                .contains(&Effect::CountDenial(true, "blocked", 1)));
        }

        /// A feed request sent: its token, path and headers.
        type FeedDispatch = (u32, String, Vec<(String, String)>);

        fn feed_dispatch(host: &FakeHost) -> Option<FeedDispatch> {
            host.dispatched().into_iter().rev().find_map(|e| match e {
                Effect::Dispatch { token, headers, .. } => {
                    let path = headers.iter().find(|(n, _)| n == ":path")?.1.clone();
                    path.starts_with("/v1/revocations")
                        .then(|| (token, path, headers.clone()))
                }
                _ => None,
            })
        }

        #[test]
        fn operator_blocks_arrive_with_the_feed_and_automatic_ones_leave_with_it() {
            let host = FakeHost::at(NOW_MS);
            host.set_property(&["source", "address"], b"203.0.113.5:5000");
            let shared = start_with(
                &host,
                &json!({
                    "routes": [{"prefix": "/", "scopes": ["a"]}],
                    "threat": {"enabled": true, "threshold": 2, "block_seconds": 30},
                }),
            );
            // Two failures from 203.0.113.5 block it (automatically).
            spray(&host, &shared, 1, "");
            spray(&host, &shared, 2, "");
            worker::on_tick(&host, &shared);
            let (token, path, headers) = feed_dispatch(&host).unwrap();
            assert!(path.ends_with("&blocks=0"), "{path}");
            let blocked = headers
                .iter()
                .find(|(n, _)| n == BLOCKED_HEADER)
                .map(|(_, v)| v.clone())
                .unwrap();
            assert!(blocked.contains("\"address\":\"203.0.113.5\""), "{blocked}");
            // The answer brings an operator block of 198.51.100.0/24.
            let until = NOW_MS / 1000 + 60;
            let body = format!(
                r#"{{"seq":0,"reset":true,"events":[],"blocks":{{"version":7,"list":[{{"cidr":"198.51.100.0/24","until":{until}}}]}}}}"#
            );
            host.answer(Some(200), Some(body.as_bytes()));
            host.take_effects();
            worker::on_call_response(&host, &shared, token, body.len());
            let (_, path, headers) = feed_dispatch(&host).unwrap();
            assert!(path.ends_with("&blocks=7"), "{path}");
            assert!(
                headers.iter().all(|(n, _)| n != BLOCKED_HEADER),
                "reported once"
            );
            // Every worker takes it on its tick.
            let other_host = host.worker();
            other_host.set_property(&["source", "address"], b"198.51.100.200:5000");
            let other = start_with(
                &other_host,
                &json!({"routes": [{"prefix": "/", "scopes": ["a"]}]}),
            );
            worker::on_tick(&other_host, &other);
            other_host.take_effects();
            assert!(!spray(&other_host, &other, 1, ""));
            assert_eq!(status_of(&other_host), Some((429, Some("60".into()))));
            // It ends by itself.
            other_host.advance(60_000);
            worker::on_tick(&other_host, &other);
            other_host.take_effects();
            assert!(!spray(&other_host, &other, 2, ""));
            assert_eq!(status_of(&other_host), Some((401, None)));
        }

        #[test]
        fn an_automatic_block_an_operator_lifts_ends_at_every_worker_and_counts_anew() {
            let host = FakeHost::at(NOW_MS);
            host.set_property(&["source", "address"], b"203.0.113.5:5000");
            let config = json!({
                "routes": [{"prefix": "/", "scopes": ["a"]}],
                "threat": {"enabled": true, "threshold": 2, "block_seconds": 300},
            });
            let shared = start_with(&host, &config);
            let other_host = host.worker();
            other_host.set_property(&["source", "address"], b"203.0.113.5:5000");
            let other = start_with(&other_host, &config);
            spray(&host, &shared, 1, "");
            spray(&host, &shared, 2, "");
            worker::on_tick(&host, &shared);
            let (token, _, _) = feed_dispatch(&host).unwrap();
            host.take_effects();
            assert!(!spray(&host, &shared, 3, ""));
            assert_eq!(status_of(&host).map(|s| s.0), Some(429));
            // The other worker learns it on its tick.
            worker::on_tick(&other_host, &other);
            other_host.take_effects();
            assert!(!spray(&other_host, &other, 1, ""));
            assert_eq!(status_of(&other_host).map(|s| s.0), Some(429));
            // The operator removed the block: the feed lifts it (its end, in seconds).
            let until = (NOW_MS + 300_000) / 1000;
            let body = format!(
                r#"{{"seq":0,"reset":true,"events":[],"blocks":{{"version":9,"list":[],"lifted":[{{"cidr":"203.0.113.5/32","until":{until}}}]}}}}"#
            );
            host.answer(Some(200), Some(body.as_bytes()));
            host.take_effects();
            worker::on_call_response(&host, &shared, token, body.len());
            host.advance(1_000);
            other_host.advance(1_000);
            worker::on_tick(&host, &shared);
            worker::on_tick(&other_host, &other);
            host.take_effects();
            other_host.take_effects();
            // Both workers refuse it as what it is again (401), and its count starts anew: one
            // failure does not block it, the second does (a new block, which stays).
            assert!(!spray(&other_host, &other, 2, ""));
            assert_eq!(status_of(&other_host).map(|s| s.0), Some(401));
            host.take_effects();
            assert!(!spray(&host, &shared, 4, ""));
            assert_eq!(status_of(&host).map(|s| s.0), Some(401));
            host.take_effects();
            assert!(!spray(&host, &shared, 5, ""));
            assert_eq!(status_of(&host).map(|s| s.0), Some(429));
            worker::on_tick(&host, &shared);
            host.take_effects();
            assert!(!spray(&host, &shared, 6, ""));
            assert_eq!(
                status_of(&host).map(|s| s.0),
                Some(429),
                "a new block is not lifted"
            );
        }
    }
}
