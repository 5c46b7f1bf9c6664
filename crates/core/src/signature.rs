//! HTTP Message Signatures (RFC 9421) on requests: reading `Signature-Input` and
//! `Signature`, building the signature base, checking its parameters (`created`, `expires`,
//! `keyid`, `alg`, `nonce`) and the signature with the key's own material (Ed25519, ECDSA
//! P-256 with SHA-256, HMAC-SHA256), and `Content-Digest` (RFC 9530) against a body.
//!
//! Pure logic: the nonce store that refuses a replay lives in `machine::nonce`, the route
//! option in `route`. Everything an attacker sends is bounded ([`MAX_FIELD_BYTES`],
//! [`sf::MAX_MEMBERS`], ...) and a bad field is an error, never a panic.

pub mod sf;

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use sha2::{Digest as _, Sha256, Sha512};
use zeroize::Zeroizing;

use crate::jwt::{Algorithm, NativeVerifier};
use sf::{Bare, Item, Member, Params};

/// The longest `Signature-Input`, `Signature` or `Content-Digest` read, in bytes.
pub const MAX_FIELD_BYTES: usize = 8192;
/// The longest `nonce` accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 128;
/// The longest `keyid` accepted, in bytes.
pub const MAX_KEYID_BYTES: usize = 128;
/// The components every signed request covers.
pub const MINIMUM_COMPONENTS: [&str; 4] = ["@method", "@authority", "@path", "@query"];
/// The derived components a request signature may cover.
pub const DERIVED_COMPONENTS: [&str; 7] = [
    "@method",
    "@authority",
    "@scheme",
    "@target-uri",
    "@request-target",
    "@path",
    "@query",
];

/// A signature algorithm of RFC 9421's registry that Keygate verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    Ed25519,
    EcdsaP256Sha256,
    HmacSha256,
}

impl SigningAlgorithm {
    pub const ALL: [SigningAlgorithm; 3] = [Self::Ed25519, Self::EcdsaP256Sha256, Self::HmacSha256];

    /// The registry name, as in the `alg` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::HmacSha256 => "hmac-sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.name() == name)
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The material a key's signatures are verified with.
#[derive(Clone)]
pub enum Material {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256 {
        key: p256::ecdsa::VerifyingKey,
        /// SubjectPublicKeyInfo DER, for the host's native check.
        spki: Box<[u8]>,
    },
    Hmac(Zeroizing<Vec<u8>>),
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Material({})", self.algorithm())
    }
}

/// Why signing material could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaterialError {
    #[error("unknown signature algorithm")]
    UnknownAlgorithm,
    #[error("the public key is not valid for the algorithm")]
    BadPublicKey,
    #[error("an HMAC secret must be 32 to 64 bytes")]
    BadSecret,
}

impl Material {
    pub fn algorithm(&self) -> SigningAlgorithm {
        match self {
            Self::Ed25519(_) => SigningAlgorithm::Ed25519,
            Self::P256 { .. } => SigningAlgorithm::EcdsaP256Sha256,
            Self::Hmac(_) => SigningAlgorithm::HmacSha256,
        }
    }

    /// An Ed25519 public key: its 32 raw bytes.
    pub fn ed25519(raw: &[u8]) -> Result<Self, MaterialError> {
        let bytes = <&[u8; 32]>::try_from(raw).map_err(|_| MaterialError::BadPublicKey)?;
        ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(Self::Ed25519)
            .map_err(|_| MaterialError::BadPublicKey)
    }

    /// A P-256 public key: a SEC1 point (65 bytes uncompressed or 33 compressed).
    pub fn p256(sec1: &[u8]) -> Result<Self, MaterialError> {
        use p256::pkcs8::EncodePublicKey as _;
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
            .map_err(|_| MaterialError::BadPublicKey)?;
        let spki = key
            .to_public_key_der()
            .map_err(|_| MaterialError::BadPublicKey)?
            .into_vec()
            .into_boxed_slice();
        Ok(Self::P256 { key, spki })
    }

    /// An HMAC-SHA256 secret (32 to 64 bytes).
    pub fn hmac(secret: &[u8]) -> Result<Self, MaterialError> {
        if !(32..=64).contains(&secret.len()) {
            return Err(MaterialError::BadSecret);
        }
        Ok(Self::Hmac(Zeroizing::new(secret.to_vec())))
    }

    /// A public key named by its algorithm and given as base64url (unpadded) of its raw
    /// bytes: 32 for Ed25519, a SEC1 point for P-256 (how key records carry it).
    pub fn public(alg: SigningAlgorithm, key_b64url: &str) -> Result<Self, MaterialError> {
        let raw = URL_SAFE_NO_PAD
            .decode(key_b64url.trim_end_matches('='))
            .map_err(|_| MaterialError::BadPublicKey)?;
        match alg {
            SigningAlgorithm::Ed25519 => Self::ed25519(&raw),
            SigningAlgorithm::EcdsaP256Sha256 => Self::p256(&raw),
            SigningAlgorithm::HmacSha256 => Err(MaterialError::UnknownAlgorithm),
        }
    }

    /// Checks `signature` over `base`: Ed25519 strictly, ECDSA (`r ‖ s`, 64 bytes) by the
    /// host where it can, HMAC in constant time.
    pub fn verify(
        &self,
        base: &[u8],
        signature: &[u8],
        native: Option<&dyn NativeVerifier>,
    ) -> bool {
        match self {
            Self::Ed25519(key) => <&[u8; 64]>::try_from(signature).is_ok_and(|bytes| {
                key.verify_strict(base, &ed25519_dalek::Signature::from_bytes(bytes))
                    .is_ok()
            }),
            Self::P256 { key, spki } => {
                let Ok(sig) = p256::ecdsa::Signature::from_slice(signature) else {
                    return false;
                };
                let natively = native.and_then(|native| {
                    let der = sig.to_der();
                    native.verify(Algorithm::ES256, spki, base, der.as_bytes())
                });
                natively.unwrap_or_else(|| key.verify(base, &sig).is_ok())
            }
            Self::Hmac(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(base);
                mac.verify_slice(signature).is_ok()
            }
        }
    }
}

/// The secret a key signs with under `hmac-sha256`: derived from the gateway key (which
/// the filter and the key service both hold), the key id and the material's generation, so
/// neither side stores it; a new generation (new material) gives a new secret.
pub fn derive_hmac_secret(
    gateway: &crate::key::GatewayKey,
    key_id: &str,
    generation: u32,
) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        gateway
            .derive(&[
                b"keygate request signature hmac-sha256 v1\0",
                key_id.as_bytes(),
                &[0],
                &generation.to_be_bytes(),
            ])
            .to_vec(),
    )
}

/// A key's signing material as the filter holds it: read once per record.
#[derive(Clone, Debug)]
pub enum KeySigning {
    Public(Material),
    /// The secret is derived per request ([`derive_hmac_secret`]).
    Hmac {
        generation: u32,
    },
    /// Material the filter cannot use (unknown algorithm, bad key): signed routes refuse it.
    Invalid,
}

impl PartialEq for KeySigning {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Public(a), Self::Public(b)) => match (a, b) {
                (Material::Ed25519(a), Material::Ed25519(b)) => a == b,
                (Material::P256 { spki: a, .. }, Material::P256 { spki: b, .. }) => a == b,
                _ => false,
            },
            (Self::Hmac { generation: a }, Self::Hmac { generation: b }) => a == b,
            (Self::Invalid, Self::Invalid) => true,
            _ => false,
        }
    }
}

impl Eq for KeySigning {}

impl KeySigning {
    pub fn of(wire: &crate::wire::SigningMaterial) -> Self {
        match (SigningAlgorithm::from_name(&wire.alg), &wire.public_key) {
            (Some(SigningAlgorithm::HmacSha256), None) => Self::Hmac {
                generation: wire.generation,
            },
            (Some(alg), Some(key)) if alg != SigningAlgorithm::HmacSha256 => {
                Material::public(alg, key).map_or(Self::Invalid, Self::Public)
            }
            _ => Self::Invalid,
        }
    }

    pub fn algorithm(&self) -> Option<SigningAlgorithm> {
        match self {
            Self::Public(material) => Some(material.algorithm()),
            Self::Hmac { .. } => Some(SigningAlgorithm::HmacSha256),
            Self::Invalid => None,
        }
    }
}

/// Why a request's signature is refused. The `Display` is safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request has no Signature and Signature-Input")]
    Missing,
    #[error("Signature-Input or Signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("no signature is made with this key (keyid)")]
    KeyId,
    #[error("the component {0} is not supported")]
    UnsupportedComponent(String),
    #[error("the signature must cover {0}")]
    NotCovered(String),
    #[error("the covered field {0} is not in the request")]
    FieldAbsent(String),
    #[error("the signature has no created time")]
    NoCreated,
    #[error("the signature is created in the future")]
    CreatedInFuture,
    #[error("the signature is too old")]
    TooOld,
    #[error("the signature has expired")]
    Expired,
    #[error("the signature's alg does not match the key's material")]
    Algorithm,
    #[error("the signature needs a nonce")]
    NoNonce,
    #[error("the signature's nonce was used before")]
    Replayed,
    #[error("the signature does not verify")]
    Invalid,
    #[error("Content-Digest is missing, malformed or has no sha-256 or sha-512")]
    BadDigest,
    #[error("Content-Digest does not match the body")]
    DigestMismatch,
    #[error("the key has no signing material")]
    NoMaterial,
}

/// The filter's `signatures` options: how request signatures are checked on routes that
/// require them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignatureSettings {
    /// The longest a signature is accepted after its `created`, in seconds (default 300).
    /// Also how long its nonce is remembered.
    pub max_age_seconds: u64,
    /// Clock skew tolerated on `created` and `expires`, in seconds (default 30).
    pub clock_skew_seconds: u64,
    /// Refuse signatures without a `nonce` (default true). False accepts replays of a
    /// signed request within its window.
    pub require_nonce: bool,
    /// Nonces remembered at once per Envoy (default 262144): when the store is full, signed
    /// requests with new nonces are refused (503) until entries age out.
    pub max_nonces: usize,
    /// The largest body a signed route buffers to check its `Content-Digest`, in bytes
    /// (default 65536); a larger body is refused with 413.
    pub max_body_bytes: usize,
    /// Read `signature` and `signature_components` from Envoy route metadata too (default
    /// false: two more property reads per request on metadata routes).
    pub route_metadata: bool,
}

impl Default for SignatureSettings {
    fn default() -> Self {
        Self {
            max_age_seconds: 300,
            clock_skew_seconds: 30,
            require_nonce: true,
            max_nonces: 262_144,
            max_body_bytes: 65_536,
            route_metadata: false,
        }
    }
}

impl SignatureSettings {
    /// The first option out of its range: its name, minimum and maximum.
    pub fn out_of_range(&self) -> Option<(&'static str, u64, u64)> {
        [
            (
                "signatures.max_age_seconds",
                self.max_age_seconds,
                1,
                86_400,
            ),
            (
                "signatures.clock_skew_seconds",
                self.clock_skew_seconds,
                0,
                600,
            ),
            (
                "signatures.max_nonces",
                self.max_nonces as u64,
                64,
                1_048_576,
            ),
            (
                "signatures.max_body_bytes",
                self.max_body_bytes as u64,
                0,
                16 * 1024 * 1024,
            ),
        ]
        .into_iter()
        .find(|(_, value, min, max)| !(*min..=*max).contains(value))
        .map(|(name, _, min, max)| (name, min, max))
    }

    /// How the nonces are spread over shared-data slots.
    pub fn nonce_layout(&self) -> crate::machine::nonce::Layout {
        crate::machine::nonce::Layout::for_capacity(self.max_nonces)
    }
}

/// The most components a route may require besides the minimum.
pub const MAX_ROUTE_COMPONENTS: usize = 16;

/// A route's demand for request signatures (`"signature": "required"`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSignature {
    /// Components covered besides [`MINIMUM_COMPONENTS`] (`signature_components`).
    pub extra_components: Vec<String>,
}

impl RouteSignature {
    /// Reads `signature` (`required` or `none`) and `signature_components`; `Ok(None)`: the
    /// route requires no signature.
    pub fn compile(
        signature: Option<&str>,
        components: &[String],
    ) -> Result<Option<Self>, &'static str> {
        match signature {
            Some("required") => {}
            None | Some("none") if components.is_empty() => return Ok(None),
            None | Some("none") => {
                return Err("`signature_components` needs `signature: required`")
            }
            Some(_) => return Err("`signature` must be \"required\" or \"none\""),
        }
        if components.len() > MAX_ROUTE_COMPONENTS {
            return Err("at most 16 `signature_components`");
        }
        let mut extra: Vec<String> = Vec::new();
        for component in components {
            if !is_supported_component(component) {
                return Err("a signature component is a lower-case header name or one of @method @authority @scheme @target-uri @request-target @path @query");
            }
            if !MINIMUM_COMPONENTS.contains(&component.as_str()) && !extra.contains(component) {
                extra.push(component.clone());
            }
        }
        Ok(Some(Self {
            extra_components: extra,
        }))
    }
}

/// What a signature must satisfy besides verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy<'a> {
    /// The longest a signature lives after `created`, in seconds.
    pub max_age_s: u64,
    /// Clock skew tolerated on `created` and `expires`, in seconds.
    pub skew_s: u64,
    /// Refuse signatures without a `nonce`.
    pub require_nonce: bool,
    /// Components covered besides [`MINIMUM_COMPONENTS`] (and `content-digest` with a body).
    pub extra_components: &'a [String],
    /// The request carries a body: `content-digest` must be covered.
    pub has_body: bool,
}

/// The parts of the request a signature base is built from. `headers` are the request's
/// header pairs as Envoy gives them (lowercase names, repeated names as separate pairs).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: &'a str,
    /// `:path`: the path and query as sent.
    pub target: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// A signature that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub label: String,
    pub nonce: Option<String>,
    pub created_s: u64,
    /// When the signature stops being accepted (seconds): the nonce is remembered until then.
    pub until_s: u64,
    /// `content-digest` is covered: the body must match it.
    pub covers_digest: bool,
}

/// Verifies the request's signature made by `key_id` with `material` at `now_s`.
///
/// Order: the fields (size, syntax); the member whose `keyid` is `key_id`; covered
/// components (supported, no duplicates, the required ones); `created`/`expires`; `alg`;
/// `nonce` present if required; only then the signature. The nonce's novelty is the
/// caller's (it needs shared state), as is the body against `Content-Digest`.
pub fn verify_request(
    request: &Request<'_>,
    key_id: &str,
    material: &Material,
    policy: &Policy<'_>,
    now_s: u64,
    native: Option<&dyn NativeVerifier>,
) -> Result<Verified, SignatureError> {
    let input = field(request.headers, "signature-input")?;
    let signature = field(request.headers, "signature")?;
    let (input, signature) = match (input, signature) {
        (Some(input), Some(signature)) => (input, signature),
        _ => return Err(SignatureError::Missing),
    };
    let inputs = sf::parse_dictionary(&input).map_err(|e| SignatureError::Malformed(e.0))?;
    let signatures =
        sf::parse_dictionary(&signature).map_err(|e| SignatureError::Malformed(e.0))?;
    // The first signature made with this key: other members (a proxy's, say) are ignored.
    let mut chosen = None;
    for (label, member) in &inputs {
        let Member::Inner(items, params) = member else {
            return Err(SignatureError::Malformed(
                "a Signature-Input member is not a list",
            ));
        };
        if matches!(param(params, "keyid"), Some(Bare::Str(id)) if id == key_id) {
            chosen = Some((label, items, params));
            break;
        }
    }
    let (label, items, params) = chosen.ok_or(SignatureError::KeyId)?;
    let signature = match signatures.iter().find(|(l, _)| l == label) {
        Some((
            _,
            Member::Item(Item {
                bare: Bare::Bytes(bytes),
                ..
            }),
        )) => bytes,
        Some(_) => return Err(SignatureError::Malformed("a Signature member is not bytes")),
        None => return Err(SignatureError::Malformed("no Signature for the label")),
    };

    let mut components: Vec<&str> = Vec::with_capacity(items.len());
    for item in items {
        let Bare::Str(name) = &item.bare else {
            return Err(SignatureError::Malformed("a component is not a string"));
        };
        if !item.params.is_empty() || !is_supported_component(name) {
            // Echoed in the answer: bounded.
            let shown: String = name.chars().take(64).collect();
            return Err(SignatureError::UnsupportedComponent(shown));
        }
        if components.contains(&name.as_str()) {
            return Err(SignatureError::Malformed("a component is covered twice"));
        }
        components.push(name);
    }
    let digest = policy.has_body.then_some("content-digest");
    for required in MINIMUM_COMPONENTS
        .iter()
        .copied()
        .chain(policy.extra_components.iter().map(String::as_str))
        .chain(digest)
    {
        if !components.contains(&required) {
            return Err(SignatureError::NotCovered(required.to_owned()));
        }
    }

    let created = match param(params, "created") {
        Some(Bare::Int(created)) if *created >= 0 => *created as u64,
        Some(_) => return Err(SignatureError::Malformed("created is not a time")),
        None => return Err(SignatureError::NoCreated),
    };
    if created > now_s.saturating_add(policy.skew_s) {
        return Err(SignatureError::CreatedInFuture);
    }
    let mut until = created.saturating_add(policy.max_age_s);
    if now_s > until.saturating_add(policy.skew_s) {
        return Err(SignatureError::TooOld);
    }
    match param(params, "expires") {
        Some(Bare::Int(expires)) if *expires >= 0 && *expires as u64 >= created => {
            let expires = *expires as u64;
            if now_s > expires.saturating_add(policy.skew_s) {
                return Err(SignatureError::Expired);
            }
            until = until.min(expires);
        }
        Some(_) => {
            return Err(SignatureError::Malformed(
                "expires is not a time after created",
            ))
        }
        None => {}
    }
    match param(params, "alg") {
        Some(Bare::Str(alg)) if alg == material.algorithm().name() => {}
        Some(_) => return Err(SignatureError::Algorithm),
        None => {}
    }
    let nonce = match param(params, "nonce") {
        Some(Bare::Str(nonce)) if !nonce.is_empty() && nonce.len() <= MAX_NONCE_BYTES => {
            Some(nonce.clone())
        }
        Some(_) => return Err(SignatureError::Malformed("nonce is not a short string")),
        None if policy.require_nonce => return Err(SignatureError::NoNonce),
        None => None,
    };

    let base = signature_base(request, &components, items, params)?;
    if !material.verify(&base, signature, native) {
        return Err(SignatureError::Invalid);
    }
    Ok(Verified {
        label: label.clone(),
        nonce,
        created_s: created,
        until_s: until.saturating_add(policy.skew_s),
        covers_digest: components.contains(&"content-digest"),
    })
}

fn param<'p>(params: &'p Params, name: &str) -> Option<&'p Bare> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn is_supported_component(name: &str) -> bool {
    if name.starts_with('@') {
        return DERIVED_COMPONENTS.contains(&name);
    }
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A request header's value as a signature covers it: every value of the name, trimmed,
/// joined with `, `. `None`: not in the request.
fn header_value(headers: &[(&str, &[u8])], name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (n, value) in headers {
        if *n != name {
            continue;
        }
        let value = value.trim_ascii();
        match &mut out {
            Some(out) => {
                out.extend_from_slice(b", ");
                out.extend_from_slice(value);
            }
            None => out = Some(value.to_vec()),
        }
    }
    out
}

/// A signature field as text, bounded. `Ok(None)`: absent.
fn field(headers: &[(&str, &[u8])], name: &str) -> Result<Option<String>, SignatureError> {
    let Some(value) = header_value(headers, name) else {
        return Ok(None);
    };
    if value.len() > MAX_FIELD_BYTES {
        return Err(SignatureError::Malformed("a signature field is too long"));
    }
    String::from_utf8(value)
        .map(Some)
        .map_err(|_| SignatureError::Malformed("a signature field is not ASCII"))
}

/// The signature base (RFC 9421 §2.5) for `components` of `request`, with the
/// `@signature-params` line serialized from `items` and `params`.
pub fn signature_base(
    request: &Request<'_>,
    components: &[&str],
    items: &[Item],
    params: &Params,
) -> Result<Vec<u8>, SignatureError> {
    let (path, query) = match request.target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.target, None),
    };
    let mut base = Vec::with_capacity(256);
    for name in components {
        base.push(b'"');
        base.extend_from_slice(name.as_bytes());
        base.extend_from_slice(b"\": ");
        match *name {
            "@method" => base.extend_from_slice(request.method.as_bytes()),
            "@authority" => {
                base.extend_from_slice(request.authority.to_ascii_lowercase().as_bytes())
            }
            "@scheme" => base.extend_from_slice(request.scheme.to_ascii_lowercase().as_bytes()),
            "@target-uri" => {
                base.extend_from_slice(request.scheme.to_ascii_lowercase().as_bytes());
                base.extend_from_slice(b"://");
                base.extend_from_slice(request.authority.to_ascii_lowercase().as_bytes());
                base.extend_from_slice(request.target.as_bytes());
            }
            "@request-target" => base.extend_from_slice(request.target.as_bytes()),
            "@path" => base.extend_from_slice(if path.is_empty() { "/" } else { path }.as_bytes()),
            "@query" => {
                base.push(b'?');
                base.extend_from_slice(query.unwrap_or_default().as_bytes());
            }
            field => match header_value(request.headers, field) {
                Some(value) => base.extend_from_slice(&value),
                None => return Err(SignatureError::FieldAbsent(field.to_owned())),
            },
        }
        base.push(b'\n');
    }
    let mut line = String::from("\"@signature-params\": ");
    sf::write_inner_list(&mut line, items, params);
    base.extend_from_slice(line.as_bytes());
    Ok(base)
}

/// Checks a `Content-Digest` (RFC 9530) against `body`: every `sha-256` and `sha-512` it
/// holds must match, and it must hold at least one; other algorithms are ignored.
pub fn check_content_digest(headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), SignatureError> {
    let value = field(headers, "content-digest")
        .map_err(|_| SignatureError::BadDigest)?
        .ok_or(SignatureError::BadDigest)?;
    let dict = sf::parse_dictionary(&value).map_err(|_| SignatureError::BadDigest)?;
    let mut checked = 0;
    for (alg, member) in &dict {
        let Member::Item(Item {
            bare: Bare::Bytes(digest),
            ..
        }) = member
        else {
            return Err(SignatureError::BadDigest);
        };
        let matches = match alg.as_str() {
            "sha-256" => Sha256::digest(body)[..] == digest[..],
            "sha-512" => Sha512::digest(body)[..] == digest[..],
            _ => continue,
        };
        if !matches {
            return Err(SignatureError::DigestMismatch);
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(SignatureError::BadDigest);
    }
    Ok(())
}

/// `Content-Digest: sha-256=:…:` for `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// The `Accept-Signature` (RFC 9421 §5.1) a refused request is answered with: what to cover
/// and which parameters to include.
pub fn accept_signature(
    extra_components: &[String],
    has_body: bool,
    key_id: Option<&str>,
    alg: Option<SigningAlgorithm>,
) -> String {
    let mut items: Vec<Item> = MINIMUM_COMPONENTS
        .iter()
        .map(|c| c.to_string())
        .chain(extra_components.iter().cloned())
        .chain(has_body.then(|| "content-digest".to_owned()))
        .fold(Vec::new(), |mut names: Vec<String>, name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names
        })
        .into_iter()
        .map(|name| Item {
            bare: Bare::Str(name),
            params: Vec::new(),
        })
        .collect();
    items.truncate(sf::MAX_ITEMS);
    let mut params: Params = vec![
        ("created".to_owned(), Bare::Bool(true)),
        ("nonce".to_owned(), Bare::Bool(true)),
    ];
    if let Some(key_id) = key_id {
        params.push(("keyid".to_owned(), Bare::Str(key_id.to_owned())));
    }
    if let Some(alg) = alg {
        params.push(("alg".to_owned(), Bare::Str(alg.name().to_owned())));
    }
    let mut out = String::from("sig1=");
    sf::write_inner_list(&mut out, &items, &params);
    out
}

/// A key that signs requests (clients and tests; the filter only verifies).
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
    Hmac(Zeroizing<Vec<u8>>),
}

impl SigningKey {
    /// A private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): Ed25519 or P-256.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, MaterialError> {
        use p256::pkcs8::DecodePrivateKey as _;
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|line| *line != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|line| !line.starts_with("-----END"))
            .collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| MaterialError::BadPublicKey)?;
        let der = Zeroizing::new(der);
        if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_der(&der) {
            return Ok(Self::Ed25519(key));
        }
        p256::ecdsa::SigningKey::from_pkcs8_der(&der)
            .map(Self::P256)
            .map_err(|_| MaterialError::BadPublicKey)
    }

    /// The public half, as key records carry it (base64url of the raw key); `None` for HMAC.
    pub fn public_key(&self) -> Option<String> {
        match self {
            Self::Ed25519(key) => Some(URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())),
            Self::P256(key) => {
                Some(URL_SAFE_NO_PAD.encode(key.verifying_key().to_encoded_point(false).as_bytes()))
            }
            Self::Hmac(_) => None,
        }
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        match self {
            Self::Ed25519(_) => SigningAlgorithm::Ed25519,
            Self::P256(_) => SigningAlgorithm::EcdsaP256Sha256,
            Self::Hmac(_) => SigningAlgorithm::HmacSha256,
        }
    }

    /// The signature over `base` (Ed25519 64 bytes, ECDSA `r ‖ s` deterministic per
    /// RFC 6979, HMAC 32 bytes).
    pub fn sign(&self, base: &[u8]) -> Vec<u8> {
        match self {
            Self::Ed25519(key) => key.sign(base).to_bytes().to_vec(),
            Self::P256(key) => {
                let sig: p256::ecdsa::Signature = key.sign(base);
                sig.to_bytes().to_vec()
            }
            Self::Hmac(secret) => match Hmac::<Sha256>::new_from_slice(secret) {
                Ok(mut mac) => {
                    mac.update(base);
                    mac.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            },
        }
    }
}

/// What to sign a request with: the covered components and parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignOptions {
    /// Components besides [`MINIMUM_COMPONENTS`] (`content-digest` is added with a body).
    pub extra_components: Vec<String>,
    pub key_id: String,
    pub created_s: u64,
    pub expires_s: Option<u64>,
    pub nonce: Option<String>,
    /// Include the `alg` parameter.
    pub include_alg: bool,
    pub label: String,
}

/// The headers that sign `request` (whose `headers` must already hold any covered field,
/// `content-digest` included): `(Signature-Input, Signature)` values.
pub fn sign_request(
    request: &Request<'_>,
    key: &SigningKey,
    options: &SignOptions,
) -> Result<(String, String), SignatureError> {
    let has_digest = header_value(request.headers, "content-digest").is_some();
    let mut names: Vec<String> = Vec::new();
    for name in MINIMUM_COMPONENTS
        .iter()
        .map(|c| c.to_string())
        .chain(options.extra_components.iter().cloned())
        .chain(has_digest.then(|| "content-digest".to_owned()))
    {
        if !is_supported_component(&name) {
            return Err(SignatureError::UnsupportedComponent(name));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let items: Vec<Item> = names
        .iter()
        .map(|name| Item {
            bare: Bare::Str(name.clone()),
            params: Vec::new(),
        })
        .collect();
    let mut params: Params = vec![(
        "created".to_owned(),
        Bare::Int(i64::try_from(options.created_s).unwrap_or(i64::MAX)),
    )];
    if let Some(expires) = options.expires_s {
        params.push((
            "expires".to_owned(),
            Bare::Int(i64::try_from(expires).unwrap_or(i64::MAX)),
        ));
    }
    if let Some(nonce) = &options.nonce {
        params.push(("nonce".to_owned(), Bare::Str(nonce.clone())));
    }
    if options.include_alg {
        params.push((
            "alg".to_owned(),
            Bare::Str(key.algorithm().name().to_owned()),
        ));
    }
    params.push(("keyid".to_owned(), Bare::Str(options.key_id.clone())));
    let components: Vec<&str> = names.iter().map(String::as_str).collect();
    let base = signature_base(request, &components, &items, &params)?;
    let mut input = format!("{}=", options.label);
    sf::write_inner_list(&mut input, &items, &params);
    let signature = format!("{}=:{}:", options.label, STANDARD.encode(key.sign(&base)));
    Ok((input, signature))
}

/// The longest public key text [`public_key_from_text`] reads, in bytes.
pub const MAX_PUBLIC_KEY_TEXT: usize = 4096;

/// Reads a public key given as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), as a
/// JWK (`{"kty": "OKP", "crv": "Ed25519", ...}` or `{"kty": "EC", "crv": "P-256", ...}`) or
/// as base64url of the raw key (then `alg` must say which): answers its algorithm and the
/// base64url of its raw bytes, as key records carry it. `alg`, if given, must match the key.
pub fn public_key_from_text(
    alg: Option<SigningAlgorithm>,
    text: &str,
) -> Result<(SigningAlgorithm, String), MaterialError> {
    use p256::pkcs8::DecodePublicKey as _;
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_PUBLIC_KEY_TEXT {
        return Err(MaterialError::BadPublicKey);
    }
    let material = if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        let body: String = text
            .lines()
            .map(str::trim)
            .skip(1)
            .take_while(|line| !line.starts_with("-----END"))
            .collect();
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| MaterialError::BadPublicKey)?;
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_der(&der) {
            Material::Ed25519(key)
        } else {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(&der)
                .map_err(|_| MaterialError::BadPublicKey)?;
            Material::p256(key.to_encoded_point(false).as_bytes())?
        }
    } else if text.starts_with('{') {
        let jwk: serde_json::Value =
            serde_json::from_str(text).map_err(|_| MaterialError::BadPublicKey)?;
        let member = |name: &str| -> Result<Vec<u8>, MaterialError> {
            let value = jwk
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or(MaterialError::BadPublicKey)?;
            URL_SAFE_NO_PAD
                .decode(value.trim_end_matches('='))
                .map_err(|_| MaterialError::BadPublicKey)
        };
        if jwk.get("d").is_some() {
            // A private JWK: refused, so that it is not stored by mistake.
            return Err(MaterialError::BadPublicKey);
        }
        let kty = jwk.get("kty").and_then(serde_json::Value::as_str);
        let crv = jwk.get("crv").and_then(serde_json::Value::as_str);
        match (kty, crv) {
            (Some("OKP"), Some("Ed25519")) => Material::ed25519(&member("x")?)?,
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (member("x")?, member("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(MaterialError::BadPublicKey);
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Material::p256(&point)?
            }
            _ => return Err(MaterialError::UnknownAlgorithm),
        }
    } else {
        Material::public(alg.ok_or(MaterialError::UnknownAlgorithm)?, text)?
    };
    let found = material.algorithm();
    if alg.is_some_and(|alg| alg != found) {
        return Err(MaterialError::BadPublicKey);
    }
    let raw = match &material {
        Material::Ed25519(key) => URL_SAFE_NO_PAD.encode(key.as_bytes()),
        Material::P256 { key, .. } => {
            URL_SAFE_NO_PAD.encode(key.to_encoded_point(false).as_bytes())
        }
        Material::Hmac(_) => return Err(MaterialError::UnknownAlgorithm),
    };
    Ok((found, raw))
}

#[cfg(test)]
mod tests;
