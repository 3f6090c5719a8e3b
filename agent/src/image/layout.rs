//! Reading an OCI image layout, and reading blobs by digest.
//!
//! [`Layout`] is one image layout directory: its `index.json` names the
//! manifests (a tag is the `org.opencontainers.image.ref.name` annotation)
//! and `blobs/sha256/<hex>` holds the content. The functions below it work
//! on any [`BlobSource`]: they follow nested indexes to the manifest for
//! this platform and read blobs, checking each one's size and sha256
//! against the descriptor that named it before anything trusts it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;

use oci_spec::image::{
    Arch, Descriptor, Digest, DigestAlgorithm, ImageIndex, ImageManifest, MediaType, Os,
};
use sha2::{Digest as _, Sha256};

use super::{io_err, Blob, BlobSource, ImageError, MAX_INDEX_DEPTH, MAX_JSON_BYTES};

/// Annotation that names a manifest in a layout's `index.json` (the tag).
pub(super) const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub(super) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One OCI image layout directory.
pub struct Layout {
    dir: PathBuf,
    /// The path as the reference spelled it, for messages.
    name: String,
}

impl Layout {
    /// Opens the layout at `path`: a directory with an `index.json`.
    pub fn open(path: &str) -> Result<Layout, ImageError> {
        let dir = PathBuf::from(path);
        let not_layout = |reason: String| ImageError::NotALayout {
            layout: path.to_string(),
            reason,
        };
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_layout("not a directory".into())),
            Err(e) => return Err(not_layout(e.to_string())),
        }
        if !dir.join("index.json").is_file() {
            return Err(not_layout("it has no index.json".into()));
        }
        Ok(Layout {
            dir,
            name: path.to_string(),
        })
    }

    fn read_index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.dir.join("index.json");
        let (file, _) = self.open_regular(&["index.json"])?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(ImageError::NotALayout {
                layout: self.name.clone(),
                reason: format!("index.json is over {MAX_JSON_BYTES} bytes"),
            });
        }
        parse_json(self, &bytes, || "index.json".to_string())
    }

    /// Chooses the descriptor in the layout's `index.json` that `tag` names
    /// (a manifest, or an index to follow with [`resolve_manifest`]).
    /// Without a tag: the only manifest, else the one tagged `latest`, else
    /// the one for this platform among untagged ones.
    pub fn select_by_tag(&self, tag: Option<&str>) -> Result<Descriptor, ImageError> {
        let index = self.read_index()?;
        let manifests = index.manifests();
        if manifests.is_empty() {
            return Err(ImageError::NoManifests {
                layout: self.name.clone(),
            });
        }
        let name_of = |d: &Descriptor| -> Option<String> {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
        };
        let available = || -> Vec<String> {
            manifests
                .iter()
                .filter_map(name_of)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let candidates: Vec<&Descriptor> = match tag {
            Some(tag) => {
                let named: Vec<_> = manifests
                    .iter()
                    .filter(|d| name_of(d).as_deref() == Some(tag))
                    .collect();
                if named.is_empty() {
                    return Err(ImageError::UnknownTag {
                        layout: self.name.clone(),
                        tag: tag.to_string(),
                        available: available(),
                    });
                }
                named
            }
            None if manifests.len() == 1 => manifests.iter().collect(),
            None => {
                let latest: Vec<_> = manifests
                    .iter()
                    .filter(|d| name_of(d).as_deref() == Some("latest"))
                    .collect();
                if !latest.is_empty() {
                    latest
                } else if manifests.iter().all(|d| name_of(d).is_none()) {
                    // Untagged per-platform manifests at the top level.
                    manifests.iter().collect()
                } else {
                    return Err(ImageError::NoDefaultTag {
                        layout: self.name.clone(),
                        available: available(),
                    });
                }
            }
        };
        let what = match tag {
            Some(t) => format!("tag {t:?}"),
            None => "index.json".to_string(),
        };
        pick_platform(self, candidates, &what).cloned()
    }
}

impl Layout {
    /// Opens a file of the layout without following a symbolic link at
    /// any step below the layout's directory, and only when it is a
    /// regular file: a FIFO would block a reader forever and a device
    /// (or a link to /dev/zero) would never end. Returns it and its size.
    fn open_regular(&self, names: &[&str]) -> Result<(File, u64), ImageError> {
        let path = names.iter().fold(self.dir.clone(), |p, n| p.join(n));
        let refused = |reason: String| ImageError::NotAFile {
            layout: self.name.clone(),
            path: names.join("/"),
            reason,
        };
        let file = match crate::sys::open_beneath(&self.dir, names) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                return Err(refused(
                    "it (or a directory on the way) is a symbolic link or not a directory; links are not followed in a layout".into(),
                ))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let meta = file.metadata().map_err(io_err(&path))?;
        if !meta.file_type().is_file() {
            return Err(refused(format!(
                "it is {}, not a regular file",
                kind_of(&meta)
            )));
        }
        Ok((file, meta.len()))
    }
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

impl BlobSource for Layout {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&self, digest: &Digest) -> Result<Blob, ImageError> {
        // Only a sha256 hex part is known to be a plain file name.
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(ImageError::UnsupportedDigest {
                layout: self.name.clone(),
                digest: digest.to_string(),
            });
        }
        let path = self.dir.join("blobs").join("sha256").join(digest.digest());
        let (file, len) = self.open_regular(&["blobs", "sha256", digest.digest()])?;
        Ok(Blob {
            path,
            len: Some(len),
            // Never more than the file held when it was opened.
            reader: Box::new(file.take(len)),
        })
    }
}

// ---------------------------------------------------------------------------
// Blobs by digest, from any source
// ---------------------------------------------------------------------------

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    source: &dyn BlobSource,
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Json {
        layout: source.name().to_string(),
        what: what(),
        source: e,
    })
}

/// Only sha256 is hashed here, so only sha256 digests are read.
fn check_algorithm(source: &dyn BlobSource, desc: &Descriptor) -> Result<(), ImageError> {
    let digest = desc.digest();
    if *digest.algorithm() != DigestAlgorithm::Sha256 {
        return Err(ImageError::UnsupportedDigest {
            layout: source.name().to_string(),
            digest: digest.to_string(),
        });
    }
    Ok(())
}

fn check_hash(
    source: &dyn BlobSource,
    desc: &Descriptor,
    hasher: Sha256,
    size: u64,
) -> Result<(), ImageError> {
    let digest = desc.digest();
    if size != desc.size() {
        return Err(ImageError::SizeMismatch {
            layout: source.name().to_string(),
            digest: digest.to_string(),
            expected: desc.size(),
            actual: size,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != digest.digest() {
        return Err(ImageError::DigestMismatch {
            layout: source.name().to_string(),
            digest: digest.to_string(),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(())
}

/// Reads a small blob (index, manifest, config) and verifies it.
pub(super) fn read_json_blob(
    source: &dyn BlobSource,
    desc: &Descriptor,
    what: &'static str,
) -> Result<Vec<u8>, ImageError> {
    check_algorithm(source, desc)?;
    if desc.size() > MAX_JSON_BYTES {
        return Err(ImageError::BlobTooLarge {
            layout: source.name().to_string(),
            digest: desc.digest().to_string(),
            what,
            size: desc.size(),
        });
    }
    let blob = source.open(desc.digest())?;
    let mut bytes = Vec::new();
    blob.reader
        .take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(&blob.path))?;
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    check_hash(source, desc, hasher, bytes.len() as u64)?;
    Ok(bytes)
}

/// Streams a (large) blob through sha256 and checks size and digest, so
/// that nothing unverified is unpacked.
pub(super) fn verify_blob(source: &dyn BlobSource, desc: &Descriptor) -> Result<(), ImageError> {
    check_algorithm(source, desc)?;
    let blob = source.open(desc.digest())?;
    if let Some(len) = blob.len.filter(|&len| len != desc.size()) {
        return Err(ImageError::SizeMismatch {
            layout: source.name().to_string(),
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual: len,
        });
    }
    let mut reader = HashingReader::new(blob.reader);
    io::copy(&mut reader, &mut io::sink()).map_err(io_err(&blob.path))?;
    let (hasher, count) = reader.finish();
    check_hash(source, desc, hasher, count)
}

/// Picks the manifest for linux on the running architecture. Entries
/// without a platform are acceptable when nothing matches exactly.
fn pick_platform<'a>(
    source: &dyn BlobSource,
    candidates: Vec<&'a Descriptor>,
    what: &str,
) -> Result<&'a Descriptor, ImageError> {
    let arch = Arch::default();
    let wanted = format!("linux/{arch}");
    if let [only] = candidates[..] {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    if let Some(exact) = candidates.iter().copied().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == arch)
    }) {
        return Ok(exact);
    }
    let unplatformed: Vec<_> = candidates
        .iter()
        .copied()
        .filter(|d| d.platform().is_none())
        .collect();
    if let [only] = unplatformed[..] {
        return Ok(only);
    }
    Err(ImageError::NoPlatform {
        layout: source.name().to_string(),
        what: what.to_string(),
        wanted,
        available: candidates
            .iter()
            .map(|d| match d.platform() {
                Some(p) => match p.variant() {
                    Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                    None => format!("{}/{}", p.os(), p.architecture()),
                },
                None => format!("{} (no platform)", d.digest()),
            })
            .collect(),
    })
}

/// Follows nested indexes down to an image manifest; returns the
/// manifest's digest and contents.
pub(super) fn resolve_manifest(
    source: &dyn BlobSource,
    desc: &Descriptor,
    depth: usize,
) -> Result<(String, ImageManifest), ImageError> {
    let digest = desc.digest().to_string();
    let is_index = match desc.media_type() {
        MediaType::ImageIndex => true,
        MediaType::ImageManifest => false,
        MediaType::Other(s) if s == DOCKER_MANIFEST_LIST => true,
        MediaType::Other(s) if s == DOCKER_MANIFEST => false,
        other => {
            return Err(ImageError::UnexpectedMediaType {
                layout: source.name().to_string(),
                digest,
                media_type: other.to_string(),
                expected: "an image manifest or index",
            })
        }
    };
    if is_index {
        if depth >= MAX_INDEX_DEPTH {
            return Err(ImageError::IndexTooDeep {
                layout: source.name().to_string(),
                digest,
            });
        }
        let bytes = read_json_blob(source, desc, "an image index")?;
        let index: ImageIndex = parse_json(source, &bytes, || format!("image index {digest}"))?;
        if index.manifests().is_empty() {
            return Err(ImageError::NoPlatform {
                layout: source.name().to_string(),
                what: format!("image index {digest}"),
                wanted: format!("linux/{}", Arch::default()),
                available: Vec::new(),
            });
        }
        let next = pick_platform(
            source,
            index.manifests().iter().collect(),
            &format!("image index {digest}"),
        )?;
        return resolve_manifest(source, next, depth + 1);
    }
    let bytes = read_json_blob(source, desc, "an image manifest")?;
    let manifest: ImageManifest =
        parse_json(source, &bytes, || format!("image manifest {digest}"))?;
    Ok((digest, manifest))
}

/// Counts and hashes everything read through it.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub(super) fn finish(self) -> (Sha256, u64) {
        (self.hasher, self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::*;
    use crate::image::ImageStore;
    use serde_json::{json, Value};

    #[test]
    fn unknown_tag_error_lists_the_available_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let a = simple_image(&layout, "a");
        let b = simple_image(&layout, "b");
        write_index(&layout, vec![tagged(b, "v2"), tagged(a, "v1")]);
        let store = ImageStore::new(tmp.path().join("images"));
        let err = store.prepare(&image_ref(&layout, Some("v3"))).unwrap_err();
        assert!(matches!(err, ImageError::UnknownTag { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"v3\"")
                && msg.contains("v1, v2")
                && msg.contains(layout.to_str().unwrap()),
            "{msg}"
        );
        assert!(cache_entries(&store).is_empty());
    }

    #[test]
    fn no_tag_selects_the_only_manifest_or_latest_and_otherwise_lists_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().join("images"));

        let only = tmp.path().join("only");
        let m = simple_image(&only, "only");
        write_index(&only, vec![tagged(m, "v7")]);
        assert_eq!(
            store.prepare(&image_ref(&only, None)).unwrap().config.cmd,
            vec!["only"]
        );

        let with_latest = tmp.path().join("with-latest");
        let old = simple_image(&with_latest, "old");
        let new = simple_image(&with_latest, "new");
        write_index(&with_latest, vec![tagged(old, "v1"), tagged(new, "latest")]);
        assert_eq!(
            store
                .prepare(&image_ref(&with_latest, None))
                .unwrap()
                .config
                .cmd,
            vec!["new"]
        );
        assert_eq!(
            store
                .prepare(&image_ref(&with_latest, Some("v1")))
                .unwrap()
                .config
                .cmd,
            vec!["old"]
        );

        let no_latest = tmp.path().join("no-latest");
        let a = simple_image(&no_latest, "a");
        let b = simple_image(&no_latest, "b");
        write_index(&no_latest, vec![tagged(a, "v1"), tagged(b, "v2")]);
        let err = store.prepare(&image_ref(&no_latest, None)).unwrap_err();
        assert!(matches!(err, ImageError::NoDefaultTag { .. }), "{err:?}");
        assert!(err.to_string().contains("v1, v2"), "{err}");
    }

    #[test]
    fn corrupted_blobs_fail_the_digest_check_naming_the_digest() {
        for which in ["layer", "config", "manifest"] {
            let tmp = tempfile::tempdir().unwrap();
            let layout = tmp.path().join("layout");
            let manifest = simple_image(&layout, "m");
            write_index(&layout, vec![tagged(manifest.clone(), "latest")]);
            let parsed: Value =
                serde_json::from_slice(&fs::read(blob_file(&layout, &manifest)).unwrap()).unwrap();
            let victim = match which {
                "layer" => parsed["layers"][0].clone(),
                "config" => parsed["config"].clone(),
                _ => manifest.clone(),
            };
            let path = blob_file(&layout, &victim);
            let mut bytes = fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            fs::write(&path, bytes).unwrap();

            let store = ImageStore::new(tmp.path().join("images"));
            let err = store.prepare(&image_ref(&layout, None)).unwrap_err();
            assert!(
                matches!(err, ImageError::DigestMismatch { .. }),
                "{which}: {err:?}"
            );
            let digest = victim["digest"].as_str().unwrap();
            assert!(err.to_string().contains(digest), "{which}: {err}");
            assert!(
                cache_entries(&store).is_empty(),
                "{which}: {:?}",
                cache_entries(&store)
            );
        }
    }

    #[test]
    fn truncated_blob_fails_the_size_check() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = simple_image(&layout, "m");
        write_index(&layout, vec![manifest.clone()]);
        let parsed: Value =
            serde_json::from_slice(&fs::read(blob_file(&layout, &manifest)).unwrap()).unwrap();
        let layer = blob_file(&layout, &parsed["layers"][0]);
        let bytes = fs::read(&layer).unwrap();
        fs::write(&layer, &bytes[..bytes.len() - 3]).unwrap();
        let err = ImageStore::new(tmp.path().join("images"))
            .prepare(&image_ref(&layout, None))
            .unwrap_err();
        assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains(parsed["layers"][0]["digest"].as_str().unwrap()));
    }

    /// Prepares the image on another thread and gives up after 20 s, so a
    /// blob that blocks shows as a failure instead of a hung test.
    fn prepare_within(store_dir: &std::path::Path, layout: &std::path::Path) -> ImageError {
        let (store_dir, layout) = (store_dir.to_path_buf(), layout.to_path_buf());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ImageStore::new(store_dir).prepare(&image_ref(&layout, None)));
        });
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(r) => r.expect_err("the image must be refused"),
            Err(_) => panic!("preparing the image blocked"),
        }
    }

    #[test]
    fn a_blob_that_is_a_fifo_a_device_or_a_link_is_refused_without_reading_it() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = simple_image(&layout, "m");
        write_index(&layout, vec![manifest.clone()]);
        let parsed: Value =
            serde_json::from_slice(&fs::read(blob_file(&layout, &manifest)).unwrap()).unwrap();
        let layer = blob_file(&layout, &parsed["layers"][0]);
        let good = fs::read(&layer).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::write(&elsewhere, &good).unwrap();
        let make: [(&str, &dyn Fn()); 3] = [
            ("a FIFO", &|| {
                let st = std::process::Command::new("mkfifo")
                    .arg(&layer)
                    .status()
                    .unwrap();
                assert!(st.success());
            }),
            ("symbolic link", &|| {
                std::os::unix::fs::symlink("/dev/zero", &layer).unwrap()
            }),
            ("symbolic link", &|| {
                std::os::unix::fs::symlink(&elsewhere, &layer).unwrap()
            }),
        ];
        for (i, (said, make)) in make.iter().enumerate() {
            fs::remove_file(&layer).unwrap();
            make();
            let err = prepare_within(&tmp.path().join(format!("images{i}")), &layout);
            assert!(matches!(err, ImageError::NotAFile { .. }), "{err:?}");
            assert!(err.to_string().contains(said), "{err}");
        }
        // A directory on the way that is a link (to a copy of the same
        // blobs) is not followed either.
        fs::remove_file(&layer).unwrap();
        fs::write(&layer, &good).unwrap();
        let blobs = layout.join("blobs");
        let moved = tmp.path().join("blobs-copy");
        fs::rename(&blobs, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &blobs).unwrap();
        let err = prepare_within(&tmp.path().join("images-link"), &layout);
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // Put back, the same layout is fine.
        fs::remove_file(&blobs).unwrap();
        fs::rename(&moved, &blobs).unwrap();
        ImageStore::new(tmp.path().join("images-ok"))
            .prepare(&image_ref(&layout, None))
            .unwrap();
    }

    #[test]
    fn nested_index_selects_the_running_platform() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let here = Arch::default().to_string();
        let other = if here == "amd64" { "arm64" } else { "amd64" };
        let mut native = simple_image(&layout, "native");
        native["platform"] = json!({ "architecture": here, "os": "linux" });
        let mut foreign = simple_image(&layout, "foreign");
        foreign["platform"] = json!({ "architecture": other, "os": "linux" });
        let mut attestation = simple_image(&layout, "attestation");
        attestation["platform"] = json!({ "architecture": "unknown", "os": "unknown" });
        let index = json!({ "schemaVersion": 2, "manifests": [foreign.clone(), native.clone(), attestation] });
        let index_desc = descriptor(write_blob(&layout, index.to_string().as_bytes()), OCI_INDEX);
        write_index(&layout, vec![tagged(index_desc, "latest")]);

        let store = ImageStore::new(tmp.path().join("images"));
        let prepared = store.prepare(&image_ref(&layout, None)).unwrap();
        assert_eq!(prepared.config.cmd, vec!["native"]);
        assert_eq!(prepared.manifest_digest, native["digest"].as_str().unwrap());

        // An index with only a foreign platform is refused, listing what it has.
        let layout2 = tmp.path().join("layout2");
        let mut foreign = simple_image(&layout2, "foreign");
        foreign["platform"] = json!({ "architecture": other, "os": "linux", "variant": "v8" });
        let index = json!({ "schemaVersion": 2, "manifests": [foreign] });
        let index_desc = descriptor(
            write_blob(&layout2, index.to_string().as_bytes()),
            OCI_INDEX,
        );
        write_index(&layout2, vec![index_desc]);
        let err = store.prepare(&image_ref(&layout2, None)).unwrap_err();
        assert!(matches!(err, ImageError::NoPlatform { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("linux/{here}")) && msg.contains(&format!("linux/{other}/v8")),
            "{msg}"
        );
    }

    #[test]
    fn missing_layout_is_reported_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = ImageStore::new(tmp.path().join("images"))
            .prepare(&image_ref(&missing, None))
            .unwrap_err();
        assert!(matches!(err, ImageError::NotALayout { .. }), "{err:?}");
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    }

    #[test]
    fn umoci_layout_unknown_tag_lists_available_tags() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = busybox_layout(tmp.path());
        umoci(tmp.path(), &["tag", "--image", "L:latest", "stable"]);
        let err = ImageStore::new(tmp.path().join("images"))
            .prepare(&image_ref(&layout, Some("nightly")))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"nightly\"") && msg.contains("latest, stable"),
            "{msg}"
        );
    }

    #[test]
    fn umoci_layout_with_a_flipped_byte_fails_the_digest_check() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = busybox_layout(tmp.path());
        let manifest = latest_manifest(&layout);
        let layers = manifest["layers"].as_array().unwrap();
        let layer = layers.last().unwrap();
        let path = blob_file(&layout, layer);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x80;
        fs::write(&path, bytes).unwrap();
        let store = ImageStore::new(tmp.path().join("images"));
        let err = store.prepare(&image_ref(&layout, None)).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
        assert!(
            err.to_string().contains(layer["digest"].as_str().unwrap()),
            "{err}"
        );
        assert!(cache_entries(&store).is_empty());
    }
}
