//! `GET /metrics` on a server: the Prometheus text format, counting what
//! the test did (a node registered, an allocation running, the calls it
//! made), clean under
//! Prometheus' own linter (`promtool check metrics`), and only on
//! loopback for now.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use skiff_tests::*;

/// `GET /metrics` from `addr`: the response's head and body.
fn scrape(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels as written).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_exports_what_happened_in_prometheus_format() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let mut client = server.client().await;
    let addr = std::fs::read_to_string(tmp.path().join("server/metrics.addr")).unwrap();
    let addr = addr.trim().to_string();
    let (head, body) = scrape(&addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(
        sample(&body, "skiff_raft_leader_known"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "skiff_allocations{status=\"running\"}"),
        Some(0.0)
    );

    client
        .apply_job(&job_yaml("web", 1, "exec sleep 3600", ""))
        .await
        .unwrap();
    wait_allocs(
        &mut client,
        "web",
        1,
        skiff_model::AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    let body = wait_for(
        "the running allocation counted",
        Duration::from_secs(10),
        || {
            let (_, body) = scrape(&addr);
            async move {
                (sample(&body, "skiff_allocations{status=\"running\"}") == Some(1.0))
                    .then_some(body)
            }
        },
    )
    .await;
    assert_eq!(
        sample(&body, "skiff_nodes{status=\"ready\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "skiff_jobs{type=\"service\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(sample(&body, "skiff_raft_applied_index").unwrap() > 0.0);
    // The calls it answered: the apply, by method and code, and timed.
    assert_eq!(
        sample(
            &body,
            "skiff_grpc_requests_total{method=\"Cluster/ApplyJob\",code=\"OK\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "skiff_grpc_request_duration_seconds_count{method=\"Cluster/ApplyJob\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "skiff_grpc_requests_total{method=\"NodeApi/Register\",code=\"OK\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "the agent's registration: {body}"
    );

    // Prometheus' linter: names, HELP, types.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
    client.delete_job("web").await.unwrap();
}

#[test]
fn a_metrics_address_off_loopback_is_refused_for_now() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(skiff_bin())
        .args([
            "server",
            "--api",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
        ])
        .args(["--metrics-addr", "0.0.0.0:7710", "--data-dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--metrics-addr 0.0.0.0:7710: only a loopback address"),
        "{err}"
    );
}

/// A process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `query` asked of Prometheus' HTTP API at `addr`: the first result's
/// value, if any.
fn prom_query(addr: &str, query: &str) -> Option<String> {
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(v["data"]["result"][0]["value"][1].as_str()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_server_with_the_shipped_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let mut client = server.client().await;
    let target = std::fs::read_to_string(tmp.path().join("server/metrics.addr")).unwrap();
    let target = target.trim();
    // deploy/prometheus/prometheus.yml, aimed at this server, scraping
    // often.
    let shipped =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let config = shipped
        .replace("127.0.0.1:7710", target)
        .replace("scrape_interval: 15s", "scrape_interval: 500ms");
    assert!(
        config.contains(target) && config.contains("500ms"),
        "{config}"
    );
    let config_path = tmp.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--web.listen-address={web}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (apt-get install prometheus)"),
    );
    // The server is up for Prometheus.
    wait_for(
        "Prometheus to scrape the server",
        Duration::from_secs(60),
        || {
            let up = prom_query(&web, "up{job=\"skiff-servers\"}");
            async move { (up.as_deref() == Some("1")).then_some(()) }
        },
    )
    .await;
    // And what the test does shows in what Prometheus stored.
    client
        .apply_job(&job_yaml("web", 1, "exec sleep 3600", ""))
        .await
        .unwrap();
    wait_for(
        "a running allocation in Prometheus",
        Duration::from_secs(60),
        || {
            let n = prom_query(&web, "skiff_allocations{status=\"running\"}");
            async move { (n.as_deref() == Some("1")).then_some(()) }
        },
    )
    .await;
    client.delete_job("web").await.unwrap();
}
