//! `make run`'s sample step (`make sample`, what `make run` runs after the
//! build) against a real `skiff dev`: it fails, saying why, when the
//! sample's containers do not run.

use std::process::Command;

use skiff_tests::*;

#[test]
fn make_run_fails_showing_why_when_the_samples_containers_do_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_layout();
    let sample = tmp.path().join("hello.yaml");
    std::fs::write(
        &sample,
        format!(
            "name: hello\nreplicas: 2\ntask:\n  image: oci:{}:latest\n  command: [/no/such/program]\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
            layout.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let vars = [
        format!("SAMPLE={}", sample.display()),
        format!("DEV_DIR={}", tmp.path().join("dev").display()),
        format!("DEV_API=127.0.0.1:{port}"),
        format!(
            "DEV_FLAGS=--image-roots {}",
            layout.parent().unwrap().display()
        ),
    ];
    let make = |target: &str| {
        Command::new("make")
            .current_dir(repo_root())
            .args(["--no-print-directory", target])
            .args(&vars)
            .env_remove("SKIFF_CONFIG")
            .output()
            .expect("make runs")
    };
    let run = make("sample");
    let stop = make("stop");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        stop.status.success(),
        "make stop: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(!run.status.success(), "make run must fail:\n{out}\n{err}");
    assert!(
        out.contains("the sample's containers did not start"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("/no/such/program"),
        "the reason is shown:\n{out}"
    );
    assert!(out.contains("dev.log"), "{out}");
}
