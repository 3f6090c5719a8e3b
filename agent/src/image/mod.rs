//! OCI image layouts on the node.
//!
//! [`ImageStore::prepare`] resolves an `oci:PATH[:TAG]` reference inside an
//! OCI image layout, verifies every blob it reads against its descriptor
//! digest, and unpacks the layers into a rootfs cached per manifest digest.
//! [`apply_layer`] applies one uncompressed layer tar (whiteouts included)
//! without ever writing outside its destination, and [`copy_rootfs`] gives a
//! container its own copy of a prepared rootfs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use oci_spec::image::{
    Arch, Descriptor, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os,
};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

/// Annotation that names a manifest in a layout's `index.json` (the tag).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Prefix of whiteout entries in a layer.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Opaque whiteout: hides every lower-layer child of its directory.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Largest JSON blob (index, manifest, config) read into memory.
const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;
/// Deepest chain of nested indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Everything that can go wrong while resolving, verifying, unpacking or
/// copying an image. Messages name the offending layout, digest, tag or path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no OCI image layout at {layout}: {reason}")]
    NotALayout { layout: String, reason: String },
    #[error("{what} in image layout {layout} is not valid: {source}")]
    Json {
        layout: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image layout {layout} lists no manifests")]
    NoManifests { layout: String },
    #[error(
        "image layout {layout} has no tag {tag:?}; available tags: {}",
        list_or_none(available)
    )]
    UnknownTag {
        layout: String,
        tag: String,
        available: Vec<String>,
    },
    #[error(
        "no tag given and image layout {layout} holds several manifests, none tagged \"latest\"; \
         name one as oci:{layout}:TAG (available tags: {})",
        list_or_none(available)
    )]
    NoDefaultTag {
        layout: String,
        available: Vec<String>,
    },
    #[error("{what} in image layout {layout} has no single manifest for {wanted} (available platforms: {})", list_or_none(available))]
    NoPlatform {
        layout: String,
        what: String,
        wanted: String,
        available: Vec<String>,
    },
    #[error(
        "image layout {layout}: indexes nest deeper than {MAX_INDEX_DEPTH} levels at {digest}"
    )]
    IndexTooDeep { layout: String, digest: String },
    #[error(
        "blob {digest} in image layout {layout} has media type {media_type}, expected {expected}"
    )]
    UnexpectedMediaType {
        layout: String,
        digest: String,
        media_type: String,
        expected: &'static str,
    },
    #[error(
        "layer {digest} in image layout {layout} is zstd-compressed ({media_type}); \
         zstd layers are not supported, convert the image to gzip layers"
    )]
    ZstdLayer {
        layout: String,
        digest: String,
        media_type: String,
    },
    #[error("blob {digest} in image layout {layout} uses an unsupported digest algorithm (only sha256 is supported)")]
    UnsupportedDigest { layout: String, digest: String },
    #[error("blob {digest} in image layout {layout} is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        layout: String,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} in image layout {layout} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit for {what}")]
    BlobTooLarge {
        layout: String,
        digest: String,
        what: &'static str,
        size: u64,
    },
    #[error("blob {digest} in image layout {layout} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        layout: String,
        digest: String,
        actual: String,
    },
    #[error(
        "layer {digest} in image layout {layout} unpacks to {actual}, \
         but the image config's rootfs.diff_ids says {expected}"
    )]
    DiffIdMismatch {
        layout: String,
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("manifest {digest} in image layout {layout} lists {layers} layers but its config has {diff_ids} rootfs.diff_ids")]
    LayerCount {
        layout: String,
        digest: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("layer {digest} of image layout {layout}: {source}")]
    Layer {
        layout: String,
        digest: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error("layer entry {path:?} refused: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("hard link {path:?} -> {target:?} refused: {reason}")]
    UnsafeHardlink {
        path: String,
        target: String,
        reason: String,
    },
    #[error("reading layer tar stream ({context}): {source}")]
    Tar {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{} already exists; a rootfs is only copied to a new path", path.display())]
    DestinationExists { path: PathBuf },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

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
    /// The cached rootfs; shared, so copy it (see [`copy_rootfs`]) rather
    /// than handing it to a container.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

/// Unpacked images, cached under `root/rootfs/<manifest-digest-hex>/`.
/// Clones share one lock per manifest, so replicas started together
/// unpack their image once, not once each.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    unpacking:
        std::sync::Arc<std::sync::Mutex<HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>>>,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore {
            root: root.into(),
            unpacking: Default::default(),
        }
    }

    /// The lock held while one manifest is unpacked.
    fn manifest_lock(&self, hex: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
        let mut locks = self.unpacking.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(hex.to_string()).or_default().clone()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `image` in its OCI image layout, reads the image config and
    /// unpacks the layers into the cached rootfs for its manifest (reused
    /// when already there). Every blob is checked against its digest and
    /// every uncompressed layer against the config's `rootfs.diff_ids`.
    pub fn prepare(&self, image: &skiff_model::ImageRef) -> Result<PreparedImage, ImageError> {
        let layout = Layout::open(&image.path)?;
        let index = layout.read_index()?;
        let chosen = layout.select_by_tag(&index, image.tag.as_deref())?;
        let (manifest_digest, manifest) = layout.resolve_manifest(chosen, 0)?;

        let config_desc = manifest.config();
        match config_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(s) if s == DOCKER_CONFIG => {}
            other => {
                return Err(ImageError::UnexpectedMediaType {
                    layout: layout.name.clone(),
                    digest: config_desc.digest().to_string(),
                    media_type: other.to_string(),
                    expected: "an image config",
                })
            }
        }
        let config_bytes = layout.read_json_blob(config_desc, "an image config")?;
        let configuration: ImageConfiguration = layout.parse_json(&config_bytes, || {
            format!("image config {}", config_desc.digest())
        })?;
        let diff_ids = configuration.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::LayerCount {
                layout: layout.name.clone(),
                digest: manifest_digest.clone(),
                layers: manifest.layers().len(),
                diff_ids: diff_ids.len(),
            });
        }
        let compressions = manifest
            .layers()
            .iter()
            .map(|l| layout.layer_compression(l))
            .collect::<Result<Vec<_>, _>>()?;
        let config = ImageConfig::from_configuration(&configuration);

        let hex = manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(&manifest_digest)
            .to_string();
        let cache = self.root.join("rootfs");
        let rootfs = cache.join(&hex);
        // Whoever unpacks this manifest holds its lock; the others wait
        // and then find it in the cache.
        let lock = self.manifest_lock(&hex);
        let _unpacking = lock.lock().unwrap_or_else(|p| p.into_inner());
        if is_dir(&rootfs) {
            debug!(image = %layout.name, digest = %manifest_digest, rootfs = %rootfs.display(), "reusing cached rootfs");
            return Ok(PreparedImage {
                manifest_digest,
                rootfs,
                config,
            });
        }

        fs::create_dir_all(&cache).map_err(io_err(&cache))?;
        remove_stale_temps(&cache);
        let tmp = TempDir::create(&cache, &hex)?;
        info!(image = %layout.name, digest = %manifest_digest, layers = manifest.layers().len(), "unpacking image");
        for ((layer, diff_id), compression) in
            manifest.layers().iter().zip(diff_ids).zip(compressions)
        {
            layout.unpack_layer(layer, diff_id, compression, tmp.path())?;
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

fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
}

/// One OCI image layout directory.
struct Layout {
    dir: PathBuf,
    /// The path as the reference spelled it, for messages.
    name: String,
}

impl Layout {
    fn open(path: &str) -> Result<Layout, ImageError> {
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

    fn parse_json<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<T, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            layout: self.name.clone(),
            what: what(),
            source,
        })
    }

    fn read_index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.dir.join("index.json");
        let file = File::open(&path).map_err(io_err(&path))?;
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
        self.parse_json(&bytes, || "index.json".to_string())
    }

    /// Where the blob for `desc` lives; only sha256 digests are accepted
    /// (which also guarantees the hex part is a plain file name).
    fn blob_path(&self, desc: &Descriptor) -> Result<PathBuf, ImageError> {
        let digest = desc.digest();
        if *digest.algorithm() != DigestAlgorithm::Sha256 {
            return Err(ImageError::UnsupportedDigest {
                layout: self.name.clone(),
                digest: digest.to_string(),
            });
        }
        Ok(self.dir.join("blobs").join("sha256").join(digest.digest()))
    }

    fn check_hash(&self, desc: &Descriptor, hasher: Sha256, size: u64) -> Result<(), ImageError> {
        let digest = desc.digest();
        if size != desc.size() {
            return Err(ImageError::SizeMismatch {
                layout: self.name.clone(),
                digest: digest.to_string(),
                expected: desc.size(),
                actual: size,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest.digest() {
            return Err(ImageError::DigestMismatch {
                layout: self.name.clone(),
                digest: digest.to_string(),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(())
    }

    /// Reads a small blob (index, manifest, config) and verifies it.
    fn read_json_blob(&self, desc: &Descriptor, what: &'static str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(desc)?;
        if desc.size() > MAX_JSON_BYTES {
            return Err(ImageError::BlobTooLarge {
                layout: self.name.clone(),
                digest: desc.digest().to_string(),
                what,
                size: desc.size(),
            });
        }
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(&path))?;
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        self.check_hash(desc, hasher, bytes.len() as u64)?;
        Ok(bytes)
    }

    /// Streams a (large) blob through sha256 and checks size and digest.
    fn verify_blob_file(&self, desc: &Descriptor) -> Result<PathBuf, ImageError> {
        let path = self.blob_path(desc)?;
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        if len != desc.size() {
            return Err(ImageError::SizeMismatch {
                layout: self.name.clone(),
                digest: desc.digest().to_string(),
                expected: desc.size(),
                actual: len,
            });
        }
        let mut reader = HashingReader::new(file);
        io::copy(&mut reader, &mut io::sink()).map_err(io_err(&path))?;
        let (hasher, count) = reader.finish();
        self.check_hash(desc, hasher, count)?;
        Ok(path)
    }

    /// Chooses the descriptor in the layout's `index.json` that `tag` names.
    fn select_by_tag<'a>(
        &self,
        index: &'a ImageIndex,
        tag: Option<&str>,
    ) -> Result<&'a Descriptor, ImageError> {
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
        self.pick_platform(candidates, &what)
    }

    /// Picks the manifest for linux on the running architecture. Entries
    /// without a platform are acceptable when nothing matches exactly.
    fn pick_platform<'a>(
        &self,
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
            layout: self.name.clone(),
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
    fn resolve_manifest(
        &self,
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
                    layout: self.name.clone(),
                    digest,
                    media_type: other.to_string(),
                    expected: "an image manifest or index",
                })
            }
        };
        if is_index {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::IndexTooDeep {
                    layout: self.name.clone(),
                    digest,
                });
            }
            let bytes = self.read_json_blob(desc, "an image index")?;
            let index: ImageIndex = self.parse_json(&bytes, || format!("image index {digest}"))?;
            if index.manifests().is_empty() {
                return Err(ImageError::NoPlatform {
                    layout: self.name.clone(),
                    what: format!("image index {digest}"),
                    wanted: format!("linux/{}", Arch::default()),
                    available: Vec::new(),
                });
            }
            let next = self.pick_platform(
                index.manifests().iter().collect(),
                &format!("image index {digest}"),
            )?;
            return self.resolve_manifest(next, depth + 1);
        }
        let bytes = self.read_json_blob(desc, "an image manifest")?;
        let manifest: ImageManifest =
            self.parse_json(&bytes, || format!("image manifest {digest}"))?;
        Ok((digest, manifest))
    }

    fn layer_compression(&self, desc: &Descriptor) -> Result<Compression, ImageError> {
        let zstd = || ImageError::ZstdLayer {
            layout: self.name.clone(),
            digest: desc.digest().to_string(),
            media_type: desc.media_type().to_string(),
        };
        match desc.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(Compression::None),
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Ok(Compression::Gzip)
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Err(zstd()),
            MediaType::Other(s) if s == DOCKER_LAYER_GZIP || s == DOCKER_FOREIGN_LAYER_GZIP => {
                Ok(Compression::Gzip)
            }
            MediaType::Other(s) if s.ends_with("zstd") => Err(zstd()),
            other => Err(ImageError::UnexpectedMediaType {
                layout: self.name.clone(),
                digest: desc.digest().to_string(),
                media_type: other.to_string(),
                expected: "a tar or tar+gzip layer",
            }),
        }
    }

    /// Verifies a layer blob, applies it onto `dest`, and checks the
    /// uncompressed stream against `diff_id`.
    fn unpack_layer(
        &self,
        desc: &Descriptor,
        diff_id: &str,
        compression: Compression,
        dest: &Path,
    ) -> Result<(), ImageError> {
        let digest = desc.digest().to_string();
        let path = self.verify_blob_file(desc)?;
        debug!(layer = %digest, "applying layer");
        let file = BufReader::new(File::open(&path).map_err(io_err(&path))?);
        let decoded: Box<dyn Read> = match compression {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        };
        let mut reader = HashingReader::new(decoded);
        let wrap = |source: ImageError| ImageError::Layer {
            layout: self.name.clone(),
            digest: digest.clone(),
            source: Box::new(source),
        };
        apply_layer(&mut reader, dest).map_err(wrap)?;
        // The tar reader stops at the end-of-archive blocks; hash the rest.
        io::copy(&mut reader, &mut io::sink()).map_err(|source| {
            wrap(ImageError::Tar {
                context: "after the end of the archive".into(),
                source,
            })
        })?;
        let (hasher, _) = reader.finish();
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                layout: self.name.clone(),
                digest,
                expected: diff_id.to_string(),
                actual,
            });
        }
        Ok(())
    }
}

/// Counts and hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (Sha256, u64) {
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

// ---------------------------------------------------------------------------
// Layer application
// ---------------------------------------------------------------------------

/// Applies one layer tar stream (already decompressed) onto `dest`,
/// honouring whiteouts.
///
/// Entries with absolute paths or `..` components are refused, as is any
/// entry whose parent inside `dest` is a symlink (nothing is ever written
/// through a symlink) and any hard link whose target is not an existing
/// non-directory entry inside `dest`. Regular files, directories, symlinks
/// and hard links are created with the entry's uid, gid and mode; device
/// nodes and fifos are skipped. An existing path is replaced unless both it
/// and the entry are directories, in which case only attributes change.
pub fn apply_layer(reader: impl Read, dest: &Path) -> Result<(), ImageError> {
    let meta = fs::symlink_metadata(dest).map_err(io_err(dest))?;
    if !meta.is_dir() {
        return Err(ImageError::Io {
            path: dest.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotADirectory,
                "layer destination is not a directory",
            ),
        });
    }
    let mut archive = tar::Archive::new(reader);
    let mut applier = Applier {
        dest,
        touched: HashSet::new(),
    };
    let entries = archive.entries().map_err(|source| ImageError::Tar {
        context: "at the start".into(),
        source,
    })?;
    let mut previous: Option<String> = None;
    for entry in entries {
        let mut entry = entry.map_err(|source| ImageError::Tar {
            context: match &previous {
                Some(p) => format!("after entry {p:?}"),
                None => "at the first entry".into(),
            },
            source,
        })?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        applier.apply(&mut entry, &shown)?;
        previous = Some(shown);
    }
    Ok(())
}

/// Splits an archive path into plain components, refusing absolute paths
/// and `..`. An empty result names the root.
fn sanitize(raw: &[u8]) -> Result<Vec<OsString>, String> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed in layers".into())
            }
            Component::ParentDir => return Err("'..' components are not allowed in layers".into()),
        }
    }
    Ok(out)
}

fn rel_path(components: &[OsString]) -> PathBuf {
    components.iter().collect()
}

struct Applier<'a> {
    dest: &'a Path,
    /// Paths (relative to dest) this layer has created, plus their ancestors;
    /// whiteouts never hide these.
    touched: HashSet<PathBuf>,
}

impl Applier<'_> {
    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<(), ImageError> {
        let refuse = |reason: String| ImageError::UnsafeEntry {
            path: shown.to_string(),
            reason,
        };
        let components = sanitize(&entry.path_bytes()).map_err(refuse)?;
        let kind = entry.header().entry_type();

        let Some((name, parents)) = components.split_last() else {
            // The layer root itself ("./").
            if kind.is_dir() {
                return set_attributes(self.dest, entry.header(), shown);
            }
            return Err(refuse("only a directory may name the layer root".into()));
        };

        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parents, name, shown);
        }

        for i in 1..=components.len() {
            self.touched.insert(rel_path(&components[..i]));
        }

        let Some(parent) = self.resolve_dir(parents, true, &refuse)? else {
            return Err(refuse("its parent directory could not be created".into()));
        };
        let path = parent.join(name);

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !clear_path(&path, true)? {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(io_err(&path))?;
                }
                set_attributes(&path, entry.header(), shown)
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                clear_path(&path, false)?;
                write_file(entry, &path, shown)
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| OsStr::from_bytes(&b).to_os_string())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| refuse("symlink without a target".into()))?;
                clear_path(&path, false)?;
                std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
                let (uid, gid) = owner(entry.header(), shown)?;
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err(&path))
            }
            T::Link => self.hardlink(entry, &path, shown),
            T::Char | T::Block | T::Fifo => {
                // The upper layer still replaces whatever was there.
                clear_path(&path, false)?;
                debug!(entry = shown, kind = ?kind, "skipping device node or fifo in layer");
                Ok(())
            }
            other => {
                debug!(entry = shown, kind = ?other, "skipping unsupported layer entry type");
                Ok(())
            }
        }
    }

    /// Walks `components` below dest, refusing symlinks and non-directories.
    /// Missing directories are created (root-owned, 0755) when `create` is
    /// set; otherwise a missing one yields `None`.
    fn resolve_dir(
        &mut self,
        components: &[OsString],
        create: bool,
        refuse: &dyn Fn(String) -> ImageError,
    ) -> Result<Option<PathBuf>, ImageError> {
        let mut current = self.dest.to_path_buf();
        for (i, c) in components.iter().enumerate() {
            current.push(c);
            match fs::symlink_metadata(&current) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refuse(format!(
                        "its parent {:?} is a symlink; nothing is written through symlinks",
                        rel_path(&components[..=i])
                    )))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(refuse(format!(
                        "its parent {:?} is not a directory",
                        rel_path(&components[..=i])
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    DirBuilder::new()
                        .mode(0o755)
                        .create(&current)
                        .map_err(io_err(&current))?;
                    fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                        .map_err(io_err(&current))?;
                    self.touched.insert(rel_path(&components[..=i]));
                }
                Err(e) => return Err(io_err(&current)(e)),
            }
        }
        Ok(Some(current))
    }

    fn whiteout(
        &mut self,
        parents: &[OsString],
        name: &OsStr,
        shown: &str,
    ) -> Result<(), ImageError> {
        let refuse = |reason: String| ImageError::UnsafeEntry {
            path: shown.to_string(),
            reason,
        };
        let name = name.as_bytes();
        let Some(dir) = self.resolve_dir(parents, false, &refuse)? else {
            return Ok(()); // nothing below to hide
        };
        let dir_rel = rel_path(parents);
        if name == OPAQUE_WHITEOUT.as_bytes() {
            return self.hide_lower_children(&dir, &dir_rel);
        }
        if name.starts_with(b".wh..wh.") {
            debug!(entry = shown, "ignoring whiteout metadata entry");
            return Ok(());
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() || target == b"." || target == b".." {
            return Err(refuse("whiteout of an invalid name".into()));
        }
        let target = OsStr::from_bytes(target);
        let target_rel = dir_rel.join(target);
        let target_path = dir.join(target);
        if self.touched.contains(&target_rel) {
            // Created by this same layer: only lower-layer content goes.
            if is_dir(&target_path) {
                return self.hide_lower_children(&target_path, &target_rel);
            }
            return Ok(());
        }
        clear_path(&target_path, false).map(|_| ())
    }

    /// Removes everything under `dir` that this layer did not create.
    fn hide_lower_children(&self, dir: &Path, dir_rel: &Path) -> Result<(), ImageError> {
        let mut stack = vec![(dir.to_path_buf(), dir_rel.to_path_buf())];
        while let Some((abs, rel)) = stack.pop() {
            let mut children = Vec::new();
            for entry in fs::read_dir(&abs).map_err(io_err(&abs))? {
                let entry = entry.map_err(io_err(&abs))?;
                let is_dir = entry.file_type().map_err(io_err(&entry.path()))?.is_dir();
                children.push((entry.file_name(), is_dir));
            }
            for (name, child_is_dir) in children {
                let child_rel = rel.join(&name);
                let child_abs = abs.join(&name);
                if !self.touched.contains(&child_rel) {
                    clear_path(&child_abs, false)?;
                } else if child_is_dir {
                    stack.push((child_abs, child_rel));
                }
            }
        }
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &Path,
        shown: &str,
    ) -> Result<(), ImageError> {
        let raw = entry
            .link_name_bytes()
            .map(|b| b.into_owned())
            .unwrap_or_default();
        let target_shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason: String| ImageError::UnsafeHardlink {
            path: shown.to_string(),
            target: target_shown.clone(),
            reason,
        };
        let components = sanitize(&raw).map_err(refuse)?;
        let Some((name, parents)) = components.split_last() else {
            return Err(refuse("a hard link needs a target file".into()));
        };
        let missing = || {
            refuse("the target is not in the rootfs (hard links may only point at entries already unpacked)".into())
        };
        let dir = self
            .resolve_dir(parents, false, &refuse)?
            .ok_or_else(missing)?;
        let target = dir.join(name);
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => return Err(refuse("the target is a directory".into())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(io_err(&target)(e)),
        }
        if target == path {
            return Ok(());
        }
        clear_path(path, false)?;
        fs::hard_link(&target, path).map_err(io_err(path))
    }
}

/// Removes whatever is at `path` (not following symlinks). With `keep_dir`,
/// an existing directory stays and `true` is returned.
fn clear_path(path: &Path, keep_dir: bool) -> Result<bool, ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if keep_dir {
                return Ok(true);
            }
            fs::remove_dir_all(path).map_err(io_err(path))?;
        }
        Ok(_) => fs::remove_file(path).map_err(io_err(path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    Ok(false)
}

fn owner(header: &tar::Header, shown: &str) -> Result<(u32, u32), ImageError> {
    let bad = |what: &str, e: String| ImageError::UnsafeEntry {
        path: shown.to_string(),
        reason: format!("bad {what}: {e}"),
    };
    let uid = header.uid().map_err(|e| bad("uid", e.to_string()))?;
    let gid = header.gid().map_err(|e| bad("gid", e.to_string()))?;
    let uid = u32::try_from(uid).map_err(|_| bad("uid", format!("{uid} is out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| bad("gid", format!("{gid} is out of range")))?;
    Ok((uid, gid))
}

fn mode(header: &tar::Header, shown: &str) -> Result<u32, ImageError> {
    header
        .mode()
        .map(|m| m & 0o7777)
        .map_err(|e| ImageError::UnsafeEntry {
            path: shown.to_string(),
            reason: format!("bad mode: {e}"),
        })
}

/// Sets owner then mode (chown clears set-id bits) on a directory.
fn set_attributes(path: &Path, header: &tar::Header, shown: &str) -> Result<(), ImageError> {
    let (uid, gid) = owner(header, shown)?;
    let mode = mode(header, shown)?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

fn write_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
    shown: &str,
) -> Result<(), ImageError> {
    let (uid, gid) = owner(entry.header(), shown)?;
    let mode = mode(entry.header(), shown)?;
    let mtime = entry.header().mtime().ok();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    // Copy by hand so read (tar stream) and write (disk) failures are told apart.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ImageError::Tar {
                    context: format!("contents of {shown:?}"),
                    source,
                })
            }
        };
        file.write_all(&buf[..n]).map_err(io_err(path))?;
    }
    if let Some(secs) = mtime {
        if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
            file.set_modified(t).map_err(io_err(path))?;
        }
    }
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err(path))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(path))
}

// ---------------------------------------------------------------------------
// Copying a prepared rootfs
// ---------------------------------------------------------------------------

/// Copies the rootfs tree `src` to `dest`, which must not exist yet (its
/// parent is created if missing). Modes, ownership, file mtimes and symlinks
/// are preserved, hard links within the tree stay hard links; device nodes,
/// fifos and sockets are skipped. On failure the partial copy is removed.
pub fn copy_rootfs(src: &Path, dest: &Path) -> Result<(), ImageError> {
    let src_meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    if !src_meta.is_dir() {
        return Err(ImageError::Io {
            path: src.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotADirectory,
                "rootfs to copy is not a directory",
            ),
        });
    }
    match fs::symlink_metadata(dest) {
        Ok(_) => {
            return Err(ImageError::DestinationExists {
                path: dest.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dest)(e)),
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    if let Err(e) = DirBuilder::new().mode(0o700).create(dest) {
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Err(ImageError::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
        return Err(io_err(dest)(e));
    }
    let result = copy_tree(src, dest, src_meta);
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(dest) {
            warn!(path = %dest.display(), error = %e, "could not remove partial rootfs copy");
        }
    }
    result
}

fn copy_tree(src: &Path, dest: &Path, src_meta: fs::Metadata) -> Result<(), ImageError> {
    let mut dirs = vec![(dest.to_path_buf(), src_meta)];
    let mut stack = vec![(src.to_path_buf(), dest.to_path_buf())];
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    while let Some((from_dir, to_dir)) = stack.pop() {
        for entry in fs::read_dir(&from_dir).map_err(io_err(&from_dir))? {
            let entry = entry.map_err(io_err(&from_dir))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let meta = fs::symlink_metadata(&from).map_err(io_err(&from))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&to)
                    .map_err(io_err(&to))?;
                dirs.push((to.clone(), meta));
                stack.push((from, to));
            } else if kind.is_symlink() {
                let target = fs::read_link(&from).map_err(io_err(&from))?;
                std::os::unix::fs::symlink(&target, &to).map_err(io_err(&to))?;
                chown_if_needed_path(&to, &meta)?;
            } else if kind.is_file() {
                if meta.nlink() > 1 {
                    let key = (meta.dev(), meta.ino());
                    if let Some(first) = links.get(&key) {
                        fs::hard_link(first, &to).map_err(io_err(&to))?;
                        continue;
                    }
                    links.insert(key, to.clone());
                }
                copy_file(&from, &to, &meta)?;
            } else {
                debug!(path = %from.display(), "skipping special file while copying rootfs");
            }
        }
    }
    // Children were created; now fix directory owners and modes, deepest first.
    for (dir, meta) in dirs.iter().rev() {
        chown_if_needed_path(dir, meta)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

fn chown_if_needed_path(path: &Path, want: &fs::Metadata) -> Result<(), ImageError> {
    let have = fs::symlink_metadata(path).map_err(io_err(path))?;
    if have.uid() != want.uid() || have.gid() != want.gid() {
        std::os::unix::fs::lchown(path, Some(want.uid()), Some(want.gid()))
            .map_err(io_err(path))?;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), ImageError> {
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(io_err(from))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err(to))?;
    io::copy(&mut src, &mut dst).map_err(io_err(to))?;
    if let Ok(t) = meta.modified() {
        dst.set_modified(t).map_err(io_err(to))?;
    }
    let have = dst.metadata().map_err(io_err(to))?;
    if have.uid() != meta.uid() || have.gid() != meta.gid() {
        std::os::unix::fs::fchown(&dst, Some(meta.uid()), Some(meta.gid())).map_err(io_err(to))?;
    }
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err(to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use skiff_model::ImageRef;
    use std::process::Command;
    use tar::{Builder, EntryType, Header};

    // -- layer tar building ------------------------------------------------

    struct LayerTar(Builder<Vec<u8>>);

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

    impl LayerTar {
        fn new() -> Self {
            LayerTar(Builder::new(Vec::new()))
        }

        fn file(self, path: &str, data: &str) -> Self {
            self.file_with(path, data, 0o644, 0, 0)
        }

        fn file_with(mut self, path: &str, data: &str, mode: u32, uid: u64, gid: u64) -> Self {
            let mut h = header(EntryType::Regular, mode, data.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            self.0.append_data(&mut h, path, data.as_bytes()).unwrap();
            self
        }

        fn dir(self, path: &str, mode: u32) -> Self {
            self.dir_with(path, mode, 0, 0)
        }

        fn dir_with(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
            let mut h = header(EntryType::Directory, mode, 0);
            h.set_uid(uid);
            h.set_gid(gid);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }

        fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = header(EntryType::Symlink, 0o777, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        fn hardlink(mut self, path: &str, target: &str) -> Self {
            let mut h = header(EntryType::Link, 0o644, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        fn special(mut self, path: &str, kind: EntryType) -> Self {
            let mut h = header(kind, 0o666, 0);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }

        /// An entry whose name is written verbatim (the tar crate's own
        /// setters refuse `..` and absolute paths).
        fn raw_file(mut self, path: &str, data: &str) -> Self {
            let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            self.0.append(&h, data.as_bytes()).unwrap();
            self
        }

        fn build(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn apply(dest: &Path, layer: LayerTar) -> Result<(), ImageError> {
        apply_layer(&layer.build()[..], dest)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn exists(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    fn tree(root: &Path) -> Vec<String> {
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

    // -- apply_layer -------------------------------------------------------

    #[test]
    fn layer_creates_files_dirs_symlinks_and_hardlinks_with_their_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            LayerTar::new()
                .dir("./", 0o751)
                .dir_with("etc", 0o710, 7, 8)
                .file_with("etc/hosts", "127.0.0.1 localhost\n", 0o640, 1000, 1001)
                .symlink("etc/link", "hosts")
                .file_with("usr/bin/tool", "#!/bin/sh\n", 0o4755, 0, 0)
                .hardlink("usr/bin/tool2", "usr/bin/tool"),
        )
        .unwrap();

        assert_eq!(fs::metadata(root).unwrap().mode() & 0o7777, 0o751);
        let etc = fs::metadata(root.join("etc")).unwrap();
        assert!(etc.is_dir());
        assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o710, 7, 8));
        let hosts = fs::metadata(root.join("etc/hosts")).unwrap();
        assert_eq!(read(&root.join("etc/hosts")), "127.0.0.1 localhost\n");
        assert_eq!(
            (hosts.mode() & 0o7777, hosts.uid(), hosts.gid()),
            (0o640, 1000, 1001)
        );
        assert_eq!(hosts.mtime(), 1_600_000_000);
        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("hosts")
        );
        // Parent directories missing from the tar are created.
        assert!(root.join("usr/bin").is_dir());
        let tool = fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755, "set-id bits survive chown");
        let tool2 = fs::metadata(root.join("usr/bin/tool2")).unwrap();
        assert_eq!(tool.ino(), tool2.ino(), "hard link shares the inode");
    }

    #[test]
    fn later_layer_replaces_paths_but_merges_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            LayerTar::new()
                .file("a", "file")
                .dir("d", 0o755)
                .file("d/old", "old")
                .symlink("s", "a")
                .file("f", "old"),
        )
        .unwrap();
        apply(
            root,
            LayerTar::new()
                .dir("a", 0o755)
                .file("a/new", "new")
                .dir("d", 0o700)
                .file("d/new", "new")
                .file("s", "no longer a link")
                .symlink("f", "a"),
        )
        .unwrap();
        assert!(root.join("a").is_dir());
        assert_eq!(read(&root.join("a/new")), "new");
        assert_eq!(read(&root.join("d/old")), "old");
        assert_eq!(read(&root.join("d/new")), "new");
        assert_eq!(fs::metadata(root.join("d")).unwrap().mode() & 0o7777, 0o700);
        assert!(fs::symlink_metadata(root.join("s")).unwrap().is_file());
        assert_eq!(read(&root.join("s")), "no longer a link");
        assert_eq!(fs::read_link(root.join("f")).unwrap(), Path::new("a"));
    }

    #[test]
    fn whiteout_removes_lower_entries_and_leaves_no_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            LayerTar::new()
                .file("x", "x")
                .file("keep", "keep")
                .dir("sub", 0o755)
                .file("sub/f", "f")
                .file("bin/vi", "vi"),
        )
        .unwrap();
        apply(
            root,
            LayerTar::new()
                .file(".wh.x", "")
                .file(".wh.sub", "")
                .file(".wh.missing", "")
                .file_with("bin/.wh.vi", "", 0, 0, 0),
        )
        .unwrap();
        assert_eq!(tree(root), vec!["bin", "keep"]);
    }

    #[test]
    fn opaque_whiteout_hides_lower_children_but_keeps_same_layer_entries_in_any_order() {
        for marker_first in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            apply(
                root,
                LayerTar::new()
                    .file("d/lower1", "1")
                    .file("d/sub/lower2", "2")
                    .file("other/stay", "stay"),
            )
            .unwrap();
            let mut upper = LayerTar::new();
            if marker_first {
                upper = upper.file("d/.wh..wh..opq", "");
            }
            upper = upper
                .dir("d", 0o755)
                .file("d/new", "new")
                .file("d/sub/new2", "new2");
            if !marker_first {
                upper = upper.file("d/.wh..wh..opq", "");
            }
            apply(root, upper).unwrap();
            assert_eq!(
                tree(root),
                vec!["d", "d/new", "d/sub", "d/sub/new2", "other", "other/stay"],
                "marker first: {marker_first}"
            );
        }
    }

    #[test]
    fn whiteout_never_hides_an_entry_of_its_own_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(root, LayerTar::new().file("f", "old").file("g/lower", "l")).unwrap();
        apply(
            root,
            LayerTar::new()
                .file("f", "new")
                .file(".wh.f", "")
                .file("g/upper", "u")
                .file(".wh.g", ""),
        )
        .unwrap();
        assert_eq!(read(&root.join("f")), "new");
        // g itself stays (this layer put g/upper there), its lower content goes.
        assert_eq!(tree(&root.join("g")), vec!["upper"]);
    }

    #[test]
    fn entries_with_dotdot_or_absolute_paths_are_refused_naming_the_path() {
        for bad in [
            "../escape",
            "/abs-skiff-test",
            "a/../../escape",
            "./../escape",
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("root");
            fs::create_dir(&root).unwrap();
            let err = apply(&root, LayerTar::new().raw_file(bad, "boom")).unwrap_err();
            assert!(
                matches!(err, ImageError::UnsafeEntry { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(bad), "{err}");
            assert!(!exists(&tmp.path().join("escape")));
            assert!(!exists(Path::new("/abs-skiff-test")));
        }
    }

    #[test]
    fn nothing_is_written_through_a_symlinked_parent() {
        let passwd_before = fs::read("/etc/passwd").ok();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let err = apply(
            &root,
            LayerTar::new()
                .symlink("evil", "/")
                .file("evil/etc/passwd", "pwned"),
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err:?}");
        assert!(err.to_string().contains("evil/etc/passwd"), "{err}");
        assert_eq!(fs::read("/etc/passwd").ok(), passwd_before);

        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), "precious").unwrap();
        for target in [outside.to_str().unwrap(), "../outside"] {
            let root = tempfile::tempdir().unwrap();
            apply(root.path(), LayerTar::new().symlink("evil", target)).unwrap();
            for layer in [
                LayerTar::new().file("evil/x", "pwned"),
                LayerTar::new().dir("evil/newdir", 0o755),
                LayerTar::new().symlink("evil/ln", "/"),
                LayerTar::new().file("evil/.wh.victim", ""),
                LayerTar::new().file("evil/.wh..wh..opq", ""),
            ] {
                let err = apply(root.path(), layer).unwrap_err();
                assert!(err.to_string().contains("evil/"), "{err}");
            }
            assert_eq!(tree(&outside), vec!["victim"]);
            assert_eq!(read(&outside.join("victim")), "precious");
        }
    }

    #[test]
    fn hardlinks_must_point_at_existing_entries_inside_the_rootfs() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        apply(
            &root,
            LayerTar::new()
                .symlink("evil", "../outside")
                .dir("adir", 0o755),
        )
        .unwrap();
        for target in [
            "../outside/secret",
            "/etc/passwd",
            "evil/secret",
            "missing",
            "adir",
        ] {
            let err = apply(&root, LayerTar::new().hardlink("link", target)).unwrap_err();
            assert!(
                matches!(err, ImageError::UnsafeHardlink { .. }),
                "{target}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("\"link\"") && msg.contains(target), "{msg}");
            assert!(!exists(&root.join("link")));
        }
        assert_eq!(fs::metadata(outside.join("secret")).unwrap().nlink(), 1);
        assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), 1);
        // A link to a lower-layer file is fine.
        apply(&root, LayerTar::new().file("f", "data")).unwrap();
        apply(&root, LayerTar::new().hardlink("g", "./f")).unwrap();
        assert_eq!(read(&root.join("g")), "data");
    }

    #[test]
    fn device_nodes_and_fifos_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(root, LayerTar::new().file("dev/console", "lower")).unwrap();
        apply(
            root,
            LayerTar::new()
                .special("dev/null", EntryType::Char)
                .special("dev/sda", EntryType::Block)
                .special("dev/console", EntryType::Char)
                .special("fifo", EntryType::Fifo)
                .file("after", "ok"),
        )
        .unwrap();
        assert_eq!(tree(root), vec!["after", "dev"]);
    }

    #[test]
    fn truncated_layer_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = LayerTar::new().file("a", &"x".repeat(5000)).build();
        let err = apply_layer(&bytes[..1024], tmp.path()).unwrap_err();
        assert!(matches!(err, ImageError::Tar { .. }), "{err:?}");
    }

    // -- copy_rootfs -------------------------------------------------------

    #[test]
    fn copy_rootfs_preserves_modes_owners_symlinks_and_hardlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        apply(
            &src,
            LayerTar::new()
                .dir("./", 0o755)
                .dir_with("home/u", 0o700, 1000, 1000)
                .file_with("home/u/note", "hi", 0o600, 1000, 1000)
                .file_with("bin/su", "su", 0o4755, 0, 0)
                .hardlink("bin/su2", "bin/su")
                .symlink("bin/sh", "/bin/busybox")
                .dir("ro", 0o555)
                .file("ro/f", "r"),
        )
        .unwrap();
        let dest = tmp.path().join("containers/c1/rootfs");
        copy_rootfs(&src, &dest).unwrap();

        assert_eq!(tree(&src), tree(&dest));
        for rel in ["home/u", "home/u/note", "bin/su", "ro", "ro/f", "."] {
            let a = fs::symlink_metadata(src.join(rel)).unwrap();
            let b = fs::symlink_metadata(dest.join(rel)).unwrap();
            assert_eq!(
                (a.mode(), a.uid(), a.gid()),
                (b.mode(), b.uid(), b.gid()),
                "{rel}"
            );
        }
        assert_eq!(read(&dest.join("home/u/note")), "hi");
        assert_eq!(
            fs::metadata(dest.join("bin/su")).unwrap().mtime(),
            1_600_000_000
        );
        assert_eq!(
            fs::read_link(dest.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let su = fs::metadata(dest.join("bin/su")).unwrap();
        let su2 = fs::metadata(dest.join("bin/su2")).unwrap();
        assert_eq!(su.ino(), su2.ino());
        assert_ne!(su.ino(), fs::metadata(src.join("bin/su")).unwrap().ino());

        let err = copy_rootfs(&src, &dest).unwrap_err();
        assert!(
            matches!(err, ImageError::DestinationExists { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&dest.display().to_string()));
    }

    // -- hand-built OCI layouts -------------------------------------------

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const OCI_TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn sha256(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn write_blob(layout: &Path, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let dir = layout.join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&digest["sha256:".len()..]), bytes).unwrap();
        json!({ "digest": digest, "size": bytes.len() })
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn descriptor(mut blob: Value, media_type: &str) -> Value {
        blob["mediaType"] = json!(media_type);
        blob
    }

    /// Writes config, layers and manifest blobs; returns the manifest's
    /// descriptor (untagged).
    fn add_image(
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

    fn simple_image(layout: &Path, marker: &str) -> Value {
        add_image(
            layout,
            vec![(LayerTar::new().file("marker", marker), OCI_TGZ)],
            json!({ "Cmd": [marker] }),
            OCI_MANIFEST,
        )
    }

    fn tagged(mut desc: Value, tag: &str) -> Value {
        desc["annotations"] = json!({ REF_NAME: tag });
        desc
    }

    fn write_index(layout: &Path, manifests: Vec<Value>) {
        fs::create_dir_all(layout).unwrap();
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let index = json!({ "schemaVersion": 2, "manifests": manifests });
        fs::write(layout.join("index.json"), index.to_string()).unwrap();
    }

    fn image_ref(layout: &Path, tag: Option<&str>) -> ImageRef {
        ImageRef {
            path: layout.to_str().unwrap().to_string(),
            tag: tag.map(str::to_string),
        }
    }

    fn blob_file(layout: &Path, desc: &Value) -> PathBuf {
        let digest = desc["digest"].as_str().unwrap();
        layout.join("blobs/sha256").join(&digest["sha256:".len()..])
    }

    fn cache_entries(store: &ImageStore) -> Vec<String> {
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

    #[test]
    fn second_prepare_reuses_the_cached_rootfs_without_unpacking() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = simple_image(&layout, "one");
        write_index(&layout, vec![tagged(manifest.clone(), "latest")]);
        let store = ImageStore::new(tmp.path().join("images"));
        let first = store.prepare(&image_ref(&layout, Some("latest"))).unwrap();
        fs::write(first.rootfs.join("sentinel"), "kept").unwrap();
        let mtime = fs::metadata(first.rootfs.join("marker"))
            .unwrap()
            .modified()
            .unwrap();
        // Without its layer blob, only a cache hit can succeed.
        let manifest_bytes = fs::read(blob_file(&layout, &manifest)).unwrap();
        let parsed: Value = serde_json::from_slice(&manifest_bytes).unwrap();
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

    #[test]
    fn layer_not_matching_its_diff_id_is_refused_and_not_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        // Write an image whose config names a different diff_id.
        let tar = LayerTar::new().file("a", "a").build();
        let layer = descriptor(write_blob(&layout, &gzip(&tar)), OCI_TGZ);
        let wrong = sha256(b"something else");
        let config = json!({
            "architecture": Arch::default().to_string(), "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [wrong] },
        });
        let config_desc = descriptor(
            write_blob(&layout, config.to_string().as_bytes()),
            OCI_CONFIG,
        );
        let manifest = json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": [layer] });
        let desc = descriptor(
            write_blob(&layout, manifest.to_string().as_bytes()),
            OCI_MANIFEST,
        );
        write_index(&layout, vec![desc]);
        let store = ImageStore::new(tmp.path().join("images"));
        let err = store.prepare(&image_ref(&layout, None)).unwrap_err();
        assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains(&wrong), "{err}");
        assert!(cache_entries(&store).is_empty());
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
    fn zstd_layers_are_refused_with_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = add_image(
            &layout,
            vec![(
                LayerTar::new().file("a", "a"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            )],
            json!({}),
            OCI_MANIFEST,
        );
        write_index(&layout, vec![manifest]);
        let store = ImageStore::new(tmp.path().join("images"));
        let err = store.prepare(&image_ref(&layout, None)).unwrap_err();
        assert!(matches!(err, ImageError::ZstdLayer { .. }), "{err:?}");
        assert!(err.to_string().contains("zstd"), "{err}");
        assert!(cache_entries(&store).is_empty());
    }

    #[test]
    fn docker_media_types_are_accepted() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        let manifest = add_image(
            &layout,
            vec![(LayerTar::new().file("bin/sh", "sh"), DOCKER_LAYER_GZIP)],
            json!({ "Cmd": ["sh"] }),
            DOCKER_MANIFEST,
        );
        write_index(&layout, vec![manifest]);
        let prepared = ImageStore::new(tmp.path().join("images"))
            .prepare(&image_ref(&layout, None))
            .unwrap();
        assert_eq!(read(&prepared.rootfs.join("bin/sh")), "sh");
        assert_eq!(prepared.config.cmd, vec!["sh"]);
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

    // -- umoci-built layouts ----------------------------------------------

    const UMOCI: &str = "/usr/bin/umoci";
    const BUSYBOX: &str = "/bin/busybox";

    fn umoci(dir: &Path, args: &[&str]) {
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
    fn busybox_layout(dir: &Path) -> PathBuf {
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

    fn latest_manifest(layout: &Path) -> Value {
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

        let copy = tmp.path().join("c1/rootfs");
        copy_rootfs(&first.rootfs, &copy).unwrap();
        assert_eq!(
            fs::read(copy.join("bin/busybox")).unwrap(),
            fs::read(BUSYBOX).unwrap()
        );
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
