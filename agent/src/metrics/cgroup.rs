//! What a container uses, read from its cgroup: cpu time, memory working
//! set and processes, on cgroup v2 (one hierarchy) or v1 (one per
//! controller), whichever the host has.
//!
//! The working set is what the kernel could not take back without
//! writing to disk: usage minus the inactive file cache (the figure
//! kubelet and `kubectl top` use, and what the OOM killer weighs).

use std::path::Path;

/// A container's use at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in seconds.
    pub cpu_seconds: f64,
    /// Memory in use minus the inactive file cache, in bytes.
    pub memory_working_set_bytes: u64,
    /// Processes (and threads) in the cgroup.
    pub pids: u64,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `cpu.stat`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The use of the cgroup at `cgroup` (a container's `linux.cgroupsPath`,
/// `/skiff/skiff-ID`) under the hierarchies mounted at `root`; `None`
/// when it has no cgroup there (the container is gone).
pub fn usage(root: &Path, cgroup: &str) -> Option<Usage> {
    let rel = cgroup.trim_start_matches('/');
    let v2 = root.join(rel);
    if v2.join("cgroup.procs").is_file() && v2.join("memory.current").is_file() {
        let current = read_u64(&v2.join("memory.current")).unwrap_or(0);
        let inactive = keyed(&v2.join("memory.stat"), "inactive_file").unwrap_or(0);
        return Some(Usage {
            cpu_seconds: keyed(&v2.join("cpu.stat"), "usage_usec").unwrap_or(0) as f64 / 1e6,
            memory_working_set_bytes: current.saturating_sub(inactive),
            pids: read_u64(&v2.join("pids.current")).unwrap_or(0),
        });
    }
    let memory = root.join("memory").join(rel);
    let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
    let inactive = keyed(&memory.join("memory.stat"), "total_inactive_file").unwrap_or(0);
    let cpu_ns = ["cpuacct", "cpu,cpuacct", "cpu"]
        .iter()
        .find_map(|c| read_u64(&root.join(c).join(rel).join("cpuacct.usage")))
        .unwrap_or(0);
    Some(Usage {
        cpu_seconds: cpu_ns as f64 / 1e9,
        memory_working_set_bytes: usage.saturating_sub(inactive),
        pids: read_u64(&root.join("pids").join(rel).join("pids.current")).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn use_is_read_from_cgroup_v2() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("skiff/skiff-a");
        write(&g.join("cgroup.procs"), "42\n");
        write(&g.join("memory.current"), "10485760\n");
        write(
            &g.join("memory.stat"),
            "anon 100\ninactive_file 2097152\nactive_file 5\n",
        );
        write(
            &g.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        );
        write(&g.join("pids.current"), "3\n");
        let u = usage(d.path(), "/skiff/skiff-a").unwrap();
        assert_eq!(u.cpu_seconds, 2.5);
        assert_eq!(u.memory_working_set_bytes, 8 * 1024 * 1024);
        assert_eq!(u.pids, 3);
    }

    #[test]
    fn use_is_read_from_cgroup_v1_controllers() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            &r.join("memory/skiff/skiff-a/memory.usage_in_bytes"),
            "4096\n",
        );
        write(
            &r.join("memory/skiff/skiff-a/memory.stat"),
            "cache 10\ntotal_inactive_file 1024\n",
        );
        write(
            &r.join("cpuacct/skiff/skiff-a/cpuacct.usage"),
            "1500000000\n",
        );
        write(&r.join("pids/skiff/skiff-a/pids.current"), "7\n");
        let u = usage(r, "/skiff/skiff-a").unwrap();
        assert_eq!(u.cpu_seconds, 1.5);
        assert_eq!(u.memory_working_set_bytes, 3072);
        assert_eq!(u.pids, 7);
        assert_eq!(usage(r, "/skiff/skiff-gone"), None);
    }
}
