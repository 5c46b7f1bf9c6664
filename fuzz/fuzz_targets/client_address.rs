//! The client address: the peer Envoy reports and the client-sent `X-Forwarded-For`, and the
//! CIDR allow-lists of key records.
//!
//! Calls `keygate_core::limits::{client_address, address_allowed, Cidr::parse,
//! Cidr::contains}`.
//! Input: one byte (trusted hops in the low two bits), then lines: the peer,
//! `X-Forwarded-For`, and a CIDR.
#![no_main]

use keygate_core::limits::{address_allowed, client_address, Cidr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let hops = u32::from(flags & 3);
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let peer = lines.next();
    let forwarded_for = lines.next();
    let cidr = lines.next().unwrap_or_default();

    let client = client_address(peer, forwarded_for, hops);
    if hops == 0 {
        // Without trusted proxies only the TCP peer counts, whatever the client sends.
        assert_eq!(client, client_address(peer, None, 0));
    } else if let Some(address) = client {
        let listed = forwarded_for
            .unwrap_or_default()
            .split(',')
            .any(|entry| entry.trim().parse().ok() == Some(address));
        assert!(
            listed,
            "{address} is not in X-Forwarded-For {forwarded_for:?}"
        );
    }

    if let Some(network) = Cidr::parse(cidr) {
        if let Some(address) = client {
            let inside = network.contains(address);
            assert_eq!(address_allowed(&[cidr.to_owned()], Some(address)), inside);
        }
    }
    assert!(!address_allowed(&[cidr.to_owned()], None));
});
