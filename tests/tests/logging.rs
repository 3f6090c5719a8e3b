//! `--log-format json`: every line a daemon writes is one JSON object a
//! log collector can read, with its level, message and fields.

use std::time::Duration;

use skiff_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_logs_one_json_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("server");
    let server = ServerProc::start_with(&dir, "127.0.0.1:0", &["--log-format", "json"]);
    let mut client = server.client().await;
    client.list_nodes().await.unwrap();
    // The line saying where it serves, with its fields.
    let lines = wait_for("the serving line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        async move { text.contains("\"serving\"").then_some(text) }
    })
    .await;
    let mut seen = 0;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        if v["fields"]["message"] == "serving" {
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["fields"]["api"], server.addr.as_str(), "{line}");
            seen += 1;
        }
    }
    assert_eq!(seen, 1, "{lines}");
}
