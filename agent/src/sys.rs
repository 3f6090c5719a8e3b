//! The few system calls std does not wrap. Every `unsafe` block of the
//! agent lives here, each with the reason it is sound.
#![allow(unsafe_code)]

use std::io;

/// Result of `fork`.
pub enum Fork {
    Parent,
    Child,
}

/// Forks the process. Only call while the process has a single thread
/// (the shim does, before it starts anything else).
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no memory-safety preconditions of its own; the
    // hazard of forking a multi-threaded process (locks held by other
    // threads) is excluded by calling this only from the single-threaded
    // shim before it spawns anything.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        _ => Ok(Fork::Parent),
    }
}

/// Starts a new session, detaching from the caller's terminal and process
/// group, so signals aimed at the agent's group do not reach the shim.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments and touches no memory of ours.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes this process the reaper of its orphaned descendants, so the
/// container's init (orphaned when `runc create` exits) becomes our child
/// and its exit status reaches us.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER reads only its integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores SIGHUP and SIGPIPE (the agent's terminal or pipes going away
/// must not kill the shim).
pub fn ignore_hup_and_pipe() {
    for sig in [libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: installing SIG_IGN stores no pointer to our code.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// True when a process with this pid exists (it may be a zombie).
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Points fds 0, 1 and 2 at `/dev/null` and `err_file` (stderr), so the
/// shim holds none of its caller's pipes.
pub fn redirect_stdio(err_file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (null.as_raw_fd(), 1),
        (err_file.as_raw_fd(), 2),
    ] {
        // SAFETY: both fds are open for the duration of the call; dup2
        // only changes the fd table.
        if unsafe { libc::dup2(from, to) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), to tell a live shim from a recycled pid.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// True when running as root (runc needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// The hard limit on open files this process runs with; containers cannot
/// be given more than it.
pub fn nofile_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    }
}

/// Waits for any child without blocking: `Ok(None)` when none has ended
/// (or there are no children).
pub fn wait_any_nohang() -> io::Result<Option<(i32, Exit)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid == 0 {
            return Ok(None);
        }
        if pid == -1 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return Ok(None),
                _ => return Err(err),
            }
        }
        let exit = if libc::WIFEXITED(status) {
            Exit::Code(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            continue;
        };
        return Ok(Some((pid, exit)));
    }
}

/// A file descriptor that becomes readable when process `pid` ends
/// (`pidfd_open`, Linux 5.3+).
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Which of the given fds are readable (or hung up) within `timeout_ms`
/// (-1: no limit). Returns one flag per fd.
pub fn poll_readable(fds: &[std::os::fd::RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        return Ok(pfds.iter().map(|p| p.revents != 0).collect());
    }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill only takes integers.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(p: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Mounts an overlay at `target`: `lower` read-only underneath, changes
/// going to `upper` (with `work` as overlayfs's scratch directory).
pub fn mount_overlay(
    lower: &std::path::Path,
    upper: &std::path::Path,
    work: &std::path::Path,
    target: &std::path::Path,
) -> io::Result<()> {
    for p in [lower, upper, work] {
        let s = p.to_string_lossy();
        // overlayfs splits its options on ',' and lowerdir on ':'.
        if s.contains(',') || s.contains(':') || s.contains('\\') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s:?} holds a character overlayfs options cannot carry"),
            ));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let source = std::ffi::CString::new("overlay").expect("no NUL");
    let fstype = std::ffi::CString::new("overlay").expect("no NUL");
    let target = cstring(target)?;
    let data = std::ffi::CString::new(options)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "options hold a NUL byte"))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; mount copies what it needs.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount at `target` (lazily, so a process still inside it
/// does not make the unmount fail).
/// Opens the file `names` leads to below the directory `dir`, one
/// component at a time with `openat` and `O_NOFOLLOW`, so no symbolic
/// link is followed at any step (`ELOOP` or `ENOTDIR` when one is there).
/// The file is opened `O_NONBLOCK`, so a FIFO cannot block the open; the
/// caller checks what kind of file it got.
pub fn open_beneath(dir: &std::path::Path, names: &[&str]) -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut at = std::fs::File::open(dir)?;
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() || *name == "." || *name == ".." || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a plain file name"),
            ));
        }
        let last = i + 1 == names.len();
        let flags = libc::O_RDONLY
            | libc::O_NOFOLLOW
            | libc::O_CLOEXEC
            | if last {
                libc::O_NONBLOCK
            } else {
                libc::O_DIRECTORY
            };
        let c = std::ffi::CString::new(*name)?;
        // SAFETY: `at` is an open descriptor and `c` a NUL-terminated
        // string, both alive for the call.
        let fd = unsafe { libc::openat(at.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        at = unsafe { std::fs::File::from_raw_fd(fd) };
    }
    Ok(at)
}

pub fn unmount(target: &std::path::Path) -> io::Result<()> {
    let t = cstring(target)?;
    // SAFETY: `t` is a valid NUL-terminated string for the call.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `fd` refers to.
/// Only call on a thread made for it: the thread stays there.
pub fn enter_net_namespace(fd: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns only reads the fd and the flag.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops this process's page-table entries for the read-only parts of
/// its program and libraries that hold no private copy of a page (code,
/// constants, symbol tables), so its resident set is what it goes on to
/// use rather than all it touched while starting. The pages stay in the
/// page cache, and whatever runs next faults back in what it needs.
/// Mappings that are writable, or hold pages changed after loading (the
/// relocated ones), are left alone: dropping those would lose their
/// contents. Call only while single-threaded.
pub fn release_startup_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    // Each mapping: a header line `start-end perms offset dev inode path`,
    // then `Key: value` lines, `Anonymous:` among them.
    let mut candidate: Option<(usize, usize)> = None;
    let release = |range: (usize, usize)| {
        // SAFETY: the range is a whole mapping of this process, read from
        // /proc/self/smaps just now, while no other thread runs: a
        // private, read-only file mapping with no anonymous (copied)
        // pages, so MADV_DONTNEED only unmaps pages that fault back in
        // unchanged from the file.
        unsafe {
            libc::madvise(
                range.0 as *mut libc::c_void,
                range.1 - range.0,
                libc::MADV_DONTNEED,
            );
        }
    };
    for line in smaps.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            if let Some(range) = candidate.take() {
                if kb.trim() == "0 kB" {
                    release(range);
                }
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms), Some(_), Some(_), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue; // a `Key: value` line
        };
        let p = perms.as_bytes();
        // Readable, not writable, private, and backed by a file (the vdso
        // and anonymous mappings have inode 0).
        let eligible = p.len() == 4 && p[0] == b'r' && p[1] == b'-' && p[3] == b'p' && inode != "0";
        candidate = eligible.then_some((start, end));
    }
}

/// Waits until process `pid`, started at `start_time` (clock ticks after
/// boot, as in `/proc/PID/stat`), has exited. Returns at once when it is
/// already gone or the pid now names another process.
pub async fn wait_process_exit(pid: i32, start_time: u64) -> io::Result<()> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    // The pidfd pins the process: if the start time matches now, it is
    // the one we mean until the fd says it exited.
    if process_start_time(pid) != Some(start_time) {
        return Ok(());
    }
    // SAFETY: `fd` is an OwnedFd the AsyncFd takes over: it stays open and
    // names the same pidfd until the AsyncFd is dropped.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    let _ready = afd.readable().await?;
    Ok(())
}

/// Percent of the filesystem holding `path` in use, as `df` counts it
/// (blocks not available to unprivileged users count as used).
pub fn fs_percent_used(path: &std::path::Path) -> io::Result<u8> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs is plain data; all-zero is a valid value of it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated string and `st` a struct we
    // own for the call to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let total = u128::from(st.f_blocks);
    if total == 0 {
        return Ok(0);
    }
    let used = total - u128::from(st.f_bavail.min(st.f_blocks));
    Ok((used * 100 / total) as u8)
}

fn c_path(path: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

fn zero_or_errno(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mount --bind SRC DST`.
pub fn bind_mount(src: &std::path::Path, dst: &std::path::Path) -> io::Result<()> {
    let (s, d) = (c_path(src)?, c_path(dst)?);
    // SAFETY: both are valid NUL-terminated strings that outlive the call;
    // a bind mount takes no file system type nor data (null is allowed).
    zero_or_errno(unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// `mount --make-shared PATH`.
pub fn make_shared(path: &std::path::Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a valid NUL-terminated string; a propagation change takes
    // no source, type nor data.
    zero_or_errno(unsafe {
        libc::mount(
            std::ptr::null(),
            p.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        )
    })
}

/// `umount --lazy PATH`.
pub fn umount_detach(path: &std::path::Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a valid NUL-terminated string.
    zero_or_errno(unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) })
}

/// Moves the calling thread (only it) into a new network namespace.
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; it changes only
    // the calling thread's namespace.
    zero_or_errno(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}
