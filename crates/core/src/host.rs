//! The host the filter runs in, as a trait: the clock, shared data, HTTP callouts, request
//! properties and headers, local replies, logs and metrics. The filter's one implementation
//! calls proxy-wasm (`src/host.rs`); the core's tests use [`fake::FakeHost`], which records
//! what was done and lets a test script the host's answers.
//!
//! The machines in [`crate::machine`] take a `&impl Host`, so everything they decide about
//! leases, callouts, limits and degraded operation runs natively in unit tests and the same
//! way inside Envoy.

use std::time::Duration;

#[cfg(any(test, feature = "testing"))]
pub mod fake;

/// A log level, as proxy-wasm has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

/// A host call that did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The host refused the arguments (unknown cluster, dead context, ...): the name of the
    /// host's status.
    Refused(&'static str),
    /// Shared data changed since it was read.
    CasMismatch,
}

/// A value in shared data and its version (`None`, `None` when the key does not exist).
pub type Versioned = (Option<Vec<u8>>, Option<u32>);

/// What the core needs from the host. Every method is infallible from the caller's view
/// unless it returns a `Result`: a failed log, header write or metric cannot be acted upon.
pub trait Host {
    /// Milliseconds since the Unix epoch by the host's clock (0 if the host cannot say).
    fn now_ms(&self) -> u64;

    fn log(&self, level: LogLevel, message: &str);

    /// A shared-data value and its version.
    fn get_shared(&self, key: &str) -> Versioned;

    /// Writes a shared-data value; with `cas`, only if its version is still `cas`.
    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError>;

    /// Starts an HTTP call to `cluster`; the answer arrives later with the returned token.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError>;

    /// The `:status` of the callout answer being handled (in its callback), if it has one.
    fn call_response_status(&self) -> Option<u32>;

    /// Up to `max` of the `size` bytes of the callout answer's body being handled.
    fn call_response_body(&self, size: usize, max: usize) -> Option<Vec<u8>>;

    /// A host property such as `["xds", "route_name"]`; `None` when absent.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// Sets (replaces) a request header of the current request.
    fn set_request_header(&self, name: &str, value: &str);

    fn remove_request_header(&self, name: &str);

    /// Answers the current request from the filter.
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]);

    /// Adds `by` to a counter defined by the filter (`id` as the host gave it).
    fn increment_metric(&self, id: u32, by: u64);

    /// Sets a gauge.
    fn record_metric(&self, id: u32, value: u64);
}
