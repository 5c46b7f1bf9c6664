//! Test databases on both backends, from the test kit: a temporary SQLite file, or a fresh
//! database on the PostgreSQL server named by `KEYGATE_TEST_POSTGRES_URL` (`make test` starts
//! one with `scripts/postgres.sh run`). Each test gets its own database, so tests run in
//! parallel. The kit's `on_both_backends!` makes a test of each backend.

use keygate_server::store::KeyStore;
pub use keygate_testkit::{
    eventually, postgres_server_url, Backend, PgCluster as PrivateCluster, TestDb,
};

/// Opens the key store on a test database.
pub(crate) trait Connect {
    async fn connect(&self) -> KeyStore;
}

impl Connect for TestDb {
    async fn connect(&self) -> KeyStore {
        KeyStore::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.url))
    }
}
