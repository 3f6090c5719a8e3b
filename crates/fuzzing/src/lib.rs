//! The bodies of Skiff's fuzz targets. Each takes arbitrary bytes and must
//! neither panic nor hang, whatever they are; where a property holds for
//! every input (a parsed spec is valid and means the same on the wire, a
//! layer never writes outside its directory) the target checks it.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` call these functions,
//! and `tests/corpus.rs` replays the seed corpus in `fuzz/corpus/` through
//! them, so CI checks every input the fuzzers ever kept without fuzzing.
//!
//! - `spec`: job and namespace specs, YAML or JSON text;
//! - `cluster_api`, `node_api`, `peer`, `agent_api`: one gRPC surface each
//!   (the API port's Cluster and Access services, its NodeApi, the peer
//!   port, an agent's port); the first byte picks the method, the rest is
//!   its request message, handed to the real service in-process (servers
//!   under `--insecure`, so every call gets past authentication);
//! - `layer`: `apply_layer` on a tar (absolute paths, `..`, links, whiteouts);
//! - `wal`: reopening a Raft log whose segment holds the bytes.

mod services;

use std::io::Write as _;

use skiff_model::JobSpec;
use skiff_proto::pb;

pub use services::{agent_api, cluster_api, node_api, peer};

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name cargo-fuzz and the corpus directory use.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("cluster_api", cluster_api),
    ("node_api", node_api),
    ("peer", peer),
    ("agent_api", agent_api),
    ("layer", layer),
    ("wal", wal),
];

/// A spec parses or is refused with errors; one that parses is valid,
/// and its wire form reads back as the same spec.
pub fn spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(spec) = JobSpec::from_yaml(&text) {
        if let Err(e) = spec.validate() {
            panic!("a parsed spec is invalid: {e}\n{text}");
        }
        let wire = pb::JobSpec::from(&spec);
        match JobSpec::try_from(wire) {
            Ok(back) => assert_eq!(back, spec, "the wire form means something else"),
            Err(e) => panic!("the wire form of a parsed spec is refused: {e}\n{text}"),
        }
    }
    let _ = skiff_model::namespace::Namespace::from_yaml(&text);
}

/// A layer is applied or refused; either way nothing appears outside the
/// directory it is applied to.
pub fn layer(data: &[u8]) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dest = tmp.path().join("root");
    let beside = tmp.path().join("beside");
    std::fs::create_dir_all(&dest).expect("dest");
    std::fs::create_dir_all(&beside).expect("beside");
    let _ = skiff_agent::image::apply_layer(data, &dest);
    let outside: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("readable")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "root" && n != "beside")
        .collect();
    assert!(
        outside.is_empty(),
        "the layer wrote beside its root: {outside:?}"
    );
    let beside_now = std::fs::read_dir(&beside).expect("readable").count();
    assert_eq!(beside_now, 0, "the layer wrote into a sibling directory");
}

/// A Raft log whose last segment holds `data` opens (cutting a torn tail)
/// or is refused as corrupt; it never panics, and what it keeps reads back.
pub fn wal(data: &[u8]) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("raft");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut f = std::fs::File::create(dir.join("wal-000000000001.log")).expect("segment");
    f.write_all(data).expect("written");
    drop(f);
    if let Ok(log) = skiff_store::log::RaftLog::open(&dir) {
        use raft::Storage as _;
        let (first, last) = (log.first_index(), log.last_index());
        if last >= first {
            let _ = log.entries(first, last + 1, None, raft::GetEntriesContext::empty(false));
        }
    }
}
