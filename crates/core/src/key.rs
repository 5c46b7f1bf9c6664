//! The opaque API key format.
//!
//! ```text
//! kg_live_ 4x2mrd5bq7n3k2pa ... (100 lowercase base32 characters in all)
//! \prefix/ \----------------- base32(id ‖ secret ‖ tag ‖ crc32) ------------/
//! ```
//!
//! * `prefix` names the environment (`kg_live_`, `kg_test_`) so secret scanners can match it.
//! * `id` — 10 random bytes; its 16 base32 characters open the body and are the key id.
//! * `secret` — 32 bytes (256 bits) from the OS CSPRNG.
//! * `tag` — the first 16 bytes of HMAC-SHA256 under the gateway key over
//!   `"keygate/opaque/v1" ‖ prefix ‖ id ‖ secret`: the filter refuses forgeries offline.
//! * `crc32` — CRC-32 (IEEE) of `prefix ‖ id ‖ secret ‖ tag`, big-endian: a public checksum
//!   that catches typos and lets scanners confirm a match without any secret.
//!
//! Only [`KeyDigest`] (SHA-256 of the whole key text) is ever stored.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::base32;

/// Bytes of the random key id.
pub const ID_LEN: usize = 10;
/// Bytes of the random secret (256 bits).
pub const SECRET_LEN: usize = 32;
/// Bytes of the truncated HMAC tag.
pub const TAG_LEN: usize = 16;
const CRC_LEN: usize = 4;
const PAYLOAD_LEN: usize = ID_LEN + SECRET_LEN + TAG_LEN + CRC_LEN;
/// Characters in the body after the prefix.
pub const BODY_LEN: usize = base32::encoded_len(PAYLOAD_LEN);
/// Characters in a key id.
pub const ID_TEXT_LEN: usize = base32::encoded_len(ID_LEN);
/// The longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 24;
/// Minimum bytes of a gateway key.
pub const MIN_GATEWAY_KEY_LEN: usize = 32;
const TAG_CONTEXT: &[u8] = b"keygate/opaque/v1";

/// Why a string is not a well-formed opaque key (before any secret is consulted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFormatError {
    #[error("the key does not start with a configured prefix")]
    UnknownPrefix,
    #[error("the key has the wrong length")]
    WrongLength,
    #[error("the key contains characters outside its alphabet")]
    BadEncoding,
    #[error("the key's checksum does not match (mistyped or truncated)")]
    BadChecksum,
}

/// Why a configured value cannot serve as a prefix, key id or gateway key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyConfigError {
    #[error("a key prefix must be 3 to 24 characters of a-z, 0-9 and '_', start with a letter and end with '_'")]
    BadPrefix,
    #[error("a key id is 16 characters of a-z and 2-7")]
    BadKeyId,
    #[error("the gateway key must be hex encoding at least 32 bytes")]
    BadGatewayKey,
}

/// A validated key prefix such as `kg_live_`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(text: &str) -> Result<Self, KeyConfigError> {
        let bytes = text.as_bytes();
        let well_formed = (3..=MAX_PREFIX_LEN).contains(&bytes.len())
            && bytes.first().is_some_and(u8::is_ascii_lowercase)
            && bytes.last() == Some(&b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
        if well_formed {
            Ok(Self(text.to_owned()))
        } else {
            Err(KeyConfigError::BadPrefix)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public identifier embedded in a key: 16 base32 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; ID_TEXT_LEN]);

impl KeyId {
    pub fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        let mut text = [0u8; ID_TEXT_LEN];
        text.copy_from_slice(base32::encode(&bytes).as_bytes());
        Self(text)
    }

    pub fn parse(text: &str) -> Result<Self, KeyConfigError> {
        let mut bytes = [0u8; ID_LEN];
        base32::decode_into(text.as_bytes(), &mut bytes).ok_or(KeyConfigError::BadKeyId)?;
        // `decode_into` admits only the canonical spelling (lowercase, its exact length, no
        // stray trailing bits), which is what encoding the bytes would give back: kept as is.
        let text: [u8; ID_TEXT_LEN] = text
            .as_bytes()
            .try_into()
            .map_err(|_| KeyConfigError::BadKeyId)?;
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        // The array only ever holds base32 characters, which are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

/// SHA-256 of a whole key's text: what the store keeps instead of the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    pub fn of(key_text: &[u8]) -> Self {
        Self(Sha256::digest(key_text).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex_decode_into(text, &mut bytes)?;
        Some(Self(bytes))
    }

    /// Constant-time equality: the only way digests are compared.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not a secret, but there is no reason to print it in full.
        write!(f, "KeyDigest({}…)", &self.to_hex()[..8])
    }
}

/// The HMAC key shared by the key service (which tags keys) and the filter (which checks tags).
#[derive(Clone)]
pub struct GatewayKey {
    mac: Hmac<Sha256>,
}

impl GatewayKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyConfigError> {
        if bytes.len() < MIN_GATEWAY_KEY_LEN {
            return Err(KeyConfigError::BadGatewayKey);
        }
        let mac =
            Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| KeyConfigError::BadGatewayKey)?;
        Ok(Self { mac })
    }

    /// Parses hex (surrounding whitespace ignored), at least 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyConfigError> {
        let text = text.trim();
        if text.len() % 2 != 0 || text.len() > 1024 {
            return Err(KeyConfigError::BadGatewayKey);
        }
        let mut bytes = vec![0u8; text.len() / 2];
        hex_decode_into(text, &mut bytes).ok_or(KeyConfigError::BadGatewayKey)?;
        Self::from_bytes(&bytes)
    }

    /// HMAC-SHA256 under the gateway key of `parts`, in order: for secrets derived from it
    /// (request-signature secrets, see `crate::signature::derive_hmac_secret`).
    pub fn derive(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A 16-byte key for `context`, derived from this key (HMAC): the same in every worker
    /// and every Envoy sharing the gateway key, unknown to clients.
    pub fn derive_16(&self, context: &[u8]) -> [u8; 16] {
        let full = self.derive(&[context]);
        let mut key = [0u8; 16];
        key.copy_from_slice(&full[..16]);
        key
    }

    fn tag(&self, prefix: &[u8], id: &[u8], secret: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(TAG_CONTEXT);
        mac.update(prefix);
        mac.update(id);
        mac.update(secret);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

impl fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GatewayKey(<redacted>)")
    }
}

/// A key freshly minted by the key service: the plaintext is shown once, then dropped.
pub struct MintedKey {
    pub id: KeyId,
    pub plaintext: String,
    pub digest: KeyDigest,
}

impl fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Builds a key from caller-supplied randomness (the core does no I/O; the key service
/// passes bytes from the OS CSPRNG).
pub fn mint_opaque_key(
    prefix: &KeyPrefix,
    gateway_key: &GatewayKey,
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
) -> MintedKey {
    let tag = gateway_key.tag(prefix.0.as_bytes(), &id, &secret);
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..ID_LEN].copy_from_slice(&id);
    payload[ID_LEN..ID_LEN + SECRET_LEN].copy_from_slice(&secret);
    payload[ID_LEN + SECRET_LEN..PAYLOAD_LEN - CRC_LEN].copy_from_slice(&tag);
    let crc = checksum(prefix.0.as_bytes(), &payload[..PAYLOAD_LEN - CRC_LEN]);
    payload[PAYLOAD_LEN - CRC_LEN..].copy_from_slice(&crc.to_be_bytes());
    let plaintext = format!("{}{}", prefix.0, base32::encode(&payload));
    MintedKey {
        id: KeyId::from_bytes(id),
        digest: KeyDigest::of(plaintext.as_bytes()),
        plaintext,
    }
}

fn checksum(prefix: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    hasher.update(body);
    hasher.finalize()
}

/// A key whose shape and checksum are right; its tag is not yet checked.
pub struct ParsedKey<'a> {
    text: &'a str,
    prefix_len: usize,
    payload: [u8; PAYLOAD_LEN],
}

impl ParsedKey<'_> {
    pub fn id(&self) -> KeyId {
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&self.payload[..ID_LEN]);
        KeyId::from_bytes(id)
    }

    pub fn prefix(&self) -> &str {
        &self.text[..self.prefix_len]
    }

    /// Checks the HMAC tag in constant time: false means the key was not minted under
    /// this gateway key (forged, or from another deployment).
    pub fn tag_is_authentic(&self, gateway_key: &GatewayKey) -> bool {
        let id = &self.payload[..ID_LEN];
        let secret = &self.payload[ID_LEN..ID_LEN + SECRET_LEN];
        let presented = &self.payload[ID_LEN + SECRET_LEN..PAYLOAD_LEN - CRC_LEN];
        let expected = gateway_key.tag(self.prefix().as_bytes(), id, secret);
        expected.ct_eq(presented).into()
    }

    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(self.text.as_bytes())
    }
}

/// Parses a presented credential: a known prefix, the exact length, the alphabet, the checksum.
pub fn parse_opaque_key<'a, P: AsRef<str>>(
    text: &'a str,
    prefixes: &[P],
) -> Result<ParsedKey<'a>, KeyFormatError> {
    let prefix_len = prefixes
        .iter()
        .map(AsRef::as_ref)
        .find(|p| text.starts_with(*p))
        .map(str::len)
        .ok_or(KeyFormatError::UnknownPrefix)?;
    let body = &text.as_bytes()[prefix_len..];
    if body.len() != BODY_LEN {
        return Err(KeyFormatError::WrongLength);
    }
    let mut payload = [0u8; PAYLOAD_LEN];
    base32::decode_into(body, &mut payload).ok_or(KeyFormatError::BadEncoding)?;
    let (signed, crc) = payload.split_at(PAYLOAD_LEN - CRC_LEN);
    let expected = checksum(&text.as_bytes()[..prefix_len], signed);
    if crc != expected.to_be_bytes() {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(ParsedKey {
        text,
        prefix_len,
        payload,
    })
}

/// The key id a well-shaped key names, read without checking its checksum or tag: only to
/// find a record already cached, whose digest then proves (or refutes) the whole key.
pub fn key_id_of<P: AsRef<str>>(text: &str, prefixes: &[P]) -> Option<KeyId> {
    let prefix_len = prefixes
        .iter()
        .map(AsRef::as_ref)
        .find(|p| text.starts_with(*p))?
        .len();
    let body = text.get(prefix_len..)?;
    if body.len() != BODY_LEN {
        return None;
    }
    KeyId::parse(body.get(..ID_TEXT_LEN)?).ok()
}

/// True when `text` has the shape of an opaque key for one of `prefixes` (the classifier's
/// cheap test: prefix only). Anything else is treated as another kind of credential.
pub fn looks_like_opaque_key<P: AsRef<str>>(text: &str, prefixes: &[P]) -> bool {
    prefixes.iter().any(|p| text.starts_with(p.as_ref()))
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out
}

pub(crate) fn hex_decode_into(text: &str, out: &mut [u8]) -> Option<()> {
    let text = text.as_bytes();
    if text.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> GatewayKey {
        GatewayKey::from_bytes(&[7u8; 32]).unwrap()
    }

    fn prefix() -> KeyPrefix {
        KeyPrefix::parse("kg_test_").unwrap()
    }

    fn minted() -> MintedKey {
        mint_opaque_key(&prefix(), &gateway(), [1; ID_LEN], [2; SECRET_LEN])
    }

    #[test]
    fn minted_key_has_documented_shape() {
        let key = minted();
        assert!(key.plaintext.starts_with("kg_test_"));
        assert_eq!(key.plaintext.len(), "kg_test_".len() + BODY_LEN);
        assert_eq!(BODY_LEN, 100);
        assert!(key.plaintext["kg_test_".len()..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(&key.plaintext[8..8 + ID_TEXT_LEN], key.id.as_str());
        assert!(key.digest.ct_eq(&KeyDigest::of(key.plaintext.as_bytes())));
    }

    #[test]
    fn parses_and_authenticates_a_minted_key() {
        let key = minted();
        let parsed = parse_opaque_key(&key.plaintext, &["kg_live_", "kg_test_"]).unwrap();
        assert_eq!(parsed.id(), key.id);
        assert_eq!(parsed.prefix(), "kg_test_");
        assert!(parsed.tag_is_authentic(&gateway()));
        assert!(parsed.digest().ct_eq(&key.digest));
    }

    #[test]
    fn key_id_is_read_cheaply_from_the_text() {
        let key = minted();
        assert_eq!(key_id_of(&key.plaintext, &["kg_test_"]), Some(key.id));
        assert_eq!(key_id_of(&key.plaintext, &["kg_live_"]), None);
        assert_eq!(key_id_of(&key.plaintext[..60], &["kg_test_"]), None);
        assert_eq!(key_id_of("kg_test_", &["kg_test_"]), None);
    }

    #[test]
    fn a_parsed_key_id_is_its_canonical_text() {
        for seed in 0..=255u8 {
            let bytes = [
                seed,
                seed.wrapping_mul(7),
                0,
                255,
                seed ^ 0x5a,
                1,
                2,
                3,
                seed,
                9,
            ];
            let id = KeyId::from_bytes(bytes[..ID_LEN].try_into().unwrap());
            assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
        }
        let id = minted().id;
        assert!(KeyId::parse(&id.as_str().to_ascii_uppercase()).is_err());
        assert!(KeyId::parse(&id.as_str()[1..]).is_err());
        assert!(KeyId::parse(&format!("{}a", id.as_str())).is_err());
    }

    #[test]
    fn another_gateway_key_refuses_the_tag() {
        let key = minted();
        let parsed = parse_opaque_key(&key.plaintext, &["kg_test_"]).unwrap();
        let other = GatewayKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(!parsed.tag_is_authentic(&other));
    }

    #[test]
    fn moving_a_key_to_another_prefix_breaks_it() {
        let key = minted();
        let moved = key.plaintext.replacen("kg_test_", "kg_live_", 1);
        // The checksum covers the prefix, so the typo check catches it first.
        assert_eq!(
            parse_opaque_key(&moved, &["kg_live_"]).err(),
            Some(KeyFormatError::BadChecksum)
        );
    }

    #[test]
    fn every_single_character_typo_is_caught_by_the_checksum() {
        let key = minted();
        let bytes = key.plaintext.as_bytes();
        for i in 8..bytes.len() {
            let mut typo = bytes.to_vec();
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(typo).unwrap();
            let err = parse_opaque_key(&typo, &["kg_test_"]).err();
            assert!(
                matches!(
                    err,
                    Some(KeyFormatError::BadChecksum | KeyFormatError::BadEncoding)
                ),
                "position {i}: {err:?}"
            );
        }
    }

    #[test]
    fn forged_key_with_valid_checksum_fails_only_the_tag() {
        // An attacker can compute the public checksum but not the tag.
        let forged = mint_opaque_key(
            &prefix(),
            &GatewayKey::from_bytes(&[9u8; 32]).unwrap(),
            [1; ID_LEN],
            [3; SECRET_LEN],
        );
        let parsed = parse_opaque_key(&forged.plaintext, &["kg_test_"]).unwrap();
        assert!(!parsed.tag_is_authentic(&gateway()));
    }

    #[test]
    fn rejects_wrong_prefix_length_and_alphabet() {
        let key = minted();
        assert_eq!(
            parse_opaque_key(&key.plaintext, &["kg_live_"]).err(),
            Some(KeyFormatError::UnknownPrefix)
        );
        assert_eq!(
            parse_opaque_key(&key.plaintext[..50], &["kg_test_"]).err(),
            Some(KeyFormatError::WrongLength)
        );
        let upper = format!("kg_test_{}", key.plaintext[8..].to_uppercase());
        assert_eq!(
            parse_opaque_key(&upper, &["kg_test_"]).err(),
            Some(KeyFormatError::BadEncoding)
        );
    }

    #[test]
    fn prefixes_ids_and_gateway_keys_are_validated() {
        assert!(KeyPrefix::parse("kg_live_").is_ok());
        assert!(KeyPrefix::parse("acme_prod_").is_ok());
        for bad in [
            "",
            "kg",
            "kg_live",
            "Kg_live_",
            "1kg_",
            "kg-live_",
            "kg_live_and_much_too_long_",
        ] {
            assert_eq!(
                KeyPrefix::parse(bad),
                Err(KeyConfigError::BadPrefix),
                "{bad}"
            );
        }
        let id = minted().id;
        assert_eq!(KeyId::parse(id.as_str()), Ok(id));
        assert!(KeyId::parse("short").is_err());
        assert!(GatewayKey::from_hex(&"ab".repeat(32)).is_ok());
        assert!(GatewayKey::from_hex(&"ab".repeat(31)).is_err());
        assert!(GatewayKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn digest_hex_round_trips() {
        let digest = minted().digest;
        assert!(KeyDigest::from_hex(&digest.to_hex())
            .unwrap()
            .ct_eq(&digest));
        assert!(KeyDigest::from_hex("00").is_none());
    }
}
