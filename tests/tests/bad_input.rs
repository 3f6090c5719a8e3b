//! Bad input is refused with errors that name the field and the rule, and
//! nothing is stored.

use std::io::Write;
use std::process::Stdio;

use skiff_tests::*;

fn skiff(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = skiff_tests::skiff_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_every_broken_rule_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path());
    let url = server.url();
    let bad = "name: Bad_Name\nreplicas: 2\ntask:\n  image: oci:/img\n  imagee: typo\n  resources: {cpu: 250m, memory: 64Q}\n";
    let (code, _, err) = skiff(&["apply", "--server", &url, "-f", "-"], Some(bad));
    assert_eq!(code, 1, "{err}");
    for want in [
        "name: \"Bad_Name\" must be a DNS-1123 label",
        "task.imagee: unknown field",
        "task.resources.memory: \"64Q\" is not a quantity",
    ] {
        assert!(err.contains(want), "stderr lacks {want:?}:\n{err}");
    }
    let mut client = server.client().await;
    assert!(client.list_jobs().await.unwrap().is_empty());

    // The server applies the same rules to whatever arrives over gRPC.
    let mut spec = shell_job("wire", 1, "true");
    spec.name = "Not A Label".into();
    spec.task.resources.memory_bytes = 1;
    let err = client.apply_job(&spec).await.unwrap_err();
    assert_eq!(err.code(), Some(skiff_client::Code::InvalidArgument));
    let msg = err.to_string();
    assert!(msg.contains("name: \"Not A Label\""), "{msg}");
    assert!(
        msg.contains("task.resources.memory: 1 is below the minimum of 4Mi"),
        "{msg}"
    );
    assert!(client.list_jobs().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_flags_and_unknown_objects_get_clear_errors() {
    let (code, _, err) = skiff(&["get", "jobz"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand 'jobz'"), "{err}");
    let (code, _, err) = skiff(&["agent", "--stop-grace", "10"], None);
    assert_eq!(code, 2);
    assert!(err.contains("needs a unit"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path());
    let url = server.url();
    let (code, _, err) = skiff(&["delete", "job", "ghost", "--server", &url], None);
    assert_eq!(code, 1);
    assert!(err.contains("job \"ghost\" not found"), "{err}");
    let (code, _, err) = skiff(&["logs", "nope", "--server", &url], None);
    assert_eq!(code, 1);
    assert!(err.contains("allocation \"nope\" not found"), "{err}");
    // No server at all: say where we looked and what to do.
    let (code, _, err) = skiff(&["get", "jobs", "--server", "https://127.0.0.1:1"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the server at https://127.0.0.1:1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_api_port_does_not_hurt_the_server() {
    use std::io::{Read, Write as _};
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path());
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let _ = s.write_all(junk);
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    // Still serving, still the same process.
    let mut client = server.client().await;
    client
        .apply_job(&JobSpecExt::trivial("after-junk"))
        .await
        .unwrap();
    assert!(!server.log().contains("panicked"));
}

struct JobSpecExt;
impl JobSpecExt {
    fn trivial(name: &str) -> skiff_model::JobSpec {
        skiff_model::JobSpec::from_yaml(&format!(
            "name: {name}\nreplicas: 0\ntask: {{image: 'oci:/tmp/none'}}"
        ))
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_output_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(tmp.path());
    let mut child = skiff_tests::skiff_command()
        .args(["get", "jobs", "-o", "json", "--server", &server.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // like `| head -0`
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}
