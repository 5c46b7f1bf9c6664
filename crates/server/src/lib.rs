//! The `keygate` binary's library: the key service (REST API over a key store) and the CLI.
//!
//! `main.rs` only parses the command line and calls in here, so tests drive [`http::app`]
//! without a socket.
//!
//! The modules form one-way layers; each imports only the layers below it (checked by
//! `tests/layers.rs`):
//!
//! | layer     | modules                                            |
//! |-----------|----------------------------------------------------|
//! | cli       | [`cli`]                                            |
//! | serve     | [`serve`], [`config`]                              |
//! | http      | [`http`]                                           |
//! | service   | [`service`]                                        |
//! | store     | [`store`]                                          |
//! | model     | [`model`]                                          |
//! | utilities | [`clock`], [`timestamp`], [`tls`], [`transport`]   |
//!
//! `serve` and `config` sit above `http`: they read the configuration and run the HTTP app
//! with the background tasks of the service layer. The utilities import nothing of the crate.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod model;
pub mod serve;
pub mod service;
pub mod store;
pub mod timestamp;
pub mod tls;
pub mod transport;

pub use http::app;
pub use http::state::AppState;
