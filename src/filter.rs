//! The root and HTTP contexts: read the request, ask the core, apply its answer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use keygate_core::binding::Requirement;
use keygate_core::config::FilterConfig;
use keygate_core::credential::{extract_credential, strip_query_param, CredentialError, Source};
use keygate_core::decision::DenyReason;
use keygate_core::fingerprint::Fingerprinter;
use keygate_core::headers::folds_to;
use keygate_core::jwt::looks_like_jwt;
use keygate_core::key::{key_id_of, looks_like_opaque_key, parse_opaque_key, KeyDigest, KeyId};
use keygate_core::limits::ForwardedFor;
use keygate_core::machine::callouts::{Callout, Callouts};
use keygate_core::machine::rate::{self};
use keygate_core::route::{has_path_parameter, policy_from_metadata, Mode, Policy};
use keygate_core::wire::RateLimit;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::answer::{apply, deny, replies};
use crate::feed::FeedView;
use crate::host::{self, ProxyHost};
use crate::lookup::resolve_record;
use crate::metrics::{Event, Metrics};
use crate::state::{Forwarding, JwtState, Lookups, Presented, Proof, Shared, Step, TokenRequest};
use crate::usage::Usage;

/// How often a worker looks at shared data while a request waits on another worker.
const FAST_TICK: Duration = Duration::from_millis(10);
/// How often a worker does its periodic work (JWKS refresh) otherwise.
const SLOW_TICK: Duration = Duration::from_millis(1000);

#[derive(Default)]
pub struct KeygateRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for KeygateRoot {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            on_call_response(shared, token_id, body_size);
        }
    }
}

impl RootContext for KeygateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(raw) = host::plugin_configuration() else {
            host::log(
                LogLevel::Critical,
                "refusing configuration: the plugin configuration is empty",
            );
            return false;
        };
        let Some(fingerprint_key) = host::random_bytes::<16>() else {
            host::log(
                LogLevel::Critical,
                "refusing configuration: the host gave no random bytes (WASI random_get)",
            );
            return false;
        };
        let loaded = FilterConfig::parse(&raw).and_then(|config| {
            let secrets = config.load_secrets(|var| std::env::var(var).ok())?;
            Ok((config, secrets))
        });
        match loaded {
            Ok((config, secrets)) => {
                host::log(
                    LogLevel::Info,
                    &format!(
                        "configured: {} routes, key service cluster '{}', cache ttl {} s, {} JWT issuer(s)",
                        config.routes.len(),
                        config.key_service.cluster,
                        config.cache.ttl_ms / 1000,
                        config.jwt.issuers.len(),
                    ),
                );
                crate::lookup::create_leases();
                rate::create_slots(&ProxyHost);
                let worker = crate::feed::next_worker_id();
                let jwt = JwtState::new(&config.jwt);
                let lookups = Lookups::new(&config);
                let shared = Rc::new(Shared {
                    config,
                    secrets,
                    metrics: Metrics::define(),
                    fingerprints: Fingerprinter::new(fingerprint_key),
                    lookups: RefCell::new(lookups),
                    jwt: RefCell::new(jwt),
                    feed: RefCell::new(FeedView::new(worker.clone())),
                    usage: RefCell::new(Usage::new(worker)),
                    callouts: RefCell::new(Callouts::default()),
                    notes: RefCell::new(HashMap::new()),
                    tick: Cell::new(Duration::ZERO),
                });
                crate::jwt::on_start(&shared);
                crate::feed::on_start(&shared);
                reschedule(&shared);
                self.shared = Some(shared);
                true
            }
            Err(err) => {
                host::log(
                    LogLevel::Critical,
                    &format!("refusing configuration: {err}"),
                );
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            crate::feed::on_tick(shared);
            crate::usage::on_tick(shared);
            crate::lookup::on_tick(shared);
            crate::jwt::on_tick(shared);
            reschedule(shared);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(KeygateHttp { context_id, shared }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Sets the tick period the current state needs: fast while requests wait on another
/// worker or while following the revocation feed (the tick is how a revocation reaches
/// this worker), slow when only periodic work is due, off otherwise.
pub fn reschedule(shared: &Shared) {
    let waiting = shared.config.revocation_feed.enabled
        || shared.lookups.borrow().has_remote_waits()
        || shared.jwt.borrow().has_waiters();
    let wanted = if waiting {
        FAST_TICK
    } else if shared.jwt.borrow().has_remote_issuers() || shared.config.usage.enabled {
        SLOW_TICK
    } else {
        Duration::ZERO
    };
    if shared.tick.replace(wanted) != wanted {
        host::set_tick_period(wanted);
    }
}

/// Routes a callout answer to what waits on it (one map for every kind of callout).
fn on_call_response(shared: &Shared, token_id: u32, body_size: usize) {
    let callout = shared.callouts.borrow_mut().take(token_id);
    match callout {
        Some(Callout::Lookup { id, legacy }) => {
            crate::lookup::on_response(shared, id, legacy, body_size);
        }
        Some(Callout::Jwks(issuer)) => crate::jwt::on_response(shared, issuer, body_size),
        Some(Callout::Feed) => crate::feed::on_response(shared, body_size),
        Some(Callout::Usage) => crate::usage::on_response(shared),
        None => {}
    }
    reschedule(shared);
}

pub struct KeygateHttp {
    context_id: u32,
    shared: Rc<Shared>,
}

impl Context for KeygateHttp {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        on_call_response(&self.shared, token_id, body_size);
    }
}

impl HttpContext for KeygateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let block = host::request_headers();
        let headers = block.pairs();
        let step = evaluate(&self.shared, self.context_id, &headers);
        let action = match step {
            Step::Continue => Action::Continue,
            Step::Wait => Action::Pause,
            Step::Decided(forwarding, result) => {
                if apply(&self.shared, self.context_id, &forwarding, result) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Step::Deny(reason, label, mode) => {
                if deny(&self.shared, &reason, label.as_deref(), mode) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
        };
        reschedule(&self.shared);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(note) = self.shared.notes.borrow_mut().remove(&self.context_id) else {
            return Action::Continue;
        };
        if let Some((policy, state)) = &note.ratelimit {
            host::set_response_header("ratelimit-policy", policy);
            host::set_response_header("ratelimit", state);
        }
        if !self.shared.config.usage.enabled {
            return Action::Continue;
        }
        if let Some(status) = host::response_status() {
            self.shared
                .usage
                .borrow_mut()
                .status(&note.key_id, status, host::now_ms());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.shared.notes.borrow_mut().remove(&self.context_id);
        self.shared.lookups.borrow_mut().forget(self.context_id);
        self.shared.jwt.borrow_mut().forget(self.context_id);
    }
}

/// The request's headers as read at its start: (name, value) pairs.
pub type Headers<'a> = [(&'a str, &'a [u8])];

fn evaluate(shared: &Shared, context_id: u32, headers: &Headers) -> Step {
    let config = &shared.config;
    let mut method = "";
    let mut path = "";
    for &(name, value) in headers {
        match name {
            ":method" => method = std::str::from_utf8(value).unwrap_or_default(),
            ":path" => path = std::str::from_utf8(value).unwrap_or_default(),
            n if config.header_rules.removes(n) => host::remove_request_header(n),
            _ => {}
        }
    }
    if has_path_parameter(path) {
        return Step::Deny(DenyReason::PathParameter, None, config.mode);
    }

    let (policy, mode, route_rate_limit, forward_credential) =
        match route_policy(shared, method, path) {
            Ok(found) => found,
            Err(reason) => return Step::Deny(reason, None, config.mode),
        };
    let required = match policy {
        None => {
            shared.metrics.count(Event::AllowedPublic);
            if mode == Mode::Shadow {
                replies(config).shadow_allow(&ProxyHost, true);
            } else if !forward_credential {
                strip_unchecked_credentials(config, headers, path);
            }
            return Step::Continue;
        }
        Some(required) => required,
    };
    if mode == Mode::Enforce {
        strip_credential_lookalikes(config, headers);
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
            return Step::Deny(DenyReason::MissingCredential, None, mode)
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
    let forwarding = Forwarding {
        mode,
        sources: extracted.sources,
        stripped_path,
        client: None,
        forwarded_for,
        route_rate_limit,
        key_id: None,
        forward_credential,
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
        return resolve_record(shared, context_id, presented);
    }

    if looks_like_opaque_key(credential, &config.key_prefixes) {
        if credential.len() > config.max_credential_bytes {
            return Step::Deny(DenyReason::BadRequest(CredentialError::TooLong), None, mode);
        }
        // A record this worker holds fresh already decides at once: the key's digest (or
        // the fingerprint of a text proven before) proves it or refutes it, without the
        // checksum and tag checks, which exist to spare the key service.
        if let Some(id) = key_id_of(credential, &config.key_prefixes) {
            let now = host::now_ms();
            if let Some(result) =
                crate::lookup::decide_fresh(shared, &id, credential, &required, &forwarding, now)
            {
                let mut forwarding = forwarding;
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
        let mut forwarding = forwarding;
        forwarding.key_id = Some(parsed.id());
        let presented = Presented {
            key_id: parsed.id(),
            proof: Proof::Opaque(parsed.digest()),
            required,
            forwarding,
            legacy: false,
        };
        return resolve_record(shared, context_id, presented);
    }
    if !config.jwt.issuers.is_empty() && looks_like_jwt(credential) {
        let request = TokenRequest {
            token: credential.to_owned(),
            required,
            forwarding,
        };
        return crate::jwt::evaluate_token(shared, context_id, request);
    }
    Step::Deny(DenyReason::MalformedKey, None, mode)
}

/// The policy for this request (`None`: public; else what the key must hold and be bound
/// to, the path's parameters filled in), the mode it runs in, the route's default rate limit and
/// whether it forwards the credential. Route metadata on the Envoy route wins; otherwise the
/// filter's route table (entries by Envoy route name or by method and path, first match). No
/// policy anywhere: denied.
fn route_policy(
    shared: &Shared,
    method: &str,
    path: &str,
) -> Result<(Option<Requirement>, Mode, Option<RateLimit>, bool), DenyReason> {
    let config = &shared.config;
    if config.route_metadata {
        let leaf = |name: &str| {
            host::property(&["xds", "route_metadata", "filter_metadata", "keygate", name])
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
                return Ok((required, mode.unwrap_or(config.mode), None, false));
            }
            Ok(None) => {}
            Err(err) => {
                host::log(
                    LogLevel::Warn,
                    &format!("route metadata filter_metadata.keygate is invalid, denying: {err}"),
                );
                return Err(DenyReason::NoRoute);
            }
        }
    }
    let route_name = if config.routes.uses_route_names() {
        host::property(&["xds", "route_name"]).and_then(|name| String::from_utf8(name).ok())
    } else {
        None
    };
    let route = config
        .routes
        .find(method, path, route_name.as_deref())
        .ok_or(DenyReason::NoRoute)?;
    Ok((
        route.requirement(path).map_err(DenyReason::Binding)?,
        route.mode.unwrap_or(config.mode),
        route.rate_limit,
        route.forward_credential,
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
    let mut bytes = [0u8; keygate_core::key::ID_LEN];
    bytes.copy_from_slice(&digest.as_bytes()[..keygate_core::key::ID_LEN]);
    KeyId::from_bytes(bytes)
}

/// On a route that checks no credential (public): removes every Keygate credential the
/// client sent anyway, so it does not reach the upstream (and its logs): a bearer token, the
/// credential and legacy-key headers in any spelling an upstream framework folds together,
/// and the query parameter.
fn strip_unchecked_credentials(config: &FilterConfig, headers: &Headers, path: &str) {
    let sources = &config.credential_sources;
    for &(name, value) in headers {
        let credential_header = folds_to_credential_header(config, name);
        let bearer = sources.bearer
            && name == "authorization"
            && value.len() >= 7
            && value[..7].eq_ignore_ascii_case(b"bearer ");
        if credential_header || bearer {
            host::remove_request_header(name);
        }
    }
    if let Some(param) = &sources.query_param {
        // Checked first so that a public request without the parameter allocates nothing.
        let query = path.split_once('?').map_or("", |(_, query)| query);
        let named = |pair: &str| pair.split_once('=').map_or(pair, |(name, _)| name) == param;
        if query.split('&').any(named) {
            host::set_request_header(":path", &strip_query_param(path, param));
        }
    }
}

/// True when `name` is a credential header in a spelling an upstream framework folds into it
/// (`X_Api_Key` for `x-api-key`), the exact spelling included.
fn folds_to_credential_header(config: &FilterConfig, name: &str) -> bool {
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
fn strip_credential_lookalikes(config: &FilterConfig, headers: &Headers) {
    let sources = &config.credential_sources;
    for &(name, _) in headers {
        let exact = [&sources.header, &sources.legacy_header]
            .into_iter()
            .flatten()
            .any(|header| name == header.as_str());
        if !exact && folds_to_credential_header(config, name) {
            host::remove_request_header(name);
        }
    }
}
