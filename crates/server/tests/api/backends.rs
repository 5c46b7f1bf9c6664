//! Test databases on both backends: a temporary SQLite file, or a fresh database on the
//! PostgreSQL server named by `KEYGATE_TEST_POSTGRES_URL` (`make test` starts one with
//! scripts/postgres.sh). Each test gets its own database, so tests run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keygate_server::store::KeyStore;
use sqlx::Connection;
use tempfile::TempDir;

pub const POSTGRES_URL_ENV: &str = "KEYGATE_TEST_POSTGRES_URL";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The server URL for the PostgreSQL tests. They fail, not skip, without it.
pub fn postgres_server_url() -> String {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => panic!(
            "{POSTGRES_URL_ENV} is not set: the PostgreSQL tests need a real server. Run \
             `make test`, or start one with `scripts/postgres.sh start target/keygate-pg` and \
             export {POSTGRES_URL_ENV}=$(cat target/keygate-pg/url)"
        ),
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|scheme| scheme + 3)
        .and_then(|start| base[start..].find('/').map(|slash| start + slash))
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn random_name() -> String {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("t_{hex}")
}

/// A database of its own for one test; a PostgreSQL one is dropped afterwards.
pub struct TestDb {
    pub url: String,
    /// SQLite: the database file.
    pub path: Option<PathBuf>,
    _dir: Option<TempDir>,
    /// PostgreSQL: (server URL, database name) to drop at the end.
    drop_from: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("nested").join("keygate.db");
                Self {
                    url: format!("sqlite://{}", path.display()),
                    path: Some(path),
                    _dir: Some(dir),
                    drop_from: None,
                }
            }
            Backend::Postgres => Self::postgres_on(&postgres_server_url()).await,
        }
    }

    /// A fresh database on the PostgreSQL server at `server_url`.
    pub async fn postgres_on(server_url: &str) -> Self {
        let name = random_name();
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {server_url}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self {
            url: with_database(server_url, &name),
            path: None,
            _dir: None,
            drop_from: Some((server_url.to_owned(), name)),
        }
    }

    pub async fn connect(&self) -> KeyStore {
        KeyStore::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.url))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.drop_from.take() else {
            return;
        };
        // Best effort, on a runtime of its own (this may run inside the test's runtime).
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&server).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await?;
                    conn.close().await?;
                    Ok::<_, sqlx::Error>(())
                })
                .map_err(std::io::Error::other)
        })
        .join();
    }
}

/// A PostgreSQL cluster of this test's own (scripts/postgres.sh in a temporary directory),
/// for tests that stop and start the server. Stopped when dropped.
pub struct PrivateCluster {
    dir: TempDir,
    pub url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh")
}

fn run_script(action: &str, dir: &Path) -> String {
    let output = Command::new("bash")
        .arg(script())
        .arg(action)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scripts/postgres.sh {action} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

impl PrivateCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = run_script("start", dir.path());
        Self { dir, url }
    }

    pub fn stop(&self) {
        run_script("stop", self.dir.path());
    }

    /// Starts it again (same port, same data).
    pub fn restart(&self) {
        let url = run_script("start", self.dir.path());
        assert_eq!(url, self.url);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// Polls `condition` every 20 ms for up to `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u@127.0.0.1:5432/keygate_test", "t_1"),
        "postgres://u@127.0.0.1:5432/t_1"
    );
    assert_eq!(
        with_database("postgresql://u@h:1/db?sslmode=disable", "t_2"),
        "postgresql://u@h:1/t_2?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t_3"), "postgres://h/t_3");
}
