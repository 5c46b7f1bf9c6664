//! Persistent storage of key records and admin credentials.
//!
//! [`KeyStore`] is the one interface the layers above use. SQLite is the embedded default (one
//! replica); PostgreSQL serves several replicas sharing one database. The URL picks the
//! backend: `sqlite:` or `postgres://` / `postgresql://`.
//!
//! Each feature has one implementation for both databases, in its own file: `keys`, `feed`,
//! `signing`, `admin`, `limits`, `legacy`, `audit`, `usage`. Their queries are written once
//! (`sql`); the backend files (`sqlite`, `postgres`) only connect, migrate and, on
//! PostgreSQL, tell the other replicas about feed events. Below the feature files sit the
//! handle (`handle`: [`KeyStore`], connecting), the errors (`error`), the `keys` table's row
//! codec (`rows`) and the feed state row (`seq`); no module of the store imports this one or a
//! module that imports it (`cargo test -p keygate-server --test layers`).
//!
//! Revoking, rotating and expiring a key also add a revocation-feed event in the same
//! transaction (see [`crate::model::feed`]), and publish its sequence number after the commit.

mod admin;
mod audit;
mod blocks;
mod countries;
mod error;
mod feed;
mod handle;
mod keys;
mod legacy;
mod limits;
mod pools;
mod postgres;
mod request_signing;
mod roles;
mod rows;
mod seq;
mod sessions;
mod signal;
mod signing;
mod sql;
mod sqlite;
mod usage;
mod webhooks;

pub use error::StoreError;
pub use handle::KeyStore;
pub use signal::FeedSignal;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// What a path into the crate starts with (spelled so that this file does not name one).
    fn root() -> String {
        ["crate", "::"].concat()
    }

    /// The modules of the crate named in the files of `module` (its file and its folder).
    fn crate_paths(module: &str) -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join(format!("{module}.rs"))];
        let folder = std::fs::read_dir(src.join(module)).unwrap();
        files.extend(folder.map(|entry| entry.unwrap().path()));
        let mut paths = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (at, _) in text.match_indices(&root()) {
                let path: String = text[at + root().len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                paths.push((file.display().to_string(), path));
            }
        }
        paths
    }

    #[test]
    fn the_store_and_the_model_import_only_the_model() {
        for module in ["store", "model"] {
            for (file, path) in crate_paths(module) {
                assert_eq!(path, "model", "{file} names {}{path}", root());
            }
        }
    }
}
