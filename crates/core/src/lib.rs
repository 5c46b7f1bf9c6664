//! Keygate's pure logic, shared by the filter (wasm32-wasip1) and the key service (native).
//!
//! No proxy-wasm, no tokio, no I/O and no clock: time and randomness come in as arguments,
//! so every decision is unit-tested natively and behaves the same inside Envoy. What the
//! filter needs from Envoy is the [`host::Host`] trait; the machines that use it are in
//! [`machine`], tested against the fake host (`host::fake`, in tests or with the `testing`
//! feature).

pub mod base32;
pub mod binding;
pub mod cache;
pub mod config;
pub mod country_set;
pub mod credential;
pub mod decision;
pub mod feed;
pub mod fingerprint;
pub mod fleet;
pub mod geo;
pub mod headers;
pub mod host;
pub mod jwt;
pub mod key;
pub mod limits;
pub mod machine;
pub mod negative_cache;
pub mod principal;
pub mod route;
pub mod scope;
pub mod signature;
pub mod wire;
