//! The floor filter: what any authorizing proxy-wasm filter must do on every request, and no
//! more. Its plugin configuration is a list of steps, separated by commas or spaces:
//!
//! - (always) read the request header map once, find `authorization`, and add one header
//!   (`x-floor-client`) whose value depends on what was read: the least a filter that decides
//!   on a credential and tells the upstream who called must do (configuration H1). The map is
//!   read as Keygate reads it: one host call, its serialised answer scanned in place (the
//!   SDK's `get_http_request_headers` would copy every name and value into a `String` of its
//!   own, which costs more than the call itself and would put the floor too high);
//! - `shared`: one shared-data read of a ~300-byte value, as a cached record lookup (H2);
//! - `rewrite`: remove the credential header and add three identity headers (H3);
//! - `status`: read the response `:status`, as usage counting does (H4).
//!
//! An unknown step fails the configuration (Envoy refuses to start), so a typo cannot measure
//! the wrong thing.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, Status};

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
        let block = request_header_block();
        let mut found = header_in_block(&block, b"authorization").is_some_and(|v| !v.is_empty());
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
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
            if matches!(status, Ok(Some(ref s)) if s.as_slice() == b"599") {
                // Never true here; keeps the read from being a no-op to the reader.
                self.set_http_response_header("x-floor-status", Some("599"));
            }
        }
        Action::Continue
    }
}

mod ffi {
    use proxy_wasm::types::{MapType, Status};

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_header_map_pairs(
            map_type: MapType,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> Status;
    }
}

/// The request headers as the host serialised them, in one buffer.
fn request_header_block() -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (proxy-wasm 0.2.5's, pinned exactly: a boxed `[u8]` of that
    // length), so the buffer is ours to own as a `Vec` of that length and capacity, as the
    // SDK's own `get_map_bytes` does.
    unsafe {
        match ffi::proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

/// The value of header `name` in a serialised block (a count, then a (name length, value
/// length) pair per header, then each name and value followed by a NUL, all little-endian
/// `u32`), found in place; `None` when absent or when the block does not add up.
fn header_in_block<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let word = |at: usize| -> Option<usize> {
        let bytes = block.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    for _ in 0..count {
        let (name_len, value_len) = (word(sizes_at)?, word(sizes_at + 4)?);
        sizes_at += 8;
        let this = block.get(data_at..data_at.checked_add(name_len)?)?;
        data_at = data_at.checked_add(name_len + 1)?;
        if this == name {
            return block.get(data_at..data_at.checked_add(value_len)?);
        }
        data_at = data_at.checked_add(value_len + 1)?;
    }
    None
}
