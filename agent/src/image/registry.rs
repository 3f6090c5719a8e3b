//! Fetching images from registries into the node's content store: the
//! store is itself an OCI image layout (`DATA_DIR/images/content`,
//! `blobs/sha256/<hex>`), so every blob is kept once per node by digest,
//! shared by every image that names it, and the unpacker reads it like any
//! other layout, checking each blob again.
//!
//! The registry client is oci-client: manifests are read whole (they are
//! small), blobs are streamed to a temporary file, verified against their
//! digest while streaming, synced and renamed into place only then, so
//! nothing half-written is ever found under its digest; a crash leaves
//! only a temporary file, removed when the agent starts again. Layers are
//! fetched a few at a time, and one blob by one download at a time: pulls
//! that need a blob being fetched wait for it. An image named by digest
//! that the store holds whole is used without asking a registry
//! (`pull: if-not-present`); `pull: always` asks for the manifest at every
//! start. A registry's mirrors are asked first (once each), the registry
//! last (with retries). A namespace's registry login is used for its
//! registry's images, and a held image pulled with one is used without
//! asking only by that namespace (`grants.rs`). How each registry is reached (plain HTTP, its CA,
//! credentials, mirrors) is `skiff_registry::RegistryAccess`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, Descriptor, Digest, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest as _, Sha256};
use skiff_model::registry_ref::RegistryRef;
use skiff_model::PullPolicy;
use skiff_registry::RegistryAccess;

use super::grants::{Asker, Grants};
use super::progress::{Counting, Counts, PullProgress, Tracked};
use super::{io_err, ImageError, Layout};

/// A download cut short by a crash is resumed within this long.
const RESUME_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

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
/// `tries` times, waiting longer each time.
async fn retrying<T, F, Fut>(what: &str, tries: u32, mut call: F) -> Result<T, OciDistributionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < tries && transient(&e) => {
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
    /// One lock per blob being fetched: pulls that need the same blob (the
    /// same image started twice, or two images sharing a base layer) wait
    /// for one download.
    inflight: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Blobs downloaded (not found in the store), for tests and metrics.
    fetched: Arc<AtomicU64>,
    /// Pulls by how they ended, for metrics.
    counts: Arc<[AtomicU64; 3]>,
    progress: Arc<PullProgress>,
    grants: Grants,
}

/// How pulls ended since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullCounts {
    /// From a registry (or a mirror).
    pub pulled: u64,
    /// Held already (named by digest): no registry asked.
    pub cached: u64,
    /// Every source failed.
    pub failed: u64,
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

/// The entry of `index` for this node's platform.
fn platform_entry(index: &ImageIndex) -> Option<&Descriptor> {
    let (os, arch) = (Os::default(), Arch::default());
    index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == os && *p.architecture() == arch)
    })
}

/// A manifest's (or index's) descriptor, from its bytes and digest.
fn descriptor_of(bytes: &[u8], digest: &str) -> Option<Descriptor> {
    let media: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let media_type = media
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(MediaType::from)
        .unwrap_or(MediaType::ImageManifest);
    let digest: Digest = digest.parse().ok()?;
    Some(Descriptor::new(media_type, bytes.len() as u64, digest))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary name beside `path`, unique in this process; what a crash
/// leaves under such a name is removed by [`Puller::new`].
fn partial_path(path: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_extension(format!("partial-{}-{n}", std::process::id()))
}

impl Puller {
    /// A puller writing into `content` (made an empty layout if new).
    pub fn new(content: &Path, access: Arc<RegistryAccess>) -> Result<Puller, ImageError> {
        let blobs = content.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        // What a pull cut short by a crash left is never used as it is: a
        // blob's download (`<hex>.partial`) is resumed by the next pull of
        // it, unless a day old; other temporary files are removed.
        for entry in std::fs::read_dir(&blobs).map_err(io_err(&blobs))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.contains(".partial") {
                continue;
            }
            let resumable = name
                .strip_suffix(".partial")
                .is_some_and(super::is_sha256_hex);
            let fresh = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < RESUME_FOR));
            if !(resumable && fresh) {
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
            inflight: Default::default(),
            fetched: Default::default(),
            counts: Default::default(),
            progress: Default::default(),
            grants: Grants::new(content),
        })
    }

    /// The content store as a source of blobs, for the unpacker.
    pub fn source(&self) -> Result<Layout, ImageError> {
        Layout::open(&self.content.display().to_string())
    }

    /// The pulls under way and how far they have got.
    pub fn progress(&self) -> Arc<PullProgress> {
        self.progress.clone()
    }

    /// How many blobs this puller has downloaded so far.
    pub fn blobs_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        super::is_sha256_hex(hex).then(|| self.content.join("blobs").join("sha256").join(hex))
    }

    /// The descriptor of the manifest (or index) `digest` when the store
    /// holds it and every blob this node's platform needs from it. The
    /// bytes are checked against their digests when they are unpacked.
    fn held(&self, digest: &str) -> Option<Descriptor> {
        let bytes = std::fs::read(self.blob_path(digest)?).ok()?;
        let top = descriptor_of(&bytes, digest)?;
        let manifest_bytes = if is_index(top.media_type()) {
            let index: ImageIndex = serde_json::from_slice(&bytes).ok()?;
            let entry = platform_entry(&index)?;
            std::fs::read(self.blob_path(entry.digest().as_ref())?).ok()?
        } else {
            bytes
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).ok()?;
        std::iter::once(manifest.config())
            .chain(manifest.layers())
            .all(|d| {
                self.blob_path(d.digest().as_ref())
                    .is_some_and(|p| p.is_file())
            })
            .then_some(top)
    }

    /// The content-store blobs the image `top` needs on this node: itself,
    /// its platform's manifest (for an index), the config and the layers.
    pub fn blobs_of(&self, top: &Descriptor) -> Vec<String> {
        let digest = top.digest().to_string();
        let mut out = vec![digest.clone()];
        let read = |d: &str| self.blob_path(d).and_then(|p| std::fs::read(p).ok());
        let Some(bytes) = read(&digest) else {
            return out;
        };
        let manifest_bytes = if is_index(top.media_type()) {
            let Some(entry) = serde_json::from_slice::<ImageIndex>(&bytes)
                .ok()
                .and_then(|i| platform_entry(&i).map(|e| e.digest().to_string()))
            else {
                return out;
            };
            out.push(entry.clone());
            match read(&entry) {
                Some(b) => b,
                None => return out,
            }
        } else {
            bytes
        };
        if let Ok(m) = serde_json::from_slice::<ImageManifest>(&manifest_bytes) {
            out.push(m.config().digest().to_string());
            out.extend(m.layers().iter().map(|l| l.digest().to_string()));
        }
        out
    }

    /// Makes sure the content store holds everything `image` needs for
    /// this node's platform and returns the descriptor of the manifest (or
    /// index) it names, with its digest: what the unpacker starts from.
    ///
    /// With [`PullPolicy::IfNotPresent`] an image named by digest that the
    /// store holds whole, and `asker` may use (`grants.rs`), is used
    /// without asking any registry; otherwise the manifest is fetched
    /// (from the registry's mirrors first, then the registry, with the
    /// asker's login for that registry if it holds one) and only the blobs
    /// the store lacks are downloaded.
    pub async fn pull(
        &self,
        image: &RegistryRef,
        policy: PullPolicy,
        asker: &Asker,
    ) -> Result<Descriptor, ImageError> {
        if policy == PullPolicy::IfNotPresent {
            if let Some(top) = image.digest.as_deref().and_then(|d| self.held(d)) {
                if self.grants.allows(top.digest().as_ref(), asker) {
                    self.counts[1].fetch_add(1, Ordering::Relaxed);
                    return Ok(top);
                }
            }
        }
        let pulled = self.pull_from_sources(image, asker).await;
        self.counts[if pulled.is_ok() { 0 } else { 2 }].fetch_add(1, Ordering::Relaxed);
        pulled
    }

    /// How many pulls ended in each way since the agent started.
    pub fn pull_counts(&self) -> PullCounts {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        PullCounts {
            pulled: n(0),
            cached: n(1),
            failed: n(2),
        }
    }

    /// The registry's part of [`Puller::pull`]: the mirrors, then the
    /// registry.
    async fn pull_from_sources(
        &self,
        image: &RegistryRef,
        asker: &Asker,
    ) -> Result<Descriptor, ImageError> {
        if self.access.offline() {
            return Err(pull_err(image, "registries are not contacted (offline)"));
        }
        let tracked = self.progress.track(&image.to_string());
        let mut failure = None;
        for source in self.access.sources(&image.registry) {
            if source == image.registry {
                return self
                    .pull_from(image, &source, ATTEMPTS, &tracked, asker)
                    .await;
            }
            // A mirror is tried once: the registry is the fallback.
            match self.pull_from(image, &source, 1, &tracked, asker).await {
                Ok(top) => return Ok(top),
                Err(e) => {
                    tracing::warn!(image = %image, mirror = %source, error = %e, "pulling from a registry mirror failed; trying the next source");
                    failure = Some(e);
                }
            }
        }
        Err(failure.unwrap_or_else(|| pull_err(image, "no source to pull from")))
    }

    /// [`Puller::pull`] from one source: the registry or a mirror of it
    /// (which serves the same repositories).
    async fn pull_from(
        &self,
        image: &RegistryRef,
        source: &str,
        tries: u32,
        tracked: &Tracked,
        asker: &Asker,
    ) -> Result<Descriptor, ImageError> {
        let mut asked = image.clone();
        asked.registry = source.to_string();
        let image = &asked;
        let login = asker.login_for(source);
        let client = self
            .access
            .client_for(source, login)
            .map_err(|e| pull_err(image, e))?;
        let auth = &self.access.auth_for(source, login);
        let reference: Reference = reference_of(image)
            .parse()
            .map_err(|e| pull_err(image, e))?;
        let (bytes, digest) = retrying("manifest", tries, || {
            client.pull_manifest_raw(&reference, auth, MANIFEST_TYPES)
        })
        .await
        .map_err(|e| pull_err(image, e))?;
        // Asked by digest, the answer must be that manifest, whoever
        // serves it (a mirror's tags are trusted, digests are checked).
        if let Some(named) = image.digest.as_deref().filter(|n| *n != digest) {
            return Err(pull_err(
                image,
                format!("the registry answered {named} with {digest}"),
            ));
        }
        let top = self.keep_manifest(image, &bytes, &digest)?;
        if let Err(e) = self.grants.record(&digest, asker, login) {
            tracing::warn!(image = %image, error = %e, "could not record who may use the image");
        }
        let manifest_bytes = if is_index(top.media_type()) {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| pull_err(image, format!("its index: {e}")))?;
            let entry = platform_entry(&index).ok_or_else(|| {
                let have: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|m| m.platform().as_ref())
                    .map(|p| format!("{}/{}", p.os(), p.architecture()))
                    .collect();
                pull_err(
                    image,
                    format!(
                        "no manifest for {}/{} (the index has: {})",
                        Os::default(),
                        Arch::default(),
                        if have.is_empty() {
                            "none".to_string()
                        } else {
                            have.join(", ")
                        }
                    ),
                )
            })?;
            let pinned: Reference =
                format!("{}/{}@{}", image.registry, image.repository, entry.digest())
                    .parse()
                    .map_err(|e| pull_err(image, e))?;
            let (b, d) = retrying("manifest", tries, || {
                client.pull_manifest_raw(&pinned, auth, MANIFEST_TYPES)
            })
            .await
            .map_err(|e| pull_err(image, e))?;
            if d != entry.digest().as_ref() {
                return Err(pull_err(
                    image,
                    format!("the registry answered {} with {d}", entry.digest()),
                ));
            }
            self.keep_manifest(image, &b, &d)?;
            b
        } else {
            bytes
        };
        let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| pull_err(image, format!("its manifest: {e}")))?;
        let mut wanted = vec![manifest.config().clone()];
        wanted.extend(manifest.layers().iter().cloned());
        // The first pull of an image keeps its counts; one joining it
        // counts into a scratch copy, so nothing is counted twice.
        let counts = if tracked.first {
            tracked.counts.clone()
        } else {
            Arc::default()
        };
        if tracked.first {
            let held = |d: &Descriptor| {
                self.blob_path(d.digest().as_ref())
                    .is_some_and(|p| p.is_file())
            };
            let size = |d: &Descriptor| d.size();
            counts
                .total
                .store(wanted.iter().map(size).sum(), Ordering::Relaxed);
            counts.done.store(
                wanted.iter().filter(|d| held(d)).map(size).sum(),
                Ordering::Relaxed,
            );
            counts.blobs_left.store(
                wanted.iter().filter(|d| !held(d)).count() as u64,
                Ordering::Relaxed,
            );
        }
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
            let (image, lock, fetched) =
                (image.clone(), self.blob_lock(&digest), self.fetched.clone());
            let counts = counts.clone();
            tasks.spawn(async move {
                // Whoever fetches this blob holds its lock; the others wait
                // and then find it in the store.
                let _fetching = lock.lock().await;
                if !path.is_file() {
                    let _slot = limit.acquire().await;
                    fetch_blob(&client, &reference, &image, &desc, &path, tries, &counts).await?;
                    fetched.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Fetched meanwhile by a pull of another image.
                    counts.done.fetch_add(desc.size(), Ordering::Relaxed);
                }
                counts.blobs_left.fetch_sub(1, Ordering::Relaxed);
                Ok::<(), ImageError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            let failed = match done {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(e) => pull_err(image, e),
            };
            // The other downloads stop, and their temporary files are gone
            // before the failure is reported.
            tasks.shutdown().await;
            return Err(failed);
        }
        Ok(top)
    }

    /// The lock held while the blob `digest` is fetched.
    fn blob_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Locks nobody holds or waits for are dropped as the map grows.
        if locks.len() > 1024 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(digest.to_string()).or_default().clone()
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
        if !path.is_file() {
            write_new(&path, bytes).map_err(io_err(&path))?;
        }
        descriptor_of(bytes, digest)
            .ok_or_else(|| pull_err(image, format!("manifest {digest} is not JSON")))
    }
}

/// The reference oci-client reads: a digest, when there is one, wins.
fn reference_of(image: &RegistryRef) -> String {
    match &image.digest {
        Some(d) => format!("{}/{}@{d}", image.registry, image.repository),
        None => image.to_string(),
    }
}

/// Whether a descriptor names an index (OCI or Docker manifest list).
pub fn is_index(media: &MediaType) -> bool {
    match media {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Streams one blob to `<hex>.partial` and renames it into place once its
/// size and digest are right: oci-client checks the digest while it
/// streams a whole blob; a download an earlier agent left half done is
/// resumed with a range request and the whole file hashed at the end (a
/// mismatch starts it over).
async fn fetch_blob(
    client: &Client,
    reference: &Reference,
    image: &RegistryRef,
    desc: &Descriptor,
    path: &Path,
    tries: u32,
    counts: &Arc<Counts>,
) -> Result<(), ImageError> {
    // Removed if this pull fails or is dropped; a crash leaves it to be
    // resumed.
    let tmp = Partial(path.with_extension("partial"));
    let digest = desc.digest().to_string();
    // Bytes of the current try, taken back from the progress when the
    // try fails.
    let attempt = Arc::new(AtomicU64::new(0));
    let take_back = || {
        let n = attempt.swap(0, Ordering::Relaxed);
        counts.done.fetch_sub(n, Ordering::Relaxed);
    };
    use tokio::io::AsyncWriteExt as _;
    let held = tokio::fs::metadata(&tmp.0).await.map_or(0, |m| m.len());
    // Only the first try resumes; later ones start over.
    let resume = AtomicU64::new(if held < desc.size() { held } else { 0 });
    let fetched = retrying("blob", tries, || async {
        take_back();
        let from = resume.swap(0, Ordering::Relaxed);
        if from > 0 {
            match resume_blob(client, reference, &digest, &tmp.0, from, counts, &attempt).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(blob = %digest, error = %e, "resuming a download failed; starting it over");
                    take_back();
                }
            }
        }
        // Created synchronously: a pull cut short (a sibling layer failed)
        // drops this future, and the `Partial` guard removes the file; an
        // asynchronous create still running on the blocking pool then
        // would make it again afterwards, left behind.
        let file = tokio::fs::File::from_std(std::fs::File::create(&tmp.0)?);
        let mut out = Counting {
            inner: tokio::io::BufWriter::new(file),
            done: counts.clone(),
            attempt: attempt.clone(),
        };
        client
            .pull_blob(reference, digest.as_str(), &mut out)
            .await?;
        out.flush().await?;
        // On disk before it is found under its digest.
        out.inner.get_ref().sync_all().await?;
        Ok(())
    })
    .await;
    if let Err(e) = fetched {
        take_back();
        return Err(pull_err(image, format!("blob {digest}: {e}")));
    }
    let len = tokio::fs::metadata(&tmp.0)
        .await
        .map_err(io_err(&tmp.0))?
        .len();
    if len != desc.size() {
        return Err(pull_err(
            image,
            format!(
                "blob {digest} is {len} bytes; its descriptor says {}",
                desc.size()
            ),
        ));
    }
    tokio::fs::rename(&tmp.0, path)
        .await
        .map_err(io_err(path))?;
    std::mem::forget(tmp);
    Ok(())
}

/// Appends the rest of a blob from byte `from` to the file that holds its
/// start, then checks the whole file against the digest.
async fn resume_blob(
    client: &Client,
    reference: &Reference,
    digest: &str,
    file: &Path,
    from: u64,
    counts: &Arc<Counts>,
    attempt: &Arc<AtomicU64>,
) -> Result<(), OciDistributionError> {
    use tokio::io::AsyncWriteExt as _;
    use tokio_stream::StreamExt as _;
    let answer = client
        .pull_blob_stream_partial(reference, digest, from, None)
        .await?;
    let oci_client::client::BlobResponse::Partial(mut stream) = answer else {
        // The registry sent it whole: start over (the caller does).
        return Err(std::io::Error::other("the registry does not serve ranges").into());
    };
    tracing::info!(blob = %digest, from, "resuming a download");
    counts.done.fetch_add(from, Ordering::Relaxed);
    attempt.fetch_add(from, Ordering::Relaxed);
    let opened = tokio::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .await?;
    let mut out = Counting {
        inner: tokio::io::BufWriter::new(opened),
        done: counts.clone(),
        attempt: attempt.clone(),
    };
    while let Some(chunk) = stream.stream.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    out.inner.get_ref().sync_all().await?;
    let path = file.to_path_buf();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut f, &mut hasher)?;
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    })
    .await
    .map_err(std::io::Error::other)??;
    if actual != digest {
        return Err(
            std::io::Error::other(format!("the resumed download hashes to {actual}")).into(),
        );
    }
    Ok(())
}

/// A temporary download, removed when dropped.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_crashed_pull_left_is_resumed_or_removed_and_kept_blobs_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = tmp.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let kept = blobs.join("a".repeat(64));
        let half = blobs.join(format!("{}.partial-4242", "b".repeat(64)));
        std::fs::write(&kept, b"whole").unwrap();
        std::fs::write(&half, b"ha").unwrap();
        let resumable = blobs.join(format!("{}.partial", "c".repeat(64)));
        std::fs::write(&resumable, b"hal").unwrap();
        let stale = blobs.join(format!("{}.partial", "d".repeat(64)));
        std::fs::write(&stale, b"h").unwrap();
        let two_days_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(48 * 3600);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        let puller = Puller::new(tmp.path(), Arc::default()).unwrap();
        assert!(kept.is_file());
        assert!(
            !half.exists(),
            "a temporary file of a dead agent is removed"
        );
        assert!(resumable.is_file(), "a blob's download is kept to resume");
        assert!(!stale.exists(), "unless it is a day old");
        // The store is a layout the unpacker can open.
        puller.source().unwrap();
    }
}
