//! The server's files are for its own user: directories 0700, files 0600
//! (the Raft log holds every spec, environment values included).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) 0700, and tightens it when it exists.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates (or truncates) a file 0600.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Takes group and other access away from everything under `dir`
/// (files another library created with the umask's modes).
pub fn tighten_files(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let tight = mode & 0o700;
        if mode != tight {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(tight))?;
        }
        if meta.is_dir() {
            tighten_files(&entry.path())?;
        }
    }
    Ok(())
}
