//! Signature checks by the host: Envoy's `verify_signature` foreign function runs BoringSSL,
//! many times faster than verifying ES256 or RS256 inside Wasm. On a host without it the
//! filter falls back to its own Rust verifier (and says so once in the log).

use std::cell::Cell;

use crate::host::{Host, LogLevel};
use crate::jwt::{Algorithm, NativeVerifier};

const FUNCTION: &str = "verify_signature";

/// Whether the host's signature check is used: remembers when the host cannot, so it asks
/// no more.
#[derive(Debug, Default)]
pub struct HostCrypto {
    unavailable: Cell<bool>,
}

impl HostCrypto {
    /// The verifier that asks `host`.
    pub fn verifier<'a, H: Host>(&'a self, host: &'a H) -> HostVerifier<'a, H> {
        HostVerifier {
            host,
            unavailable: &self.unavailable,
        }
    }
}

/// Asks the host (Envoy's `verify_signature`).
pub struct HostVerifier<'a, H> {
    host: &'a H,
    unavailable: &'a Cell<bool>,
}

impl<H: Host> NativeVerifier for HostVerifier<'_, H> {
    fn verify(
        &self,
        _: Algorithm,
        spki_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        if self.unavailable.get() {
            return None;
        }
        let arguments = encode_arguments(spki_der, message, signature);
        match self.host.call_foreign_function(FUNCTION, &arguments) {
            Ok(answer) => Some(decode_result(&answer)),
            Err(err) => {
                self.unavailable.set(true);
                self.host.log(
                    LogLevel::Warn,
                    &format!("host signature verification unavailable ({err:?}); verifying JWT signatures in Wasm"),
                );
                None
            }
        }
    }
}

/// `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2;
/// bytes signature = 3; bytes text = 4; }` in protobuf wire format.
fn encode_arguments(spki_der: &[u8], message: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(spki_der.len() + message.len() + signature.len() + 24);
    for (field, bytes) in [
        (1u8, b"sha256".as_slice()),
        (2, spki_der),
        (3, signature),
        (4, message),
    ] {
        out.push(field << 3 | 2);
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `VerifySignatureResult { bool result = 1; string error = 2; }`: true only when field 1
/// is present and non-zero; anything unreadable is a failed verification.
fn decode_result(bytes: &[u8]) -> bool {
    let mut at = 0;
    let mut result = false;
    while at < bytes.len() {
        let Some((tag, next)) = get_varint(bytes, at) else {
            return false;
        };
        at = next;
        match (tag >> 3, tag & 7) {
            (1, 0) => {
                let Some((value, next)) = get_varint(bytes, at) else {
                    return false;
                };
                result = value != 0;
                at = next;
            }
            (_, 2) => {
                let Some((len, next)) = get_varint(bytes, at) else {
                    return false;
                };
                let Some(end) = usize::try_from(len)
                    .ok()
                    .and_then(|len| next.checked_add(len))
                else {
                    return false;
                };
                if end > bytes.len() {
                    return false;
                }
                at = end;
            }
            (_, 0) => match get_varint(bytes, at) {
                Some((_, next)) => at = next,
                None => return false,
            },
            _ => return false,
        }
    }
    result
}

fn get_varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Effect, FakeHost};

    #[test]
    fn asks_the_host_until_it_cannot() {
        let host = FakeHost::at(0);
        let crypto = HostCrypto::default();
        host.answer_foreign(Ok(vec![0x08, 1]));
        let verifier = crypto.verifier(&host);
        assert_eq!(
            verifier.verify(Algorithm::ES256, b"k", b"m", b"s"),
            Some(true)
        );
        host.answer_foreign(Err(crate::host::HostError::Refused("NotFound")));
        assert_eq!(verifier.verify(Algorithm::ES256, b"k", b"m", b"s"), None);
        assert_eq!(verifier.verify(Algorithm::ES256, b"k", b"m", b"s"), None);
        let asked = host
            .take_effects()
            .iter()
            .filter(|e| matches!(e, Effect::ForeignFunction(_)))
            .count();
        assert_eq!(asked, 2, "not asked again once unavailable");
    }

    #[test]
    fn encodes_the_arguments_message() {
        let encoded = encode_arguments(&[1, 2], b"msg", &[9; 200]);
        assert_eq!(
            &encoded[..8],
            &[0x0a, 6, b's', b'h', b'a', b'2', b'5', b'6']
        );
        assert_eq!(&encoded[8..12], &[0x12, 2, 1, 2]);
        // A 200-byte field takes a two-byte length.
        assert_eq!(&encoded[12..15], &[0x1a, 0xc8, 0x01]);
        assert_eq!(&encoded[encoded.len() - 5..], &[0x22, 3, b'm', b's', b'g']);
    }

    #[test]
    fn reads_the_result_message() {
        assert!(decode_result(&[0x08, 1]));
        assert!(decode_result(&[0x08, 1, 0x12, 0]));
        assert!(!decode_result(&[0x08, 0, 0x12, 3, b'b', b'a', b'd']));
        assert!(!decode_result(&[]), "proto3 default is false");
        assert!(!decode_result(&[0x12, 9, b'x']), "truncated");
        assert!(!decode_result(&[0x08]), "truncated varint");
        assert!(!decode_result(&[0x0d, 0, 0, 0, 0]), "unexpected wire type");
    }
}
