//! The one door to the proxy-wasm host. Every other module calls these functions instead of
//! the SDK, so the calls Keygate makes are few, typed and easy to audit. Header values are
//! read as bytes only: the SDK's string getters panic on non-UTF-8 input.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use keygate_core::decision::DenyReason;
use keygate_core::host::{Event, Host, LogLevel as CoreLevel, Versioned};
use keygate_core::jwt::JwtError;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, MetricType, Status};

pub use keygate_core::host::HostError;

fn refused(status: Status) -> HostError {
    HostError::Refused(match status {
        Status::CasMismatch => return HostError::CasMismatch,
        Status::Ok => "Ok",
        Status::NotFound => "NotFound",
        Status::BadArgument => "BadArgument",
        Status::SerializationFailure => "SerializationFailure",
        Status::ParseFailure => "ParseFailure",
        Status::Empty => "Empty",
        Status::InternalFailure => "InternalFailure",
        _ => "Unknown",
    })
}

/// The proxy-wasm host as the core's [`Host`]: the one implementation of the trait.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyHost;

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn log(&self, level: CoreLevel, message: &str) {
        let level = match level {
            CoreLevel::Trace => LogLevel::Trace,
            CoreLevel::Debug => LogLevel::Debug,
            CoreLevel::Info => LogLevel::Info,
            CoreLevel::Warn => LogLevel::Warn,
            CoreLevel::Error => LogLevel::Error,
            CoreLevel::Critical => LogLevel::Critical,
        };
        log(level, message);
    }

    fn get_shared(&self, key: &str) -> Versioned {
        get_shared(key)
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        set_shared(key, value, cas)
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, vec![], timeout)
            .map_err(refused)
    }

    fn call_response_status(&self) -> Option<u32> {
        call_response_status()
    }

    fn call_response_body(&self, size: usize, max: usize) -> Option<Vec<u8>> {
        call_response_body(size, max)
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        property(path)
    }

    fn set_request_header(&self, name: &str, value: &str) {
        set_request_header(name, value);
    }

    fn remove_request_header(&self, name: &str) {
        remove_request_header(name);
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        send_local_reply(status, headers.to_vec(), body);
    }

    fn count(&self, event: Event, by: u64) {
        increment_by(event_id(event), by);
    }

    fn gauge(&self, event: Event, value: u64) {
        record(event_id(event), value);
    }

    fn count_denial(&self, shadow: bool, reason: &'static str, by: u64) {
        let id = DENIAL_IDS.with(|ids| {
            let ids = ids.borrow();
            let ids = if shadow { &ids.1 } else { &ids.0 };
            ids.get(reason).copied().flatten()
        });
        increment_by(id, by);
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        hostcalls::set_effective_context(context_id).map_err(refused)
    }

    fn resume_request(&self) {
        let _ = hostcalls::resume_http_request();
    }

    fn set_response_header(&self, name: &str, value: &str) {
        let _ = hostcalls::set_map_value_bytes(
            MapType::HttpResponseHeaders,
            name,
            Some(value.as_bytes()),
        );
    }

    fn response_status(&self) -> Option<u32> {
        let value = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()?;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }

    fn call_foreign_function(&self, name: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError> {
        hostcalls::call_foreign_function(name, Some(arguments))
            .map(Option::unwrap_or_default)
            .map_err(refused)
    }

    fn set_tick_period(&self, period: Duration) {
        let _ = hostcalls::set_tick_period(period);
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn post_to_queue(&self, name: &str, message: &[u8]) -> bool {
        let queue = VM_ID.with(|vm_id| {
            let vm_id = vm_id.get_or_init(|| {
                property(&["plugin_vm_id"])
                    .and_then(|id| String::from_utf8(id).ok())
                    .unwrap_or_default()
            });
            hostcalls::resolve_shared_queue(vm_id, name)
        });
        match queue {
            Ok(Some(queue)) => hostcalls::enqueue_shared_queue(queue, Some(message)).is_ok(),
            _ => false,
        }
    }

    fn take_from_queue(&self, queue: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue).ok().flatten()
    }
}

/// Metric ids of denials by reason: (enforced, shadow).
type DenialIds = (
    HashMap<&'static str, Option<u32>>,
    HashMap<&'static str, Option<u32>>,
);

thread_local! {
    /// The metric ids of the events (defined at configure), for [`ProxyHost`]'s metrics. A VM
    /// runs on one thread.
    static EVENT_IDS: Cell<[Option<u32>; Event::ALL.len()]> =
        const { Cell::new([None; Event::ALL.len()]) };
    static DENIAL_IDS: RefCell<DenialIds> = RefCell::new((HashMap::new(), HashMap::new()));
    /// This plugin's VM id (`vm_config.vm_id`), read once: queues are named within it.
    static VM_ID: std::cell::OnceCell<String> = const { std::cell::OnceCell::new() };
}

/// Defines every counter and gauge (`wasmcustom.keygate.*`) and keeps their ids.
pub fn define_metrics() {
    let events = Event::ALL.map(|event| {
        let kind = if event.is_gauge() {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        hostcalls::define_metric(kind, event.name()).ok()
    });
    EVENT_IDS.with(|defined| defined.set(events));
    let denials = (
        reason_counters("keygate.denied"),
        reason_counters("keygate.shadow.denied"),
    );
    DENIAL_IDS.with(|defined| *defined.borrow_mut() = denials);
}

/// One counter per deny reason (opaque keys and JWTs) under `prefix`.
fn reason_counters(prefix: &str) -> HashMap<&'static str, Option<u32>> {
    DenyReason::METRIC_NAMES
        .iter()
        .chain(JwtError::METRIC_NAMES.iter())
        .map(|name| {
            let id = hostcalls::define_metric(MetricType::Counter, &format!("{prefix}.{name}"));
            (*name, id.ok())
        })
        .collect()
}

fn event_id(event: Event) -> Option<u32> {
    EVENT_IDS.with(|defined| defined.get().get(event as usize).copied().flatten())
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

/// A host property such as `["xds", "route_name"]`; `None` when absent.
pub fn property(path: &[&str]) -> Option<Bytes> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

pub fn plugin_configuration() -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
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

/// The request headers as the host serialised them: one buffer, read in place. (The SDK's
/// `get_map_bytes` copies every name and value into its own allocation, which on the hot
/// path costs more than the host call itself.)
pub struct HeaderBlock(Bytes);

/// Reads every request header in one host call.
pub fn request_headers() -> HeaderBlock {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (the SDK's, which hands out a boxed `[u8]` of exactly that
    // length), so the buffer is ours to own as a `Vec` of that length and capacity, as the
    // SDK's own `get_map_bytes` does.
    let bytes = unsafe {
        match ffi::proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    };
    HeaderBlock(bytes)
}

impl HeaderBlock {
    /// The (name, value) pairs, borrowed from the block. The serialisation is a count, then
    /// a (name length, value length) pair per header, then each name and value followed by
    /// a NUL, all little-endian `u32`. A block that does not add up yields no headers; a
    /// name that is not UTF-8 (Envoy's codecs admit only token characters) is skipped.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        parse_header_block(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
fn serialise_header_block(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    let word = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend(word(pairs.len()));
    for (name, value) in pairs {
        out.extend(word(name.len()));
        out.extend(word(value.len()));
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(*value);
        out.push(0);
    }
    out
}

/// Reads a serialised header block (see [`HeaderBlock::pairs`]); `None` when it does not add
/// up. Public for the fuzz targets (`fuzz/`).
pub fn parse_header_block(block: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let word = |at: usize| -> Option<usize> {
        let bytes = block.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut sizes_at = 4usize;
    let mut data_at = count.checked_mul(8)?.checked_add(4)?;
    if data_at > block.len() {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let (name_len, value_len) = (word(sizes_at)?, word(sizes_at + 4)?);
        sizes_at += 8;
        let name = block.get(data_at..data_at.checked_add(name_len)?)?;
        data_at += name_len + 1;
        let value = block.get(data_at..data_at.checked_add(value_len)?)?;
        data_at += value_len + 1;
        if let Ok(name) = std::str::from_utf8(name) {
            pairs.push((name, value));
        }
    }
    Some(pairs)
}

/// Random bytes from the host (WASI `random_get`).
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(bytes)
}

pub fn set_request_header(name: &str, value: &str) {
    let _ =
        hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value.as_bytes()));
}

pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn serialise(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        serialise_header_block(pairs)
    }

    #[test]
    fn serialises_as_the_host_does() {
        let pairs: [(&str, &[u8]); 2] = [(":path", b"/v1/x"), ("x-a", b"1")];
        let mut expected = vec![2, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0];
        expected.extend(b":path\x00/v1/x\x00x-a\x001\x00");
        assert_eq!(serialise_header_block(&pairs), expected);
    }

    #[test]
    fn reads_a_header_block_in_place() {
        let pairs: [(&str, &[u8]); 3] = [
            (":path", b"/v1/x"),
            ("authorization", b"Bearer \xff"),
            ("empty", b""),
        ];
        let block = serialise(&pairs);
        assert_eq!(parse_header_block(&block).unwrap(), pairs.to_vec());
        assert_eq!(parse_header_block(&serialise(&[])).unwrap(), Vec::new());
    }

    #[test]
    fn refuses_blocks_that_do_not_add_up() {
        let block = serialise(&[(":path", b"/v1/x"), ("x-a", b"1")]);
        for cut in 0..block.len() - 1 {
            assert_eq!(parse_header_block(&block[..cut]), None, "cut at {cut}");
        }
        let mut huge = block.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_header_block(&huge), None);
        let mut long_value = block;
        long_value[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_header_block(&long_value), None);
    }
}
