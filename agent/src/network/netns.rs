//! Network namespaces the agent makes for allocations: a file under
//! `DATA_DIR/network/netns/` with the namespace bind-mounted on it (what
//! `ip netns add` does under /run/netns, kept in the agent's own data
//! directory so several agents on one machine never share names). The
//! directory is a shared mount of itself, as iproute2 makes /run/netns, so
//! unmounting a namespace here also unmounts copies another mount
//! namespace took; a namespace lives until its file is unmounted.

use std::io;
use std::path::Path;

use crate::sys;

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

/// Whether something is mounted on `dir` (this process's mount table).
fn mounted_on(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*dir.to_string_lossy()))
}

/// Held while the directory's mount is looked at and changed: two first
/// setups racing would otherwise both find it unmounted and mount it
/// twice (the second mount hiding the namespace the first had just made
/// under it), and a release could unmount it under a setup.
static DIR_MOUNT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes `dir` (created if missing) a shared mount of itself, once.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    let _held = DIR_MOUNT.lock().unwrap_or_else(|p| p.into_inner());
    std::fs::create_dir_all(dir)?;
    if !mounted_on(dir) {
        sys::bind_mount(dir, dir)?;
    }
    sys::make_shared(dir)
}

/// Unmounts `dir` (made ready by [`prepare_dir`]) when no namespace is
/// left in it, so that a data directory removed after the agent stops
/// leaves no mount behind; with a namespace still held there (a running
/// container's, which outlives the agent), it stays. Whether it was
/// unmounted.
pub fn release_dir(dir: &Path) -> io::Result<bool> {
    let _held = DIR_MOUNT.lock().unwrap_or_else(|p| p.into_inner());
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !empty || !mounted_on(dir) {
        return Ok(false);
    }
    sys::umount_detach(dir)?;
    Ok(true)
}

/// A new network namespace held by the file `path` (its directory made
/// ready by [`prepare_dir`]). Made on a thread of its own, which alone
/// enters the namespace and then ends.
pub fn create(path: &Path) -> io::Result<()> {
    if path.exists() && is_mount_point(path) {
        return Ok(()); // made before (an agent restarted mid-start)
    }
    std::fs::File::create(path)?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> io::Result<()> {
        sys::unshare_network()?;
        sys::bind_mount(Path::new("/proc/thread-self/ns/net"), &target)
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Releases the namespace held by `path` and removes the file; nothing
/// there is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if let Err(e) = sys::umount_detach(path) {
        // EINVAL: not a mount point (a file a crash left unmounted).
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_made_held_and_released() {
        if !crate::sys::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        prepare_dir(&dir).unwrap();
        prepare_dir(&dir).unwrap();
        let ns = dir.join("a");
        create(&ns).unwrap();
        create(&ns).unwrap();
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        // The file is a namespace of its own, not ours.
        let held = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .args(["readlink", "/proc/self/ns/net"])
            .output()
            .unwrap();
        assert!(held.status.success());
        assert_ne!(
            String::from_utf8_lossy(&held.stdout).trim(),
            mine.to_string_lossy()
        );
        remove(&ns).unwrap();
        assert!(!ns.exists());
        remove(&ns).unwrap();
        sys::umount_detach(&dir).unwrap();
    }

    /// An agent that stops unmounts the directory only when no namespace
    /// is left in it: the temporary data directories of the tests, and an
    /// operator's removed one, leave no mount behind.
    #[test]
    fn the_directory_is_unmounted_once_no_namespace_is_left() {
        if !crate::sys::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        let mounted = || mounted_on(&dir);
        assert!(!release_dir(&dir).unwrap(), "nothing there yet");
        prepare_dir(&dir).unwrap();
        let ns = dir.join("held");
        create(&ns).unwrap();
        assert!(!release_dir(&dir).unwrap(), "a namespace is still held");
        assert!(mounted() && is_mount_point(&ns));
        remove(&ns).unwrap();
        assert!(release_dir(&dir).unwrap());
        assert!(!mounted());
        assert!(!release_dir(&dir).unwrap(), "once");
        // The directory can be prepared again by the next agent.
        prepare_dir(&dir).unwrap();
        assert!(mounted());
        assert!(release_dir(&dir).unwrap());
    }

    /// Several first setups at once (a fresh agent given several bridged
    /// allocations): the directory is mounted once, and every namespace
    /// made in it stays visible (a second mount of the directory would
    /// hide the ones made before it, seen once as "unknown FS magic").
    #[test]
    fn first_setups_racing_mount_the_directory_once() {
        if !crate::sys::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        let made: Vec<_> = (0..6)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    prepare_dir(&dir).unwrap();
                    let ns = dir.join(format!("n{i}"));
                    create(&ns).unwrap();
                    ns
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let point = dir.to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(point.as_str()))
            .count();
        assert_eq!(mounts, 1, "the directory is mounted once");
        for ns in &made {
            assert!(is_mount_point(ns), "{} is hidden", ns.display());
            remove(ns).unwrap();
        }
        sys::umount_detach(&dir).unwrap();
    }
}
