//! A container's own root filesystem, made from the image's unpacked
//! rootfs in the per-image cache.
//!
//! Where the kernel offers overlayfs, the cached rootfs becomes the
//! read-only lower layer of an overlay mounted at `bundle/rootfs`, and the
//! container's writes go to `bundle/overlay/upper`: starting another
//! replica of an image copies and unpacks nothing. Otherwise the cached
//! tree is copied.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::image::{copy_rootfs, ImageError};

/// How container root filesystems are made (`skiff agent --rootfs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootfsMode {
    /// overlayfs when it works here, else a copy.
    #[default]
    Auto,
    /// overlayfs or fail.
    Overlay,
    /// Always a full copy.
    Copy,
}

impl RootfsMode {
    pub fn parse(text: &str) -> Option<RootfsMode> {
        Some(match text {
            "auto" => RootfsMode::Auto,
            "overlay" => RootfsMode::Overlay,
            "copy" => RootfsMode::Copy,
            _ => return None,
        })
    }
}

/// What [`prepare`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    Copy,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot mount an overlay at {path}: {source}")]
    Overlay { path: String, source: io::Error },
    #[error("copying the image's rootfs: {0}")]
    Copy(#[from] ImageError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes `bundle/rootfs` from the cached `image_rootfs`.
pub fn prepare(
    image_rootfs: &Path,
    bundle: &Path,
    mode: RootfsMode,
) -> Result<RootfsKind, RootfsError> {
    let target = bundle.join("rootfs");
    if mode != RootfsMode::Copy {
        match mount_overlay(image_rootfs, bundle) {
            Ok(()) => return Ok(RootfsKind::Overlay),
            Err(e) if mode == RootfsMode::Overlay => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "overlayfs unavailable; copying the rootfs");
                let _ = fs::remove_dir_all(bundle.join("overlay"));
                let _ = fs::remove_dir(&target);
            }
        }
    }
    copy_rootfs(image_rootfs, &target)?;
    Ok(RootfsKind::Copy)
}

fn mount_overlay(lower: &Path, bundle: &Path) -> Result<(), RootfsError> {
    let upper = bundle.join("overlay/upper");
    let work = bundle.join("overlay/work");
    let target = bundle.join("rootfs");
    for d in [&upper, &work, &target] {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    // The merged root takes the upper directory's owner and mode: give it
    // the image root's.
    let meta = fs::metadata(lower).map_err(io_err(lower))?;
    std::os::unix::fs::chown(&upper, Some(meta.uid()), Some(meta.gid())).map_err(io_err(&upper))?;
    fs::set_permissions(&upper, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err(&upper))?;
    crate::sys::mount_overlay(lower, &upper, &work, &target).map_err(|source| {
        RootfsError::Overlay {
            path: target.display().to_string(),
            source,
        }
    })
}

/// Unmounts `bundle/rootfs` if it is an overlay and removes the bundle.
pub fn release(bundle: &Path) -> io::Result<()> {
    let target = bundle.join("rootfs");
    match crate::sys::unmount(&target) {
        Ok(()) => {}
        // Not a mount point (a copy), or already gone.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
        Err(e) => return Err(e),
    }
    match fs::remove_dir_all(bundle) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// True when `path` is the mount point of an overlay (from
/// `/proc/self/mountinfo`).
pub fn is_overlay_mount(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        fields.get(4) == Some(&want.as_ref()) && fstype == Some("overlay")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("bin")).unwrap();
        fs::write(d.path().join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn copy_mode_copies_and_release_removes_the_bundle() {
        let image = image_tree();
        let bundle = tempfile::tempdir().unwrap();
        let b = bundle.path().join("b");
        fs::create_dir_all(&b).unwrap();
        assert_eq!(
            prepare(image.path(), &b, RootfsMode::Copy).unwrap(),
            RootfsKind::Copy
        );
        assert!(b.join("rootfs/bin/tool").is_file());
        release(&b).unwrap();
        assert!(!b.exists());
        release(&b).unwrap();
    }

    #[test]
    fn overlays_share_the_image_and_keep_writes_apart() {
        // Needs root and overlayfs; the end-to-end tests cover the agent
        // using it, this covers the two layers directly.
        if !crate::sys::is_root() {
            return;
        }
        let image = image_tree();
        let bundles = tempfile::tempdir().unwrap();
        let (a, b) = (bundles.path().join("a"), bundles.path().join("b"));
        for x in [&a, &b] {
            fs::create_dir_all(x).unwrap();
            assert_eq!(
                prepare(image.path(), x, RootfsMode::Auto).unwrap(),
                RootfsKind::Overlay,
                "overlayfs works on this host"
            );
            assert!(is_overlay_mount(&x.join("rootfs")));
        }
        fs::write(a.join("rootfs/bin/tool"), b"changed").unwrap();
        assert_eq!(fs::read(b.join("rootfs/bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::read(image.path().join("bin/tool")).unwrap(),
            b"#!/bin/sh\n"
        );
        let mode = fs::metadata(a.join("rootfs")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755, "the merged root looks like the image's root");
        for x in [&a, &b] {
            release(x).unwrap();
            assert!(!x.exists());
        }
        assert!(
            image.path().join("bin/tool").is_file(),
            "the image is untouched"
        );
    }
}
