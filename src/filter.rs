//! The root and HTTP contexts: read the request, hand it to the core's worker
//! ([`keygate_core::machine::worker`]), and tell Envoy whether the request goes on.

use std::rc::Rc;

use keygate_core::config::FilterConfig;
use keygate_core::geo::StripRole;
use keygate_core::machine::gate::{BodyStep, Stage};
use keygate_core::machine::state::Shared;
use keygate_core::machine::worker;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::host::{self, ProxyHost};

#[derive(Default)]
pub struct KeygateRoot {
    shared: Option<Rc<Shared>>,
    /// Set in the strip role: the filter only removes these headers.
    strip: Option<Rc<StripRole>>,
}

impl Context for KeygateRoot {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            worker::on_call_response(&ProxyHost, shared, token_id, body_size);
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
        match StripRole::parse(&raw) {
            Ok(Some(role)) => {
                host::log(
                    LogLevel::Info,
                    &format!(
                        "configured in the strip role: removing {} from every request",
                        role.headers.join(", ")
                    ),
                );
                self.strip = Some(Rc::new(role));
                return true;
            }
            Ok(None) => {}
            Err(err) => {
                host::log(
                    LogLevel::Critical,
                    &format!("refusing configuration: {err}"),
                );
                return false;
            }
        }
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
                host::define_metrics();
                self.shared = Some(worker::start(&ProxyHost, config, secrets, fingerprint_key));
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
            worker::on_tick(&ProxyHost, shared);
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(shared) = &self.shared {
            worker::on_queue_ready(&ProxyHost, shared, queue_id);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        if let Some(role) = &self.strip {
            return Some(Box::new(StripHttp { role: role.clone() }));
        }
        let shared = self.shared.clone()?;
        Some(Box::new(KeygateHttp {
            context_id,
            shared,
            stage: Stage::Open,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

pub struct KeygateHttp {
    context_id: u32,
    shared: Rc<Shared>,
    /// Whether the body and trailers go on: held while the decision is pending (see
    /// [`keygate_core::machine::gate`]), or read first on a signed route.
    stage: Stage,
}

impl Context for KeygateHttp {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        worker::on_call_response(&ProxyHost, &self.shared, token_id, body_size);
    }
}

impl KeygateHttp {
    fn body_action(&mut self, step: BodyStep) -> Action {
        match step {
            BodyStep::Continue => Action::Continue,
            BodyStep::Pause => Action::Pause,
            BodyStep::TooLarge => {
                worker::on_body_too_large(&ProxyHost, &self.shared);
                Action::Pause
            }
            BodyStep::Decide(body_size) => {
                let body = self.get_http_request_body(0, body_size).unwrap_or_default();
                let block = host::request_headers();
                let headers = block.pairs();
                let went_on = worker::on_request_body(
                    &ProxyHost,
                    &self.shared,
                    self.context_id,
                    &headers,
                    &body,
                );
                self.stage = Stage::decided(went_on);
                action(went_on)
            }
        }
    }
}

fn action(go_on: bool) -> Action {
    if go_on {
        Action::Continue
    } else {
        Action::Pause
    }
}

impl HttpContext for KeygateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let block = host::request_headers();
        let headers = block.pairs();
        if !end_of_stream && worker::wants_body(&ProxyHost, &self.shared, &headers) {
            self.stage = Stage::ReadingBody(0);
            return Action::Pause;
        }
        let went_on =
            worker::on_request_headers(&ProxyHost, &self.shared, self.context_id, &headers);
        self.stage = Stage::decided(went_on);
        action(went_on)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let step = self.stage.on_body(
            self.shared.gate(),
            self.context_id,
            body_size,
            end_of_stream,
        );
        self.body_action(step)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let step = self.stage.on_trailers(self.shared.gate(), self.context_id);
        self.body_action(step)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        worker::on_response_headers(&ProxyHost, &self.shared, self.context_id);
        Action::Continue
    }

    fn on_log(&mut self) {
        worker::on_log(&self.shared, self.context_id);
    }
}

/// The strip role's request: the listed headers removed, nothing else.
pub struct StripHttp {
    role: Rc<StripRole>,
}

impl Context for StripHttp {}

impl HttpContext for StripHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.role.strip(&ProxyHost);
        Action::Continue
    }
}
