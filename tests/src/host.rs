//! What the machine shows the tests: its processes and mount points.

use std::path::{Path, PathBuf};

/// Every process this test can see: its pid and the words of its command
/// line.
pub fn processes() -> Vec<(i32, Vec<String>)> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let words = cmdline
                .split(|&b| b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            Some((pid, words))
        })
        .collect()
}

/// Mount points under `dir` and their file system types, from the
/// kernel's mount table.
pub fn mounts_under(dir: &Path) -> Vec<(PathBuf, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = PathBuf::from(*fields.get(4)?);
            let (_, rest) = l.split_once(" - ")?;
            let mut r = rest.split(' ');
            let fstype = r.next()?.to_string();
            let options = r.nth(1).unwrap_or_default().to_string();
            // The agent's namespace directory is a bind mount of itself
            // that stays while it runs (the namespaces in it are listed).
            let ns_dir = point.ends_with("network/netns");
            (point.starts_with(dir) && !ns_dir).then_some((point, fstype, options))
        })
        .collect()
}
