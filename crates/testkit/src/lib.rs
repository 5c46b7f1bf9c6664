//! The test kit both suites share: the key service's API tests (`crates/server/tests`) and the
//! end-to-end tests through Envoy (`tests/`).
//!
//! - [`StackBuilder`]: the echo upstream, N key services on SQLite or PostgreSQL (over HTTP or
//!   HTTPS), and Envoy with N workers running `keygate.wasm`, its config rendered from
//!   `envoy/envoy.yaml`; [`Stack`] (one key service) and [`Cluster`] (several) are what it starts.
//! - [`eventually`]: the one polling loop, for async and ([`poll`], [`wait_until`], [`must`])
//!   blocking tests.
//! - PostgreSQL: [`TestDb`] (a database of its own per test, on either [`Backend`]),
//!   [`PgCluster`] (a server of its own, via `scripts/postgres.sh`), and [`on_both_backends!`].
//! - [`modules`]: a crate's module graph read from its sources (import cycles, layers).
//! - [`Redis`]: a `redis-server` of its own per test; [`Cluster::extra_envoy`]: more Envoys
//!   on the same key services (a fleet).
//! - [`Browser`]: a headless Chromium over WebDriver (Debian's `chromium-driver`), for the
//!   dashboard's tests.
//! - [`WebhookReceiver`]: a local endpoint that records webhook deliveries.
//! - Assertions on what Envoy answers: [`assert_denied`], [`assert_forwarded_with_identity`].
//!
//! Binaries come from `KEYGATE_WASM`, `KEYGATE_BIN`, `ENVOY_BIN` (defaults under the project
//! root); a missing one fails the test with the `make` command that builds it. It starts those
//! binaries and talks HTTP to them, so it depends on neither the filter nor the key service.

// A test kit fails the test that uses it by panicking, with a message that says why.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod assertions;
mod browser;
mod envoy;
mod http;
pub mod modules;
mod poll;
mod postgres;
mod process;
mod proxy;
mod redis;
mod service;
mod stack;
mod time;
mod tls;
mod webhook;

pub use assertions::{
    assert_denied, assert_forwarded_with_identity, poll_status, IDENTITY_HEADERS,
};
pub use browser::{chromedriver_bin, chromium_bin, Browser, Element, LogEntry, BROWSER_TIMEOUT};
pub use envoy::{
    default_plugin_config, envoy_template, parse_counter, render_envoy_config, with_geoip,
    with_key_service_tls, with_listener_mtls, with_routes_before_catch_all, with_service_endpoints,
    Envoy, Ports,
};
pub use http::{bearer, https_agent, mtls_agent, send, send_mtls, send_raw, send_tls, Reply};
pub use poll::{eventually, eventually_every, must, poll, poll_reply, wait_until};
pub use postgres::{
    create_database, postgres_server_url, with_database, Backend, PgCluster, TestDb,
    POSTGRES_URL_ENV,
};
pub use process::{
    envoy_bin, free_port, keygate_bin, project_root, python_with, random_hex, tail, wasm_path,
    Proc, TempDir,
};
pub use proxy::{FeedMode, FeedProxy};
pub use redis::{redis_server_bin, Redis};
pub use service::{
    admin_json, admin_send, admin_send_as, feed_stats, prime_feed, start_replica, FeedStats,
    IssuedKey, KeyService, Secrets, ADMIN_KEY, KEY_PREFIX,
};
pub use stack::{start_tls_stack, Cluster, Database, Echo, Options, Stack, StackBuilder};
pub use time::{rfc3339, unix_now};
pub use tls::{CertFiles, MtlsPki, Pki, SERVICE_NAME};
pub use webhook::{Delivery, WebhookReceiver};

/// Makes a `sqlite::NAME` and a `postgres::NAME` `#[tokio::test]` of each
/// `async fn NAME(Backend)`; with `db:` first, of each `async fn NAME(&TestDb)`, on a fresh
/// database of that backend. The crate using it needs `tokio` (with `macros`).
#[macro_export]
macro_rules! on_both_backends {
    (db: $($test:ident),* $(,)?) => {
        $crate::on_both_backends!(@each db sqlite Sqlite $($test),*);
        $crate::on_both_backends!(@each db postgres Postgres $($test),*);
    };
    ($($test:ident),* $(,)?) => {
        $crate::on_both_backends!(@each backend sqlite Sqlite $($test),*);
        $crate::on_both_backends!(@each backend postgres Postgres $($test),*);
    };
    (@each $arg:ident $module:ident $backend:ident $($test:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $test() {
                    $crate::on_both_backends!(@call $arg $backend $test);
                }
            )*
        }
    };
    (@call db $backend:ident $test:ident) => {
        let db = $crate::TestDb::new($crate::Backend::$backend).await;
        super::$test(&db).await;
    };
    (@call backend $backend:ident $test:ident) => {
        super::$test($crate::Backend::$backend).await;
    };
}
