//! OCI images on the node, in three rooms:
//!
//! - `store.rs`: [`ImageStore`], the cache of unpacked images keyed by
//!   manifest digest, with one lock per manifest. [`ImageStore::prepare`]
//!   resolves an `oci:PATH[:TAG]` reference; [`ImageStore::unpack`] unpacks
//!   a manifest whose blobs come from any [`BlobSource`];
//! - `layout.rs`: reading an OCI image layout ([`Layout`]: `index.json`,
//!   tags, nested indexes, platforms) and reading blobs by digest from a
//!   [`BlobSource`], each checked against its descriptor's size and digest;
//! - `layer.rs`: applying one layer ([`apply_layer`]): decompression, the
//!   `rootfs.diff_ids` check, tar entries and whiteouts, never writing
//!   outside the rootfs.
//!
//! Giving a container its own copy of a prepared rootfs is
//! [`crate::rootfs`]'s job.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::Digest;

pub mod gc;
pub mod grants;
mod layer;
mod layout;
pub mod progress;
pub mod registry;
mod roots;
mod store;
#[cfg(test)]
pub(crate) mod testing;

pub use layer::apply_layer;
pub use layout::Layout;
pub use roots::ImagePolicy;
pub use store::{ImageConfig, ImageStore, PreparedImage};

/// Largest JSON blob (index, manifest, config) read into memory.
const MAX_JSON_BYTES: u64 = 16 * 1024 * 1024;
/// Deepest chain of nested indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

/// Where an image's blobs come from, addressed by digest.
///
/// An OCI image layout on disk ([`Layout`]) is the one source today. A
/// registry would be another: it fetches each blob into a directory of
/// `blobs/sha256/<hex>` files (itself a layout's blob directory) and opens
/// it from there. Sources are not trusted: whoever reads a blob checks its
/// size and digest against the descriptor that named it.
pub trait BlobSource {
    /// The source as messages name it (the layout's path as the reference
    /// spelled it).
    fn name(&self) -> &str;

    /// Opens the blob with this digest. Callers only ask for sha256
    /// digests, whose hex part is always a plain file name.
    fn open(&self, digest: &Digest) -> Result<Blob, ImageError>;
}

/// A blob opened by a [`BlobSource`], not yet verified.
pub struct Blob {
    /// Where the bytes are read from, for messages.
    pub path: PathBuf,
    /// The size when known before reading (a file's length), so a blob of
    /// the wrong size is refused without hashing it.
    pub len: Option<u64>,
    pub reader: Box<dyn Read>,
}

/// Everything that can go wrong while resolving, verifying or unpacking an
/// image. Messages name the offending layout, digest, tag or path.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pulling {reference} from {registry}: {reason}")]
    Pull {
        registry: String,
        reference: String,
        reason: String,
    },
    #[error("{path} in image layout {layout} is refused: {reason}")]
    NotAFile {
        layout: String,
        path: String,
        reason: String,
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

/// The hex part of a sha256 digest: a blob's file name in a layout.
pub(crate) fn is_sha256_hex(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A directory, not a symlink to one.
fn is_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}
