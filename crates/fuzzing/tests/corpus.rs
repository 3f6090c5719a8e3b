//! Replays every input of the fuzz corpus (`fuzz/corpus/TARGET/*`) through
//! its target: what the fuzzers once kept, CI checks on every change,
//! without fuzzing.

use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_corpus_input_passes_its_target() {
    for (name, target) in skiff_fuzzing::TARGETS {
        let dir = corpus().join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "target {name} has no corpus");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let replay = std::panic::catch_unwind(|| target(&data));
            assert!(replay.is_ok(), "{name}: {} fails its target", f.display());
        }
        eprintln!("{name}: {} inputs", files.len());
    }
}
