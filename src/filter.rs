//! The root and HTTP contexts: read the request, ask the core, apply its answer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use keygate_core::config::{FilterConfig, Secrets};
use keygate_core::credential::{extract_credential, strip_query_param, CredentialError, Source};
use keygate_core::decision::{DenyReason, Identity};
use keygate_core::key::{looks_like_opaque_key, parse_opaque_key, KeyDigest, KeyId};
use keygate_core::route::Policy;
use keygate_core::scope::Scope;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::host;
use crate::lookup::{Lookups, Outcome};
use crate::metrics::{Event, Metrics};

/// What every context of one VM (one Envoy worker) shares.
pub struct Shared {
    pub config: FilterConfig,
    pub secrets: Secrets,
    pub metrics: Metrics,
    pub lookups: RefCell<Lookups>,
}

/// A request with an authentic key, waiting for (or decided from) the key's record.
#[derive(Debug)]
pub struct Presented {
    pub key_id: KeyId,
    pub digest: KeyDigest,
    pub required: Vec<Scope>,
    pub sources: Vec<Source>,
    /// The path to forward when the credential came in the query string.
    pub stripped_path: Option<String>,
}

#[derive(Default)]
pub struct KeygateRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for KeygateRoot {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            crate::lookup::on_response(shared, token_id, body_size);
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
        let loaded = FilterConfig::parse(&raw).and_then(|config| {
            let secrets = config.load_secrets(|var| std::env::var(var).ok())?;
            Ok((config, secrets))
        });
        match loaded {
            Ok((config, secrets)) => {
                host::log(
                    LogLevel::Info,
                    &format!(
                        "configured: {} routes, key service cluster '{}', cache ttl {} s",
                        config.routes.len(),
                        config.key_service.cluster,
                        config.cache.ttl_ms / 1000
                    ),
                );
                crate::lookup::create_leases();
                self.shared = Some(Rc::new(Shared {
                    config,
                    secrets,
                    metrics: Metrics::define(),
                    lookups: RefCell::new(Lookups::default()),
                }));
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
            crate::lookup::on_tick(shared);
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

pub struct KeygateHttp {
    context_id: u32,
    shared: Rc<Shared>,
}

impl Context for KeygateHttp {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        crate::lookup::on_response(&self.shared, token_id, body_size);
    }
}

impl HttpContext for KeygateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match evaluate(&self.shared, self.context_id) {
            Step::Continue => Action::Continue,
            Step::Wait => Action::Pause,
            Step::Decided(presented, result) => {
                if apply(&self.shared, &presented, result) {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            Step::Deny(reason, key_id) => {
                deny(&self.shared, &reason, key_id.as_ref());
                Action::Pause
            }
        }
    }

    fn on_log(&mut self) {
        self.shared.lookups.borrow_mut().forget(self.context_id);
    }
}

enum Step {
    /// A public route: forward as is.
    Continue,
    /// Paused until the key's record arrives.
    Wait,
    Decided(Presented, Result<Identity, DenyReason>),
    Deny(DenyReason, Option<KeyId>),
}

fn evaluate(shared: &Shared, context_id: u32) -> Step {
    let config = &shared.config;
    let headers = host::request_headers();
    let mut method = "";
    let mut path = "";
    for (name, value) in &headers {
        match name.as_str() {
            ":method" => method = std::str::from_utf8(value).unwrap_or_default(),
            ":path" => path = std::str::from_utf8(value).unwrap_or_default(),
            n if is_identity_header(config, n) => host::remove_request_header(n),
            _ => {}
        }
    }

    let Some(route) = config.routes.find(method, path) else {
        return Step::Deny(DenyReason::NoRoute, None);
    };
    let required = match &route.policy {
        Policy::Public => {
            shared.metrics.count(Event::AllowedPublic);
            return Step::Continue;
        }
        Policy::Scopes(scopes) => scopes,
    };

    let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
    let extracted = match extract_credential(
        &config.credential_sources,
        pairs,
        path,
        config.max_credential_bytes,
    ) {
        Ok(extracted) => extracted,
        Err(CredentialError::Missing) => return Step::Deny(DenyReason::MissingCredential, None),
        Err(err) => return Step::Deny(DenyReason::BadRequest(err), None),
    };
    if !looks_like_opaque_key(extracted.credential, &config.key_prefixes) {
        return Step::Deny(DenyReason::MalformedKey, None);
    }
    let parsed = match parse_opaque_key(extracted.credential, &config.key_prefixes) {
        Ok(parsed) => parsed,
        Err(_) => return Step::Deny(DenyReason::MalformedKey, None),
    };
    if !parsed.tag_is_authentic(&shared.secrets.gateway_key) {
        return Step::Deny(DenyReason::ForgedKey, Some(parsed.id()));
    }

    let stripped_path = match (
        &config.credential_sources.query_param,
        extracted.sources.contains(&Source::QueryParam),
    ) {
        (Some(param), true) => Some(strip_query_param(path, param)),
        _ => None,
    };
    let presented = Presented {
        key_id: parsed.id(),
        digest: parsed.digest(),
        required: required.clone(),
        sources: extracted.sources,
        stripped_path,
    };
    match crate::lookup::resolve(shared, context_id, presented) {
        Outcome::Wait => Step::Wait,
        Outcome::Now(presented, result) => Step::Decided(presented, result),
    }
}

fn is_identity_header(config: &FilterConfig, name: &str) -> bool {
    let ih = &config.identity_headers;
    name.starts_with("x-keygate-") || name == ih.subject || name == ih.key_id || name == ih.scopes
}

/// Applies a decision in the current effective context. Returns true when the request
/// goes on upstream.
pub fn apply(shared: &Shared, presented: &Presented, result: Result<Identity, DenyReason>) -> bool {
    match result {
        Ok(identity) => {
            let config = &shared.config;
            for source in &presented.sources {
                match source {
                    Source::Bearer => host::remove_request_header("authorization"),
                    Source::Header => {
                        if let Some(header) = &config.credential_sources.header {
                            host::remove_request_header(header);
                        }
                    }
                    Source::QueryParam => {}
                }
            }
            if let Some(path) = &presented.stripped_path {
                host::set_request_header(":path", path);
            }
            let ih = &config.identity_headers;
            host::set_request_header(&ih.subject, &identity.subject);
            host::set_request_header(&ih.key_id, &identity.key_id);
            host::set_request_header(&ih.scopes, &identity.scopes_header());
            shared.metrics.count(Event::Allowed);
            true
        }
        Err(reason) => {
            deny(shared, &reason, Some(&presented.key_id));
            false
        }
    }
}

/// Sends the deny response in the current effective context.
pub fn deny(shared: &Shared, reason: &DenyReason, key_id: Option<&KeyId>) {
    shared.metrics.count_denial(reason);
    host::log(
        LogLevel::Info,
        &format!(
            "denied status={} reason={} key_id={}",
            reason.status(),
            reason.metric_name(),
            key_id.map_or("-", KeyId::as_str)
        ),
    );
    let challenge = reason.www_authenticate();
    let retry_after = shared.config.retry_after_seconds.to_string();
    let mut headers = vec![
        ("content-type", "application/problem+json"),
        ("cache-control", "no-store"),
    ];
    if let Some(challenge) = &challenge {
        headers.push(("www-authenticate", challenge.as_str()));
    }
    if reason.status() == 503 {
        headers.push(("retry-after", retry_after.as_str()));
    }
    host::send_local_reply(reason.status(), headers, reason.problem_json().as_bytes());
}

/// Resumes a paused request after applying its decision in its own context.
pub fn complete(
    shared: &Shared,
    context_id: u32,
    presented: &Presented,
    result: Result<Identity, DenyReason>,
) {
    if host::set_effective_context(context_id).is_err() {
        // The request is gone (client hung up); nothing to answer.
        return;
    }
    if apply(shared, presented, result) {
        host::resume_request();
    }
}

/// How long a lookup may take before others stop waiting on it.
pub fn lookup_timeout(config: &FilterConfig) -> Duration {
    Duration::from_millis(config.key_service.timeout_ms)
}
