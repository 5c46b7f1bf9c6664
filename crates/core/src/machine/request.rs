//! One request's headers, evaluated: the route's policy, the credential it presents, the
//! credentials it must not carry upstream, and then the key record or the JWT path.

use crate::binding::{Attributes, Requirement};
use crate::config::FilterConfig;
use crate::credential::{extract_credential, strip_query_param, CredentialError, Source};
use crate::decision::DenyReason;
use crate::headers::folds_to;
use crate::host::{Event, Host, LogLevel};
use crate::key::{key_id_of, looks_like_opaque_key, parse_opaque_key, KeyDigest, KeyId};
use crate::limits::ForwardedFor;
use crate::machine::answer::replies;
use crate::machine::records::resolve_record;
use crate::machine::signed_request::SignedRequest;
use crate::machine::state::{Forwarding, Presented, Proof, RouteLabel, Shared, Step};
use crate::principal::{
    read_principal, route_step, PrincipalMode, PrincipalStep, PRINCIPAL_PROPERTY,
};
use crate::route::{
    has_path_parameter, policy_from_metadata, signature_from_metadata, Mode, Policy,
};
use crate::signature::RouteSignature;
use crate::wire::RateLimit;

use std::sync::Arc;

/// The route usage counts a request under whose policy came from Envoy route metadata, when
/// Envoy gives the route no name.
pub const METADATA_ROUTE: &str = "envoy";

/// The request's headers as read at its start: (name, value) pairs.
pub type Headers<'a> = [(&'a str, &'a [u8])];

pub fn evaluate(host: &impl Host, shared: &Shared, context_id: u32, headers: &Headers) -> Step {
    evaluate_with_body(host, shared, context_id, headers, None)
}

/// [`evaluate`] for a request whose body was read first (a signed route's, whose
/// `Content-Digest` is checked against it).
pub fn evaluate_with_body(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    headers: &Headers,
    body: Option<&[u8]>,
) -> Step {
    let config = &shared.config;
    // A blocked client is refused before anything of its request is read.
    if let Some(reason) = crate::machine::blocking::refusal(host, shared, headers) {
        return Step::Deny(reason, None, config.mode);
    }
    let mut method = "";
    let mut path = "";
    for &(name, value) in headers {
        match name {
            ":method" => method = std::str::from_utf8(value).unwrap_or_default(),
            ":path" => path = std::str::from_utf8(value).unwrap_or_default(),
            n if config.header_rules.removes(n) => host.remove_request_header(n),
            _ => {}
        }
    }
    if has_path_parameter(path) {
        return Step::Deny(DenyReason::PathParameter, None, config.mode);
    }

    let (policy, mode, route_rate_limit, forward_credential, principal_mode, cost, route, signed) =
        match route_policy(host, shared, method, path) {
            Ok(found) => found,
            Err(reason) => return Step::Deny(reason, None, config.mode),
        };
    let required = match policy {
        None => {
            shared.metrics.count(host, Event::AllowedPublic);
            if mode == Mode::Shadow {
                replies(config).shadow_allow(host, true);
            } else if !forward_credential {
                strip_unchecked_credentials(host, config, headers, path);
            }
            return Step::Continue;
        }
        Some(required) => required,
    };
    let signature = signed.map(|route| Box::new(SignedRequest::capture(&route, headers, body)));
    if mode == Mode::Enforce {
        strip_credential_lookalikes(host, config, headers);
    }
    // The workload identity, read (a host call) only on routes that take principals; later
    // for a key bound to workloads.
    let principal = (principal_mode != PrincipalMode::None)
        .then(|| read_principal(host.property(&PRINCIPAL_PROPERTY).as_deref()));
    let principal_step = |has_credential: bool| {
        route_step(
            principal_mode,
            &config.principals,
            principal.as_ref().and_then(|p| p.as_deref()),
            &required.scopes,
            has_credential,
        )
    };
    if principal_mode == PrincipalMode::Require {
        if let PrincipalStep::Deny(reason) = principal_step(true) {
            return Step::Deny(reason, None, mode);
        }
    }

    let pairs = headers.iter().copied();
    let max_len = config
        .max_credential_bytes
        .max(if config.jwt.issuers.is_empty() {
            0
        } else {
            config.jwt.max_token_bytes
        });
    let extracted = match extract_credential(&config.credential_sources, pairs, path, max_len) {
        Ok(extracted) => extracted,
        Err(CredentialError::Missing) => {
            return match principal_step(false) {
                // A workload has no owner, metadata or claims: a bound route refuses it.
                PrincipalStep::Allow(_) if !required.bindings.is_empty() => {
                    match required.check_bindings(&Attributes::default()) {
                        Err(err) => Step::Deny(DenyReason::Binding(err), None, mode),
                        Ok(()) => Step::Deny(DenyReason::MissingCredential, None, mode),
                    }
                }
                PrincipalStep::Allow(identity) => Step::Decided(
                    Forwarding {
                        mode,
                        sources: Vec::new(),
                        stripped_path: None,
                        client: None,
                        forwarded_for: None,
                        route_rate_limit,
                        key_id: None,
                        forward_credential,
                        principal,
                        cost,
                        fleet_may_wait: true,
                        route,
                        signature,
                        country: None,
                    },
                    Ok(identity),
                ),
                PrincipalStep::Deny(reason) => Step::Deny(reason, None, mode),
                PrincipalStep::Credential => Step::Deny(DenyReason::MissingCredential, None, mode),
            };
        }
        Err(err) => return Step::Deny(DenyReason::BadRequest(err), None, mode),
    };
    let stripped_path = match (
        &config.credential_sources.query_param,
        extracted.sources.contains(&Source::QueryParam),
    ) {
        (Some(param), true) => Some(strip_query_param(path, param)),
        _ => None,
    };
    let legacy = is_legacy(
        config,
        credential_source_is_legacy(&extracted.sources),
        extracted.credential,
    );
    // Only the header is read here: `source.address`, which tells whether Envoy appended an
    // entry of its own, costs a host call and is read only when an allow-list needs it.
    let forwarded_for = (config.trusted_hops > 0).then(|| {
        let header = headers
            .iter()
            .find(|(name, _)| *name == "x-forwarded-for")
            .and_then(|(_, value)| std::str::from_utf8(value).ok());
        ForwardedFor::read(header, config.trusted_hops)
    });
    let mut forwarding = Forwarding {
        mode,
        sources: extracted.sources,
        stripped_path,
        client: None,
        forwarded_for,
        route_rate_limit,
        key_id: None,
        forward_credential,
        principal,
        cost,
        fleet_may_wait: true,
        route,
        signature,
        country: crate::geo::country_of(config.geo.as_ref(), headers.iter().copied()),
    };
    let credential = extracted.credential;

    if legacy {
        let digest = KeyDigest::of(credential.as_bytes());
        let presented = Presented {
            key_id: legacy_slot_id(&digest),
            proof: Proof::Opaque(digest),
            required,
            forwarding,
            legacy: true,
        };
        return resolve_record(host, shared, context_id, presented);
    }

    if looks_like_opaque_key(credential, &config.key_prefixes) {
        if credential.len() > config.max_credential_bytes {
            return Step::Deny(DenyReason::BadRequest(CredentialError::TooLong), None, mode);
        }
        // A record this worker holds fresh already decides at once: the key's digest (or
        // the fingerprint of a text proven before) proves it or refutes it, without the
        // checksum and tag checks, which exist to spare the key service.
        if let Some(id) = key_id_of(credential, &config.key_prefixes) {
            let now = shared.now(host);
            if let Some(result) = crate::machine::records::decide_fresh(
                host,
                shared,
                &id,
                credential,
                &required,
                &mut forwarding,
                now,
            ) {
                forwarding.key_id = Some(id);
                return Step::Decided(forwarding, result);
            }
        }
        let parsed = match parse_opaque_key(credential, &config.key_prefixes) {
            Ok(parsed) => parsed,
            Err(_) => return Step::Deny(DenyReason::MalformedKey, None, mode),
        };
        if !parsed.tag_is_authentic(&shared.secrets.gateway_key) {
            return Step::Deny(DenyReason::ForgedKey, Some(parsed.id().to_string()), mode);
        }
        // A revoked id is not answered here: "revoked" is told only to whoever proves the
        // secret, so the record is looked up (or taken from the cache) and the digest compared
        // first; the revoked set is consulted after that (`lookup::decide`).
        forwarding.key_id = Some(parsed.id());
        let presented = Presented {
            key_id: parsed.id(),
            proof: Proof::Opaque(parsed.digest()),
            required,
            forwarding,
            legacy: false,
        };
        return resolve_record(host, shared, context_id, presented);
    }
    if !config.jwt.issuers.is_empty() {
        return crate::machine::token::evaluate_token(
            host, shared, context_id, credential, required, forwarding,
        );
    }
    Step::Deny(DenyReason::MalformedKey, None, mode)
}

/// What [`route_policy`] finds.
type RoutePolicy = (
    Option<Requirement>,
    Mode,
    Option<RateLimit>,
    bool,
    PrincipalMode,
    u32,
    RouteLabel,
    Option<Arc<RouteSignature>>,
);

/// The policy for this request (`None`: public; else what the key must hold and be bound
/// to, the path's parameters filled in), the mode it runs in, the route's default rate
/// limit, whether it forwards the credential, whether it takes principals (never from
/// metadata) and what it costs from a quota. Route metadata on the Envoy route wins; otherwise the filter's route table
/// (entries by Envoy route name or by method and path, first match). No policy anywhere:
/// denied.
fn route_policy(
    host: &impl Host,
    shared: &Shared,
    method: &str,
    path: &str,
) -> Result<RoutePolicy, DenyReason> {
    let config = &shared.config;
    if config.route_metadata {
        let leaf = |name: &str| {
            host.property(&["xds", "route_metadata", "filter_metadata", "keygate", name])
        };
        match policy_from_metadata(
            leaf("scopes").as_deref(),
            leaf("public").as_deref(),
            leaf("mode").as_deref(),
        ) {
            Ok(Some((policy, mode))) => {
                let required = match policy {
                    Policy::Public => None,
                    Policy::Scopes(scopes) => Some(Requirement::from(scopes)),
                };
                let signed = match (&required, config.signatures.route_metadata) {
                    (Some(_), true) => signature_from_metadata(
                        leaf("signature").as_deref(),
                        leaf("signature_components").as_deref(),
                    )
                    .map_err(|err| {
                        host.log(
                            LogLevel::Warn,
                            &format!(
                                "route metadata filter_metadata.keygate is invalid, denying: {err}"
                            ),
                        );
                        DenyReason::NoRoute
                    })?,
                    _ => None,
                };
                return Ok((
                    required,
                    mode.unwrap_or(config.mode),
                    None,
                    false,
                    PrincipalMode::None,
                    1,
                    RouteLabel::Unread(Arc::from(METADATA_ROUTE)),
                    signed.map(Arc::new),
                ));
            }
            Ok(None) => {}
            Err(err) => {
                host.log(
                    LogLevel::Warn,
                    &format!("route metadata filter_metadata.keygate is invalid, denying: {err}"),
                );
                return Err(DenyReason::NoRoute);
            }
        }
    }
    let route_name = if config.routes.uses_route_names() {
        host.property(&["xds", "route_name"])
            .and_then(|name| String::from_utf8(name).ok())
    } else {
        None
    };
    let route = config
        .routes
        .find(method, path, route_name.as_deref())
        .ok_or(DenyReason::NoRoute)?;
    // Usage's name for the route: its own name; else Envoy's when the table matched on it
    // (read already); else `route[<index>]`. Never a host call of its own: a table route's
    // label costs nothing on the cached path.
    let label = match route_name {
        _ if route.named => RouteLabel::Known(Arc::clone(&route.label)),
        Some(name) => RouteLabel::Known(Arc::from(name)),
        None => RouteLabel::Known(Arc::clone(&route.label)),
    };
    Ok((
        route.requirement(path).map_err(DenyReason::Binding)?,
        route.mode.unwrap_or(config.mode),
        route.rate_limit,
        route.forward_credential,
        route.principal,
        route.cost,
        label,
        route.signature.clone(),
    ))
}

fn credential_source_is_legacy(sources: &[Source]) -> bool {
    sources.contains(&Source::LegacyHeader)
}

/// A legacy key: sent in the legacy header, or starting with a legacy prefix.
fn is_legacy(config: &FilterConfig, from_legacy_header: bool, credential: &str) -> bool {
    config.legacy_keys.as_ref().is_some_and(|legacy| {
        from_legacy_header
            || legacy
                .prefixes
                .iter()
                .any(|p| credential.starts_with(p.as_str()))
    })
}

/// The cache-slot name of a legacy key: derived from its digest (it carries no id).
fn legacy_slot_id(digest: &KeyDigest) -> KeyId {
    let mut bytes = [0u8; crate::key::ID_LEN];
    bytes.copy_from_slice(&digest.as_bytes()[..crate::key::ID_LEN]);
    KeyId::from_bytes(bytes)
}

/// On a route that checks no credential (public): removes every Keygate credential the
/// client sent anyway, so it does not reach the upstream (and its logs): a bearer token, the
/// credential and legacy-key headers in any spelling an upstream framework folds together,
/// and the query parameter.
fn strip_unchecked_credentials(
    host: &impl Host,
    config: &FilterConfig,
    headers: &Headers,
    path: &str,
) {
    let sources = &config.credential_sources;
    for &(name, value) in headers {
        let credential_header = folds_to_credential_header(config, name);
        let bearer = sources.bearer
            && name == "authorization"
            && value.len() >= 7
            && value[..7].eq_ignore_ascii_case(b"bearer ");
        if credential_header || bearer {
            host.remove_request_header(name);
        }
    }
    if let Some(param) = &sources.query_param {
        // Checked first so that a public request without the parameter allocates nothing.
        let query = path.split_once('?').map_or("", |(_, query)| query);
        let named = |pair: &str| pair.split_once('=').map_or(pair, |(name, _)| name) == param;
        if query.split('&').any(named) {
            host.set_request_header(":path", &strip_query_param(path, param));
        }
    }
}

/// True when `name` is a credential header in a spelling an upstream framework folds into it
/// (`X_Api_Key` for `x-api-key`), the exact spelling included.
pub(crate) fn folds_to_credential_header(config: &FilterConfig, name: &str) -> bool {
    let sources = &config.credential_sources;
    [&sources.header, &sources.legacy_header]
        .into_iter()
        .flatten()
        .any(|header| folds_to(name, header))
}

/// On a protected route: removes headers that are not a credential to Keygate (`x_api_key`,
/// whose name differs from `x-api-key`) but that an upstream framework reads as one, also on
/// routes that forward the credential (the look-alike is not the credential Keygate checked).
/// The credential Keygate checked is removed when the request is allowed.
fn strip_credential_lookalikes(host: &impl Host, config: &FilterConfig, headers: &Headers) {
    let sources = &config.credential_sources;
    for &(name, _) in headers {
        let exact = [&sources.header, &sources.legacy_header]
            .into_iter()
            .flatten()
            .any(|header| name == header.as_str());
        if !exact && folds_to_credential_header(config, name) {
            host.remove_request_header(name);
        }
    }
}
