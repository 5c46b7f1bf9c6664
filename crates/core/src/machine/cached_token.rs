//! The request most traffic is once its client has been seen: a JWT this worker verified
//! before, on a route that asks for scopes and nothing else. It is decided here in one pass
//! over the headers, with nothing built for it: no `Forwarding`, no `Step`, no identity
//! cloned, no gathered edits.
//!
//! Why a path of its own: in Envoy, what a cached request costs beyond its host calls is
//! mostly the code and data it touches, which Envoy's own work evicts from the caches between
//! a filter's callbacks. The general path ([`crate::machine::request`] then
//! [`crate::machine::answer`]) walks every feature's checks; this one touches the few that
//! apply (`make bench-v8`'s cold rounds and `make bench`'s tight pass measure the difference).
//!
//! It decides a request only where the general path would decide it the same way, with the
//! same host calls in the same order, and hands every other request back untouched (`None`,
//! before any host call but the clock). `cached_token_tests` holds it to that: every request
//! of a matrix of requests and configurations, decided here and by the general path, makes
//! the same effects.

use crate::config::{FilterConfig, Revocation};
use crate::credential::bearer_credential;
use crate::host::{Event, Host};
use crate::key::looks_like_opaque_key;
use crate::machine::request::{folds_to_credential_header, Headers};
use crate::machine::state::Shared;
use crate::principal::PrincipalMode;
use crate::route::{has_path_parameter, Mode, Policy, Route};
use crate::scope::missing_scopes;

/// Whether a configuration lets any request take this path: JWTs in the `Authorization`
/// header only, and no feature that reads or decides more of a request than its route and
/// its token (route metadata, route names, legacy keys, a query parameter).
pub fn applies(config: &FilterConfig) -> bool {
    let sources = &config.credential_sources;
    !config.jwt.issuers.is_empty()
        && sources.bearer
        && sources.query_param.is_none()
        && !config.route_metadata
        && config.legacy_keys.is_none()
        && !config.routes.uses_route_names()
}

/// Decides a request with a cached token on a plain route: `Some(true)` when it was allowed
/// (its credential removed, its identity added); `None` for any other request, which the
/// general path then decides.
pub fn decide(host: &impl Host, shared: &Shared, headers: &Headers) -> Option<bool> {
    let config = &shared.config;
    if !shared.cached_tokens || !shared.threat.borrow().view.is_empty() {
        return None;
    }
    let (method, path, authorization) = scan(config, headers)?;
    // An opaque key leaves first, before the route is looked for: the general path looks
    // for it again.
    let max_len = config.max_credential_bytes.max(config.jwt.max_token_bytes);
    let token = bearer_credential(authorization, max_len).ok()??;
    if looks_like_opaque_key(token, &config.key_prefixes) || has_path_parameter(path) {
        return None;
    }
    let route = config.routes.find(method, path, None)?;
    let scopes = plain_scopes(config, route)?;
    let now_ms = shared.now(host);
    let hash = shared.fingerprints.of(token.as_bytes());
    let mut jwt = shared.jwt.borrow_mut();
    let cached = jwt.cache.get(&hash, now_ms / 1000)?;
    let identity = &cached.identity;
    let revocation = config.jwt.issuers.get(cached.issuer)?.revocation;
    // A token naming a Keygate key goes by its record (revocation, usage); one with limits
    // of its own spends from buckets; one short of the route's scopes is refused.
    if revocation != Revocation::None
        || !identity.key_id.is_empty()
        || identity.rate_limit.is_some()
        || identity.fleet.is_some()
        || !missing_scopes(scopes, &identity.scopes).is_empty()
    {
        return None;
    }
    shared.metrics.count(host, Event::TokenCacheHit);
    shared.metrics.count(host, Event::Allowed);
    let ih = &config.identity_headers;
    host.remove_request_header("authorization");
    host.set_request_header(&ih.subject, &identity.subject);
    host.set_request_header(&ih.scopes, &identity.scopes_header);
    host.set_request_header(&ih.issuer, identity.issuer_name());
    Some(true)
}

/// The method, the path and the one `Authorization` header of a request that carries no
/// header the general path would remove or weigh as a credential: a reserved header, a
/// credential header in any spelling, a second `Authorization`.
fn scan<'a>(config: &FilterConfig, headers: &Headers<'a>) -> Option<(&'a str, &'a str, &'a [u8])> {
    let (mut method, mut path, mut authorization) = (None, None, None);
    for &(name, value) in headers {
        match name {
            ":method" => method = Some(value),
            ":path" => path = Some(value),
            name if config.header_rules.removes(name)
                || folds_to_credential_header(config, name) =>
            {
                return None
            }
            "authorization" if authorization.is_none() => authorization = Some(value),
            "authorization" => return None,
            _ => {}
        }
    }
    Some((
        std::str::from_utf8(method?).ok()?,
        std::str::from_utf8(path?).ok()?,
        authorization?,
    ))
}

/// The route's scopes, when they are all it asks for and it runs in enforce mode: no
/// parameters bound, no rate limit, no principals, no signature, the credential not
/// forwarded.
fn plain_scopes<'r>(config: &FilterConfig, route: &'r Route) -> Option<&'r [crate::scope::Scope]> {
    let Policy::Scopes(scopes) = &route.policy else {
        return None;
    };
    let plain = route.guard.is_none()
        && route.mode.unwrap_or(config.mode) == Mode::Enforce
        && route.rate_limit.is_none()
        && !route.forward_credential
        && route.principal == PrincipalMode::None
        && route.signature.is_none();
    plain.then_some(&**scopes)
}
