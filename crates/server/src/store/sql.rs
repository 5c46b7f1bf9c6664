//! One query text for both databases, and the one place that tells them apart.
//!
//! Every query is written once, as [`Sql`]: its text numbers its parameters `$1`, `$2` ...
//! (PostgreSQL's form, which sqlx's SQLite driver also reads), and its arguments are owned
//! values. [`Db`] (a pool), [`Tx`] (a transaction) and [`Conn`] run it on whichever database
//! this is, and [`StoredRow`] reads the answer with each driver's own type checks. The few
//! spellings that differ ([`Dialect`]) and the locking of a transaction are decided here.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Database, Decode, Encode, Postgres, Row, Sqlite, Transaction, Type};

use super::error::StoreError;

/// Rows deleted per statement, so a long prune never holds the database's writer for long.
pub(super) const PRUNE_CHUNK: i64 = 5_000;

/// One argument of a query, owned so the same query runs on either database.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Arg {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Blob(Vec<u8>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Self::Int(Some(value))
    }
}

impl From<Option<i64>> for Arg {
    fn from(value: Option<i64>) -> Self {
        Self::Int(value)
    }
}

impl From<Option<f64>> for Arg {
    fn from(value: Option<f64>) -> Self {
        Self::Real(value)
    }
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Self::Text(Some(value.to_owned()))
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Self::Text(Some(value))
    }
}

impl From<&String> for Arg {
    fn from(value: &String) -> Self {
        Self::Text(Some(value.clone()))
    }
}

impl From<Option<&str>> for Arg {
    fn from(value: Option<&str>) -> Self {
        Self::Text(value.map(str::to_owned))
    }
}

impl From<&[u8]> for Arg {
    fn from(value: &[u8]) -> Self {
        Self::Blob(value.to_vec())
    }
}

impl From<bool> for Arg {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

/// A query: its text with numbered parameters, and their values in order.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// A query whose text numbers its own parameters; give their values with [`Sql::arg`].
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
        }
    }

    /// The value of the next numbered parameter of the text.
    pub fn arg(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Appends text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a new parameter with `value`.
    pub fn push_bind(&mut self, value: impl Into<Arg>) -> &mut Self {
        let placeholder = self.param(value);
        self.text.push_str(&placeholder);
        self
    }

    /// Adds a parameter with `value` and answers its placeholder, for text that uses it
    /// more than once.
    pub fn param(&mut self, value: impl Into<Arg>) -> String {
        self.args.push(value.into());
        format!("${}", self.args.len())
    }

    /// Appends `(p1, p2, ...)`: one new parameter per value.
    pub fn push_tuple(&mut self, values: impl IntoIterator<Item = Arg>) -> &mut Self {
        self.text.push('(');
        for (n, value) in values.into_iter().enumerate() {
            if n > 0 {
                self.text.push_str(", ");
            }
            self.push_bind(value);
        }
        self.text.push(')');
        self
    }

    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    #[cfg(test)]
    pub fn arg_count(&self) -> usize {
        self.args.len()
    }

    fn bound<'q, DB>(&'q self) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
    where
        DB: Database,
        Option<i64>: Encode<'q, DB> + Type<DB>,
        Option<f64>: Encode<'q, DB> + Type<DB>,
        Option<&'q str>: Encode<'q, DB> + Type<DB>,
        &'q [u8]: Encode<'q, DB> + Type<DB>,
        bool: Encode<'q, DB> + Type<DB>,
    {
        // SQLite binds a missing `$N` as NULL where PostgreSQL refuses the query: a query
        // whose text and arguments disagree fails every test on either backend instead.
        debug_assert_eq!(
            highest_parameter(&self.text),
            self.args.len(),
            "parameters and arguments disagree in: {}",
            self.text
        );
        let mut query = sqlx::query::<DB>(&self.text);
        for arg in &self.args {
            query = match arg {
                Arg::Int(value) => query.bind(*value),
                Arg::Real(value) => query.bind(*value),
                Arg::Text(value) => query.bind(value.as_deref()),
                Arg::Blob(value) => query.bind(value.as_slice()),
                Arg::Bool(value) => query.bind(*value),
            };
        }
        query
    }
}

/// The highest `$N` in a query text (0 when it has none).
fn highest_parameter(text: &str) -> usize {
    text.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// The spellings that differ between the databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The larger of two values (`NULL` if either is on SQLite: wrap them in `COALESCE`).
    pub fn greatest(self) -> &'static str {
        match self {
            Self::Sqlite => "MAX",
            Self::Postgres => "GREATEST",
        }
    }

    /// The smaller of two values (`NULL` if either is on SQLite: wrap them in `COALESCE`).
    pub fn least(self) -> &'static str {
        match self {
            Self::Sqlite => "MIN",
            Self::Postgres => "LEAST",
        }
    }

    /// The column naming a row's physical place, for deleting in chunks.
    pub fn row_id(self) -> &'static str {
        match self {
            Self::Sqlite => "rowid",
            Self::Postgres => "ctid",
        }
    }

    /// A key's effective expiry: the earlier of its own expiry and its grace period's end,
    /// `NULL` only if both are.
    pub fn effective_expiry(self) -> String {
        format!(
            "COALESCE({}(expires_at, grace_until), expires_at, grace_until)",
            self.least()
        )
    }
}

/// A connection pool of either database. Cloning is cheap.
#[derive(Clone, Debug)]
pub(super) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection taken from the pool.
pub(super) enum PooledConn {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

/// A transaction of either database; rolled back if dropped before [`Tx::commit`].
pub(super) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// A connection of either database, to run queries on.
pub(super) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

/// One answer row of either database.
pub(super) enum StoredRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

/// Builds `Type { field, ... }` from a [`StoredRow`], each field from the column of its name
/// or from the column named after it (`field = "column"`).
macro_rules! from_row {
    ($row:expr, $type:ident { $($field:ident $(= $column:literal)?),* $(,)? }) => {
        $type { $($field: $row.get(from_row!(@column $field $($column)?))?),* }
    };
    (@column $field:ident $column:literal) => {
        $column
    };
    (@column $field:ident) => {
        stringify!($field)
    };
}
pub(super) use from_row;

impl StoredRow {
    /// The value of `column`, checked against the column's type by the database's driver.
    pub fn get<'r, T>(&'r self, column: &str) -> Result<T, StoreError>
    where
        T: Decode<'r, Sqlite> + Type<Sqlite> + Decode<'r, Postgres> + Type<Postgres>,
    {
        Ok(match self {
            Self::Sqlite(row) => row.try_get(column)?,
            Self::Postgres(row) => row.try_get(column)?,
        })
    }
}

impl Db {
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    pub async fn acquire(&self) -> Result<PooledConn, StoreError> {
        Ok(match self {
            Self::Sqlite(pool) => PooledConn::Sqlite(pool.acquire().await?),
            Self::Postgres(pool) => PooledConn::Postgres(pool.acquire().await?),
        })
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Begins a read-only transaction that sees one snapshot of the database throughout.
    pub async fn begin_snapshot(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin().await?;
        if let Tx::Postgres(pg) = &mut tx {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut **pg)
                .await?;
        }
        // SQLite (WAL): a read transaction keeps the snapshot of its first read.
        Ok(tx)
    }

    /// Begins a transaction holding the row of `table` whose `id` is `id` against every other
    /// writer of it until the end, before it reads anything (so what it reads next is current
    /// and no concurrent change is lost). Answers `None` if there is no such row.
    ///
    /// PostgreSQL locks the row (`FOR UPDATE`); SQLite, which locks the whole database, takes
    /// its write lock with a no-op update (no stale read, no `SQLITE_BUSY` on upgrade).
    pub async fn begin_holding(
        &self,
        table: &'static str,
        id: impl Into<Arg>,
    ) -> Result<Option<Tx>, StoreError> {
        let mut tx = self.begin().await?;
        let held = match self.dialect() {
            Dialect::Sqlite => {
                let sql = Sql::new(format!("UPDATE {table} SET id = id WHERE id = $1")).arg(id);
                tx.execute(&sql).await? == 1
            }
            Dialect::Postgres => {
                let sql = Sql::new(format!(
                    "SELECT 1 AS held FROM {table} WHERE id = $1 FOR UPDATE"
                ))
                .arg(id);
                tx.fetch_optional(&sql).await?.is_some()
            }
        };
        Ok(held.then_some(tx))
    }

    pub async fn execute(&self, sql: &Sql) -> Result<u64, StoreError> {
        self.acquire().await?.conn().execute(sql).await
    }

    /// Runs `sql`, a delete of at most [`PRUNE_CHUNK`] rows, until it deletes fewer; answers
    /// how many rows went.
    pub async fn delete_in_chunks(&self, sql: &Sql) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            let gone = self.execute(sql).await?;
            deleted += gone;
            if gone < PRUNE_CHUNK.unsigned_abs() {
                return Ok(deleted);
            }
        }
    }

    pub async fn fetch_all(&self, sql: &Sql) -> Result<Vec<StoredRow>, StoreError> {
        self.acquire().await?.conn().fetch_all(sql).await
    }

    pub async fn fetch_optional(&self, sql: &Sql) -> Result<Option<StoredRow>, StoreError> {
        self.acquire().await?.conn().fetch_optional(sql).await
    }

    pub async fn fetch_one(&self, sql: &Sql) -> Result<StoredRow, StoreError> {
        self.acquire().await?.conn().fetch_one(sql).await
    }
}

impl PooledConn {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Sqlite(conn) => Conn::Sqlite(conn),
            Self::Postgres(conn) => Conn::Postgres(conn),
        }
    }
}

impl Tx {
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Sqlite(tx) => Conn::Sqlite(tx),
            Self::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(tx) => tx.rollback().await?,
            Self::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError> {
        self.conn().execute(sql).await
    }

    pub async fn fetch_all(&mut self, sql: &Sql) -> Result<Vec<StoredRow>, StoreError> {
        self.conn().fetch_all(sql).await
    }

    pub async fn fetch_optional(&mut self, sql: &Sql) -> Result<Option<StoredRow>, StoreError> {
        self.conn().fetch_optional(sql).await
    }

    pub async fn fetch_one(&mut self, sql: &Sql) -> Result<StoredRow, StoreError> {
        self.conn().fetch_one(sql).await
    }
}

impl Conn<'_> {
    /// Runs `sql`; answers how many rows it changed.
    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError> {
        Ok(match self {
            Self::Sqlite(conn) => sql.bound().execute(&mut **conn).await?.rows_affected(),
            Self::Postgres(conn) => sql.bound().execute(&mut **conn).await?.rows_affected(),
        })
    }

    pub async fn fetch_all(&mut self, sql: &Sql) -> Result<Vec<StoredRow>, StoreError> {
        Ok(match self {
            Self::Sqlite(conn) => sql
                .bound()
                .fetch_all(&mut **conn)
                .await?
                .into_iter()
                .map(StoredRow::Sqlite)
                .collect(),
            Self::Postgres(conn) => sql
                .bound()
                .fetch_all(&mut **conn)
                .await?
                .into_iter()
                .map(StoredRow::Postgres)
                .collect(),
        })
    }

    pub async fn fetch_optional(&mut self, sql: &Sql) -> Result<Option<StoredRow>, StoreError> {
        Ok(match self {
            Self::Sqlite(conn) => sql
                .bound()
                .fetch_optional(&mut **conn)
                .await?
                .map(StoredRow::Sqlite),
            Self::Postgres(conn) => sql
                .bound()
                .fetch_optional(&mut **conn)
                .await?
                .map(StoredRow::Postgres),
        })
    }

    pub async fn fetch_one(&mut self, sql: &Sql) -> Result<StoredRow, StoreError> {
        self.fetch_optional(sql)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_bind_order() {
        let mut sql = Sql::new("SELECT 1 WHERE a = $1").arg(1);
        sql.push(" AND b = ").push_bind("x");
        let c = sql.param(Some(3));
        sql.push(&format!(" AND (c = {c} OR d = {c}) AND e IN "))
            .push_tuple([Arg::from(true), Arg::from(2)]);
        assert_eq!(
            sql.text(),
            "SELECT 1 WHERE a = $1 AND b = $2 AND (c = $3 OR d = $3) AND e IN ($4, $5)"
        );
        assert_eq!(sql.arg_count(), 5);
    }

    #[test]
    fn the_highest_parameter_is_read_from_the_text() {
        assert_eq!(highest_parameter("SELECT 1"), 0);
        assert_eq!(highest_parameter("SELECT $2, $10 WHERE a = $1"), 10);
        assert_eq!(highest_parameter("UPDATE t SET a = $1 WHERE a = $1"), 1);
    }
}
