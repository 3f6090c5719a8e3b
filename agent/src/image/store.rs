//! The node's cache of unpacked images, keyed by manifest digest.
//!
//! Content is addressed by digest throughout: a manifest names its config
//! and layers by digest, and the unpacked rootfs is cached under the
//! manifest's digest, so an image met again (by another tag, from another
//! layout, or later from a registry) is unpacked once.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use tracing::{debug, info, warn};

use super::layer::{layer_compression, unpack_layer};
use super::layout::{parse_json, read_json_blob, resolve_manifest, Layout};
use super::{io_err, is_dir, BlobSource, ImageError};

pub(super) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The parts of an image config a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `K=V` entries.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

impl ImageConfig {
    fn from_configuration(configuration: &ImageConfiguration) -> ImageConfig {
        let Some(c) = configuration.config() else {
            return ImageConfig::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            workdir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
        }
    }
}

/// An image resolved and unpacked by [`ImageStore::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    /// `sha256:<hex>` of the (platform) manifest that was unpacked.
    pub manifest_digest: String,
    /// The cached rootfs; shared, so give a container an overlay on it or
    /// a copy of it (see [`crate::rootfs`]) rather than the tree itself.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// Unpacked images, cached under `root/rootfs/<manifest-digest-hex>/`.
/// Clones share one lock per manifest, so replicas started together
/// unpack their image once, not once each.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    unpacking: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// What each image met before resolved to, by where it came from and
    /// its descriptor: a replica's start after the first reads no blob
    /// and hashes nothing while the unpacked tree is still in the cache.
    resolved: Arc<Mutex<HashMap<String, Resolved>>>,
}

/// An image whose blobs were read and checked, and which was unpacked.
#[derive(Debug, Clone)]
struct Resolved {
    manifest_digest: String,
    config: ImageConfig,
}

/// At most this many images are remembered as resolved (the memory is
/// small; the bound keeps it so on a node that meets many images).
const RESOLVED_KEPT: usize = 256;

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore {
            root: root.into(),
            unpacking: Default::default(),
            resolved: Default::default(),
        }
    }

    /// The lock held while one manifest is unpacked.
    fn manifest_lock(&self, hex: &str) -> Arc<Mutex<()>> {
        let mut locks = self.unpacking.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(hex.to_string()).or_default().clone()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the tree unpacked from this manifest is cached.
    fn tree(&self, manifest_digest: &str) -> PathBuf {
        let hex = manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(manifest_digest);
        self.root.join("rootfs").join(hex)
    }

    /// Resolves `image` in its OCI image layout and unpacks it (see
    /// [`ImageStore::unpack`]).
    pub fn prepare(&self, image: &skiff_model::ImageRef) -> Result<PreparedImage, ImageError> {
        let layout = Layout::open(&image.path)?;
        let chosen = layout.select_by_tag(image.tag.as_deref())?;
        self.unpack(&layout, &chosen)
    }

    /// Follows `image` (a manifest, or an index of them, as a tag names
    /// it) to the manifest for this platform, reads the image config and
    /// unpacks the layers into the cached rootfs for that manifest (reused
    /// when already there). Every blob comes from `source` and is checked
    /// against its digest, and every uncompressed layer against the
    /// config's `rootfs.diff_ids`.
    pub fn unpack(
        &self,
        source: &dyn BlobSource,
        image: &Descriptor,
    ) -> Result<PreparedImage, ImageError> {
        // Content is addressed by digest, so the same descriptor from the
        // same source resolves the same way again. Keyed by the source
        // too: another layout naming this digest must hold the blobs
        // itself (knowing a digest is not access to the image).
        let key = format!(
            "{}\n{}\n{}\n{}",
            source.name(),
            image.digest(),
            image.media_type(),
            image.size()
        );
        if let Some(prepared) = self.remembered(&key) {
            return Ok(prepared);
        }
        let prepared = self.resolve_and_unpack(source, image)?;
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if resolved.len() >= RESOLVED_KEPT {
            resolved.clear();
        }
        resolved.insert(
            key,
            Resolved {
                manifest_digest: prepared.manifest_digest.clone(),
                config: prepared.config.clone(),
            },
        );
        Ok(prepared)
    }

    /// An image resolved before whose unpacked tree is still cached (the
    /// image collector may have removed it since).
    fn remembered(&self, key: &str) -> Option<PreparedImage> {
        let hit = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        let rootfs = self.tree(&hit.manifest_digest);
        is_dir(&rootfs).then_some(PreparedImage {
            manifest_digest: hit.manifest_digest,
            rootfs,
            config: hit.config,
        })
    }

    fn resolve_and_unpack(
        &self,
        source: &dyn BlobSource,
        image: &Descriptor,
    ) -> Result<PreparedImage, ImageError> {
        let (manifest_digest, manifest) = resolve_manifest(source, image, 0)?;

        let config_desc = manifest.config();
        match config_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(s) if s == DOCKER_CONFIG => {}
            other => {
                return Err(ImageError::UnexpectedMediaType {
                    layout: source.name().to_string(),
                    digest: config_desc.digest().to_string(),
                    media_type: other.to_string(),
                    expected: "an image config",
                })
            }
        }
        let config_bytes = read_json_blob(source, config_desc, "an image config")?;
        let configuration: ImageConfiguration = parse_json(source, &config_bytes, || {
            format!("image config {}", config_desc.digest())
        })?;
        let diff_ids = configuration.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::LayerCount {
                layout: source.name().to_string(),
                digest: manifest_digest.clone(),
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        let compressions = manifest
            .layers()
            .iter()
            .map(|l| layer_compression(source, l))
            .collect::<Result<Vec<_>, _>>()?;
        let config = ImageConfig::from_configuration(&configuration);

        let hex = manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(&manifest_digest)
            .to_string();
        let rootfs = self.tree(&manifest_digest);
        let cache = self.root.join("rootfs");
        // Whoever unpacks this manifest holds its lock; the others wait
        // and then find it in the cache.
        let lock = self.manifest_lock(&hex);
        let _unpacking = lock.lock().unwrap_or_else(|p| p.into_inner());
        if is_dir(&rootfs) {
            debug!(image = %source.name(), digest = %manifest_digest, rootfs = %rootfs.display(), "reusing cached rootfs");
            return Ok(PreparedImage {
                manifest_digest,
                rootfs,
                config,
            });
        }

        fs::create_dir_all(&cache).map_err(io_err(&cache))?;
        remove_stale_temps(&cache);
        let tmp = TempDir::create(&cache, &hex)?;
        info!(image = %source.name(), digest = %manifest_digest, layers = manifest.layers().len(), "unpacking image");
        for ((layer, diff_id), compression) in
            manifest.layers().iter().zip(diff_ids).zip(compressions)
        {
            unpack_layer(source, layer, diff_id, compression, tmp.path())?;
        }
        match fs::rename(tmp.path(), &rootfs) {
            Ok(()) => tmp.disarm(),
            // Another prepare of the same manifest won the race; its rootfs is
            // identical, so ours (removed when `tmp` drops) is not needed.
            Err(_) if is_dir(&rootfs) => {
                debug!(rootfs = %rootfs.display(), "rootfs was unpacked concurrently; using that one")
            }
            Err(e) => return Err(io_err(&rootfs)(e)),
        }
        Ok(PreparedImage {
            manifest_digest,
            rootfs,
            config,
        })
    }
}

/// A temporary unpack directory beside the cache entries, removed on drop
/// unless it was renamed into place.
struct TempDir {
    path: PathBuf,
    armed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    fn create(cache: &Path, hex: &str) -> Result<TempDir, ImageError> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = cache.join(format!(".tmp-{}-{hex}-{n}", std::process::id()));
        DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io_err(&path))?;
        Ok(TempDir { path, armed: true })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                warn!(path = %self.path.display(), error = %e, "could not remove temporary unpack directory");
            }
        }
    }
}

/// Removes `.tmp-<pid>-...` unpack directories left by processes that no
/// longer exist (a crashed prepare).
fn remove_stale_temps(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(".tmp-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        match fs::remove_dir_all(&path) {
            Ok(()) => debug!(path = %path.display(), "removed stale unpack directory"),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "could not remove stale unpack directory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::testing::*;
    use crate::image::Blob;
    use oci_spec::image::Digest;
    use serde_json::{json, Value};
    use std::io;
    use std::os::unix::fs::MetadataExt;

    /// Blobs held in memory by digest: a source other than a layout
    /// directory, as a registry will be, and one that cannot tell a blob's
    /// size before it is read.
    struct MemoryBlobs(HashMap<String, Vec<u8>>);

    impl MemoryBlobs {
        /// Every blob of the layout at `layout`.
        fn from_layout(layout: &Path) -> MemoryBlobs {
            let blobs = fs::read_dir(layout.join("blobs/sha256"))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    let digest = format!("sha256:{}", e.file_name().to_str().unwrap());
                    (digest, fs::read(e.path()).unwrap())
                })
                .collect();
            MemoryBlobs(blobs)
        }
    }

    impl BlobSource for MemoryBlobs {
        fn name(&self) -> &str {
            "memory"
        }

        fn open(&self, digest: &Digest) -> Result<Blob, ImageError> {
            let path = PathBuf::from(format!("memory/{digest}"));
            match self.0.get(&digest.to_string()) {
                Some(bytes) => Ok(Blob {
                    path,
                    len: None,
                    reader: Box::new(io::Cursor::new(bytes.clone())),
                }),
                None => Err(ImageError::Io {
                    path,
                    source: io::ErrorKind::NotFound.into(),
                }),
            }
        }
    }

    fn descriptor_of(desc: &Value) -> Descriptor {
        serde_json::from_value(desc.clone()).unwrap()
    }

    #[test]
    fn an_image_from_another_blob_source_lands_in_the_same_cache_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = simple_image(&layout, "m");
        write_index(&layout, vec![tagged(manifest.clone(), "latest")]);
        let memory = MemoryBlobs::from_layout(&layout);
        let store = ImageStore::new(tmp.path().join("images"));

        let from_memory = store.unpack(&memory, &descriptor_of(&manifest)).unwrap();
        let digest = manifest["digest"].as_str().unwrap();
        assert_eq!(from_memory.manifest_digest, digest);
        assert_eq!(
            from_memory.rootfs,
            store.root().join("rootfs").join(&digest[7..])
        );
        assert_eq!(read(&from_memory.rootfs.join("marker")), "m");
        assert_eq!(from_memory.config.cmd, vec!["m"]);

        // The layout's own copy of the layer is gone: only the entry the
        // other source filled can serve this prepare.
        let parsed: Value =
            serde_json::from_slice(&fs::read(blob_file(&layout, &manifest)).unwrap()).unwrap();
        fs::remove_file(blob_file(&layout, &parsed["layers"][0])).unwrap();
        let from_layout = store.prepare(&image_ref(&layout, None)).unwrap();
        assert_eq!(from_layout, from_memory);
        assert_eq!(cache_entries(&store), vec![digest[7..].to_string()]);
    }

    #[test]
    fn blobs_from_a_source_that_does_not_know_their_size_are_still_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = simple_image(&layout, "m");
        let parsed: Value =
            serde_json::from_slice(&fs::read(blob_file(&layout, &manifest)).unwrap()).unwrap();
        let layer = parsed["layers"][0]["digest"].as_str().unwrap().to_string();
        let store = ImageStore::new(tmp.path().join("images"));

        let mut truncated = MemoryBlobs::from_layout(&layout);
        truncated.0.get_mut(&layer).unwrap().pop();
        let err = store
            .unpack(&truncated, &descriptor_of(&manifest))
            .unwrap_err();
        assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(&layer), "{err}");

        let mut flipped = MemoryBlobs::from_layout(&layout);
        flipped.0.get_mut(&layer).unwrap()[10] ^= 0x01;
        let err = store
            .unpack(&flipped, &descriptor_of(&manifest))
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(&layer), "{err}");
        assert!(cache_entries(&store).is_empty());
    }

    #[test]
    fn prepare_unpacks_layers_in_order_verifies_them_and_maps_the_config() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = add_image(
            &layout,
            vec![
                (
                    LayerTar::new()
                        .dir("etc", 0o755)
                        .file("etc/os", "base")
                        .file("etc/gone", "x"),
                    OCI_TGZ,
                ),
                (
                    LayerTar::new().file("etc/.wh.gone", "").file("app", "v1"),
                    OCI_TAR,
                ),
                (
                    LayerTar::new().file("app", "v2"),
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                ),
            ],
            json!({
                "Entrypoint": ["/app"],
                "Cmd": ["--serve"],
                "Env": ["PATH=/bin", "A=b"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
            }),
            OCI_MANIFEST,
        );
        write_index(&layout, vec![tagged(manifest.clone(), "v1")]);
        let store = ImageStore::new(tmp.path().join("images"));
        let prepared = store.prepare(&image_ref(&layout, None)).unwrap();

        let digest = manifest["digest"].as_str().unwrap();
        assert_eq!(prepared.manifest_digest, digest);
        assert_eq!(
            prepared.rootfs,
            store.root().join("rootfs").join(&digest[7..])
        );
        assert_eq!(tree(&prepared.rootfs), vec!["app", "etc", "etc/os"]);
        assert_eq!(read(&prepared.rootfs.join("app")), "v2");
        assert_eq!(
            prepared.config,
            ImageConfig {
                entrypoint: vec!["/app".into()],
                cmd: vec!["--serve".into()],
                env: vec!["PATH=/bin".into(), "A=b".into()],
                workdir: Some("/srv".into()),
                user: Some("1000:1000".into()),
            }
        );
        assert_eq!(
            cache_entries(&store),
            vec![digest[7..].to_string()],
            "no temp dirs left"
        );
    }

    /// One image tagged `latest` in a layout under `tmp`, prepared once
    /// by a new store: the layout, the manifest's descriptor, its parsed
    /// body, the store and what the first prepare gave.
    fn prepared_once(tmp: &Path) -> (PathBuf, Value, Value, ImageStore, PreparedImage) {
        let layout = tmp.join("layout");
        let manifest = simple_image(&layout, "one");
        write_index(&layout, vec![tagged(manifest.clone(), "latest")]);
        let store = ImageStore::new(tmp.join("images"));
        let first = store.prepare(&image_ref(&layout, Some("latest"))).unwrap();
        let parsed: Value =
            serde_json::from_slice(&fs::read(blob_file(&layout, &manifest)).unwrap()).unwrap();
        (layout, manifest, parsed, store, first)
    }

    #[test]
    fn second_prepare_reuses_the_cached_rootfs_without_unpacking() {
        let tmp = tempfile::tempdir().unwrap();
        let (layout, _, parsed, store, first) = prepared_once(tmp.path());
        fs::write(first.rootfs.join("sentinel"), "kept").unwrap();
        let mtime = fs::metadata(first.rootfs.join("marker"))
            .unwrap()
            .modified()
            .unwrap();
        // Without its layer blob, only a cache hit can succeed.
        fs::remove_file(blob_file(&layout, &parsed["layers"][0])).unwrap();

        let second = store.prepare(&image_ref(&layout, None)).unwrap();
        assert_eq!(second, first);
        assert_eq!(read(&second.rootfs.join("sentinel")), "kept");
        assert_eq!(
            fs::metadata(second.rootfs.join("marker"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
    }

    #[test]
    fn a_replica_after_the_first_reads_no_blob_but_another_layout_must_hold_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (layout, manifest, parsed, store, first) = prepared_once(tmp.path());
        // Without the manifest and config blobs, only the resolution
        // remembered from the first start can serve the next.
        fs::remove_file(blob_file(&layout, &parsed["config"])).unwrap();
        fs::remove_file(blob_file(&layout, &manifest)).unwrap();
        let again = store.prepare(&image_ref(&layout, Some("latest"))).unwrap();
        assert_eq!(again, first);

        // Another layout that names the same digest but holds no blobs
        // is not served from what this one proved.
        let other = tmp.path().join("other");
        fs::create_dir_all(other.join("blobs/sha256")).unwrap();
        for f in ["index.json", "oci-layout"] {
            if layout.join(f).exists() {
                fs::copy(layout.join(f), other.join(f)).unwrap();
            }
        }
        assert!(store.prepare(&image_ref(&other, Some("latest"))).is_err());

        // Once the image collector removed the unpacked tree, a start
        // reads the blobs again (here gone, so it fails).
        fs::remove_dir_all(&first.rootfs).unwrap();
        assert!(store.prepare(&image_ref(&layout, Some("latest"))).is_err());
    }

    #[test]
    fn a_failing_layer_leaves_no_cache_entry_or_temp_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = add_image(
            &layout,
            vec![(
                LayerTar::new().file("ok", "ok").raw_file("../escape", "x"),
                OCI_TGZ,
            )],
            json!({}),
            OCI_MANIFEST,
        );
        write_index(&layout, vec![manifest.clone()]);
        let store = ImageStore::new(tmp.path().join("images"));
        let err = store.prepare(&image_ref(&layout, None)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ImageError::Layer { .. }), "{err:?}");
        assert!(msg.contains("../escape"), "{msg}");
        assert!(
            cache_entries(&store).is_empty(),
            "{:?}",
            cache_entries(&store)
        );
        assert!(!exists(&store.root().join("escape")));
    }

    #[test]
    fn stale_temp_dirs_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = simple_image(&layout, "m");
        write_index(&layout, vec![manifest.clone()]);
        let store = ImageStore::new(tmp.path().join("images"));
        // pid_max is at most 2^22, so this pid cannot be alive.
        let stale = store.root().join("rootfs/.tmp-99999999-abcd-0");
        fs::create_dir_all(stale.join("half/unpacked")).unwrap();
        store.prepare(&image_ref(&layout, None)).unwrap();
        let hex = &manifest["digest"].as_str().unwrap()[7..];
        assert_eq!(cache_entries(&store), vec![hex.to_string()]);
    }

    #[test]
    fn concurrent_prepares_of_one_image_share_one_cache_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let layers = (0..3)
            .map(|i| {
                (
                    LayerTar::new().file(&format!("f{i}"), &"x".repeat(100_000)),
                    OCI_TGZ,
                )
            })
            .collect();
        let manifest = add_image(&layout, layers, json!({}), OCI_MANIFEST);
        write_index(&layout, vec![manifest.clone()]);
        let store = ImageStore::new(tmp.path().join("images"));
        let image = image_ref(&layout, None);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| store.prepare(&image))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let first = results[0].as_ref().unwrap();
        for r in &results {
            assert_eq!(r.as_ref().unwrap(), first);
        }
        assert_eq!(tree(&first.rootfs), vec!["f0", "f1", "f2"]);
        let hex = &manifest["digest"].as_str().unwrap()[7..];
        assert_eq!(cache_entries(&store), vec![hex.to_string()]);
    }

    #[test]
    fn umoci_busybox_layout_prepares_and_second_prepare_reuses_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = busybox_layout(tmp.path());
        let store = ImageStore::new(tmp.path().join("images"));
        let first = store.prepare(&image_ref(&layout, Some("latest"))).unwrap();
        let busybox = fs::metadata(first.rootfs.join("bin/busybox")).unwrap();
        assert!(busybox.is_file());
        assert_eq!(busybox.len(), fs::metadata(BUSYBOX).unwrap().len());
        assert_ne!(busybox.mode() & 0o111, 0, "busybox stays executable");
        assert_eq!(first.config.cmd, vec!["sh"]);
        assert!(first.manifest_digest.starts_with("sha256:"));

        fs::write(first.rootfs.join(".skiff-marker"), "m").unwrap();
        let marker_mtime = fs::metadata(first.rootfs.join(".skiff-marker"))
            .unwrap()
            .modified()
            .unwrap();
        let second = store.prepare(&image_ref(&layout, None)).unwrap();
        assert_eq!(second.rootfs, first.rootfs);
        assert_eq!(second.manifest_digest, first.manifest_digest);
        let marker = fs::metadata(second.rootfs.join(".skiff-marker")).unwrap();
        assert_eq!(marker.modified().unwrap(), marker_mtime);
        assert_eq!(
            fs::metadata(second.rootfs.join("bin/busybox"))
                .unwrap()
                .ino(),
            busybox.ino()
        );
    }
}
