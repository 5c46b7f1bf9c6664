//! `keygate.wasm`: the proxy-wasm HTTP filter. Glue only — every decision is made by
//! `keygate-core`; this crate reads the request, talks to the host through [`host`], and
//! applies what the core decided.

mod filter;
mod host;

/// The parser of the host's header blocks, for the fuzz targets (`fuzz/`); not an API.
#[doc(hidden)]
pub use host::parse_header_block;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // A panic aborts the VM (`panic = "abort"`); its message goes to Envoy's log first, so
    // the abort is not silent.
    std::panic::set_hook(Box::new(|info| {
        host::log(LogLevel::Critical, &format!("keygate panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(filter::KeygateRoot::default()) });
}}
