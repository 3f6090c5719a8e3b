fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<_> = [
        "model.proto",
        "cluster.proto",
        "node.proto",
        "agent.proto",
        "peer.proto",
        "access.proto",
    ]
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
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("skiff_descriptor.bin");
    tonic_prost_build::configure()
        .btree_map(".")
        // Messages that carry a secret: their Debug (src/secret_debug.rs)
        // shows everything but it.
        .skip_debug([
            ".skiff.v1.RegistryLogin",
            ".skiff.v1.SetRegistryLoginRequest",
            ".skiff.v1.SecretsKeyResponse",
        ])
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&files, &[root])?;
    // serde impls that follow the proto3 JSON mapping, for the messages
    // clients see as JSON (watch events).
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .btree_map(["."])
        .build(&[".skiff.v1"])?;
    Ok(())
}

fn which_protoc() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("protoc"))
            .find(|p| p.is_file())
    })
}
