//! The workspace's structure, read from its sources: no crate's modules
//! import each other in a circle, and no source file outside test code is
//! longer than `structure::MAX_LINES` lines. `make structure` prints the
//! drawing these rules are checked on.

use skiff_tests::repo_root;
use skiff_tests::structure::{CrateGraph, MAX_LINES};

/// Every crate of the workspace, by its source directory.
const CRATES: &[(&str, &str)] = &[
    ("skiff-model", "crates/model/src"),
    ("skiff-proto", "crates/proto/src"),
    ("skiff-store", "crates/store/src"),
    ("skiff-server", "crates/server/src"),
    ("skiff-client", "crates/client/src"),
    ("skiff (cli)", "crates/cli/src"),
    ("skiff-alloc", "crates/alloc/src"),
    ("skiff-metrics", "crates/metrics/src"),
    ("skiff-agent", "agent/src"),
    ("skiff-scheduler", "scheduler/src"),
    ("skiff-tests", "tests/src"),
    ("skiff-bench", "bench/src"),
];

fn graphs() -> Vec<CrateGraph> {
    let root = repo_root();
    CRATES
        .iter()
        .map(|(name, dir)| {
            CrateGraph::read(name, &root.join(dir))
                .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        })
        .collect()
}

#[test]
fn every_crate_is_a_stack_of_modules_without_import_circles() {
    let mut circles = Vec::new();
    for g in graphs() {
        if std::env::var_os("SKIFF_STRUCTURE").is_some() {
            println!("{}", g.drawing());
        }
        for c in g.cycles() {
            circles.push(format!("{}: {}", g.name, c.join(" <-> ")));
        }
    }
    assert!(
        circles.is_empty(),
        "modules that import each other (run `make structure` for the drawing):\n{}",
        circles.join("\n")
    );
}

#[test]
fn no_source_file_is_longer_than_the_limit_outside_test_code() {
    let root = repo_root();
    let long: Vec<String> = graphs()
        .iter()
        .flat_map(|g| g.too_long())
        .map(|(file, lines)| {
            let file = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .display()
                .to_string();
            format!("{file}: {lines} lines")
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines of non-test code; split them along their seams:\n{}",
        long.join("\n")
    );
}
