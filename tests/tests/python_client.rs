//! The Python client (clients/python) as a client developer uses it: stubs
//! generated from proto/ by its generate.sh (protoc and gRPC's Python
//! plugin), then its end-to-end flow and the quickstart example of
//! docs/api.md, each run by a real Python against a real `skiff dev`.
//!
//! Python is /usr/bin/python3 (Debian's, with python3-grpcio and
//! python3-protobuf), else `python3` on PATH; SKIFF_PYTHON names another.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::dev::DevProc;
use skiff_tests::*;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_PYTHON") {
        return PathBuf::from(p);
    }
    let debian = Path::new("/usr/bin/python3");
    if debian.is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

fn client_dir() -> PathBuf {
    repo_root().join("clients/python")
}

/// Runs a Python script against `server_url`, with the credentials in
/// `config`, with its output (stdout and
/// stderr, in order) in a file; kills it after `limit`. Returns whether it
/// exited 0, and its output.
fn run_script(
    script: &Path,
    server_url: &str,
    config: &Path,
    log: &Path,
    limit: Duration,
) -> (bool, String) {
    let out = std::fs::File::create(log).expect("create the script's log");
    let mut child = Command::new(python())
        .arg(script)
        .env("PYTHONPATH", client_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("SKIFF_SERVER", server_url)
        .env("SKIFF_CONFIG", config)
        .env("SKIFF_IMAGE", busybox_image())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", python().display()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut output = std::fs::read_to_string(log).unwrap_or_default();
    if status.is_none() {
        output.push_str(&format!("\n[killed after {limit:?}]"));
    }
    (status.is_some_and(|s| s.success()), output)
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn the_python_client_applies_watches_pages_execs_and_reads_field_errors_against_skiff_dev() {
    require_container_host();
    let py = python();
    let probe = Command::new(&py)
        .args(["-c", "import grpc, google.protobuf"])
        .output()
        .unwrap_or_else(|e| panic!("{} does not run: {e}", py.display()));
    assert!(
        probe.status.success(),
        "{} lacks grpc or protobuf: run `make deps` (apt-get install python3-grpcio python3-protobuf), or set SKIFF_PYTHON\n{}",
        py.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let generated = Command::new("bash")
        .arg(client_dir().join("generate.sh"))
        .output()
        .expect("run generate.sh");
    assert!(
        generated.status.success(),
        "clients/python/generate.sh failed (make deps installs protobuf-compiler-grpc):\n{}{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );

    let tmp = tempfile::tempdir().unwrap();
    let dev = DevProc::start(&tmp.path().join("dev"), &["--stop-grace", "1s"]);
    for (script, limit, expect) in [
        (
            "examples/quickstart.py",
            Duration::from_secs(120),
            "after delete: NOT_FOUND",
        ),
        ("tests/test_e2e.py", Duration::from_secs(300), "PASSED"),
    ] {
        let started = Instant::now();
        let log = tmp.path().join(script.replace('/', "-") + ".log");
        let (ok, output) = run_script(
            &client_dir().join(script),
            &dev.url(),
            &dev.admin_conf(),
            &log,
            limit,
        );
        assert!(
            ok && output.contains(expect),
            "clients/python/{script} failed after {:?}; its output:\n{output}\n\nskiff dev's log (end):\n{}",
            started.elapsed(),
            tail(&dev.log(), 40)
        );
        eprintln!(
            "clients/python/{script}: passed in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn the_api_docs_show_the_python_quickstart_exactly_as_ci_runs_it() {
    let example = std::fs::read_to_string(client_dir().join("examples/quickstart.py")).unwrap();
    let docs = std::fs::read_to_string(repo_root().join("docs/api.md")).unwrap();
    let block = format!("```python\n{example}```\n");
    assert!(
        docs.contains(&block),
        "docs/api.md must show clients/python/examples/quickstart.py verbatim in a ```python block: copy the file into it"
    );
}
