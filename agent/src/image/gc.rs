//! Garbage collection of the node's images, the kubelet's way: when the
//! filesystem holding the image cache passes `high` percent use (or the
//! cache passes its optional size cap), the least recently used images are
//! removed, each with the blobs no other image needs, until use is back
//! under `low` percent (and the cache under its cap's low mark). Never an
//! image used within `min_age`, nor one that an allocation on this node
//! still wants or runs.
//!
//! Each image started on this node has a record, `images/used/<hex>.json`
//! (its manifest's digest), written when a container starts from it: the
//! reference it was started by, the top digest, the content-store blobs it
//! needs and the size of its unpacked tree. Unpacked trees without a
//! record (left by an agent before records existed) are never removed.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The images (as tasks name them) that allocations on this node want or
/// run, published by the reconciler; `None` until it has heard from the
/// servers, and nothing is collected until then.
pub type InUse = std::sync::Arc<std::sync::Mutex<Option<HashSet<String>>>>;

/// What the cache keeps, from the agent's flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcPolicy {
    /// Percent use of the image filesystem that starts a collection.
    pub high: u8,
    /// Percent use a collection brings it down to.
    pub low: u8,
    /// Largest size of the cache (unpacked trees and blobs), if capped.
    pub cap: Option<u64>,
    /// Images used more recently than this are kept.
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            high: 85,
            low: 80,
            cap: None,
            min_age: Duration::from_secs(120),
        }
    }
}

/// One image as this node used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// As the task named it (`oci:/srv/images/x:1`,
    /// `registry.lab:5000/a@sha256:...`).
    pub reference: String,
    /// The digest the reference resolved to (an index or a manifest).
    pub top: String,
    /// The manifest unpacked: names the tree in `rootfs/`.
    pub manifest: String,
    /// Content-store blobs this image needs (none for a layout).
    pub blobs: Vec<String>,
    /// Bytes of the unpacked tree.
    pub size: u64,
    /// When a container last started from it (ms since the epoch).
    pub last_used_ms: u64,
}

impl ImageRecord {
    /// Whether an allocation wants or runs this image: by the reference it
    /// was started by, or by its digest under any tag.
    pub fn in_use(&self, wanted: &HashSet<String>) -> bool {
        let pinned = format!("@{}", self.top);
        wanted.contains(&self.reference) || wanted.iter().any(|w| w.ends_with(&pinned))
    }
}

/// What one collection did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GcReport {
    pub images_removed: Vec<String>,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn valid_hex(h: &str) -> bool {
    super::is_sha256_hex(h)
}

/// Bytes a tree takes on disk (allocated blocks), not following links.
pub fn tree_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                total += tree_size(&e.path());
            }
        }
    }
    total
}

/// How long a recorded use of an image stands for later uses.
pub const USE_RECORDED_FOR_MS: u64 = 60_000;

/// The node's image cache: `root/rootfs/<hex>` trees, `root/content`
/// blobs and `root/used` records.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

impl ImageCache {
    pub fn new(root: impl Into<PathBuf>) -> ImageCache {
        ImageCache { root: root.into() }
    }

    fn used_dir(&self) -> PathBuf {
        self.root.join("used")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("content").join("blobs").join("sha256")
    }

    /// Records that a container started from this image now (a record
    /// less than [`USE_RECORDED_FOR_MS`] old is kept as it is). The tree's
    /// size is measured once it is there. A registry image is recorded
    /// once pulled, before it is unpacked, so its blobs are never taken
    /// for unreferenced ones.
    pub fn record_use(
        &self,
        reference: &str,
        top: &str,
        manifest: &str,
        blobs: Vec<String>,
        rootfs: &Path,
    ) -> std::io::Result<()> {
        let hex = hex_of(manifest);
        if !valid_hex(hex) {
            return Ok(());
        }
        let dir = self.used_dir();
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{hex}.json"));
        let now = now_ms();
        let old = self.read_record(&file);
        // Replicas started together use the image once as far as the
        // collector can tell (it orders by the minute): the record is
        // not written again for each of them.
        if let Some(r) = &old {
            let same = r.reference == reference && r.top == top && r.blobs == blobs;
            if same && r.size > 0 && now.saturating_sub(r.last_used_ms) < USE_RECORDED_FOR_MS {
                return Ok(());
            }
        }
        let size = match old {
            Some(r) if r.size > 0 => r.size,
            _ => tree_size(rootfs),
        };
        let record = ImageRecord {
            reference: reference.to_string(),
            top: top.to_string(),
            manifest: manifest.to_string(),
            blobs,
            size,
            last_used_ms: now,
        };
        // Unique per write: two starts of one image may record at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{hex}.json.tmp-{}-{n}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&record).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &file)
    }

    fn read_record(&self, file: &Path) -> Option<ImageRecord> {
        serde_json::from_slice(&std::fs::read(file).ok()?).ok()
    }

    /// Every image record on this node.
    pub fn records(&self) -> Vec<ImageRecord> {
        let Ok(entries) = std::fs::read_dir(self.used_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| self.read_record(&e.path()))
            .filter(|r| valid_hex(hex_of(&r.manifest)))
            .collect()
    }

    /// Every image with its bytes on the node (its tree and the blobs it
    /// needs), newest use first.
    pub fn list(&self) -> Vec<(ImageRecord, u64)> {
        let mut out: Vec<(ImageRecord, u64)> = self
            .records()
            .into_iter()
            .map(|r| {
                let blobs: u64 = r
                    .blobs
                    .iter()
                    .filter_map(|b| std::fs::metadata(self.blobs_dir().join(hex_of(b))).ok())
                    .map(|m| m.len())
                    .sum();
                let size = r.size + blobs;
                (r, size)
            })
            .collect();
        out.sort_by_key(|(r, _)| std::cmp::Reverse(r.last_used_ms));
        out
    }

    /// Bytes the cache holds: the recorded trees and every blob.
    pub fn bytes(&self) -> u64 {
        let trees: u64 = self.records().iter().map(|r| r.size).sum();
        let blobs: u64 = std::fs::read_dir(self.blobs_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        trees + blobs
    }

    /// Percent use of the filesystem holding the cache.
    pub fn fs_percent(&self) -> std::io::Result<u8> {
        crate::sys::fs_percent_used(&self.root)
    }

    /// One round of the agent's collector: none while a pull is under way
    /// (its blobs are not recorded yet) or before the reconciler has said
    /// what the node runs (`in_use` still `None`, right after a start).
    pub fn collect_round(
        &self,
        policy: &GcPolicy,
        in_use: &InUse,
        pulls: &crate::image::progress::PullProgress,
        fs_percent: &mut dyn FnMut() -> u8,
    ) -> Option<GcReport> {
        if !pulls.idle() {
            return None;
        }
        let wanted = in_use.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(self.collect(policy, &wanted, fs_percent))
    }

    /// One collection: `wanted` are the references the allocations on
    /// this node want or run; `fs_percent` reads the filesystem's use (a
    /// parameter so tests can play a full disk).
    pub fn collect(
        &self,
        policy: &GcPolicy,
        wanted: &HashSet<String>,
        fs_percent: &mut dyn FnMut() -> u8,
    ) -> GcReport {
        let mut report = GcReport::default();
        let over = |bytes: u64, pct: u8, low: bool| {
            let (limit, cap) = if low {
                let low_cap = |c: u64| {
                    (u128::from(c) * u128::from(policy.low) / u128::from(policy.high.max(1))) as u64
                };
                (policy.low, policy.cap.map(low_cap))
            } else {
                (policy.high, policy.cap)
            };
            pct > limit || cap.is_some_and(|c| bytes > c)
        };
        // Read once; each removal takes off what it freed.
        let mut bytes = self.bytes();
        if !over(bytes, fs_percent(), false) {
            return report;
        }
        let now = now_ms();
        let min_age = policy.min_age.as_millis() as u64;
        let mut records = self.records();
        records.sort_by_key(|r| r.last_used_ms);
        let mut kept: Vec<ImageRecord> = records.clone();
        for r in records {
            if !over(bytes, fs_percent(), true) {
                break;
            }
            if r.in_use(wanted) || now.saturating_sub(r.last_used_ms) < min_age {
                continue;
            }
            let hex = hex_of(&r.manifest).to_string();
            let tree = self.root.join("rootfs").join(&hex);
            // Out of the cache's name first, so no start finds half of it.
            let doomed = self.root.join("rootfs").join(format!(".gc-{hex}"));
            if std::fs::rename(&tree, &doomed).is_ok() {
                let _ = std::fs::remove_dir_all(&doomed);
            }
            let _ = std::fs::remove_file(self.used_dir().join(format!("{hex}.json")));
            super::grants::Grants::new(&self.root.join("content")).forget(&r.top);
            tracing::info!(image = %r.reference, manifest = %r.manifest, bytes = r.size, "image garbage-collected");
            report.images_removed.push(r.reference.clone());
            kept.retain(|k| k.manifest != r.manifest);
            let (n, swept) = self.sweep_blobs(&kept, min_age, now);
            report.blobs_removed += n;
            report.bytes_freed += r.size + swept;
            bytes = bytes.saturating_sub(r.size + swept);
        }
        report
    }

    /// Removes the blobs no kept image needs, except recent ones (a pull
    /// under way has not recorded its image yet).
    fn sweep_blobs(&self, kept: &[ImageRecord], min_age_ms: u64, now: u64) -> (usize, u64) {
        let needed: BTreeSet<&str> = kept
            .iter()
            .flat_map(|r| r.blobs.iter().map(|b| hex_of(b)))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.blobs_dir()) else {
            return (0, 0);
        };
        let (mut n, mut bytes) = (0, 0);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !valid_hex(&name) || needed.contains(name.as_str()) {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| now.saturating_sub(d.as_millis() as u64));
            if age < min_age_ms {
                continue;
            }
            if std::fs::remove_file(e.path()).is_ok() {
                n += 1;
                bytes += meta.len();
            }
        }
        (n, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// A cache with images `a` (blobs 1, 2) and `b` (blobs 1, 3), each
    /// with a tree, `a` used before `b`.
    fn cache() -> (tempfile::TempDir, ImageCache) {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(tmp.path());
        std::fs::create_dir_all(cache.blobs_dir()).unwrap();
        for c in ['1', '2', '3'] {
            std::fs::write(cache.blobs_dir().join(&digest(c)[7..]), vec![0u8; 4096]).unwrap();
        }
        for (name, m, blobs) in [("a", 'a', ['1', '2']), ("b", 'b', ['1', '3'])] {
            let tree = tmp.path().join("rootfs").join(&digest(m)[7..]);
            std::fs::create_dir_all(tree.join("etc")).unwrap();
            std::fs::write(tree.join("etc/file"), vec![1u8; 8192]).unwrap();
            cache
                .record_use(
                    &format!("lab/{name}@{}", digest(m)),
                    &digest(m),
                    &digest(m),
                    blobs.iter().map(|c| digest(*c)).collect(),
                    &tree,
                )
                .unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        (tmp, cache)
    }

    fn policy() -> GcPolicy {
        GcPolicy {
            min_age: Duration::ZERO,
            ..GcPolicy::default()
        }
    }

    #[test]
    fn nothing_is_removed_below_the_high_mark() {
        let (_tmp, cache) = cache();
        let r = cache.collect(&policy(), &HashSet::new(), &mut || 84);
        assert_eq!(r, GcReport::default());
        assert_eq!(cache.records().len(), 2);
    }

    #[test]
    fn the_least_recently_used_image_goes_first_with_the_blobs_only_it_needs() {
        let (tmp, cache) = cache();
        // Over 85 %, and back under 80 % once one image is gone.
        let mut pct = [90u8, 90, 70].into_iter();
        let r = cache.collect(&policy(), &HashSet::new(), &mut || pct.next().unwrap_or(70));
        assert_eq!(r.images_removed, vec![format!("lab/a@{}", digest('a'))]);
        assert_eq!(r.blobs_removed, 1, "blob 2; blob 1 is b's too");
        assert!(!cache.blobs_dir().join(&digest('2')[7..]).exists());
        assert!(cache.blobs_dir().join(&digest('1')[7..]).exists());
        assert!(!tmp.path().join("rootfs").join(&digest('a')[7..]).exists());
        assert!(tmp.path().join("rootfs").join(&digest('b')[7..]).exists());
    }

    #[test]
    fn images_in_use_or_used_lately_are_kept_however_full_the_disk() {
        let (_tmp, cache) = cache();
        let wanted: HashSet<String> = [format!("lab/a@{}", digest('a'))].into();
        let lately = GcPolicy {
            min_age: Duration::from_secs(3600),
            ..GcPolicy::default()
        };
        let r = cache.collect(&lately, &HashSet::new(), &mut || 99);
        assert!(r.images_removed.is_empty(), "used within the hour");
        let r = cache.collect(&policy(), &wanted, &mut || 99);
        assert_eq!(r.images_removed, vec![format!("lab/b@{}", digest('b'))]);
        assert_eq!(cache.records().len(), 1, "a is wanted");
    }

    #[test]
    fn nothing_is_collected_before_the_node_knows_what_it_runs_nor_during_a_pull() {
        let (_tmp, cache) = cache();
        let in_use: InUse = Default::default();
        let pulls = std::sync::Arc::new(crate::image::progress::PullProgress::default());
        assert_eq!(
            cache.collect_round(&policy(), &in_use, &pulls, &mut || 99),
            None
        );
        *in_use.lock().unwrap() = Some(HashSet::new());
        let pulling = pulls.track("lab/c:1");
        assert_eq!(
            cache.collect_round(&policy(), &in_use, &pulls, &mut || 99),
            None
        );
        drop(pulling);
        let r = cache
            .collect_round(&policy(), &in_use, &pulls, &mut || 99)
            .unwrap();
        assert_eq!(r.images_removed.len(), 2, "at 99 %, nothing in use");
    }

    #[test]
    fn a_size_cap_collects_down_to_its_low_mark() {
        let (_tmp, cache) = cache();
        let before = cache.bytes();
        let capped = GcPolicy {
            cap: Some(before - 1),
            ..policy()
        };
        let r = cache.collect(&capped, &HashSet::new(), &mut || 10);
        assert_eq!(r.images_removed.len(), 1, "one image brings it under");
        assert!(cache.bytes() < before);
    }
}
