//! Verifying tokens: the filter's hot path. One allocation for the decoded header and claims
//! (reused), the signature on the stack, claims borrowed from the decoded bytes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{is_strict_base64url, Algorithm, JwtError, KeySet, MalformedPart};

/// The most scopes a token may carry (more is [`JwtError::BadClaim`]); also the longest `aud`
/// array read.
pub const MAX_SCOPES: usize = 64;
/// The longest signature read: RSA-4096.
const MAX_SIGNATURE_BYTES: usize = 512;

/// What a token must satisfy besides its signature. Build it once per issuer, at configure
/// time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// Required; `iss` must equal it exactly (no normalisation of case or trailing `/`).
    pub issuer: String,
    /// `aud` (a string or an array of strings) must contain at least one of these. Default
    /// empty, which means **`aud` is not checked**: any token of this issuer is accepted,
    /// including tokens the issuer minted for other services. Set it whenever the issuer
    /// serves more than this API.
    pub audiences: Vec<String>,
    /// The algorithms accepted. Default all of ES256, EdDSA, RS256. The key a token names must
    /// also be pinned to the token's algorithm, so this list only ever narrows what the keys
    /// allow. Empty refuses every token.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Default 60. A large leeway
    /// extends the life of every token, including stolen ones.
    pub leeway_s: u64,
    /// Refuse tokens without `exp`. Default true; false accepts tokens that never expire, so
    /// only revocation can stop a leaked one.
    pub require_exp: bool,
    /// When set, `exp - iat` (or `exp - now` without `iat`) must not exceed it, and `exp` is
    /// required whatever `require_exp` says. Default none: the issuer decides lifetimes.
    pub max_lifetime_s: Option<u64>,
    /// When set, the header `typ` must name this media type (RFC 8725 §3.11), compared
    /// case-insensitively, with or without the `application/` prefix, e.g. `at+jwt`
    /// (RFC 9068). Default none: `typ` is not checked, so tokens of another kind from the
    /// same issuer (ID tokens, say) are accepted too.
    pub typ: Option<String>,
    /// The longest token read, in bytes, checked before any decoding. Default 8192. It also
    /// bounds the decoded claims and the work an attacker can cause.
    pub max_token_bytes: usize,
    /// Claims that routes bind a path parameter to (`claim.<name>`): kept, when they are
    /// strings, in [`VerifiedToken::claims`]. Default none (the claims are not read again).
    pub bound_claims: Vec<String>,
}

impl Validation {
    /// Defaults: all three algorithms, no audience check, 60 s leeway, `exp` required, no
    /// lifetime cap, no `typ` check, 8192 bytes.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: Vec::new(),
            algorithms: Algorithm::ALL.to_vec(),
            leeway_s: 60,
            require_exp: true,
            max_lifetime_s: None,
            typ: None,
            max_token_bytes: 8192,
            bound_claims: Vec::new(),
        }
    }
}

/// What a verified token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`: non-empty, without control characters.
    pub subject: String,
    /// `jti`, for revocation checks.
    pub jti: Option<String>,
    pub issuer: String,
    /// The `kid` of the key that verified it (a cached verdict ends when this key leaves the
    /// issuer's key set).
    pub kid: String,
    /// `exp`, seconds since the epoch (cache the verification until then).
    pub expires_at: Option<u64>,
    pub issued_at: Option<u64>,
    /// From `scope` (space-delimited, RFC 9068), or else `scp` (a space-delimited string or
    /// an array of strings). Each is an RFC 6749 scope-token; at most [`MAX_SCOPES`].
    pub scopes: Vec<String>,
    /// The [`Validation::bound_claims`] the token has as strings (up to 256 bytes each).
    pub claims: std::collections::BTreeMap<String, String>,
}

/// Verifies a compact JWS against `keys` and `validation` at time `now_s` (seconds since the
/// epoch).
///
/// Order: size; three segments of strict base64url; the header (a JSON object, no `crit`);
/// `alg` allowed; `kid` present and known; the key pinned to `alg`; the signature; only then
/// the claims (`exp`, `nbf`, `iat`, lifetime, `iss`, `aud`, `sub`, scopes) and `typ`.
///
/// ES256 signatures are accepted with high or low `s` (both are valid ECDSA): a token's
/// signature is malleable, so never use the signature bytes as an identifier — hash the
/// claims or use `jti`.
pub fn verify_jwt(
    token: &str,
    keys: &KeySet,
    validation: &Validation,
    now_s: u64,
) -> Result<VerifiedToken, JwtError> {
    verify_jwt_with(token, keys, validation, now_s, None)
}

/// Native signature verification offered by the host (Envoy's `verify_signature` foreign
/// function runs BoringSSL): many times faster than verifying inside Wasm.
pub trait NativeVerifier {
    /// Verifies `signature` (DER for ECDSA, raw for RSA) over `message` with the key given
    /// as SubjectPublicKeyInfo DER, hashing with SHA-256. `None`: the host cannot, and the
    /// Rust verifier is used instead.
    fn verify(
        &self,
        algorithm: Algorithm,
        spki_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool>;
}

/// [`verify_jwt`], with the signature checked by `native` where it can (ES256, RS256) and
/// by the Rust verifier otherwise. Every other check is the same.
pub fn verify_jwt_with(
    token: &str,
    keys: &KeySet,
    validation: &Validation,
    now_s: u64,
    native: Option<&dyn NativeVerifier>,
) -> Result<VerifiedToken, JwtError> {
    if token.len() > validation.max_token_bytes {
        return Err(JwtError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(JwtError::Malformed(MalformedPart::SegmentCount));
    };
    if ![header_b64, claims_b64, signature_b64]
        .iter()
        .all(|segment| is_strict_base64url(segment.as_bytes()))
    {
        return Err(JwtError::Malformed(MalformedPart::Base64));
    }

    // One buffer for the decoded header, then the decoded claims.
    let mut buf = Vec::with_capacity(decoded_len(header_b64.len().max(claims_b64.len())));
    decode_into(header_b64, &mut buf)?;
    let header = parse_object::<RawHeader<'_>>(&buf, MalformedPart::HeaderJson)?;
    if header.crit.0 {
        return Err(JwtError::Malformed(MalformedPart::CriticalHeader));
    }
    let alg = match &header.alg {
        Value::Str(name) => Algorithm::parse(name),
        _ => None,
    }
    .filter(|alg| validation.algorithms.contains(alg))
    .ok_or(JwtError::AlgorithmNotAllowed)?;
    let Value::Str(kid) = &header.kid else {
        return Err(JwtError::MissingKeyId);
    };
    let key = keys.get(kid).ok_or(JwtError::UnknownKeyId)?;
    if key.algorithm() != alg {
        return Err(JwtError::AlgorithmMismatch);
    }
    let kid = key.kid().to_owned();
    let typ_ok = match &validation.typ {
        None => true,
        Some(expected) => matches!(&header.typ, Value::Str(typ) if media_type_eq(typ, expected)),
    };
    drop(header);

    let mut signature = [0u8; MAX_SIGNATURE_BYTES + 3];
    if signature_b64.len() > decoded_len_inverse(MAX_SIGNATURE_BYTES) {
        return Err(JwtError::BadSignature);
    }
    let signature_len = URL_SAFE_NO_PAD
        .decode_slice(signature_b64, &mut signature)
        .map_err(|_| JwtError::Malformed(MalformedPart::Base64))?;
    let signing_input = token
        .get(..header_b64.len() + 1 + claims_b64.len())
        .ok_or(JwtError::Malformed(MalformedPart::SegmentCount))?;
    let signature = signature.get(..signature_len).unwrap_or_default();
    let natively = match (native, key.spki_der()) {
        (Some(native), Some(spki)) => {
            verify_natively(native, alg, spki, signing_input.as_bytes(), signature)
        }
        _ => None,
    };
    let valid =
        natively.unwrap_or_else(|| key.public_key().verify(signing_input.as_bytes(), signature));
    if !valid {
        return Err(JwtError::BadSignature);
    }

    buf.clear();
    decode_into(claims_b64, &mut buf)?;
    let claims = parse_object::<RawClaims<'_>>(&buf, MalformedPart::ClaimsJson)?;
    check_claims(&claims, validation, now_s)?;
    if !typ_ok {
        return Err(JwtError::WrongType);
    }
    Ok(VerifiedToken {
        subject: subject(&claims.sub)?,
        jti: optional_string(&claims.jti, "jti")?,
        issuer: validation.issuer.clone(),
        kid,
        expires_at: numeric(&claims.exp, "exp")?,
        issued_at: numeric(&claims.iat, "iat")?,
        scopes: scopes(&claims.scope, &claims.scp)?,
        claims: bound_claims(&buf, &validation.bound_claims),
    })
}

/// The string claims routes bind, read from the verified claims JSON (only when some route
/// binds one). A claim that is absent, not a string or too long is left out: a route binding
/// it denies.
fn bound_claims(json: &[u8], names: &[String]) -> std::collections::BTreeMap<String, String> {
    if names.is_empty() {
        return std::collections::BTreeMap::new();
    }
    let Ok(all) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(json) else {
        return std::collections::BTreeMap::new();
    };
    names
        .iter()
        .filter_map(|name| {
            let value = all.get(name)?.as_str()?;
            (!value.is_empty() && value.len() <= crate::binding::MAX_ATTRIBUTE_VALUE_LEN)
                .then(|| (name.clone(), value.to_owned()))
        })
        .collect()
}

fn verify_natively(
    native: &dyn NativeVerifier,
    alg: Algorithm,
    spki: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Option<bool> {
    match alg {
        Algorithm::ES256 => {
            // JWS carries r ‖ s; the host's ECDSA takes DER.
            let Some(der) = ecdsa_raw_to_der(signature) else {
                return Some(false);
            };
            native.verify(alg, spki, message, &der)
        }
        Algorithm::RS256 => native.verify(alg, spki, message, signature),
        Algorithm::EdDSA => None,
    }
}

/// A P-256 JWS signature (32-byte r ‖ 32-byte s) as a DER `ECDSA-Sig-Value`.
pub(super) fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let integer = |bytes: &[u8]| -> Vec<u8> {
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        let trimmed = &bytes[start..];
        let pad = trimmed[0] & 0x80 != 0;
        let mut out = vec![0x02, (trimmed.len() + usize::from(pad)) as u8];
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
        out
    };
    let r = integer(&raw[..32]);
    let s = integer(&raw[32..]);
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend(r);
    der.extend(s);
    Some(der)
}

fn check_claims(
    claims: &RawClaims<'_>,
    validation: &Validation,
    now_s: u64,
) -> Result<(), JwtError> {
    let leeway = validation.leeway_s;
    let exp = numeric(&claims.exp, "exp")?;
    let nbf = numeric(&claims.nbf, "nbf")?;
    let iat = numeric(&claims.iat, "iat")?;
    match exp {
        Some(exp) if now_s >= exp.saturating_add(leeway) => return Err(JwtError::Expired),
        None if validation.require_exp || validation.max_lifetime_s.is_some() => {
            return Err(JwtError::MissingExpiry)
        }
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now_s.saturating_add(leeway)) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now_s.saturating_add(leeway)) {
        return Err(JwtError::IssuedInFuture);
    }
    if let (Some(max), Some(exp)) = (validation.max_lifetime_s, exp) {
        if exp.saturating_sub(iat.unwrap_or(now_s)) > max {
            return Err(JwtError::LifetimeTooLong);
        }
    }
    match &claims.iss {
        Value::Str(iss) if *iss == validation.issuer => {}
        Value::Str(_) | Value::Absent => return Err(JwtError::WrongIssuer),
        _ => return Err(JwtError::BadClaim("iss")),
    }
    if !validation.audiences.is_empty() {
        let wanted = |aud: &str| validation.audiences.iter().any(|a| a == aud);
        let ok = match &claims.aud {
            Value::Str(aud) => wanted(aud),
            Value::List(auds) => auds.iter().any(|aud| wanted(aud)),
            Value::Absent => false,
            _ => return Err(JwtError::BadClaim("aud")),
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok(())
}

fn numeric(value: &Value<'_>, name: &'static str) -> Result<Option<u64>, JwtError> {
    match value {
        Value::Absent => Ok(None),
        Value::Int(n) => Ok(Some(*n)),
        _ => Err(JwtError::BadClaim(name)),
    }
}

fn optional_string(value: &Value<'_>, name: &'static str) -> Result<Option<String>, JwtError> {
    match value {
        Value::Absent => Ok(None),
        Value::Str(text) => Ok(Some(text.to_string())),
        _ => Err(JwtError::BadClaim(name)),
    }
}

/// `sub` is forwarded upstream in a header: it must be non-empty and free of control
/// characters.
fn subject(value: &Value<'_>) -> Result<String, JwtError> {
    match value {
        Value::Str(sub) if sub.is_empty() => Err(JwtError::MissingSubject),
        Value::Str(sub) if sub.chars().any(char::is_control) => Err(JwtError::BadClaim("sub")),
        Value::Str(sub) => Ok(sub.to_string()),
        Value::Absent => Err(JwtError::MissingSubject),
        _ => Err(JwtError::BadClaim("sub")),
    }
}

fn scopes(scope: &Value<'_>, scp: &Value<'_>) -> Result<Vec<String>, JwtError> {
    match (scope, scp) {
        (Value::Str(text), _) => split_scopes(text, "scope"),
        (Value::Absent, Value::Str(text)) => split_scopes(text, "scp"),
        (Value::Absent, Value::List(items)) => {
            if items.len() > MAX_SCOPES || !items.iter().all(|s| is_scope_token(s)) {
                return Err(JwtError::BadClaim("scp"));
            }
            Ok(items.iter().map(|s| s.to_string()).collect())
        }
        (Value::Absent, Value::Absent) => Ok(Vec::new()),
        (Value::Absent, _) => Err(JwtError::BadClaim("scp")),
        _ => Err(JwtError::BadClaim("scope")),
    }
}

fn split_scopes(text: &str, name: &'static str) -> Result<Vec<String>, JwtError> {
    let mut scopes = Vec::new();
    for scope in text.split(' ').filter(|s| !s.is_empty()) {
        if scopes.len() == MAX_SCOPES || !is_scope_token(scope) {
            return Err(JwtError::BadClaim(name));
        }
        scopes.push(scope.to_owned());
    }
    Ok(scopes)
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// `typ` comparison per RFC 7515 §4.1.9 / RFC 8725 §3.11.
fn media_type_eq(typ: &str, expected: &str) -> bool {
    fn short(media_type: &str) -> &str {
        const PREFIX: &str = "application/";
        let has_prefix = media_type
            .as_bytes()
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX.as_bytes()));
        match media_type.get(PREFIX.len()..) {
            Some(rest) if has_prefix && !rest.contains('/') => rest,
            _ => media_type,
        }
    }
    short(typ).eq_ignore_ascii_case(short(expected))
}

fn decoded_len(encoded: usize) -> usize {
    encoded / 4 * 3 + 3
}

/// The longest unpadded base64 text of `bytes` bytes.
fn decoded_len_inverse(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

fn decode_into(segment: &str, buf: &mut Vec<u8>) -> Result<(), JwtError> {
    URL_SAFE_NO_PAD
        .decode_vec(segment, buf)
        .map_err(|_| JwtError::Malformed(MalformedPart::Base64))
}

/// Parses a JSON object (serde would also read a struct from an array: refuse that first).
fn parse_object<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    part: MalformedPart,
) -> Result<T, JwtError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(JwtError::Malformed(part));
    }
    serde_json::from_slice(bytes).map_err(|_| JwtError::Malformed(part))
}

/// The header members we read. Duplicate members are refused (by serde); others are ignored,
/// including `jku`, `x5u`, `jwk` and `x5c`: a token never chooses its own key.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(default, borrow)]
    alg: Value<'a>,
    #[serde(default, borrow)]
    kid: Value<'a>,
    #[serde(default, borrow)]
    typ: Value<'a>,
    #[serde(default)]
    crit: Present,
}

#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(default, borrow)]
    iss: Value<'a>,
    #[serde(default, borrow)]
    sub: Value<'a>,
    #[serde(default, borrow)]
    aud: Value<'a>,
    #[serde(default, borrow)]
    jti: Value<'a>,
    #[serde(default, borrow)]
    scope: Value<'a>,
    #[serde(default, borrow)]
    scp: Value<'a>,
    #[serde(default)]
    exp: Value<'a>,
    #[serde(default)]
    nbf: Value<'a>,
    #[serde(default)]
    iat: Value<'a>,
}

/// A member's value, classified without failing the parse, so a mistyped claim is reported
/// by name ([`JwtError::BadClaim`]). `null` is [`Value::Other`], not absent.
#[derive(Default)]
enum Value<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    /// A non-negative integer.
    Int(u64),
    /// An array of strings (at most [`MAX_SCOPES`]).
    List(Vec<Cow<'a, str>>),
    /// Anything else: negative or fractional numbers, booleans, null, objects, mixed or long
    /// arrays.
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Value<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor(PhantomData))
    }
}

struct ValueVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ValueVisitor<'a> {
    type Value = Value<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value<'a>, E> {
        Ok(Value::Other)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value<'a>, E> {
        Ok(u64::try_from(v).map_or(Value::Other, Value::Int))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'a>, E> {
        Ok(Value::Int(v))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value<'a>, E> {
        Ok(Value::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'a>, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'a>, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value<'a>, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value<'a>, E> {
        Ok(Value::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value<'a>, E> {
        Ok(Value::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'a>, A::Error> {
        let mut items = Vec::new();
        let mut all_strings = true;
        while let Some(item) = seq.next_element::<Value<'a>>()? {
            match item {
                Value::Str(text) if all_strings && items.len() < MAX_SCOPES => items.push(text),
                _ => all_strings = false,
            }
        }
        Ok(if all_strings {
            Value::List(items)
        } else {
            Value::Other
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Other)
    }
}

/// True when the member is present, whatever its value (even `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Present(true))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jwt::testing::key;
    use crate::jwt::{b64_encode, Jwks};

    const NOW: u64 = 1_700_000_000;

    fn keys() -> KeySet {
        KeySet::from_jwks(&Jwks {
            keys: vec![
                key(Algorithm::ES256).public_jwk("es"),
                key(Algorithm::EdDSA).public_jwk("ed"),
                key(Algorithm::RS256).public_jwk("rs"),
            ],
        })
        .0
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "https://issuer", "sub": "user-1", "exp": NOW + 300, "iat": NOW})
    }

    /// A stand-in for the host: verifies DER signatures against SPKI DER keys, the inputs
    /// Envoy's `verify_signature` takes, and counts its calls.
    struct DerVerifier(std::cell::Cell<u32>);

    impl NativeVerifier for DerVerifier {
        fn verify(
            &self,
            alg: Algorithm,
            spki: &[u8],
            message: &[u8],
            signature: &[u8],
        ) -> Option<bool> {
            use p256::ecdsa::signature::Verifier as _;
            use p256::pkcs8::DecodePublicKey as _;
            self.0.set(self.0.get() + 1);
            Some(match alg {
                Algorithm::ES256 => {
                    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki).ok()?;
                    p256::ecdsa::Signature::from_der(signature)
                        .is_ok_and(|sig| key.verify(message, &sig).is_ok())
                }
                Algorithm::RS256 => {
                    let key = rsa::RsaPublicKey::from_public_key_der(spki).ok()?;
                    let key = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key);
                    rsa::pkcs1v15::Signature::try_from(signature)
                        .is_ok_and(|sig| key.verify(message, &sig).is_ok())
                }
                Algorithm::EdDSA => return None,
            })
        }
    }

    struct Refuses;

    impl NativeVerifier for Refuses {
        fn verify(&self, _: Algorithm, _: &[u8], _: &[u8], _: &[u8]) -> Option<bool> {
            Some(false)
        }
    }

    #[test]
    fn native_verification_takes_spki_and_der_and_falls_back_for_eddsa() {
        let host = DerVerifier(std::cell::Cell::new(0));
        for (alg, kid) in [
            (Algorithm::ES256, "es"),
            (Algorithm::RS256, "rs"),
            (Algorithm::EdDSA, "ed"),
        ] {
            let token = key(alg).sign(kid, "at+jwt", &claims()).unwrap();
            let native: Option<&dyn NativeVerifier> = Some(&host);
            assert!(
                verify_jwt_with(&token, &keys(), &validation(), NOW, native).is_ok(),
                "{alg}"
            );
            let mut tampered = token.into_bytes();
            let last = tampered.len() - 2;
            tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(tampered).unwrap();
            assert_eq!(
                verify_jwt_with(&tampered, &keys(), &validation(), NOW, native).err(),
                Some(JwtError::BadSignature),
                "{alg}"
            );
        }
        // ES256 and RS256 went to the host (twice each); EdDSA fell back to Rust.
        assert_eq!(host.0.get(), 4);
        let token = key(Algorithm::ES256)
            .sign("es", "at+jwt", &claims())
            .unwrap();
        assert_eq!(
            verify_jwt_with(&token, &keys(), &validation(), NOW, Some(&Refuses)).err(),
            Some(JwtError::BadSignature),
            "the host's answer is final"
        );
    }

    #[test]
    fn ecdsa_signatures_convert_to_der() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero in DER
        raw[63] = 1; // s is one byte
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..5], &[0x30, 38, 0x02, 33, 0x00]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert!(ecdsa_raw_to_der(&raw[..63]).is_none());
        let sig = p256::ecdsa::Signature::from_slice(&{
            let mut ok = [7u8; 64];
            ok[0] = 0x7f;
            ok
        })
        .unwrap();
        assert_eq!(
            ecdsa_raw_to_der(&sig.to_bytes()).unwrap(),
            sig.to_der().as_bytes()
        );
    }

    fn validation() -> Validation {
        Validation::new("https://issuer")
    }

    fn with(
        mut claims: serde_json::Value,
        key: &str,
        value: serde_json::Value,
    ) -> serde_json::Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: serde_json::Value, key: &str) -> serde_json::Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    /// Signs arbitrary header and claims text with the EdDSA test key.
    fn forge(header: &str, claims: &str) -> String {
        key(Algorithm::EdDSA)
            .sign_parts(header.as_bytes(), claims.as_bytes())
            .unwrap()
    }

    fn sign(claims: &serde_json::Value) -> String {
        key(Algorithm::EdDSA).sign("ed", "JWT", claims).unwrap()
    }

    fn check(token: &str) -> Result<VerifiedToken, JwtError> {
        verify_jwt(token, &keys(), &validation(), NOW)
    }

    #[test]
    fn accepts_a_good_token_and_reports_its_claims() {
        let token = key(Algorithm::ES256)
            .sign("es", "JWT", &with(claims(), "jti", json!("t-1")))
            .unwrap();
        assert_eq!(
            verify_jwt(&token, &keys(), &validation(), NOW),
            Ok(VerifiedToken {
                subject: "user-1".into(),
                jti: Some("t-1".into()),
                issuer: "https://issuer".into(),
                kid: "es".into(),
                expires_at: Some(NOW + 300),
                issued_at: Some(NOW),
                scopes: vec![],
                claims: Default::default(),
            })
        );
    }

    #[test]
    fn keeps_the_string_claims_routes_bind() {
        let mut validation = validation();
        validation.bound_claims = vec!["org".into(), "n".into(), "long".into(), "none".into()];
        let claims = with(
            with(with(claims(), "org", json!("acme")), "n", json!(7)),
            "long",
            json!("x".repeat(257)),
        );
        let verified = verify_jwt(&sign(&claims), &keys(), &validation, NOW).unwrap();
        assert_eq!(
            verified.claims.into_iter().collect::<Vec<_>>(),
            [("org".to_owned(), "acme".to_owned())]
        );
        // Without bound claims, none are read.
        let verified = verify_jwt(&sign(&claims), &keys(), &self::validation(), NOW).unwrap();
        assert!(verified.claims.is_empty());
    }

    #[test]
    fn size_is_checked_before_anything_else() {
        let mut validation = validation();
        validation.max_token_bytes = 10;
        assert_eq!(
            verify_jwt("not even a token", &keys(), &validation, NOW),
            Err(JwtError::TooLarge)
        );
        let token = sign(&claims());
        validation.max_token_bytes = token.len();
        assert!(verify_jwt(&token, &keys(), &validation, NOW).is_ok());
        validation.max_token_bytes = token.len() - 1;
        assert_eq!(
            verify_jwt(&token, &keys(), &validation, NOW),
            Err(JwtError::TooLarge)
        );
    }

    #[test]
    fn exactly_three_segments() {
        for token in ["a", "a.b", "a.b.c.d", "a.b.c.d.e"] {
            assert_eq!(
                check(token),
                Err(JwtError::Malformed(MalformedPart::SegmentCount)),
                "{token}"
            );
        }
    }

    #[test]
    fn base64url_is_strict_in_every_segment() {
        let token = sign(&claims());
        let (rest, sig) = token.rsplit_once('.').unwrap();
        for bad in [
            format!("{token}="),
            format!(
                "{rest}.{}",
                sig.replacen('-', "+", 1).replacen('_', "/", 1) + "+"
            ),
            token.replacen('.', "=.", 1),
            format!("{rest}.{sig}AAA"), // impossible length
            format!("{rest}.{}", non_canonical(sig)),
        ] {
            assert_eq!(
                check(&bad),
                Err(JwtError::Malformed(MalformedPart::Base64)),
                "{bad}"
            );
        }
    }

    /// The same bytes with the unused low bits of the last character set.
    fn non_canonical(segment: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        assert_eq!(segment.len() % 4, 2, "needs 4 unused bits");
        let (head, last) = segment.split_at(segment.len() - 1);
        let index = ALPHABET
            .iter()
            .position(|c| *c == last.as_bytes()[0])
            .unwrap();
        format!("{head}{}", char::from(ALPHABET[index | 1]))
    }

    #[test]
    fn header_must_be_a_json_object() {
        for header in [
            "[\"EdDSA\",\"ed\"]",
            "\"EdDSA\"",
            "not json",
            "{\"alg\":\"EdDSA\",\"kid\":\"ed\"} x",
        ] {
            let token = forge(header, &claims().to_string());
            assert_eq!(
                check(&token),
                Err(JwtError::Malformed(MalformedPart::HeaderJson)),
                "{header}"
            );
        }
        // Duplicate members are refused rather than resolved.
        let token = forge(
            r#"{"alg":"EdDSA","kid":"ed","alg":"none"}"#,
            &claims().to_string(),
        );
        assert_eq!(
            check(&token),
            Err(JwtError::Malformed(MalformedPart::HeaderJson))
        );
    }

    #[test]
    fn alg_must_parse_and_be_allowed() {
        for alg in ["none", "None", "NONE", "nOnE", "HS256", "eddsa", "ES512"] {
            let header = format!(r#"{{"alg":"{alg}","kid":"ed"}}"#);
            let token = forge(&header, &claims().to_string());
            assert_eq!(check(&token), Err(JwtError::AlgorithmNotAllowed), "{alg}");
        }
        for header in [
            r#"{"kid":"ed"}"#,
            r#"{"alg":7,"kid":"ed"}"#,
            r#"{"alg":null,"kid":"ed"}"#,
        ] {
            let token = forge(header, &claims().to_string());
            assert_eq!(
                check(&token),
                Err(JwtError::AlgorithmNotAllowed),
                "{header}"
            );
        }
        let mut only_es = validation();
        only_es.algorithms = vec![Algorithm::ES256];
        assert_eq!(
            verify_jwt(&sign(&claims()), &keys(), &only_es, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn kid_is_required_and_only_looked_up() {
        let token = forge(r#"{"alg":"EdDSA"}"#, &claims().to_string());
        assert_eq!(check(&token), Err(JwtError::MissingKeyId));
        let token = forge(r#"{"alg":"EdDSA","kid":1}"#, &claims().to_string());
        assert_eq!(check(&token), Err(JwtError::MissingKeyId));
        for kid in ["../../etc/passwd", "' OR 1=1 --", "", "ED", "ed\u{0}"] {
            let token = key(Algorithm::EdDSA).sign(kid, "JWT", &claims()).unwrap();
            assert_eq!(check(&token), Err(JwtError::UnknownKeyId), "{kid:?}");
        }
    }

    #[test]
    fn header_supplied_keys_are_ignored() {
        // The token carries its own key and URLs; only the kid selects, from our set.
        let header = format!(
            r#"{{"alg":"EdDSA","kid":"ed","jku":"https://evil/jwks","x5u":"https://evil/c","jwk":{},"x5c":["MIIB"]}}"#,
            serde_json::to_string(&key(Algorithm::EdDSA).public_jwk("ed")).unwrap()
        );
        // Signed with our key it is fine: the extra members change nothing.
        assert!(check(&forge(&header, &claims().to_string())).is_ok());
    }

    #[test]
    fn crit_is_refused() {
        for crit in [r#"["b64"]"#, "[]", "null"] {
            let header = format!(r#"{{"alg":"EdDSA","kid":"ed","crit":{crit}}}"#);
            let token = forge(&header, &claims().to_string());
            assert_eq!(
                check(&token),
                Err(JwtError::Malformed(MalformedPart::CriticalHeader)),
                "{crit}"
            );
        }
    }

    #[test]
    fn alg_must_match_the_keys_pinned_algorithm() {
        // An EdDSA-signed token naming the ES256 key, with alg ES256 or EdDSA.
        for alg in ["ES256", "EdDSA"] {
            let header = format!(
                r#"{{"alg":"{alg}","kid":"{}"}}"#,
                if alg == "ES256" { "ed" } else { "es" }
            );
            let token = forge(&header, &claims().to_string());
            assert_eq!(check(&token), Err(JwtError::AlgorithmMismatch), "{header}");
        }
    }

    #[test]
    fn signatures_are_checked_per_algorithm() {
        for (alg, kid) in [
            (Algorithm::ES256, "es"),
            (Algorithm::EdDSA, "ed"),
            (Algorithm::RS256, "rs"),
        ] {
            let token = key(alg).sign(kid, "JWT", &claims()).unwrap();
            assert!(check(&token).is_ok(), "{alg}");
            let (rest, sig) = token.rsplit_once('.').unwrap();
            // A flipped bit, a truncated signature, an empty one.
            let mut bytes = crate::jwt::b64_decode(sig.as_bytes()).unwrap();
            bytes[5] ^= 1;
            let truncated = &bytes[..bytes.len() - 1];
            for bad in [
                format!("{rest}.{}", b64_encode(&bytes)),
                format!("{rest}.{}", b64_encode(truncated)),
                format!("{rest}."),
            ] {
                assert_eq!(check(&bad), Err(JwtError::BadSignature), "{alg}");
            }
            // The same payload with another claim set keeps the old signature: refused.
            let tampered = format!(
                "{}.{}.{sig}",
                rest.split('.').next().unwrap(),
                b64_encode(with(claims(), "sub", json!("admin")).to_string().as_bytes())
            );
            assert_eq!(check(&tampered), Err(JwtError::BadSignature), "{alg}");
        }
        // An ES256 signature in DER form is not the JWS form.
        let token = key(Algorithm::ES256).sign("es", "JWT", &claims()).unwrap();
        let (rest, sig) = token.rsplit_once('.').unwrap();
        let raw = crate::jwt::b64_decode(sig.as_bytes()).unwrap();
        let der = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
        let der_token = format!("{rest}.{}", b64_encode(der.as_bytes()));
        assert_eq!(check(&der_token), Err(JwtError::BadSignature));
        // An oversized signature segment is refused before decoding.
        let huge = format!("{rest}.{}", "A".repeat(700));
        assert_eq!(check(&huge), Err(JwtError::BadSignature));
    }

    #[test]
    fn claims_must_be_a_json_object() {
        let header = r#"{"alg":"EdDSA","kid":"ed"}"#;
        for claims in ["[1]", "\"x\"", "", "{\"sub\":\"a\",\"sub\":\"b\"}"] {
            assert_eq!(
                check(&forge(header, claims)),
                Err(JwtError::Malformed(MalformedPart::ClaimsJson)),
                "{claims}"
            );
        }
    }

    #[test]
    fn exp_with_leeway() {
        let token = |exp: u64| sign(&with(claims(), "exp", json!(exp)));
        assert!(check(&token(NOW + 1)).is_ok());
        assert!(check(&token(NOW - 59)).is_ok()); // inside the 60 s leeway
        assert_eq!(check(&token(NOW - 60)), Err(JwtError::Expired));
        assert_eq!(check(&token(0)), Err(JwtError::Expired));
        let mut strict = validation();
        strict.leeway_s = 0;
        assert_eq!(
            verify_jwt(&token(NOW), &keys(), &strict, NOW),
            Err(JwtError::Expired)
        );
        assert!(verify_jwt(&token(u64::MAX), &keys(), &strict, NOW).is_ok());
    }

    #[test]
    fn exp_is_required_by_default() {
        let token = sign(&without(claims(), "exp"));
        assert_eq!(check(&token), Err(JwtError::MissingExpiry));
        let mut lax = validation();
        lax.require_exp = false;
        assert_eq!(
            verify_jwt(&token, &keys(), &lax, NOW).map(|t| t.expires_at),
            Ok(None)
        );
        // A lifetime cap needs an expiry, whatever require_exp says.
        lax.max_lifetime_s = Some(3600);
        assert_eq!(
            verify_jwt(&token, &keys(), &lax, NOW),
            Err(JwtError::MissingExpiry)
        );
    }

    #[test]
    fn nbf_and_iat_in_the_future() {
        assert!(check(&sign(&with(claims(), "nbf", json!(NOW + 60)))).is_ok());
        assert_eq!(
            check(&sign(&with(claims(), "nbf", json!(NOW + 61)))),
            Err(JwtError::NotYetValid)
        );
        assert!(check(&sign(&with(claims(), "iat", json!(NOW + 60)))).is_ok());
        assert_eq!(
            check(&sign(&with(claims(), "iat", json!(NOW + 61)))),
            Err(JwtError::IssuedInFuture)
        );
    }

    #[test]
    fn lifetime_cap() {
        let mut capped = validation();
        capped.max_lifetime_s = Some(300);
        let ok = sign(&claims()); // exp - iat = 300
        assert!(verify_jwt(&ok, &keys(), &capped, NOW).is_ok());
        let long = sign(&with(claims(), "exp", json!(NOW + 301)));
        assert_eq!(
            verify_jwt(&long, &keys(), &capped, NOW),
            Err(JwtError::LifetimeTooLong)
        );
        // A back-dated iat does not hide a long life; without iat, exp - now counts.
        let backdated = sign(&with(claims(), "iat", json!(NOW - 1000)));
        assert_eq!(
            verify_jwt(&backdated, &keys(), &capped, NOW),
            Err(JwtError::LifetimeTooLong)
        );
        let no_iat = sign(&with(without(claims(), "iat"), "exp", json!(NOW + 301)));
        assert_eq!(
            verify_jwt(&no_iat, &keys(), &capped, NOW),
            Err(JwtError::LifetimeTooLong)
        );
    }

    #[test]
    fn numeric_claims_are_non_negative_integers() {
        for name in ["exp", "nbf", "iat"] {
            for bad in [
                json!(-1),
                json!(1.5),
                json!("1700000000"),
                json!(null),
                json!(true),
                json!([1]),
            ] {
                assert_eq!(
                    check(&sign(&with(claims(), name, bad.clone()))),
                    Err(JwtError::BadClaim(name)),
                    "{name}: {bad}"
                );
            }
        }
        // Beyond u64 is a float to serde_json: refused.
        let token = forge(
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            r#"{"iss":"https://issuer","sub":"a","exp":18446744073709551616}"#,
        );
        assert_eq!(check(&token), Err(JwtError::BadClaim("exp")));
    }

    #[test]
    fn issuer_is_exact() {
        for iss in ["https://issuer/", "HTTPS://ISSUER", "https://evil", ""] {
            assert_eq!(
                check(&sign(&with(claims(), "iss", json!(iss)))),
                Err(JwtError::WrongIssuer),
                "{iss}"
            );
        }
        assert_eq!(
            check(&sign(&without(claims(), "iss"))),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(
            check(&sign(&with(claims(), "iss", json!(["https://issuer"])))),
            Err(JwtError::BadClaim("iss"))
        );
    }

    #[test]
    fn audience_string_or_array() {
        let mut v = validation();
        v.audiences = vec!["api".into(), "other-api".into()];
        let run = |claims: serde_json::Value| verify_jwt(&sign(&claims), &keys(), &v, NOW);
        assert!(run(with(claims(), "aud", json!("api"))).is_ok());
        assert!(run(with(claims(), "aud", json!(["x", "other-api"]))).is_ok());
        assert_eq!(
            run(with(claims(), "aud", json!("API"))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            run(with(claims(), "aud", json!(["x"]))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(
            run(with(claims(), "aud", json!([]))),
            Err(JwtError::WrongAudience)
        );
        assert_eq!(run(claims()), Err(JwtError::WrongAudience));
        assert_eq!(
            run(with(claims(), "aud", json!(["api", 1]))),
            Err(JwtError::BadClaim("aud"))
        );
        // Without configured audiences, aud is not checked at all.
        assert!(check(&sign(&with(claims(), "aud", json!("anything")))).is_ok());
    }

    #[test]
    fn subject_is_required() {
        assert_eq!(
            check(&sign(&without(claims(), "sub"))),
            Err(JwtError::MissingSubject)
        );
        assert_eq!(
            check(&sign(&with(claims(), "sub", json!("")))),
            Err(JwtError::MissingSubject)
        );
        assert_eq!(
            check(&sign(&with(claims(), "sub", json!(42)))),
            Err(JwtError::BadClaim("sub"))
        );
        assert_eq!(
            check(&sign(&with(
                claims(),
                "sub",
                json!("a\r\nx-keygate-scopes: admin")
            ))),
            Err(JwtError::BadClaim("sub"))
        );
        // Escaped strings are decoded (and owned) correctly.
        let token = forge(
            r#"{"alg":"EdDSA","kid":"ed"}"#,
            &format!(
                r#"{{"iss":"https://issuer","sub":"caf\u00e9","exp":{}}}"#,
                NOW + 1
            ),
        );
        assert_eq!(check(&token).map(|t| t.subject), Ok("café".to_owned()));
    }

    #[test]
    fn typ_when_required() {
        let mut v = validation();
        v.typ = Some("at+jwt".into());
        let token = |typ: &str| key(Algorithm::EdDSA).sign("ed", typ, &claims()).unwrap();
        for ok in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            assert!(verify_jwt(&token(ok), &keys(), &v, NOW).is_ok(), "{ok}");
        }
        for bad in ["JWT", "jwt", "application/jwt", "x/at+jwt", ""] {
            assert_eq!(
                verify_jwt(&token(bad), &keys(), &v, NOW),
                Err(JwtError::WrongType),
                "{bad}"
            );
        }
        let no_typ = forge(r#"{"alg":"EdDSA","kid":"ed"}"#, &claims().to_string());
        assert_eq!(
            verify_jwt(&no_typ, &keys(), &v, NOW),
            Err(JwtError::WrongType)
        );
        // Not checked by default.
        assert!(check(&token("whatever")).is_ok());
        assert!(media_type_eq("application/at+jwt", "at+jwt"));
        assert!(!media_type_eq("application/", "at+jwt"));
        assert!(!media_type_eq("applicatiön/x", "x"));
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let scopes = |claims: serde_json::Value| check(&sign(&claims)).map(|t| t.scopes);
        assert_eq!(
            scopes(with(claims(), "scope", json!("demo:read  demo:write"))),
            Ok(vec!["demo:read".to_owned(), "demo:write".to_owned()])
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!("a b"))),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!(["a", "b"]))),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        // `scope` wins over `scp`.
        assert_eq!(
            scopes(with(
                with(claims(), "scope", json!("a")),
                "scp",
                json!(["b"])
            )),
            Ok(vec!["a".to_owned()])
        );
        assert_eq!(scopes(claims()), Ok(vec![]));
        assert_eq!(
            scopes(with(claims(), "scope", json!(["a"]))),
            Err(JwtError::BadClaim("scope"))
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!(["a b"]))),
            Err(JwtError::BadClaim("scp"))
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!([1]))),
            Err(JwtError::BadClaim("scp"))
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!({}))),
            Err(JwtError::BadClaim("scp"))
        );
        assert_eq!(
            scopes(with(claims(), "scope", json!("a\"b"))),
            Err(JwtError::BadClaim("scope"))
        );
        assert_eq!(
            scopes(with(claims(), "scope", json!("a\nb"))),
            Err(JwtError::BadClaim("scope"))
        );
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(
            scopes(with(claims(), "scope", json!(many.join(" ")))),
            Err(JwtError::BadClaim("scope"))
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!(many))),
            Err(JwtError::BadClaim("scp"))
        );
        assert_eq!(
            scopes(with(claims(), "scp", json!(many[..MAX_SCOPES]))).map(|s| s.len()),
            Ok(MAX_SCOPES)
        );
    }

    #[test]
    fn jti_must_be_a_string() {
        assert_eq!(
            check(&sign(&with(claims(), "jti", json!(5)))),
            Err(JwtError::BadClaim("jti"))
        );
    }
}
