//! Shell completion: a TAB runs `SKIFF_COMPLETE=<shell> skiff -- WORDS`,
//! which offers job, node and allocation names read from a real server,
//! and nothing, at once and without an error, when no server answers.
//! The bash script is also run in a real bash, as a TAB would run it.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use skiff_model::AllocStatus;
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// What a TAB after `words` offers, as fish asks for it (the last word is
/// the one being completed): the values, without their descriptions.
fn tab(server_url: &str, words: &[&str]) -> (Vec<String>, Output) {
    let out = skiff_tests::skiff_command()
        .arg("--")
        .arg("skiff")
        .args(words)
        .env("SKIFF_COMPLETE", "fish")
        .env("SKIFF_SERVER", server_url)
        .output()
        .expect("run skiff");
    let values = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect();
    (values, out)
}

fn assert_offers(server_url: &str, words: &[&str], want: &str) {
    let (values, out) = tab(server_url, words);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{words:?}: {out:?}"
    );
    assert!(
        values.iter().any(|v| v == want),
        "a TAB after {words:?} offers {values:?}, not {want:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_offers_the_clusters_job_node_and_allocation_names() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "tab-node",
        &["--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    client
        .apply_job(&job_yaml("tabbed", 1, "sleep 3600", ""))
        .await
        .unwrap();
    let allocs = wait_allocs(&mut client, "tabbed", 1, AllocStatus::Running, START).await;
    let short = allocs[0].short_id().to_string();
    let url = server.url();

    for words in [
        &["describe", "job", ""][..],
        &["delete", "job", "t"],
        &["rollout", "status", ""],
        &["scale", ""],
        &["get", "allocs", "--job", ""],
    ] {
        assert_offers(&url, words, "tabbed");
    }
    for words in [
        &["describe", "node", ""][..],
        &["node", "drain", "tab"],
        &["cordon", ""],
        &["node", "gpu", "reset", ""],
    ] {
        assert_offers(&url, words, "tab-node");
    }
    assert_offers(&url, &["logs", ""], &short);
    assert_offers(&url, &["exec", &short[..3]], &short);
    // What `skiff get allocs` shows is what `skiff logs` takes.
    let logs = skiff(&url, &["logs", &short]);
    assert!(logs.status.success(), "{logs:?}");

    // A prefix narrows the names; --server on the line wins over SKIFF_SERVER.
    let (values, _) = tab(&url, &["describe", "job", "x"]);
    assert!(values.is_empty(), "{values:?}");
    let (values, out) = tab(
        "http://127.0.0.1:1",
        &["describe", "job", "--server", &url, "ta"],
    );
    assert_eq!(values, ["tabbed"], "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_in_bash_fills_compreply_with_the_job_name() {
    let Some(bash) = which("bash") else {
        eprintln!("skipped: bash is not installed, so the bash script cannot be run");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let mut client = server.client().await;
    client
        .apply_job(&job_yaml("bashed", 1, "sleep 3600", ""))
        .await
        .unwrap();
    let script = skiff(&server.url(), &["completion", "bash"]);
    assert!(script.status.success(), "{script:?}");
    let script_file = tmp.path().join("skiff.bash");
    std::fs::write(&script_file, &script.stdout).unwrap();

    // As bash calls a completion function: the command, the word being
    // completed and the one before it; COMP_WORDS and COMP_CWORD set.
    let out = Command::new(bash)
        .arg("-c")
        .arg(
            r#"source "$1" || exit 3
            COMP_WORDS=(skiff describe job ba); COMP_CWORD=3; COMP_TYPE=9
            _clap_complete_skiff skiff ba job
            printf '%s\n' "${COMPREPLY[@]}""#,
        )
        .arg("bash")
        .arg(&script_file)
        .env("SKIFF_SERVER", server.url())
        .env("SKIFF_CONFIG", &test_pki().admin_conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert_eq!(reply.lines().collect::<Vec<_>>(), ["bashed"], "{out:?}");
}

#[test]
fn with_no_server_a_tab_offers_no_names_and_returns_quickly_with_exit_0() {
    // A port nothing listens on, and one that takes connections but never
    // answers: the first fails at once, the second is cut at 2 s.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    for (url, limit) in [
        (&closed, Duration::from_secs(1)),
        (&silent_url, Duration::from_secs(4)),
    ] {
        for words in [
            &["describe", "job", "w"][..],
            &["node", "cordon", "n"],
            &["logs", "3f"],
        ] {
            let started = Instant::now();
            let (values, out) = tab(url, words);
            let took = started.elapsed();
            assert!(out.status.success(), "{url} {words:?}: {out:?}");
            assert!(
                values.is_empty() && out.stderr.is_empty(),
                "{url} {words:?}: {out:?}"
            );
            assert!(took < limit, "{url} {words:?} took {took:?}");
        }
    }
}
