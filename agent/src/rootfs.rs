//! A container's own root filesystem, made from the image's unpacked
//! rootfs in the per-image cache.
//!
//! Where the kernel offers overlayfs, the cached rootfs becomes the
//! read-only lower layer of an overlay mounted at `bundle/rootfs`, and the
//! container's writes go to `bundle/overlay/upper`: starting another
//! replica of an image copies and unpacks nothing. Otherwise the cached
//! tree is copied: [`copy_rootfs`] keeps modes, owners, mtimes, symlinks
//! and hard links.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::paths::Paths;

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
    Copy(#[from] CopyError),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

/// What can go wrong copying a rootfs tree.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} already exists; a rootfs is only copied to a new path", path.display())]
    DestinationExists { path: PathBuf },
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

// ---------------------------------------------------------------------------
// Copying a prepared rootfs
// ---------------------------------------------------------------------------

fn copy_err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the rootfs tree `src` to `dest`, which must not exist yet (its
/// parent is created if missing). Modes, ownership, file mtimes and symlinks
/// are preserved, hard links within the tree stay hard links; device nodes,
/// fifos and sockets are skipped. On failure the partial copy is removed.
pub fn copy_rootfs(src: &Path, dest: &Path) -> Result<(), CopyError> {
    let src_meta = fs::symlink_metadata(src).map_err(copy_err(src))?;
    if !src_meta.is_dir() {
        return Err(CopyError::Io {
            path: src.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotADirectory,
                "rootfs to copy is not a directory",
            ),
        });
    }
    match fs::symlink_metadata(dest) {
        Ok(_) => {
            return Err(CopyError::DestinationExists {
                path: dest.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(copy_err(dest)(e)),
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(copy_err(parent))?;
    }
    if let Err(e) = DirBuilder::new().mode(0o700).create(dest) {
        if e.kind() == io::ErrorKind::AlreadyExists {
            return Err(CopyError::DestinationExists {
                path: dest.to_path_buf(),
            });
        }
        return Err(copy_err(dest)(e));
    }
    let result = copy_tree(src, dest, src_meta);
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(dest) {
            warn!(path = %dest.display(), error = %e, "could not remove partial rootfs copy");
        }
    }
    result
}

fn copy_tree(src: &Path, dest: &Path, src_meta: fs::Metadata) -> Result<(), CopyError> {
    let mut dirs = vec![(dest.to_path_buf(), src_meta)];
    let mut stack = vec![(src.to_path_buf(), dest.to_path_buf())];
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    while let Some((from_dir, to_dir)) = stack.pop() {
        for entry in fs::read_dir(&from_dir).map_err(copy_err(&from_dir))? {
            let entry = entry.map_err(copy_err(&from_dir))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let meta = fs::symlink_metadata(&from).map_err(copy_err(&from))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&to)
                    .map_err(copy_err(&to))?;
                dirs.push((to.clone(), meta));
                stack.push((from, to));
            } else if kind.is_symlink() {
                let target = fs::read_link(&from).map_err(copy_err(&from))?;
                std::os::unix::fs::symlink(&target, &to).map_err(copy_err(&to))?;
                chown_if_needed_path(&to, &meta)?;
            } else if kind.is_file() {
                if meta.nlink() > 1 {
                    let key = (meta.dev(), meta.ino());
                    if let Some(first) = links.get(&key) {
                        fs::hard_link(first, &to).map_err(copy_err(&to))?;
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
            .map_err(copy_err(dir))?;
    }
    Ok(())
}

fn chown_if_needed_path(path: &Path, want: &fs::Metadata) -> Result<(), CopyError> {
    let have = fs::symlink_metadata(path).map_err(copy_err(path))?;
    if have.uid() != want.uid() || have.gid() != want.gid() {
        std::os::unix::fs::lchown(path, Some(want.uid()), Some(want.gid()))
            .map_err(copy_err(path))?;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), CopyError> {
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(copy_err(from))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(copy_err(to))?;
    io::copy(&mut src, &mut dst).map_err(copy_err(to))?;
    if let Ok(t) = meta.modified() {
        dst.set_modified(t).map_err(copy_err(to))?;
    }
    let have = dst.metadata().map_err(copy_err(to))?;
    if have.uid() != meta.uid() || have.gid() != meta.gid() {
        std::os::unix::fs::fchown(&dst, Some(meta.uid()), Some(meta.gid()))
            .map_err(copy_err(to))?;
    }
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(copy_err(to))
}

/// Unmounts `bundle/rootfs` if it is an overlay and removes the bundle.
pub fn release(paths: &Paths, bundle: &Path) -> io::Result<()> {
    paths.confined(bundle)?;
    let target = bundle.join("rootfs");
    match crate::sys::unmount(&target) {
        Ok(()) => {}
        // Not a mount point (a copy), or already gone.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
        Err(e) => return Err(e),
    }
    paths.remove_dir_all(bundle)
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
    use crate::image::testing::{apply, busybox_layout, image_ref, read, tree, LayerTar, BUSYBOX};
    use crate::image::ImageStore;

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
        let paths = Paths::new(bundle.path());
        release(&paths, &b).unwrap();
        assert!(!b.exists());
        release(&paths, &b).unwrap();
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
        let paths = Paths::new(bundles.path());
        for x in [&a, &b] {
            release(&paths, x).unwrap();
            assert!(!x.exists());
        }
        assert!(
            image.path().join("bin/tool").is_file(),
            "the image is untouched"
        );
    }

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
            matches!(err, CopyError::DestinationExists { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(&dest.display().to_string()));
    }

    #[test]
    fn a_prepared_umoci_busybox_image_copies_byte_for_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = busybox_layout(tmp.path());
        let prepared = ImageStore::new(tmp.path().join("images"))
            .prepare(&image_ref(&layout, None))
            .unwrap();
        let copy = tmp.path().join("c1/rootfs");
        copy_rootfs(&prepared.rootfs, &copy).unwrap();
        assert_eq!(
            fs::read(copy.join("bin/busybox")).unwrap(),
            fs::read(BUSYBOX).unwrap()
        );
        assert_eq!(tree(&prepared.rootfs), tree(&copy));
    }
}
