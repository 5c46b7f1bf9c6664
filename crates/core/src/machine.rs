//! The filter's cross-request machinery, driven through the [`Host`](crate::host::Host)
//! trait so that every branch of it is unit-tested against the fake host.
//!
//! - [`lease`]: the one lease protocol in shared data (lookups, JWKS, feed, usage);
//! - [`lookup`]: one key-record lookup per key id, its waiters, the in-flight caps, the tick takeover;
//! - [`callouts`]: the one map from a callout token to what waits on it;
//! - [`follower`]: the revocation feed, followed by one worker, its set shared with all;
//! - [`jwks`]: an issuer's JWKS, fetched by one worker and shared with all, and the requests
//!   that wait for a refetch after presenting an unknown `kid`;
//! - [`degraded`]: whether a cached record may decide while the revocation feed is not live,
//!   and what a request gets when the key service cannot answer;
//! - [`rate`]: the shared token buckets and their fail-closed outcomes;
//! - [`reply`]: denials as answered in enforce mode and reported in shadow mode;
//! - [`usage`]: per-key usage counts, merged across workers and sent by one flusher;
//! - [`state`]: what one worker keeps between requests, and what a request carries;
//! - [`metrics`]: this worker's counters;
//! - [`request`]: one request's headers evaluated: route, credential, stripping;
//! - [`records`]: key records for requests: the worker's copies, the shared cache, lookups;
//! - [`token`]: JWTs for requests: verification, the verified-token cache, JWKS waits;
//! - [`cached_token`]: a request with a token verified before, on a plain route, in one pass;
//! - [`answer`]: a decision applied (rate limit, identity headers, usage) or a denial sent;
//! - [`host_crypto`]: signature checks by the host;
//! - [`edits`]: a request's header edits, applied in as few host calls as possible;
//! - [`worker`]: the worker as the filter's contexts see it: start, tick, callouts, requests;
//! - [`fleet`]: fleet-wide limits, quotas and pools, spent locally from leases;
//! - [`threat`]: authentication failures counted per client address, and blocked addresses;
//! - [`blocking`]: threat detection as requests and the tick meet it;
//! - [`gate`]: a request's body and trailers held while its decision is pending;
//! - [`signed_request`]: a request to a signed route as kept until its key is known;
//! - [`signed`]: the request-signature check on signed routes;
//! - [`nonce`]: the signatures' nonces seen within their window, shared by the workers.

pub mod answer;
pub mod blocking;
pub mod cached_token;
pub mod callouts;
pub mod degraded;
pub mod edits;
pub mod fast_map;
pub mod fleet;
pub mod follower;
pub mod gate;
pub mod host_crypto;
pub mod jwks;
pub mod lease;
pub mod lookup;
pub mod metrics;
pub mod nonce;
pub mod rate;
pub mod records;
pub mod reply;
pub mod request;
pub mod signed;
pub mod signed_request;
pub mod state;
pub mod threat;
pub mod token;
pub mod usage;
pub mod worker;

#[cfg(test)]
mod binding_tests;
#[cfg(test)]
mod cached_token_tests;
#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod hot_path_tests;
#[cfg(test)]
mod principal_tests;
#[cfg(test)]
mod signed_tests;
#[cfg(test)]
mod test_support;
