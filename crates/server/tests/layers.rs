//! The key service's modules form one-way layers, and no import circle:
//!
//! ```text
//! cli      cli, cli::*                 the command line: args, client, print, one file a command
//! serve    serve, config               `keygate serve`: configuration, start-up, shutdown
//! http     http, http::*               AppState, extractors, problem+json, one file a resource
//! service  service, service::*         the operations and their domain errors
//! store    store, store::*             the database
//! model    model, model::*             records and domain types
//! utility  clock, timestamp, tls, transport
//! ```
//!
//! A module may import its own layer or those below it, never one above, and never the crate
//! root (`lib.rs` only re-exports). This test reads the module graph from the sources
//! (`keygate_testkit::modules`) and fails on an import that goes up a layer or on any import
//! cycle between modules.
//!
//! Run it with `cargo test -p keygate-server --test layers`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use keygate_testkit::modules::{cyclic_groups, find_cycle, graph, upward_imports};

/// The layers, lowest first: a module's layer is the one listing its first path segment.
const LAYERS: [(&str, &[&str]); 7] = [
    ("utility", &["clock", "timestamp", "tls", "transport"]),
    ("model", &["model"]),
    ("store", &["store"]),
    ("service", &["service"]),
    ("http", &["http"]),
    ("serve", &["serve", "config"]),
    ("cli", &["cli"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let graph = graph(&src());
    assert!(
        graph.len() > 30,
        "too few modules found: {:?}",
        graph.keys()
    );
    let problems = upward_imports(&graph, &LAYERS);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_module_import_cycle() {
    let graph = graph(&src());
    let cycles = cyclic_groups(&graph);
    if !cycles.is_empty() {
        let example = find_cycle(&graph).unwrap_or_default();
        let groups: Vec<String> = cycles.iter().map(|group| group.join(", ")).collect();
        panic!(
            "import cycle: {}\nmodules that import each other:\n{}",
            example.join(" -> "),
            groups.join("\n")
        );
    }
}
