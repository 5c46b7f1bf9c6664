//! The filter's glue (`src/`) is the contexts and the host implementation only, with no import
//! circle; the request path it drives lives in the core's machines (`crates/core/src/machine`),
//! which have no import circle either: the worker's state sits below the record lookups, the
//! JWT path and the answers, and the worker (what the contexts call) above them. The key
//! service's layers have their own test (`crates/server/tests/layers.rs`).
//!
//! Run it with `cargo test -p keygate --test modules`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
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
    assert_no_cycle(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), 3);
}

#[test]
fn the_filter_glue_is_the_contexts_and_the_host() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["filter.rs", "host.rs", "lib.rs"],
        "src/ keeps the contexts and the host only; request logic belongs in crates/core"
    );
}

#[test]
fn the_core_machines_have_no_import_cycle() {
    let core = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/core/src"));
    let in_machine = |module: &str| module == "machine" || module.starts_with("machine::");
    let machines: BTreeMap<_, BTreeSet<_>> = core
        .into_iter()
        .filter(|(module, _)| in_machine(module))
        .map(|(module, targets)| {
            let targets = targets.into_iter().filter(|t| in_machine(t)).collect();
            (module, targets)
        })
        .collect();
    assert!(
        machines.len() >= 15,
        "too few machines: {:?}",
        machines.keys()
    );
    let cycles = cyclic_groups(&machines);
    assert!(
        cycles.is_empty(),
        "import cycle in crates/core/src/machine: {}",
        find_cycle(&machines).unwrap_or_default().join(" -> ")
    );
}
