//! Answering a decided request in its own context: allowed (rate limit, identity headers,
//! usage), denied (enforce or shadow), or resumed after it waited.

use crate::config::{FilterConfig, RateLimitHeaders};
use crate::credential::Source;
use crate::decision::{DenyReason, Identity};
use crate::key::KeyId;
use crate::machine::callouts::Callout;
use crate::machine::fleet::{FleetLimits, Verdict};
use crate::machine::gate;
use crate::machine::rate::{self, RateOutcome};
use crate::machine::reply::Replies;
use crate::machine::usage::counts_under_key;
use crate::route::Mode;

use crate::host::Event;
use crate::host::Host;
use crate::machine::state::{client_now, FleetWaiter, Forwarding, Note, RouteLabel, Shared, Step};
use std::sync::Arc;

/// Applies a decision in the current effective context (the request `context_id`). Returns
/// true when the request goes on upstream.
pub fn apply(
    host: &impl Host,
    shared: &Shared,
    context_id: u32,
    forwarding: &Forwarding,
    result: Result<Identity, DenyReason>,
) -> bool {
    let key_label = forwarding.key_id.as_ref().map(KeyId::as_str);
    let identity = match result {
        Ok(identity) => identity,
        Err(reason) => {
            crate::machine::blocking::after_denial(host, shared, &reason, || {
                client_now(host, forwarding)
            });
            return deny(host, shared, &reason, key_label, forwarding.mode);
        }
    };
    // A signed route: the signature is checked once the key is known (and proven).
    if let Some(signed) = &forwarding.signature {
        if let Err(reason) = crate::machine::signed::check(host, shared, signed, &identity) {
            let accept = [("accept-signature", signed.accept_signature(Some(&identity)))];
            return deny_with(host, shared, &reason, key_label, forwarding.mode, &accept);
        }
    }
    let now = shared.now(host);
    // Fleet-wide limits first: a request may wait for a lease, and is decided again then.
    let mut fleet_ratelimit = None;
    if let Some(limits) = identity.fleet.clone() {
        match fleet_check(host, shared, &limits, forwarding) {
            Verdict::Allowed { ratelimit } => fleet_ratelimit = ratelimit,
            Verdict::Limited { reason, headers } => {
                let key = identity.usage_key().map(|k| &**k);
                return deny_with(host, shared, &reason, key, forwarding.mode, &headers);
            }
            Verdict::Wait => {
                let mut waiter = Box::new(FleetWaiter {
                    context_id,
                    forwarding: forwarding.clone(),
                    identity,
                });
                // Checked above (its nonce is spent): not again when the request is woken.
                waiter.forwarding.signature = None;
                return match shared
                    .fleet
                    .borrow_mut()
                    .park(waiter, now, &shared.config.fleet)
                {
                    Ok(()) => false,
                    Err(mut waiter) => {
                        // Too many wait already: decided now, by the fallback.
                        waiter.forwarding.fleet_may_wait = false;
                        let waiter = *waiter;
                        apply(
                            host,
                            shared,
                            context_id,
                            &waiter.forwarding,
                            Ok(waiter.identity),
                        )
                    }
                };
            }
        }
    }
    // Every credential kind draws from a bucket: the key's, or (a token without a Keygate key
    // id) its issuer's and subject's.
    let limit = identity.rate_limit.or(forwarding.route_rate_limit);
    let mut ratelimit = None;
    if let Some(limit) = limit {
        match rate::take(host, identity.bucket_owner, &limit, now) {
            RateOutcome::Allowed(left) => ratelimit = Some(left),
            RateOutcome::Limited {
                retry_after_s,
                policy,
                state,
            } => {
                let reason = DenyReason::RateLimited { retry_after_s };
                let extra = [
                    ("retry-after", retry_after_s.to_string()),
                    ("ratelimit-policy", policy),
                    ("ratelimit", state),
                ];
                return deny_with(
                    host,
                    shared,
                    &reason,
                    identity.usage_key().map(|k| &**k),
                    forwarding.mode,
                    &extra,
                );
            }
            // Fail closed: a request whose bucket cannot be read and written back is not
            // let through uncounted.
            RateOutcome::Contended => {
                shared.metrics.count(host, Event::RateLimitContention);
                return deny(
                    host,
                    shared,
                    &DenyReason::Overloaded,
                    identity.usage_key().map(|k| &**k),
                    forwarding.mode,
                );
            }
        }
    }
    let config = &shared.config;
    // The headers are written only for a response that carries them.
    let ratelimit = ratelimit
        .or(fleet_ratelimit)
        .filter(|_| config.rate_limit_headers == RateLimitHeaders::Always)
        .map(|left| left.headers());
    let ih = &config.identity_headers;
    let shadow = forwarding.mode == Mode::Shadow;
    if shadow {
        // The upstream still authenticates as before: keep the credential.
        replies(config).shadow_allow(host, false);
        shared.metrics.count(host, Event::ShadowAllowed);
    } else {
        shared.metrics.count(host, Event::Allowed);
    }
    if !shadow && !forwarding.forward_credential {
        strip_credential(host, shared, forwarding);
    }
    host.set_request_header(&ih.subject, &identity.subject);
    host.set_request_header(&ih.scopes, &identity.scopes_header);
    host.set_request_header(&ih.issuer, identity.issuer_name());
    if !identity.key_id.is_empty() {
        host.set_request_header(&ih.key_id, &identity.key_id);
    }
    if let Some(Some(principal)) = &forwarding.principal {
        host.set_request_header(&ih.principal, principal);
    }
    // Usage is counted under the key id; a token of an outside issuer or a principal has
    // none (the key service keeps usage per Keygate key).
    let usage_key = identity
        .usage_key()
        .filter(|_| config.usage.enabled)
        .cloned();
    let route = match &usage_key {
        Some(usage_key) => {
            let (route, address) =
                usage_route_and_address(host, shared, usage_key, forwarding, now);
            shared
                .usage
                .borrow_mut()
                .allowed(usage_key, &route, address, forwarding.country, now);
            route
        }
        None => Arc::from(""),
    };
    // The response needs this request only for usage (its status class) or for the
    // rate-limit headers: reading the status is a host call, skipped when neither applies.
    if usage_key.is_some() || ratelimit.is_some() {
        let note = Note {
            key_id: usage_key,
            ratelimit,
            route,
            sent_ms: now,
        };
        shared.notes.borrow_mut().insert(context_id, note);
    }
    true
}

/// The route and client address usage counts an allowed request under, with at most one
/// host call (a property read): the route is known without one unless the matched route has
/// no `name` (then Envoy's route name is read). The client address is the one the filter
/// computed already (for an allow-list, or before the request waited); else it is read
/// (`source.address`, with `X-Forwarded-For` under `trusted_hops`) by a key's first allowed
/// request in each minute on each worker, and only by a request whose route name took no
/// read.
fn usage_route_and_address(
    host: &impl Host,
    shared: &Shared,
    usage_key: &str,
    forwarding: &Forwarding,
    now: u64,
) -> (Arc<str>, Option<std::net::IpAddr>) {
    let (route, route_read) = match &forwarding.route {
        RouteLabel::Known(route) => (Arc::clone(route), false),
        RouteLabel::Unread(fallback) => {
            let route = host
                .property(&["xds", "route_name"])
                .and_then(|name| String::from_utf8(name).ok())
                .filter(|name| !name.is_empty())
                .map_or_else(|| Arc::clone(fallback), Arc::from);
            (route, true)
        }
    };
    let address = match forwarding.client {
        Some(computed) => computed,
        None if !route_read && shared.usage.borrow().wants_address(usage_key, now) => {
            client_now(host, forwarding)
        }
        None => None,
    };
    (route, address)
}

/// Spends from the key's fleet buckets for the current request. An ask it needs is queued
/// for the tick (sent from the root context: an ask sent from a request's context is dropped
/// with the request, and its grant lost).
fn fleet_check(
    host: &impl Host,
    shared: &Shared,
    limits: &FleetLimits,
    forwarding: &Forwarding,
) -> Verdict {
    let (verdict, token) = shared.fleet.borrow_mut().check_at(
        host,
        &shared.fleet_asking(),
        limits,
        forwarding.cost,
        forwarding.fleet_may_wait,
        shared.now(host),
    );
    if let Some(token) = token {
        shared.callouts.borrow_mut().insert(token, Callout::Lease);
    }
    verdict
}

fn strip_credential(host: &impl Host, shared: &Shared, forwarding: &Forwarding) {
    let config = &shared.config;
    for source in &forwarding.sources {
        match source {
            Source::Bearer => host.remove_request_header("authorization"),
            Source::Header => {
                if let Some(header) = &config.credential_sources.header {
                    host.remove_request_header(header);
                }
            }
            Source::LegacyHeader => {
                if let Some(header) = &config.credential_sources.legacy_header {
                    host.remove_request_header(header);
                }
            }
            Source::QueryParam => {
                if let Some(path) = &forwarding.stripped_path {
                    host.set_request_header(":path", path);
                }
            }
        }
    }
}

/// Denies the request in the current effective context: in enforce mode sends the deny
/// response (returns false); in shadow mode only reports the decision upstream and lets the
/// request through (returns true).
pub fn deny(
    host: &impl Host,
    shared: &Shared,
    reason: &DenyReason,
    key_id: Option<&str>,
    mode: Mode,
) -> bool {
    deny_with(host, shared, reason, key_id, mode, &[])
}

fn deny_with(
    host: &impl Host,
    shared: &Shared,
    reason: &DenyReason,
    key_id: Option<&str>,
    mode: Mode,
    extra_headers: &[(&str, String)],
) -> bool {
    // Usage rows only for a proven key; other denials count per reason (the metric below).
    let usage_key = key_id.filter(|_| counts_under_key(reason));
    if let (Some(key_id), true) = (usage_key, shared.config.usage.enabled) {
        shared
            .usage
            .borrow_mut()
            .denied(key_id, reason.metric_name(), shared.now(host));
    }
    if mode == Mode::Shadow {
        shared.metrics.count_shadow_denial(host, reason);
    } else {
        shared.metrics.count_denial(host, reason);
    }
    replies(&shared.config).deny(host, reason, key_id, mode, extra_headers)
}

/// How denials are answered, from the configuration.
pub fn replies(config: &FilterConfig) -> Replies<'_> {
    Replies {
        decision_header: &config.decision_header,
        retry_after_seconds: config.retry_after_seconds,
    }
}

/// Finishes a paused request in its own context: applies a decision and resumes it, or
/// answers it, or (for [`Step::Wait`]) leaves it paused on the next thing it waits for.
pub fn complete(host: &impl Host, shared: &Shared, context_id: u32, step: Step) {
    if matches!(step, Step::Wait) {
        return;
    }
    if host.set_effective_context(context_id).is_err() {
        // The request is gone (client hung up); nothing to answer.
        return;
    }
    match step {
        Step::Continue => gate::resume(host, shared.gate(), context_id),
        Step::Wait => {}
        Step::Decided(forwarding, result) => {
            if apply(host, shared, context_id, &forwarding, result) {
                gate::resume(host, shared.gate(), context_id);
            }
        }
        Step::Deny(reason, label, mode) => {
            if deny(host, shared, &reason, label.as_deref(), mode) {
                gate::resume(host, shared.gate(), context_id);
            }
        }
    }
}
