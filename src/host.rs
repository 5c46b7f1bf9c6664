//! The one door to the proxy-wasm host. Every other module calls these functions instead of
//! the SDK, so the calls Keygate makes are few, typed and easy to audit. Header values are
//! read as bytes only: the SDK's string getters panic on non-UTF-8 input.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

/// A host call that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The host refused the arguments (unknown cluster, dead context, ...).
    Refused(Status),
    /// Shared data changed since it was read.
    CasMismatch,
}

fn refused(status: Status) -> HostError {
    match status {
        Status::CasMismatch => HostError::CasMismatch,
        other => HostError::Refused(other),
    }
}

pub fn log(level: LogLevel, message: &str) {
    // Nothing useful can be done if logging itself fails.
    let _ = hostcalls::log(level, message);
}

/// Milliseconds since the Unix epoch by the host's clock (0 if the host cannot say).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Calls a host foreign function (such as Envoy's `verify_signature`).
pub fn call_foreign_function(name: &str, arguments: &[u8]) -> Result<Bytes, HostError> {
    hostcalls::call_foreign_function(name, Some(arguments))
        .map(Option::unwrap_or_default)
        .map_err(refused)
}

/// A host property such as `["xds", "route_name"]`; `None` when absent.
pub fn property(path: &[&str]) -> Option<Bytes> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

pub fn plugin_configuration() -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
}

pub fn set_tick_period(period: Duration) {
    let _ = hostcalls::set_tick_period(period);
}

pub fn define_counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

pub fn define_gauge(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Gauge, name).ok()
}

pub fn increment(metric: Option<u32>) {
    increment_by(metric, 1);
}

pub fn increment_by(metric: Option<u32>, by: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
    }
}

pub fn record(metric: Option<u32>, value: u64) {
    if let Some(id) = metric {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Makes `context_id` the context later calls act on; fails when that request is gone.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    hostcalls::set_effective_context(context_id).map_err(refused)
}

pub fn request_headers() -> Vec<(String, Bytes)> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
}

pub fn set_request_header(name: &str, value: &str) {
    let _ =
        hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value.as_bytes()));
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

pub fn resume_request() {
    let _ = hostcalls::resume_http_request();
}

pub fn send_local_reply(status: u32, headers: Vec<(&str, &str)>, body: &[u8]) {
    let _ = hostcalls::send_http_response(status, headers, Some(body));
}

pub fn get_shared(key: &str) -> (Option<Bytes>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

pub fn set_shared(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
    hostcalls::set_shared_data(key, Some(value), cas).map_err(refused)
}

/// Starts an HTTP call to `cluster`; the answer arrives in `on_http_call_response`.
pub fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<u32, HostError> {
    hostcalls::dispatch_http_call(cluster, headers, None, vec![], timeout).map_err(refused)
}

pub fn set_response_header(name: &str, value: &str) {
    let _ =
        hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value.as_bytes()));
}

/// The upstream response's `:status`.
pub fn response_status() -> Option<u32> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Like [`dispatch_http_call`], with a request body.
pub fn dispatch_http_call_with_body(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    hostcalls::dispatch_http_call(cluster, headers, Some(body), vec![], timeout).map_err(refused)
}

/// The `:status` of the current HTTP call's response, if it has one.
pub fn call_response_status() -> Option<u32> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Up to `max` bytes of the current HTTP call's response body.
pub fn call_response_body(size: usize, max: usize) -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size.min(max))
        .ok()
        .flatten()
}
