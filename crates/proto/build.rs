fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<_> = ["model.proto", "cluster.proto", "node.proto", "peer.proto"]
        .iter()
        .map(|f| root.join("skiff/v1").join(f))
        .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    if std::env::var_os("PROTOC").is_none() && which_protoc().is_none() {
        return Err(
            "protoc was not found: install it with `apt-get install protobuf-compiler` \
                    (make run and make test do this), or set PROTOC to its path"
                .into(),
        );
    }
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_protos(&files, &[root])?;
    Ok(())
}

fn which_protoc() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("protoc"))
            .find(|p| p.is_file())
    })
}
