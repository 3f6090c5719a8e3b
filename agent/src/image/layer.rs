//! Applying one layer of an image onto a rootfs being unpacked.
//!
//! [`unpack_layer`] decompresses a verified layer blob and checks the
//! uncompressed stream against the image config's `rootfs.diff_ids`;
//! [`apply_layer`] applies the tar stream, whiteouts included, without ever
//! writing outside its destination.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use oci_spec::image::{Descriptor, MediaType};
use sha2::Digest as _;
use tracing::debug;

use super::layout::{verify_blob, HashingReader};
use super::{io_err, is_dir, BlobSource, ImageError};

/// Prefix of whiteout entries in a layer.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Opaque whiteout: hides every lower-layer child of its directory.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

pub(super) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    None,
    Gzip,
}

/// How a layer blob is compressed, from its media type. Only tar and
/// tar+gzip layers are unpacked.
pub(super) fn layer_compression(
    source: &dyn BlobSource,
    desc: &Descriptor,
) -> Result<Compression, ImageError> {
    let zstd = || ImageError::ZstdLayer {
        layout: source.name().to_string(),
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
            layout: source.name().to_string(),
            digest: desc.digest().to_string(),
            media_type: other.to_string(),
            expected: "a tar or tar+gzip layer",
        }),
    }
}

/// Verifies a layer blob, applies it onto `dest`, and checks the
/// uncompressed stream against `diff_id`.
pub(super) fn unpack_layer(
    source: &dyn BlobSource,
    desc: &Descriptor,
    diff_id: &str,
    compression: Compression,
    dest: &Path,
) -> Result<(), ImageError> {
    let digest = desc.digest().to_string();
    verify_blob(source, desc)?;
    debug!(layer = %digest, "applying layer");
    let blob = source.open(desc.digest())?;
    let file = BufReader::new(blob.reader);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
    };
    let mut reader = HashingReader::new(decoded);
    let wrap = |e: ImageError| ImageError::Layer {
        layout: source.name().to_string(),
        digest: digest.clone(),
        source: Box::new(e),
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
            layout: source.name().to_string(),
            digest,
            expected: diff_id.to_string(),
            actual,
        });
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layout::DOCKER_MANIFEST;
    use crate::image::testing::*;
    use crate::image::ImageStore;
    use oci_spec::image::Arch;
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;
    use tar::EntryType;

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
}
