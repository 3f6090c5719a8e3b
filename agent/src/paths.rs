//! Where the agent keeps things under its data directory, and the rules
//! that keep every per-allocation path inside it.
//!
//! An allocation id comes from the servers (the allocation watch) or from
//! a caller of the agent's API, and becomes a directory name here, so it
//! is checked before it is joined to anything: 32 lowercase hex digits,
//! what the leader makes. A path is then checked component by component
//! before the agent creates or removes it: every component below the data
//! directory that exists must be a real directory, never a symbolic link,
//! so nothing can send a write or a `remove_dir_all` outside the data
//! directory. (The data directory is 0700 and owned by root, so nobody but
//! root can swap a component between the check and the use.)

use std::io;
use std::path::{Component, Path, PathBuf};

/// Allocation ids are 32 lowercase hex digits; anything else could name a
/// path outside the data directory.
pub fn valid_alloc_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The error for an id that is not one.
pub fn bad_alloc_id(id: &str) -> io::Error {
    let shown: String = id.chars().take(80).collect();
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{shown:?} is not an allocation id (32 lowercase hex digits)"),
    )
}

/// `containers/ID/{bundle,state}`, `logs/ID/{stdout,stderr}.log`,
/// `images/` (unpacked image cache), `runc/` (the runtime's state).
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// `containers/ID`; an error when `alloc_id` is not an allocation id.
    pub fn container_dir(&self, alloc_id: &str) -> io::Result<PathBuf> {
        if !valid_alloc_id(alloc_id) {
            return Err(bad_alloc_id(alloc_id));
        }
        Ok(self.containers().join(alloc_id))
    }

    pub fn bundle(&self, alloc_id: &str) -> io::Result<PathBuf> {
        Ok(self.container_dir(alloc_id)?.join("bundle"))
    }

    pub fn state_dir(&self, alloc_id: &str) -> io::Result<PathBuf> {
        Ok(self.container_dir(alloc_id)?.join("state"))
    }

    pub fn log_dir(&self, alloc_id: &str) -> io::Result<PathBuf> {
        if !valid_alloc_id(alloc_id) {
            return Err(bad_alloc_id(alloc_id));
        }
        Ok(self.root.join("logs").join(alloc_id))
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn runtime_root(&self) -> PathBuf {
        self.root.join("runc")
    }

    /// Checks that `path` lies inside the data directory and that none of
    /// its existing components below the data directory is a symbolic
    /// link or anything but a directory (the last one may be a file), so
    /// creating or removing it cannot reach outside. Call it right before
    /// the operation.
    pub fn confined(&self, path: &Path) -> io::Result<()> {
        let rest = path
            .strip_prefix(&self.root)
            .map_err(|_| escape(path, "is not inside the agent's data directory"))?;
        let mut at = self.root.clone();
        let mut parts = rest.components().peekable();
        while let Some(part) = parts.next() {
            match part {
                Component::Normal(name) => at.push(name),
                _ => return Err(escape(path, "has a '..', '.' or root component")),
            }
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(escape(
                        path,
                        &format!("{} is a symbolic link", at.display()),
                    ))
                }
                Ok(meta) if parts.peek().is_some() && !meta.is_dir() => {
                    return Err(escape(
                        path,
                        &format!("{} is not a directory", at.display()),
                    ))
                }
                Ok(_) => {}
                // Nothing further exists to be swapped.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// `create_dir_all` after [`Paths::confined`].
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.confined(path)?;
        std::fs::create_dir_all(path)
    }

    /// `remove_dir_all` after [`Paths::confined`]; a missing directory is
    /// not an error. (`remove_dir_all` itself never follows a symbolic link
    /// it finds inside.)
    pub fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.confined(path)?;
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

fn escape(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing {}: {why}", path.display()),
    )
}

/// The runtime's name for an allocation's container.
pub fn container_id(alloc_id: &str) -> String {
    format!("skiff-{alloc_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn ids_that_could_name_another_path_are_refused_before_any_path_is_made() {
        let p = Paths::new("/var/lib/skiff");
        assert_eq!(
            p.bundle(ID).unwrap(),
            Path::new("/var/lib/skiff/containers")
                .join(ID)
                .join("bundle")
        );
        for bad in [
            "../../../victim",
            "..",
            "",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde/",
            "0123456789abcdef0123456789abcdef0",
        ] {
            for made in [
                p.container_dir(bad),
                p.bundle(bad),
                p.state_dir(bad),
                p.log_dir(bad),
            ] {
                let e = made.unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
                assert!(e.to_string().contains("not an allocation id"), "{e}");
            }
        }
    }

    #[test]
    fn a_symbolic_link_inside_the_data_dir_is_never_followed_to_create_or_remove() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let p = Paths::new(root.path());
        std::fs::create_dir_all(p.containers()).unwrap();
        // containers/ID is a link to a directory outside.
        std::os::unix::fs::symlink(outside.path(), p.container_dir(ID).unwrap()).unwrap();
        let e = p.remove_dir_all(&p.bundle(ID).unwrap()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let e = p.create_dir_all(&p.state_dir(ID).unwrap()).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(outside.path().join("keep").exists());
        assert!(!outside.path().join("state").exists());
        // A path outside, or with '..', is refused too.
        assert!(p.remove_dir_all(outside.path()).is_err());
        assert!(p
            .remove_dir_all(&p.containers().join("..").join(".."))
            .is_err());
        // An ordinary path works, and removing what is gone is fine.
        let ok = p.state_dir("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        p.create_dir_all(&ok).unwrap();
        assert!(ok.is_dir());
        p.remove_dir_all(&ok).unwrap();
        p.remove_dir_all(&ok).unwrap();
        assert!(outside.path().join("keep").exists());
    }
}
