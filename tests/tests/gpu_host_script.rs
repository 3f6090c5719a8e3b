//! `tests/gpu/run-on-gpu-host.sh`, the check for a machine with a real
//! NVIDIA GPU, can only run there; here its argument handling and its dry
//! run (tools, runc through its wrapper, and the image layer with the C
//! libraries nvidia-smi needs) are checked, so it does not rot unseen.

use std::process::{Command, Output};

use skiff_tests::*;

fn script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("tests/gpu/run-on-gpu-host.sh"))
        .args(args)
        .output()
        .expect("run the script")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_gpu_host_script_explains_its_arguments_and_refuses_bad_ones() {
    let help = script(&["--help"]);
    assert!(help.status.success());
    assert!(text(&help).contains("--prebuilt DIR"), "{}", text(&help));
    let none = script(&[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        text(&none).contains("give --prebuilt DIR or --build"),
        "{}",
        text(&none)
    );
    let both = script(&["--prebuilt", "/tmp", "--build"]);
    assert!(text(&both).contains("not both"), "{}", text(&both));
    let missing = script(&["--prebuilt", "/nonexistent/bundle", "--dry-run"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing).contains("/nonexistent/bundle is not a directory"),
        "{}",
        text(&missing)
    );
    let odd = script(&["--frobnicate"]);
    assert!(
        text(&odd).contains("unknown argument --frobnicate"),
        "{}",
        text(&odd)
    );
}

#[test]
fn the_gpu_host_script_dry_run_checks_a_prepared_directory() {
    require_container_host();
    let bundle = tempfile::tempdir().unwrap();
    let d = bundle.path();
    std::os::unix::fs::symlink(skiff_bin(), d.join("skiff")).unwrap();
    std::os::unix::fs::symlink(which("runc").unwrap(), d.join("runc")).unwrap();
    std::os::unix::fs::symlink(busybox_layout(), d.join("busybox")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = script(&[
        "--prebuilt",
        &d.display().to_string(),
        "--dry-run",
        "--out",
        &out.path().display().to_string(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("ok       runc runs: runc version"), "{t}");
    assert!(
        t.contains("dry run: everything the run needs is here"),
        "{t}"
    );
    // The image it would run: busybox plus one layer of C libraries.
    let index = std::fs::read_to_string(out.path().join("image/index.json")).unwrap();
    assert!(index.contains("\"latest\""), "{index}");

    // A directory without skiff is reported, and the dry run fails.
    std::fs::remove_file(d.join("skiff")).unwrap();
    let o = script(&["--prebuilt", &d.display().to_string(), "--dry-run"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("MISSING  skiff binary"), "{}", text(&o));
}
