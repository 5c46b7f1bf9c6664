//! PostgreSQL for the tests, always a real server: fresh databases on the server named by
//! `KEYGATE_TEST_POSTGRES_URL` (`scripts/postgres.sh run` sets it), clusters of a test's own
//! (`scripts/postgres.sh start`) that it may stop and start, and [`TestDb`], a database of its
//! own for one test on either backend.
//!
//! Without `KEYGATE_TEST_POSTGRES_URL` the PostgreSQL tests fail, never skip, and say how to
//! start a server.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::process::{project_root, random_hex, TempDir};

pub const POSTGRES_URL_ENV: &str = "KEYGATE_TEST_POSTGRES_URL";

/// The server URL from `KEYGATE_TEST_POSTGRES_URL`; panics (never skips) when it is unset.
pub fn postgres_server_url() -> String {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => panic!(
            "{POSTGRES_URL_ENV} is not set: these tests need a real PostgreSQL server. Run them \
             inside `scripts/postgres.sh run <command>` (as `make test` does), or start one with \
             `export {POSTGRES_URL_ENV}=$(scripts/postgres.sh start /tmp/pg-tests)`."
        ),
    }
}

/// `url` with its database (the last path segment) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Runs `sql` with `psql` against the `postgres` database of the server at `server_url`.
fn psql(server_url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .arg(with_database(server_url, "postgres"))
        .args(["-XtAq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql: {e} (is /usr/bin/psql installed?)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql {sql:?} against {server_url} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn fresh_database(server_url: &str) -> (String, String) {
    let name = format!("t_{}", random_hex(8));
    psql(server_url, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("{e}"));
    (with_database(server_url, &name), name)
}

/// A fresh database `t_<random>` on the server at `server_url`; returns its URL. Panics when
/// the server cannot be reached.
pub fn create_database(server_url: &str) -> String {
    fresh_database(server_url).0
}

/// A private PostgreSQL cluster (`scripts/postgres.sh start` in a temporary directory) that a
/// test may stop and start; destroyed on drop.
pub struct PgCluster {
    /// Last, so the cluster is destroyed before its directory.
    dir: TempDir,
    /// The server's URL (its `keygate_test` database).
    pub url: String,
}

impl PgCluster {
    pub fn start() -> Self {
        let dir = TempDir::new("pg");
        let url = postgres_script("start", &dir);
        PgCluster { dir, url }
    }

    pub fn stop(&self) {
        postgres_script("stop", &self.dir);
    }

    /// Starts it again (same port, same data).
    pub fn restart(&self) {
        let url = postgres_script("start", &self.dir);
        assert_eq!(url, self.url, "the cluster came back on another URL");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = script_command("destroy", &self.dir).output();
    }
}

fn script_command(action: &str, dir: &TempDir) -> Command {
    let mut command = Command::new("bash");
    command
        .arg(project_root().join("scripts/postgres.sh"))
        .arg(action)
        .arg(dir.path())
        .stdin(Stdio::null());
    command
}

fn postgres_script(action: &str, dir: &TempDir) -> String {
    let output = script_command(action, dir)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/postgres.sh {action}: {e}"));
    assert!(
        output.status.success(),
        "scripts/postgres.sh {action} {} failed ({}): {}",
        dir.path().display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Where a test keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test: a SQLite file in a temporary directory, or a fresh
/// database on the PostgreSQL server, dropped afterwards. So tests run in parallel.
pub struct TestDb {
    pub url: String,
    /// SQLite: the database file (in a directory that does not exist yet).
    pub path: Option<PathBuf>,
    _dir: Option<TempDir>,
    /// PostgreSQL: (server URL, database name) to drop at the end.
    drop_from: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database of `backend` (async only so that async tests may await it anywhere).
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = TempDir::new("db");
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
        let (url, name) = fresh_database(server_url);
        Self {
            url,
            path: None,
            _dir: None,
            drop_from: Some((server_url.to_owned(), name)),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, name)) = self.drop_from.take() {
            // Best effort: a test that stopped its server has nothing left to drop.
            let _ = psql(
                &server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
