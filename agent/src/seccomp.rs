//! The default seccomp profile: every system call is refused with `EPERM`
//! unless a rule below allows it.
//!
//! The allow list follows the shape of Docker's default profile: the
//! system calls ordinary programs need are allowed outright; the ones
//! that reach into the kernel's global state (mounts, namespaces, modules,
//! the clock, keyrings, BPF, reboot, ...) are allowed only when the
//! container holds the capability that guards them, so `cap_add` keeps
//! working; and `clone` may not create namespaces. The table is our own
//! data; [`profile`] flattens it into the OCI form for the final
//! capability set of one container.

use std::sync::Arc;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `errno` for refused calls.
const EPERM: u32 = 1;
/// `errno` for `clone3`, so C libraries fall back to `clone`, whose flags
/// the filter can inspect (`clone3` passes them in memory it cannot read).
const ENOSYS: u32 = 38;
/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `AF_VSOCK`: talks to the hypervisor, not the network.
const AF_VSOCK: u64 = 40;

/// What a rule does with the calls it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Errno(u32),
}

/// A condition on one argument of the call.
#[derive(Debug, Clone, Copy)]
enum Arg {
    /// `args[i] & mask == 0`.
    MaskedZero(usize, u64),
    /// `args[i] != v`.
    NotEqual(usize, u64),
    /// `args[i] == v`.
    Equal(usize, u64),
}

struct Rule {
    names: &'static [&'static str],
    verdict: Verdict,
    /// Every condition must hold (an empty list: always).
    args: &'static [Arg],
    /// Applies only when the container holds one of these capabilities
    /// (an empty list: always).
    with_caps: &'static [&'static str],
    /// Does not apply when the container holds one of these.
    without_caps: &'static [&'static str],
}

const fn allow(names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        verdict: Verdict::Allow,
        args: &[],
        with_caps: &[],
        without_caps: &[],
    }
}

const fn allow_with(cap: &'static [&'static str], names: &'static [&'static str]) -> Rule {
    Rule {
        names,
        verdict: Verdict::Allow,
        args: &[],
        with_caps: cap,
        without_caps: &[],
    }
}

/// System calls any program may make: files, memory, processes and
/// threads, signals, time, sockets, IPC, polling.
#[rustfmt::skip]
const ALWAYS: &[&str] = &[
    // files and directories
    "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range",
    "creat", "dup", "dup2", "dup3", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listxattr", "llistxattr", "_llseek",
    "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod",
    "mknodat", "name_to_handle_at", "newfstatat", "open", "openat", "openat2", "pread64",
    "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink",
    "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir",
    "sendfile", "sendfile64", "setxattr", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee", "truncate",
    "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64",
    "utimes", "vmsplice", "write", "writev",
    // asynchronous I/O
    "io_cancel", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "io_setup", "io_submit", "ioprio_get", "ioprio_set",
    // memory
    "brk", "cachestat", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mremap", "msync", "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "remap_file_pages",
    // processes and threads (clone is below, with its flags checked)
    "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "get_robust_list",
    "get_thread_area", "getcpu", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
    "getgid32", "getgroups", "getgroups32", "getpgid", "getpgrp", "getpid", "getppid",
    "getpriority", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "getrusage", "getsid", "gettid", "getuid", "getuid32", "kill", "pidfd_open",
    "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease", "process_vm_readv",
    "process_vm_writev", "ptrace", "rseq", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
    "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32",
    "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "setsid", "setuid", "setuid32",
    "tgkill", "tkill", "ugetrlimit", "uname", "vfork", "wait4", "waitid", "waitpid",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "arch_prctl",
    // signals
    "alarm", "pause", "restart_syscall", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4",
    "sigprocmask", "sigreturn",
    // time (reading it; setting it needs SYS_TIME)
    "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
    "getitimer", "gettimeofday", "nanosleep", "setitimer", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64",
    "timerfd_settime", "timerfd_settime64", "times",
    // sockets (socket itself is below, without AF_VSOCK)
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt",
    "listen", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "send", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    // System V and POSIX IPC
    "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "msgctl",
    "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    // waiting and polling
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "futex",
    "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake", "_newselect",
    "pipe", "pipe2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select",
    // odds and ends
    "getrandom", "ioctl", "sysinfo",
];

#[rustfmt::skip]
const RULES: &[Rule] = &[
    allow(ALWAYS),
    // Personas that only change how uname and addresses look.
    Rule {
        names: &["personality"],
        verdict: Verdict::Allow,
        args: &[Arg::Equal(0, 0x0)],
        with_caps: &[],
        without_caps: &[],
    },
    Rule {
        names: &["personality"],
        verdict: Verdict::Allow,
        args: &[Arg::Equal(0, 0x0008)],
        with_caps: &[],
        without_caps: &[],
    },
    Rule {
        names: &["personality"],
        verdict: Verdict::Allow,
        args: &[Arg::Equal(0, 0x20000)],
        with_caps: &[],
        without_caps: &[],
    },
    Rule {
        names: &["personality"],
        verdict: Verdict::Allow,
        args: &[Arg::Equal(0, 0x20008)],
        with_caps: &[],
        without_caps: &[],
    },
    Rule {
        names: &["personality"],
        verdict: Verdict::Allow,
        args: &[Arg::Equal(0, 0xffff_ffff)],
        with_caps: &[],
        without_caps: &[],
    },
    Rule {
        names: &["socket"],
        verdict: Verdict::Allow,
        args: &[Arg::NotEqual(0, AF_VSOCK)],
        with_caps: &[],
        without_caps: &[],
    },
    // New processes and threads, but no new namespaces...
    Rule {
        names: &["clone"],
        verdict: Verdict::Allow,
        args: &[Arg::MaskedZero(0, CLONE_NAMESPACE_FLAGS)],
        with_caps: &[],
        without_caps: &["SYS_ADMIN"],
    },
    Rule {
        names: &["clone3"],
        verdict: Verdict::Errno(ENOSYS),
        args: &[],
        with_caps: &[],
        without_caps: &["SYS_ADMIN"],
    },
    // ...unless the container may administer the system.
    allow_with(
        &["SYS_ADMIN"],
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
            "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
            "setns", "syslog", "umount", "umount2", "unshare", "swapon", "swapoff",
        ],
    ),
    allow_with(&["SYS_BOOT"], &["reboot"]),
    allow_with(&["SYS_CHROOT"], &["chroot"]),
    allow_with(
        &["SYS_MODULE"],
        &["delete_module", "init_module", "finit_module"],
    ),
    allow_with(&["SYS_PACCT"], &["acct"]),
    allow_with(
        &["SYS_PTRACE"],
        // kcmp compares other processes' kernel objects: Docker allows it
        // only with SYS_PTRACE too.
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    allow_with(&["SYS_RAWIO"], &["iopl", "ioperm"]),
    allow_with(
        &["SYS_TIME"],
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    allow_with(&["SYS_TTY_CONFIG"], &["vhangup"]),
    allow_with(
        &["SYS_NICE"],
        &[
            "get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node", "move_pages",
        ],
    ),
    allow_with(&["SYSLOG"], &["syslog"]),
    allow_with(&["BPF"], &["bpf"]),
    allow_with(&["PERFMON"], &["perf_event_open"]),
    allow_with(&["DAC_READ_SEARCH"], &["open_by_handle_at"]),
];

/// The architectures the filter covers on this build's machine: the
/// native one and the compat ones a native kernel also runs.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

fn rule_applies(rule: &Rule, caps: &[String]) -> bool {
    let holds = |list: &[&str]| list.iter().any(|c| caps.iter().any(|h| h == c));
    (rule.with_caps.is_empty() || holds(rule.with_caps)) && !holds(rule.without_caps)
}

fn to_oci(rule: &Rule) -> Result<LinuxSyscall, oci_spec::OciSpecError> {
    let mut b = LinuxSyscallBuilder::default()
        .names(rule.names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    b = match rule.verdict {
        Verdict::Allow => b.action(LinuxSeccompAction::ScmpActAllow),
        Verdict::Errno(e) => b.action(LinuxSeccompAction::ScmpActErrno).errno_ret(e),
    };
    if !rule.args.is_empty() {
        let args = rule
            .args
            .iter()
            .map(|a| {
                let (index, value, value_two, op) = match *a {
                    Arg::MaskedZero(i, mask) => {
                        (i, mask, Some(0u64), LinuxSeccompOperator::ScmpCmpMaskedEq)
                    }
                    Arg::NotEqual(i, v) => (i, v, None, LinuxSeccompOperator::ScmpCmpNe),
                    Arg::Equal(i, v) => (i, v, None, LinuxSeccompOperator::ScmpCmpEq),
                };
                let mut b = LinuxSeccompArgBuilder::default()
                    .index(index)
                    .value(value)
                    .op(op);
                if let Some(v2) = value_two {
                    b = b.value_two(v2);
                }
                b.build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        b = b.args(args);
    }
    b.build()
}

/// A profile and its JSON, made once and shared by every container
/// whose capabilities choose the same rules. Hundreds of syscall names:
/// a copy per start (and its serialisation) cost more than the rest of
/// the spec.
#[derive(Debug, PartialEq)]
pub struct Profile {
    pub oci: LinuxSeccomp,
    /// `oci` as `config.json` holds it.
    pub json: Vec<u8>,
}

/// The profiles built so far, by which of [`RULES`] apply: a container's
/// capabilities only choose among the rules, so nearly every container of
/// a node shares one profile, built once instead of at every start.
static BUILT: std::sync::Mutex<Vec<(Vec<bool>, Arc<Profile>)>> = std::sync::Mutex::new(Vec::new());

/// At most this many profiles kept (far fewer combinations are in use).
const KEPT: usize = 32;

/// The profile for a container holding `caps` (names without `CAP_`).
pub fn profile(caps: &[String]) -> Result<Arc<Profile>, oci_spec::OciSpecError> {
    let applies: Vec<bool> = RULES.iter().map(|r| rule_applies(r, caps)).collect();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(k, _)| *k == applies) {
        return Ok(p.clone());
    }
    let oci = build(&applies)?;
    let json = serde_json::to_vec(&oci)?;
    let p = Arc::new(Profile { oci, json });
    if built.len() < KEPT {
        built.push((applies, p.clone()));
    }
    Ok(p)
}

/// The profile with the rules `applies` marks.
fn build(applies: &[bool]) -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let syscalls = RULES
        .iter()
        .zip(applies)
        .filter(|(_, &a)| a)
        .map(|(r, _)| to_oci(r))
        .collect::<Result<Vec<_>, _>>()?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn allowed(p: &LinuxSeccomp) -> HashSet<String> {
        p.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    fn defaults() -> Vec<String> {
        skiff_model::lifecycle::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn the_default_profile_refuses_what_escapes_the_container() {
        let p = profile(&defaults()).unwrap();
        let p = &p.oci;
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        let allowed = allowed(p);
        for denied in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "init_module",
            "kexec_load",
            "reboot",
            "bpf",
            "keyctl",
            "add_key",
            "settimeofday",
            "open_by_handle_at",
            "userfaultfd",
            "pivot_root",
            "swapon",
        ] {
            assert!(!allowed.contains(denied), "{denied} must not be allowed");
        }
        for needed in [
            "read", "execve", "openat", "socket", "futex", "wait4", "chroot",
        ] {
            assert!(allowed.contains(needed), "{needed} must be allowed");
        }
        // clone is allowed only without namespace flags; clone3 says ENOSYS.
        let clone = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["clone".to_string()])
            .unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(
            (arg.value(), arg.value_two()),
            (CLONE_NAMESPACE_FLAGS, Some(0))
        );
        let clone3 = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|s| s.names() == &["clone3".to_string()])
            .unwrap();
        assert_eq!(clone3.errno_ret(), Some(ENOSYS));
    }

    #[test]
    fn added_capabilities_open_the_calls_they_guard() {
        let mut caps = defaults();
        caps.push("SYS_ADMIN".into());
        caps.push("SYS_TIME".into());
        let allowed = allowed(&profile(&caps).unwrap().oci);
        for call in ["mount", "unshare", "setns", "clone3", "settimeofday"] {
            assert!(allowed.contains(call), "{call} with SYS_ADMIN/SYS_TIME");
        }
        // Dropping SYS_CHROOT takes chroot away.
        let no_chroot: Vec<String> = defaults()
            .into_iter()
            .filter(|c| c != "SYS_CHROOT")
            .collect();
        assert!(!allowed_contains(&no_chroot, "chroot"));
    }

    #[test]
    fn kcmp_needs_sys_ptrace_as_in_dockers_profile() {
        assert!(!allowed_contains(&defaults(), "kcmp"));
        let mut caps = defaults();
        caps.push("SYS_PTRACE".into());
        assert!(allowed_contains(&caps, "kcmp"));
    }

    #[test]
    fn a_kept_profile_is_the_one_its_capabilities_would_build() {
        // Alternate between two capability sets: each answer is the
        // profile built afresh for its own set, never the other's.
        let mut admin = defaults();
        admin.push("SYS_ADMIN".into());
        for _ in 0..2 {
            for caps in [defaults(), admin.clone()] {
                let applies: Vec<bool> = RULES.iter().map(|r| rule_applies(r, &caps)).collect();
                assert_eq!(profile(&caps).unwrap().oci, build(&applies).unwrap());
            }
        }
        assert!(!allowed_contains(&defaults(), "mount"));
        assert!(allowed_contains(&admin, "mount"));
    }

    fn allowed_contains(caps: &[String], call: &str) -> bool {
        allowed(&profile(caps).unwrap().oci).contains(call)
    }

    #[test]
    fn no_call_is_listed_twice_in_the_base_list() {
        let mut seen = HashSet::new();
        for n in ALWAYS {
            assert!(seen.insert(*n), "{n} twice");
        }
    }
}
