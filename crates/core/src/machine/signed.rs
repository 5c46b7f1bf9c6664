//! Signed routes: what a request to a route that requires a signature (RFC 9421) keeps of
//! itself until its key is known, and the check once it is: the signature with the key's
//! material, its nonce against the shared replay store, then the body's `Content-Digest`.

use crate::decision::{DenyReason, Identity};
use crate::host::Host;
use crate::machine::nonce::{self, NonceOutcome};
use crate::machine::signed_request::SignedRequest;
use crate::machine::state::Shared;
use crate::signature::{
    derive_hmac_secret, verify_request, KeySigning, Material, Policy, Request, SignatureError,
};

/// Whether the route of a request with a body requires a signature (see
/// [`crate::machine::worker::wants_body`]).
pub fn route_wants_body(host: &impl Host, shared: &Shared, headers: &[(&str, &[u8])]) -> bool {
    let config = &shared.config;
    if !config.routes.any_signature() && !config.signatures.route_metadata {
        return false;
    }
    let mut method = "";
    let mut path = "";
    for &(name, value) in headers {
        match name {
            ":method" => method = std::str::from_utf8(value).unwrap_or_default(),
            ":path" => path = std::str::from_utf8(value).unwrap_or_default(),
            _ => {}
        }
    }
    if config.route_metadata && config.signatures.route_metadata {
        let signature = host.property(&[
            "xds",
            "route_metadata",
            "filter_metadata",
            "keygate",
            "signature",
        ]);
        if let Some(signature) = signature {
            return signature != b"none";
        }
    }
    let route_name = if config.routes.uses_route_names() {
        host.property(&["xds", "route_name"])
            .and_then(|name| String::from_utf8(name).ok())
    } else {
        None
    };
    config
        .routes
        .find(method, path, route_name.as_deref())
        .is_some_and(|route| route.signature.is_some())
}

/// Checks the signed request made by `identity` (whose key is proven). The nonce is
/// remembered only once everything else passed.
pub fn check(
    host: &impl Host,
    shared: &Shared,
    signed: &SignedRequest,
    identity: &Identity,
) -> Result<(), DenyReason> {
    let deny = |err| Err(DenyReason::BadSignature(err));
    let settings = &shared.config.signatures;
    let derived;
    let material = match identity.signing.as_deref() {
        Some(KeySigning::Public(material)) => material,
        Some(KeySigning::Hmac { generation }) => {
            let secret =
                derive_hmac_secret(&shared.secrets.gateway_key, &identity.key_id, *generation);
            derived = Material::hmac(&secret)
                .map_err(|_| DenyReason::BadSignature(SignatureError::NoMaterial))?;
            &derived
        }
        Some(KeySigning::Invalid) | None => return deny(SignatureError::NoMaterial),
    };
    let headers: Vec<(&str, &[u8])> = signed
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let request = Request {
        method: &signed.method,
        scheme: &signed.scheme,
        authority: &signed.authority,
        target: &signed.target,
        headers: &headers,
    };
    let policy = Policy {
        max_age_s: settings.max_age_seconds,
        skew_s: settings.clock_skew_seconds,
        require_nonce: settings.require_nonce,
        extra_components: &signed.route.extra_components,
        has_body: signed.body.is_some(),
    };
    let now_s = shared.now(host) / 1000;
    let native = shared.signature_crypto.as_ref().map(|c| c.verifier(host));
    let native = native
        .as_ref()
        .map(|n| n as &dyn crate::jwt::NativeVerifier);
    let verified =
        match verify_request(&request, &identity.key_id, material, &policy, now_s, native) {
            Ok(verified) => verified,
            Err(err) => return deny(err),
        };
    if let Some(Err(err)) = &signed.body {
        return deny(err.clone());
    }
    if let Some(nonce) = &verified.nonce {
        let store = nonce::NonceStore {
            layout: settings.nonce_layout(),
            secret: &shared.nonce_key,
        };
        match nonce::remember(
            host,
            store,
            &identity.key_id,
            nonce,
            verified.until_s,
            now_s,
        ) {
            NonceOutcome::Fresh => {}
            NonceOutcome::Replayed => return deny(SignatureError::Replayed),
            NonceOutcome::Full | NonceOutcome::Contended => return Err(DenyReason::Overloaded),
        }
    }
    Ok(())
}
