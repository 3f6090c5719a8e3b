//! The systemd units in `deploy/systemd/` are valid (systemd's own
//! `systemd-analyze verify` finds nothing to say), run `skiff` with flags
//! it takes, and keep what the agent needs to outlive its restarts.

use std::process::Command;

use skiff_tests::*;

/// `(file name, text)` of every unit.
fn units() -> Vec<(String, String)> {
    let dir = repo_root().join("deploy/systemd");
    let mut units: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".service"))
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n)).unwrap();
            (n, text)
        })
        .collect();
    units.sort();
    units
}

#[test]
fn the_units_verify_and_start_skiff_with_flags_it_takes() {
    let units = units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["skiff-agent.service", "skiff-server.service"]);
    let tmp = tempfile::tempdir().unwrap();
    let bin = skiff_bin();
    for (name, text) in &units {
        // Pointed at this build's binary (verify checks it is there).
        let local = text.replace("/usr/local/bin/skiff", &bin.display().to_string());
        let path = tmp.path().join(name);
        std::fs::write(&path, &local).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (apt-get install systemd)");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
        // The flags of its command line (the operator's own from the
        // environment file left out) are ones skiff takes.
        let exec = local
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name} has no ExecStart"));
        let args: Vec<&str> = exec
            .split_whitespace()
            .skip(1)
            .filter(|a| !a.starts_with('$'))
            .chain(["--help"])
            .collect();
        let out = Command::new(&bin).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: skiff {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Restarting the agent leaves the containers' monitors alone.
    let agent = &units[0].1;
    for line in ["KillMode=process", "Delegate=yes", "Restart=on-failure"] {
        assert!(
            agent.lines().any(|l| l == line),
            "skiff-agent.service: {line}"
        );
    }
}
