//! The `skiff` binary's global allocator, chosen per process by its
//! subcommand.
//!
//! `skiff server` and `skiff dev` allocate and free small objects on many
//! threads at once (gRPC handlers on tokio's workers, the Raft thread, the
//! state saver). With glibc's allocator, malloc and free took about a sixth
//! of a server's CPU under raftbench's 64 clients; mimalloc gave about 20 %
//! more committed writes per second. Every other process stays on the
//! system allocator, because mimalloc's per-thread heaps cost memory we
//! promise to keep small: a container's shim (`skiff shim`) grows from
//! ~1.5 MiB to ~7.5 MiB resident with it, and the agent has its own target.
//!
//! The choice is made at the process's first allocation, before any memory
//! exists, by reading `/proc/self/cmdline` with plain system calls (no
//! allocation); it never changes afterwards, so every block is freed by the
//! allocator that gave it. Without `/proc`, the system allocator is used.
//!
//! A global allocator is `unsafe` by nature; this crate is the only place
//! in the binary that implements one.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// System allocator or mimalloc, by subcommand (see the crate docs).
pub struct BySubcommand;

impl BySubcommand {
    #[inline]
    fn fast(&self) -> bool {
        match CHOICE.load(Ordering::Relaxed) {
            UNDECIDED => decide(),
            c => c == MIMALLOC,
        }
    }
}

/// Reads this process's first argument after the program name; the same
/// answer on every thread, so a race to decide is harmless.
#[cold]
fn decide() -> bool {
    let choice = if control_plane(&first_argument()) {
        MIMALLOC
    } else {
        SYSTEM
    };
    let _ = CHOICE.compare_exchange(UNDECIDED, choice, Ordering::Relaxed, Ordering::Relaxed);
    CHOICE.load(Ordering::Relaxed) == MIMALLOC
}

/// Whether a process started as `skiff ARG ...` runs a control-plane server.
pub fn control_plane(arg: &[u8]) -> bool {
    arg == b"server" || arg == b"dev"
}

/// `argv[1]` (at most 31 bytes; empty when unknown), read from
/// `/proc/self/cmdline` into a stack buffer.
fn first_argument() -> Vec8 {
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path; `buf` is valid for `buf.len()` bytes;
    // the descriptor is closed before returning.
    let n = unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Vec8::default();
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else {
        return Vec8::default();
    };
    let mut parts = buf[..n].split(|b| *b == 0);
    parts.next(); // the program
    Vec8::from(parts.next().unwrap_or_default())
}

/// A short byte string on the stack (no allocation while choosing the
/// allocator).
#[derive(Default)]
struct Vec8 {
    bytes: [u8; 32],
    len: usize,
}

impl From<&[u8]> for Vec8 {
    fn from(s: &[u8]) -> Vec8 {
        let mut v = Vec8::default();
        if s.len() <= v.bytes.len() {
            v.bytes[..s.len()].copy_from_slice(s);
            v.len = s.len();
        }
        v
    }
}

impl std::ops::Deref for Vec8 {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

// SAFETY: every call goes to one allocator for the life of the process
// (`CHOICE` is set before the first block is handed out and never changes),
// and both allocators uphold `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for BySubcommand {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.fast() {
            mimalloc::MiMalloc.alloc(layout)
        } else {
            System.alloc(layout)
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.fast() {
            mimalloc::MiMalloc.alloc_zeroed(layout)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.fast() {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.fast() {
            mimalloc::MiMalloc.realloc(ptr, layout, new_size)
        } else {
            System.realloc(ptr, layout, new_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_control_plane_subcommands_get_mimalloc() {
        assert!(control_plane(b"server"));
        assert!(control_plane(b"dev"));
        for other in [
            &b"agent"[..],
            b"shim",
            b"apply",
            b"",
            b"servers",
            b"--server",
        ] {
            assert!(!control_plane(other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn the_first_argument_is_read_without_the_program_name() {
        // This test binary runs with the harness's arguments (or none).
        let expected = std::env::args_os().nth(1).unwrap_or_default();
        let expected = expected.as_encoded_bytes();
        if expected.len() <= 32 {
            assert_eq!(&*first_argument(), expected);
        }
    }
}
