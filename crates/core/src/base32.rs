//! Lowercase RFC 4648 base32 without padding: the alphabet of opaque keys.
//!
//! Lowercase letters and the digits 2-7 survive double-click selection, URLs and
//! case-insensitive secret scanners, and every 5 bytes map to exactly 8 characters.

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Number of characters `encode` produces for `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Encodes `bytes` as lowercase unpadded base32.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(bytes.len()));
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

fn value_of(c: u8) -> Option<u32> {
    match c {
        b'a'..=b'z' => Some(u32::from(c - b'a')),
        b'2'..=b'7' => Some(u32::from(c - b'2') + 26),
        _ => None,
    }
}

/// Decodes lowercase unpadded base32 into `out`, which must be exactly as long as the
/// decoded bytes. Returns `None` on any character outside the alphabet, a length that
/// does not match, or non-zero trailing bits (so each byte string has one encoding).
pub fn decode_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != encoded_len(out.len()) {
        return None;
    }
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    let mut written = 0usize;
    for &c in text {
        buffer = ((buffer << 5) | value_of(c)?) & 0xffff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(written)? = (buffer >> bits) as u8;
            written += 1;
        }
    }
    let trailing = buffer & ((1 << bits) - 1);
    (written == out.len() && trailing == 0).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = encode(&bytes);
            assert_eq!(text.len(), encoded_len(len));
            let mut back = vec![0u8; len];
            assert_eq!(decode_into(text.as_bytes(), &mut back), Some(()));
            assert_eq!(back, bytes);
        }
    }

    #[test]
    fn matches_rfc4648_vectors_lowercased() {
        assert_eq!(encode(b"f"), "my");
        assert_eq!(encode(b"fo"), "mzxq");
        assert_eq!(encode(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn rejects_bad_characters_lengths_and_trailing_bits() {
        let mut out = [0u8; 1];
        assert_eq!(decode_into(b"MY", &mut out), None);
        assert_eq!(decode_into(b"m1", &mut out), None);
        assert_eq!(decode_into(b"myy", &mut out), None);
        // "mz" decodes to the same byte as "my" but with a non-zero trailing bit.
        assert_eq!(decode_into(b"mz", &mut out), None);
    }
}
