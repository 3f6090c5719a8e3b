//! Fetching images from registries into the node's content store (issue
//! 18's pull, first part): the store is itself an OCI image layout
//! (`DATA_DIR/images/content`, `blobs/sha256/<hex>`), so every blob is
//! kept once per node by digest, shared by every image that names it, and
//! the unpacker reads it like any other layout, checking each blob again.
//!
//! The registry client is oci-client: manifests are read whole (they are
//! small), blobs are streamed to a temporary file, verified against their
//! digest while streaming, and renamed into place only then, so nothing
//! half-written is ever found under its digest; a crash leaves only a
//! temporary file, removed by the next pull of that blob. Layers are
//! fetched a few at a time. How each registry is reached (plain HTTP,
//! its CA, credentials) is `skiff_registry::RegistryAccess`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, Descriptor, Digest, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest as _, Sha256};
use skiff_model::registry_ref::RegistryRef;
use skiff_registry::RegistryAccess;

use super::{io_err, ImageError, Layout};

/// Layers fetched at once per image (containerd's default).
const CONCURRENT_LAYERS: usize = 3;
/// Tries of one request that fails on the way (unreachable, timed out, a
/// 5xx or 429 answer); a refusal (not found, unauthorised) is not retried.
const ATTEMPTS: u32 = 4;
/// The first wait between tries; it doubles.
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a failed request may succeed if tried again.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or has been tried
/// [`ATTEMPTS`] times, waiting longer each time.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                tracing::warn!(what, attempt, error = %e, "registry request failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Pulls images into the content store at `content`.
pub struct Puller {
    access: Arc<RegistryAccess>,
    content: PathBuf,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("content", &self.content)
            .finish_non_exhaustive()
    }
}

fn pull_err(image: &RegistryRef, e: impl std::fmt::Display) -> ImageError {
    ImageError::Pull {
        registry: image.registry.clone(),
        reference: image.to_string(),
        reason: e.to_string(),
    }
}

impl Puller {
    /// A puller writing into `content` (made an empty layout if new).
    pub fn new(content: &Path, access: Arc<RegistryAccess>) -> Result<Puller, ImageError> {
        let blobs = content.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        // What a pull cut short by a crash left: never used, started over.
        for entry in std::fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            if entry.file_name().to_string_lossy().contains(".partial") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for (name, text) in [
            ("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", r#"{"schemaVersion":2,"manifests":[]}"#),
        ] {
            let path = content.join(name);
            if !path.exists() {
                std::fs::write(&path, text).map_err(io_err(&path))?;
            }
        }
        Ok(Puller {
            access,
            content: content.to_path_buf(),
        })
    }

    /// The content store as a source of blobs, for the unpacker.
    pub fn source(&self) -> Result<Layout, ImageError> {
        Layout::open(&self.content.display().to_string())
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.content.join("blobs").join("sha256").join(hex))
    }

    /// Fetches everything `image` needs for this node's platform into the
    /// content store (what is there already is not fetched again) and
    /// returns the descriptor of the manifest (or index) it names, with
    /// its digest: what the unpacker starts from.
    pub async fn pull(&self, image: &RegistryRef) -> Result<Descriptor, ImageError> {
        if self.access.offline() {
            return Err(pull_err(image, "registries are not contacted (offline)"));
        }
        let client = self
            .access
            .client_for(&image.registry)
            .map_err(|e| pull_err(image, e))?;
        let auth = &self.access.auth_for(&image.registry);
        let reference: Reference = reference_of(image)
            .parse()
            .map_err(|e| pull_err(image, e))?;
        let (bytes, digest) = retrying("manifest", || {
            client.pull_manifest_raw(&reference, auth, MANIFEST_TYPES)
        })
        .await
        .map_err(|e| pull_err(image, e))?;
        let top = self.keep_manifest(image, &bytes, &digest)?;
        let manifest_bytes = if is_index(top.media_type()) {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| pull_err(image, format!("its index: {e}")))?;
            let (os, arch) = (Os::default(), Arch::default());
            let entry = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| *p.os() == os && *p.architecture() == arch)
                })
                .ok_or_else(|| pull_err(image, format!("no manifest for {os}/{arch}")))?;
            let pinned: Reference =
                format!("{}/{}@{}", image.registry, image.repository, entry.digest())
                    .parse()
                    .map_err(|e| pull_err(image, e))?;
            let (b, d) = retrying("manifest", || {
                client.pull_manifest_raw(&pinned, auth, MANIFEST_TYPES)
            })
            .await
            .map_err(|e| pull_err(image, e))?;
            self.keep_manifest(image, &b, &d)?;
            b
        } else {
            bytes
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| pull_err(image, format!("its manifest: {e}")))?;
        let mut wanted = vec![manifest.config().clone()];
        wanted.extend(manifest.layers().iter().cloned());
        let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LAYERS));
        let mut tasks = tokio::task::JoinSet::new();
        for desc in wanted {
            let digest = desc.digest().to_string();
            let Some(path) = self.blob_path(&digest) else {
                return Err(pull_err(
                    image,
                    format!("blob digest {digest} is not sha256"),
                ));
            };
            if path.is_file() {
                continue; // kept already, shared
            }
            let (client, reference, limit) = (client.clone(), reference.clone(), limit.clone());
            let image = image.clone();
            tasks.spawn(async move {
                let _slot = limit.acquire().await;
                fetch_blob(&client, &reference, &image, &desc, &path).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| pull_err(image, e))??;
        }
        Ok(top)
    }

    /// Checks a manifest's bytes against their digest and keeps them.
    fn keep_manifest(
        &self,
        image: &RegistryRef,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Descriptor, ImageError> {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if actual != digest {
            return Err(pull_err(
                image,
                format!("manifest digest mismatch: {digest} named, {actual} received"),
            ));
        }
        let path = self
            .blob_path(digest)
            .ok_or_else(|| pull_err(image, format!("manifest digest {digest} is not sha256")))?;
        write_new(&path, bytes).map_err(io_err(&path))?;
        let media: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let media_type = media
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(MediaType::from)
            .unwrap_or(MediaType::ImageManifest);
        let digest: Digest = digest.parse().map_err(|e| pull_err(image, e))?;
        Ok(Descriptor::new(media_type, bytes.len() as u64, digest))
    }
}

/// The reference oci-client reads: a digest, when there is one, wins.
fn reference_of(image: &RegistryRef) -> String {
    match &image.digest {
        Some(d) => format!("{}/{}@{d}", image.registry, image.repository),
        None => image.to_string(),
    }
}

fn is_index(media: &MediaType) -> bool {
    match media {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Streams one blob to a temporary file (oci-client checks its digest as
/// it streams) and renames it into place once its size is right too.
async fn fetch_blob(
    client: &Client,
    reference: &Reference,
    image: &RegistryRef,
    desc: &Descriptor,
    path: &Path,
) -> Result<(), ImageError> {
    use tokio::io::AsyncWriteExt as _;
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    let digest = desc.digest().to_string();
    // Each try starts the file over.
    let fetched = retrying("blob", || async {
        let file = tokio::fs::File::create(&tmp).await?;
        let mut out = tokio::io::BufWriter::new(file);
        client
            .pull_blob(reference, digest.as_str(), &mut out)
            .await?;
        out.flush().await?;
        Ok(())
    })
    .await;
    if let Err(e) = fetched {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(pull_err(image, format!("blob {digest}: {e}")));
    }
    let len = tokio::fs::metadata(&tmp).await.map_err(io_err(&tmp))?.len();
    if len != desc.size() {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(pull_err(
            image,
            format!(
                "blob {digest} is {len} bytes; its descriptor says {}",
                desc.size()
            ),
        ));
    }
    tokio::fs::rename(&tmp, path).await.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_crashed_pull_left_is_removed_and_kept_blobs_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = tmp.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let kept = blobs.join("a".repeat(64));
        let half = blobs.join(format!("{}.partial-4242", "b".repeat(64)));
        std::fs::write(&kept, b"whole").unwrap();
        std::fs::write(&half, b"ha").unwrap();
        let puller = Puller::new(tmp.path(), Arc::default()).unwrap();
        assert!(kept.is_file());
        assert!(!half.exists(), "a partial download is started over");
        // The store is a layout the unpacker can open.
        puller.source().unwrap();
    }
}
