//! Blocked client addresses: an operator's block of an address or network, or an automatic
//! block a filter reported after too many authentication failures from one address.

use std::net::IpAddr;

/// Operator blocks in force at most (they all travel in every feed answer that changes them).
pub const MAX_OPERATOR_BLOCKS: usize = 1000;
/// Blocks listed at most by `GET /api/v1/blocks` (the newest first).
pub const MAX_LISTED_BLOCKS: usize = 5000;
/// The longest block: 30 days.
pub const MAX_BLOCK_SECONDS: u64 = 30 * 86_400;
/// A block's default length when none is given: an hour.
pub const DEFAULT_BLOCK_SECONDS: u64 = 3_600;
/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// Automatic blocks one report may carry at most.
pub const MAX_REPORTED_BLOCKS: usize = 1024;

/// Who made a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockSource {
    Operator,
    Automatic,
}

impl BlockSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Automatic => "automatic",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "operator" => Some(Self::Operator),
            "automatic" => Some(Self::Automatic),
            _ => None,
        }
    }
}

/// One stored block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    pub id: i64,
    /// The normalised network (`203.0.113.0/24`; one address as `/32` or `/128`).
    pub cidr: String,
    pub source: BlockSource,
    pub reason: String,
    /// Operator: the admin key's id; automatic: the gateway that reported it.
    pub created_by: Option<String>,
    /// Automatic: the failures that blocked it.
    pub failures: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// An address or CIDR, normalised: the network's own address (host bits cleared), its prefix
/// always written; an IPv4-mapped IPv6 address as IPv4. `None` when it is not one.
pub fn normalize_cidr(text: &str) -> Option<String> {
    if text.len() > 64 {
        return None;
    }
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().ok()?;
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    let max: u8 = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 3 => {
            p.parse::<u8>().ok().filter(|p| *p <= max)?
        }
        Some(_) => return None,
        None => max,
    };
    let network = match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    Some(format!("{network}/{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks_are_normalised() {
        assert_eq!(
            normalize_cidr("203.0.113.9/24").as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            normalize_cidr("198.51.100.7").as_deref(),
            Some("198.51.100.7/32")
        );
        assert_eq!(
            normalize_cidr("::ffff:192.0.2.1").as_deref(),
            Some("192.0.2.1/32")
        );
        assert_eq!(
            normalize_cidr("2001:db8::1/32").as_deref(),
            Some("2001:db8::/32")
        );
        assert_eq!(normalize_cidr("0.0.0.0/0").as_deref(), Some("0.0.0.0/0"));
        for bad in [
            "",
            "x",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "::1/129",
            "1.2.3.4/ 8",
        ] {
            assert_eq!(normalize_cidr(bad), None, "{bad}");
        }
    }
}
