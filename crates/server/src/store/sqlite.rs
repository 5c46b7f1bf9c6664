//! The embedded SQLite backend: one file, one replica. Only connecting and migrating are
//! particular to it; every query is shared with PostgreSQL (see [`super::sql`]).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::error::StoreError;

/// Opens (creating if needed) the database file at `url` and applies the migrations.
pub(super) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    create_parent_dir(options.get_filename())?;
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    let in_memory = file.as_os_str().is_empty() || file.as_os_str() == ":memory:";
    match file.parent() {
        Some(parent) if !in_memory && !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.display().to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}
