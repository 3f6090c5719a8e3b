//! How far the pulls under way on this node have got, per image as the
//! allocations name it, for the status the agent reports (`pulling`, with
//! bytes done and total).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Bytes of one image's blobs the node holds, of those it needs.
#[derive(Debug, Default)]
pub struct Counts {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub blobs_left: AtomicU64,
}

/// The pulls under way, by image reference (as written in the task, so
/// the reconciler finds them from an allocation).
#[derive(Debug, Default)]
pub struct PullProgress {
    pulls: Mutex<HashMap<String, (Arc<Counts>, usize)>>,
}

/// A pull's place in [`PullProgress`], removed when the last pull of that
/// image ends.
pub struct Tracked {
    progress: Arc<PullProgress>,
    image: String,
    pub counts: Arc<Counts>,
    /// The first pull of this image sets the totals; later ones share.
    pub first: bool,
}

impl PullProgress {
    /// Starts tracking a pull of `image` (or joins one under way).
    pub fn track(self: &Arc<Self>, image: &str) -> Tracked {
        let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pulls
            .entry(image.to_string())
            .or_insert_with(|| (Arc::default(), 0));
        entry.1 += 1;
        Tracked {
            progress: self.clone(),
            image: image.to_string(),
            counts: entry.0.clone(),
            first: entry.1 == 1,
        }
    }

    /// No pull is under way.
    pub fn idle(&self) -> bool {
        self.pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// `(bytes held, bytes needed, blobs still to fetch)` of a pull of
    /// `image` under way, once its manifest is known.
    pub fn of(&self, image: &str) -> Option<(u64, u64, u64)> {
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
        let c = &pulls.get(image)?.0;
        let total = c.total.load(Ordering::Relaxed);
        (total > 0).then(|| {
            (
                c.done.load(Ordering::Relaxed).min(total),
                total,
                c.blobs_left.load(Ordering::Relaxed),
            )
        })
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut pulls = self
            .progress
            .pulls
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = pulls.get_mut(&self.image) {
            entry.1 -= 1;
            if entry.1 == 0 {
                pulls.remove(&self.image);
            }
        }
    }
}

/// `pulling IMAGE: 12.5 MiB of 200.0 MiB (3 layers left)`.
pub fn describe(image: &str, done: u64, total: u64, blobs_left: u64) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let left = match blobs_left {
        0 => String::new(),
        1 => " (1 blob left)".to_string(),
        n => format!(" ({n} blobs left)"),
    };
    format!(
        "pulling {image}: {:.1} MiB of {:.1} MiB{left}",
        mib(done),
        mib(total)
    )
}

/// A writer that counts what passes through it into `done` (of the
/// image) and `attempt` (of this try, taken back if the try fails).
pub struct Counting<W> {
    pub inner: W,
    pub done: Arc<Counts>,
    pub attempt: Arc<AtomicU64>,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.done.done.fetch_add(*n as u64, Ordering::Relaxed);
            self.attempt.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_is_seen_while_someone_pulls_that_image_and_described_in_mib() {
        let p = Arc::new(PullProgress::default());
        let first = p.track("lab/a:1");
        assert_eq!(p.of("lab/a:1"), None, "no totals before the manifest");
        first.counts.total.store(4 << 20, Ordering::Relaxed);
        first.counts.done.store(1 << 20, Ordering::Relaxed);
        first.counts.blobs_left.store(2, Ordering::Relaxed);
        let second = p.track("lab/a:1");
        assert!(first.first && !second.first);
        assert_eq!(p.of("lab/a:1"), Some((1 << 20, 4 << 20, 2)));
        drop(first);
        assert!(p.of("lab/a:1").is_some(), "the second pull still runs");
        drop(second);
        assert_eq!(p.of("lab/a:1"), None);
        assert_eq!(
            describe("lab/a:1", 3 << 19, 200 << 20, 3),
            "pulling lab/a:1: 1.5 MiB of 200.0 MiB (3 blobs left)"
        );
    }
}
