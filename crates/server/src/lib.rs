//! The `keygate` binary's library: the key service (REST API over a key store) and the CLI.
//!
//! `main.rs` only parses the command line and calls in here, so tests drive [`api::app`]
//! without a socket.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod feed;
pub mod legacy;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod retention;
pub mod serve;
pub mod signing;
pub mod store;
pub mod timestamp;
pub mod tls;
pub mod transport;
pub mod usage;

pub use api::{app, AppState};
