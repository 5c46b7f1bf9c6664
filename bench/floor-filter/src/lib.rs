//! The floor filter: what any authorizing proxy-wasm filter must do on every request, and no
//! more. Its plugin configuration is a list of steps, separated by commas or spaces:
//!
//! - (always) read the request header map once, find `authorization`, and add one header
//!   (`x-floor-client`) whose value depends on what was read: the least a filter that decides
//!   on a credential and tells the upstream who called must do (configuration H1);
//! - `shared`: one shared-data read of a ~300-byte value, as a cached record lookup (H2);
//! - `rewrite`: remove the credential header and add three identity headers (H3);
//! - `status`: read the response `:status`, as usage counting does (H4).
//!
//! An unknown step fails the configuration (Envoy refuses to start), so a typo cannot measure
//! the wrong thing.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

/// The shared-data key read by the `shared` step; the root context stores a value there.
const SHARED_KEY: &str = "keygate-bench-floor.record";
/// The size of that value: about one cached key record.
const SHARED_BYTES: usize = 300;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { steps: Steps::default() })
    });
}}

#[derive(Clone, Copy, Default, Debug)]
struct Steps {
    shared: bool,
    rewrite: bool,
    status: bool,
}

impl Steps {
    fn parse(text: &str) -> Option<Self> {
        let mut steps = Self::default();
        for word in text.split(|c: char| c == ',' || c.is_whitespace()) {
            match word {
                "" | "floor" => {}
                "shared" => steps.shared = true,
                "rewrite" => steps.rewrite = true,
                "status" => steps.status = true,
                _ => return None,
            }
        }
        Some(steps)
    }
}

struct FloorRoot {
    steps: Steps,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let Some(steps) = Steps::parse(&text) else {
            proxy_wasm::hostcalls::log(LogLevel::Error, &format!("unknown step in {text:?}")).ok();
            return false;
        };
        if steps.shared {
            let value = vec![b'r'; SHARED_BYTES];
            if self
                .set_shared_data(SHARED_KEY, Some(&value), None)
                .is_err()
            {
                return false;
            }
        }
        self.steps = steps;
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp { steps: self.steps }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    steps: Steps,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One read of the whole map.
        let headers = self.get_http_request_headers();
        let credential = headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.len());
        let mut found = credential.is_some();
        if self.steps.shared {
            let (record, _cas) = self.get_shared_data(SHARED_KEY);
            found &= record.is_some_and(|r| r.len() == SHARED_BYTES);
        }
        // One header out, derived from what was read.
        self.add_http_request_header("x-floor-client", if found { "known" } else { "none" });
        if self.steps.rewrite {
            self.set_http_request_header("authorization", None);
            self.add_http_request_header("x-floor-key-id", "kid_0123456789abcdef");
            self.add_http_request_header("x-floor-subject", "bench-owner");
            self.add_http_request_header("x-floor-scopes", "demo:read");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.steps.status {
            let status = self.get_http_response_header(":status");
            if status.as_deref() == Some("599") {
                // Never true here; keeps the read from being a no-op to the reader.
                self.set_http_response_header("x-floor-status", Some("599"));
            }
        }
        Action::Continue
    }
}
