//! Builders shared by the image and rootfs tests: layer tars, hand-built
//! OCI image layouts, and layouts built with umoci.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::Arch;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use skiff_model::ImageRef;
use tar::{Builder, EntryType, Header};

use super::layout::REF_NAME;
use super::store::DOCKER_CONFIG;
use super::{apply_layer, ImageError, ImageStore};

pub(crate) struct LayerTar(Builder<Vec<u8>>);

impl LayerTar {
    pub(crate) fn new() -> Self {
        LayerTar(Builder::new(Vec::new()))
    }

    pub(crate) fn file(self, path: &str, data: &str) -> Self {
        self.file_with(path, data, 0o644, 0, 0)
    }

    pub(crate) fn file_with(
        mut self,
        path: &str,
        data: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, data.as_bytes()).unwrap();
        self
    }

    pub(crate) fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_with(path, mode, 0, 0)
    }

    pub(crate) fn dir_with(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    pub(crate) fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    pub(crate) fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    pub(crate) fn special(mut self, path: &str, kind: EntryType) -> Self {
        let mut h = header(kind, 0o666, 0);
        self.0.append_data(&mut h, path, io::empty()).unwrap();
        self
    }

    /// An entry whose name is written verbatim (the tar crate's own
    /// setters refuse `..` and absolute paths).
    pub(crate) fn raw_file(mut self, path: &str, data: &str) -> Self {
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.0.append(&h, data.as_bytes()).unwrap();
        self
    }

    pub(crate) fn build(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

pub(crate) fn apply(dest: &Path, layer: LayerTar) -> Result<(), ImageError> {
    apply_layer(&layer.build()[..], dest)
}

pub(crate) fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

pub(crate) fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub(crate) const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub(crate) const OCI_TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn write_blob(layout: &Path, bytes: &[u8]) -> Value {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&digest["sha256:".len()..]), bytes).unwrap();
    json!({ "digest": digest, "size": bytes.len() })
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub(crate) fn descriptor(mut blob: Value, media_type: &str) -> Value {
    blob["mediaType"] = json!(media_type);
    blob
}

/// Writes config, layers and manifest blobs; returns the manifest's
/// descriptor (untagged).
pub(crate) fn add_image(
    layout: &Path,
    layers: Vec<(LayerTar, &str)>,
    config: Value,
    manifest_type: &str,
) -> Value {
    let mut diff_ids = Vec::new();
    let mut layer_descs = Vec::new();
    for (layer, media_type) in layers {
        let tar = layer.build();
        diff_ids.push(sha256(&tar));
        let blob = if media_type.contains("gzip") {
            gzip(&tar)
        } else {
            tar
        };
        layer_descs.push(descriptor(write_blob(layout, &blob), media_type));
    }
    let config_type = if manifest_type == OCI_MANIFEST {
        OCI_CONFIG
    } else {
        DOCKER_CONFIG
    };
    let config = json!({
        "architecture": Arch::default().to_string(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config_desc = descriptor(
        write_blob(layout, config.to_string().as_bytes()),
        config_type,
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config_desc,
        "layers": layer_descs,
    });
    descriptor(
        write_blob(layout, manifest.to_string().as_bytes()),
        manifest_type,
    )
}

pub(crate) fn simple_image(layout: &Path, marker: &str) -> Value {
    add_image(
        layout,
        vec![(LayerTar::new().file("marker", marker), OCI_TGZ)],
        json!({ "Cmd": [marker] }),
        OCI_MANIFEST,
    )
}

pub(crate) fn tagged(mut desc: Value, tag: &str) -> Value {
    desc["annotations"] = json!({ REF_NAME: tag });
    desc
}

pub(crate) fn write_index(layout: &Path, manifests: Vec<Value>) {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

pub(crate) fn image_ref(layout: &Path, tag: Option<&str>) -> ImageRef {
    ImageRef {
        path: layout.to_str().unwrap().to_string(),
        tag: tag.map(str::to_string),
        registry: None,
    }
}

pub(crate) fn blob_file(layout: &Path, desc: &Value) -> PathBuf {
    let digest = desc["digest"].as_str().unwrap();
    layout.join("blobs/sha256").join(&digest["sha256:".len()..])
}

pub(crate) fn cache_entries(store: &ImageStore) -> Vec<String> {
    match fs::read_dir(store.root().join("rootfs")) {
        Ok(rd) => {
            let mut v: Vec<_> = rd
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

pub(crate) const UMOCI: &str = "/usr/bin/umoci";

pub(crate) const BUSYBOX: &str = "/bin/busybox";

pub(crate) fn umoci(dir: &Path, args: &[&str]) {
    let out = Command::new(UMOCI)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {UMOCI} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "umoci {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds `dir/L`, a busybox image tagged `latest` with cmd `sh`.
pub(crate) fn busybox_layout(dir: &Path) -> PathBuf {
    assert!(
        Path::new(UMOCI).exists(),
        "this test needs umoci at {UMOCI} (apt-get install umoci) and must run as root"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "this test needs a static busybox at {BUSYBOX} (apt-get install busybox-static)"
    );
    umoci(dir, &["init", "--layout", "L"]);
    umoci(dir, &["new", "--image", "L:latest"]);
    umoci(dir, &["unpack", "--image", "L:latest", "B"]);
    fs::create_dir_all(dir.join("B/rootfs/bin")).unwrap();
    fs::copy(BUSYBOX, dir.join("B/rootfs/bin/busybox")).unwrap();
    umoci(dir, &["repack", "--image", "L:latest", "B"]);
    umoci(
        dir,
        &["config", "--image", "L:latest", "--config.cmd", "sh"],
    );
    dir.join("L")
}

pub(crate) fn latest_manifest(layout: &Path) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == "latest")
        .unwrap()
        .clone();
    serde_json::from_slice(&fs::read(blob_file(layout, &desc)).unwrap()).unwrap()
}
