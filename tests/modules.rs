//! The filter's glue (`src/`) has no import circle: the host implementation and the worker's
//! state sit below the lookups, the JWT path and the contexts, and nothing below imports what
//! is above it. The key service's layers have their own test (`crates/server/tests/layers.rs`).
//!
//! Run it with `cargo test -p keygate --test modules`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use keygate_testkit::modules::{cyclic_groups, find_cycle, graph};

fn assert_no_cycle(src: &Path, at_least: usize) {
    let graph = graph(src);
    assert!(
        graph.len() >= at_least,
        "too few modules found in {}: {:?}",
        src.display(),
        graph.keys()
    );
    let cycles = cyclic_groups(&graph);
    assert!(
        cycles.is_empty(),
        "import cycle in {}: {}\nmodules that import each other:\n{}",
        src.display(),
        find_cycle(&graph).unwrap_or_default().join(" -> "),
        cycles
            .iter()
            .map(|group| group.join(", "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_filter_glue_has_no_import_cycle() {
    assert_no_cycle(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), 8);
}
