//! `GET /metrics` on a server: the Prometheus text format, counting what
//! the test did (a node registered, an allocation running, the calls it
//! made), clean under
//! Prometheus' own linter (`promtool check metrics`), and only on
//! loopback for now.

use std::process::Command;
use std::time::Duration;

use skiff_tests::prom::{metrics_addr, promtool_check, sample, scrape, Prometheus};
use skiff_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_exports_what_happened_in_prometheus_format() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let mut client = server.client().await;
    let addr = metrics_addr(&tmp.path().join("server"));
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
                (sample(&body, "skiff_allocations{status=\"running\"}") == Some(1.0)
                    && sample(&body, "skiff_heartbeats_received_total").unwrap_or(0.0) >= 1.0)
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
    // The writes, the scheduler's work and the node's heartbeats.
    for (series, at_least) in [
        ("skiff_raft_proposals_total{result=\"ok\"}", 2.0),
        ("skiff_raft_proposal_duration_seconds_count", 2.0),
        ("skiff_scheduler_placements_total", 1.0),
        ("skiff_scheduler_evaluation_duration_seconds_count", 1.0),
        ("skiff_heartbeats_received_total", 1.0),
        ("skiff_raft_leader_changes_total", 0.0),
        ("skiff_nodes_declared_down_total", 0.0),
        ("skiff_raft_log_bytes", 1.0),
        ("skiff_state_db_bytes", 1.0),
        ("skiff_state_saves_total", 0.0),
    ] {
        assert!(
            sample(&body, series).is_some_and(|v| v >= at_least),
            "{series} >= {at_least} in:\n{body}"
        );
    }
    assert!(
        sample(&body, "skiff_rollouts{state=\"running\"}").is_some(),
        "{body}"
    );
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
    let said = promtool_check(&body);
    assert!(said.is_empty(), "promtool: {said}");
    client.delete_job("web").await.unwrap();
}

#[test]
fn metrics_off_loopback_are_refused_without_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(skiff_bin())
        .args([
            "server",
            "--insecure",
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
        err.contains("--metrics-addr 0.0.0.0:7710") && err.contains("--insecure"),
        "{err}"
    );
    let out = Command::new(skiff_bin())
        .args(["agent", "--insecure", "--metrics-addr", "0.0.0.0:7712"])
        .args(["--server", "http://127.0.0.1:9", "--data-dir"])
        .arg(tmp.path().join("agent"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--metrics-addr 0.0.0.0:7712") && err.contains("--insecure"),
        "{err}"
    );
}

/// `skiff user create NAME --role ROLE` then `skiff user token NAME`: the
/// token.
fn user_token(url: &str, dir: &std::path::Path, name: &str, role: &str) -> String {
    let made = skiff_command()
        .args([
            "user", "create", name, "--role", role, "--server", url, "--out",
        ])
        .arg(dir.join(format!("{name}.conf")))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // The hint it prints is one the role may follow.
    let said = String::from_utf8_lossy(&made.stdout);
    if role == "metrics" {
        assert!(said.contains("skiff user token"), "{said}");
        assert!(!said.contains("skiff get jobs"), "{said}");
    }
    let out = skiff_command()
        .args(["user", "token", name, "--ttl", "1h", "--server", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_servers_and_agents_serve_https_to_a_metrics_token_only() {
    let tmp = tempfile::tempdir().unwrap();
    // Bound to every address (so: HTTPS with a token), reached on loopback.
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &["--metrics-addr", "0.0.0.0:0"],
    );
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "n1",
        &["--metrics-addr", "0.0.0.0:0"],
    );
    let on_loopback = |dir: &str| {
        let bound = metrics_addr(&tmp.path().join(dir));
        format!("127.0.0.1:{}", bound.rsplit(':').next().unwrap())
    };
    let target = on_loopback("server");
    let agent_target = on_loopback("agent");
    // Plain HTTP gets nothing: the listeners speak TLS.
    for t in [&target, &agent_target] {
        let plain = std::panic::catch_unwind(|| scrape(t));
        assert!(plain.is_err(), "a plain GET of {t} was answered: {plain:?}");
    }

    let url = server.url();
    let prom = user_token(&url, tmp.path(), "prom", "metrics");
    let viewer = user_token(&url, tmp.path(), "vera", "viewer");
    // A metrics token calls nothing on the API.
    let conf = tmp.path().join("prom-token.conf");
    let out = skiff_command()
        .args([
            "user", "token", "prom", "--ttl", "1h", "--server", &url, "--out",
        ])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let denied = skiff_command()
        .env("SKIFF_CONFIG", &conf)
        .args(["get", "jobs"])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("may not"),
        "{denied:?}"
    );

    // Prometheus over HTTPS (checking the servers' name, and the name
    // every agent's certificate carries): with the metrics token it
    // scrapes; with a viewer's token, or none, it is refused.
    let ca = tmp.path().join("server/tls/ca.crt");
    let job = |name: &str, target: &str, server_name: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| {
            format!("    authorization: {{credentials: \"{t}\"}}\n")
        });
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config: {{ca_file: \"{}\", server_name: {server_name}}}\n{auth}    static_configs:\n      - targets: [\"{target}\"]\n",
            ca.display()
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 500ms\nscrape_configs:\n{}{}{}{}{}",
        job("with-metrics-token", &target, "server.skiff", Some(&prom)),
        job("with-viewer-token", &target, "server.skiff", Some(&viewer)),
        job("without-token", &target, "server.skiff", None),
        job(
            "agent-with-metrics-token",
            &agent_target,
            "agent.skiff",
            Some(&prom)
        ),
        job(
            "agent-with-viewer-token",
            &agent_target,
            "agent.skiff",
            Some(&viewer)
        ),
    );
    let prometheus = Prometheus::start(tmp.path(), &config);
    let up = wait_for("the five jobs scraped", Duration::from_secs(60), || {
        let up = prometheus.query("up");
        async move { (up.len() == 5).then_some(up) }
    })
    .await;
    let of = |job: &str| {
        up.iter()
            .find(|(l, _)| l["job"] == job)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for job in ["with-metrics-token", "agent-with-metrics-token"] {
        wait_for(
            "the metrics token's scrapes up",
            Duration::from_secs(30),
            || {
                let v = prometheus.value(&format!("up{{job=\"{job}\"}}"));
                async move { (v.as_deref() == Some("1")).then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(of("with-viewer-token"), "0", "{up:?}");
    assert_eq!(of("agent-with-viewer-token"), "0", "{up:?}");
    assert_eq!(of("without-token"), "0", "{up:?}");
    assert!(
        prometheus
            .value("skiff_raft_leader_known{job=\"with-metrics-token\"}")
            .is_some(),
        "the series are stored"
    );
    assert!(
        prometheus
            .value("skiff_agent_allocations{job=\"agent-with-metrics-token\"}")
            .is_some(),
        "the agent's series are stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_server_and_its_agents_with_the_shipped_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let mut client = server.client().await;
    let target = metrics_addr(&tmp.path().join("server"));
    let agent_target = metrics_addr(&tmp.path().join("agent"));
    // deploy/prometheus/prometheus.yml, aimed at this server, scraping
    // and discovering often.
    let shipped =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let config = shipped
        .replace("127.0.0.1:7710", &target)
        .replace("scrape_interval: 15s", "scrape_interval: 500ms")
        .replace("refresh_interval: 30s", "refresh_interval: 1s");
    assert!(
        config.contains(&format!("http://{target}/v1/sd/agents")) && config.contains("500ms"),
        "{config}"
    );
    let prometheus = Prometheus::start(tmp.path(), &config);
    // The server and the agent it lists are up for Prometheus.
    let up = wait_for(
        "Prometheus to scrape the server and the agent",
        Duration::from_secs(60),
        || {
            let up = prometheus.query("up");
            async move { (up.len() == 2 && up.iter().all(|(_, v)| v == "1")).then_some(up) }
        },
    )
    .await;
    let agent_up = up
        .iter()
        .find(|(l, _)| l["job"] == "skiff-agents")
        .unwrap_or_else(|| panic!("{up:?}"));
    assert_eq!(agent_up.0["instance"], agent_target.as_str(), "{up:?}");
    assert_eq!(agent_up.0["node"], "n1", "{up:?}");
    // And what the test does shows in what Prometheus stored: a running
    // allocation on the server's side, a crash's restart on the agent's.
    client
        .apply_job(&job_yaml("web", 1, "exec sleep 3600", ""))
        .await
        .unwrap();
    client
        .apply_job(&job_yaml(
            "crash",
            1,
            "sleep 1; exit 3",
            "  restart: {policy: on-failure, backoff: {initial: 1s, max: 1s}}\n",
        ))
        .await
        .unwrap();
    wait_for(
        "a running allocation in Prometheus",
        Duration::from_secs(60),
        || {
            let n = prometheus.value("skiff_allocations{status=\"running\"}");
            async move { (n.as_deref() == Some("2")).then_some(()) }
        },
    )
    .await;
    wait_for(
        "the crash's restarts in Prometheus",
        Duration::from_secs(60),
        || {
            let n = prometheus.value("skiff_alloc_restarts_total{job=\"crash\",node=\"n1\"}");
            async move { n.filter(|n| n.parse::<f64>().is_ok_and(|n| n >= 1.0)) }
        },
    )
    .await;
    client.delete_job("web").await.unwrap();
    client.delete_job("crash").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_skiff_dev_and_a_three_server_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = skiff_tests::dev::DevProc::start(&tmp.path().join("dev"), &[]);
    let cluster =
        skiff_tests::cluster::ServerCluster::start(&tmp.path().join("servers"), 3, &[]).await;
    let leader = cluster.leader(Duration::from_secs(60)).await;
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &cluster.urls().join(","),
        "n1",
        &[],
    );
    let dev_target = metrics_addr(&dev.data_dir.join("server"));
    let servers: Vec<String> = (1..=3)
        .map(|i| metrics_addr(&cluster.root.join(format!("s{i}"))))
        .collect();
    // The shipped configuration with one line per server (the dev's and
    // the cluster's) and the service discovery of every cluster server.
    let shipped =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/prometheus.yml")).unwrap();
    let targets: Vec<String> = std::iter::once(dev_target.clone())
        .chain(servers.iter().cloned())
        .map(|t| format!("\"{t}\""))
        .collect();
    let sd: String = servers
        .iter()
        .map(|s| format!("      - url: http://{s}/v1/sd/agents\n        refresh_interval: 1s\n"))
        .collect();
    let config = shipped
        .replace(
            "- targets: [\"127.0.0.1:7710\"]",
            &format!("- targets: [{}]", targets.join(", ")),
        )
        .replace(
            "      - url: http://127.0.0.1:7710/v1/sd/agents\n        refresh_interval: 30s\n",
            &sd,
        )
        .replace("scrape_interval: 15s", "scrape_interval: 500ms");
    assert!(
        config.contains(&servers[2]) && config.contains(&format!("http://{}/v1/sd", servers[1])),
        "{config}"
    );
    let prometheus = Prometheus::start(tmp.path(), &config);
    // Five targets up: the dev, three servers, and the agent the cluster's
    // servers list (once, however many of them list it).
    let up = wait_for("every target up", Duration::from_secs(90), || {
        let up = prometheus.query("up");
        async move { (up.len() == 5 && up.iter().all(|(_, v)| v == "1")).then_some(up) }
    })
    .await;
    assert_eq!(
        up.iter()
            .filter(|(l, _)| l["job"] == "skiff-agents")
            .count(),
        1,
        "{up:?}"
    );
    // One leader among the cluster's servers, seen by Prometheus; the dev
    // leads itself.
    let leaders = wait_for("the leaders in Prometheus", Duration::from_secs(30), || {
        let l = prometheus.query("skiff_raft_leader == 1");
        async move { (l.len() == 2).then_some(l) }
    })
    .await;
    let leader_target = &servers[leader];
    assert!(
        leaders
            .iter()
            .any(|(l, _)| l["instance"] == leader_target.as_str()),
        "{leaders:?}"
    );
    // The dev's agent series come through its one address.
    wait_for("the dev agent's series", Duration::from_secs(30), || {
        let n = prometheus.value(&format!(
            "skiff_agent_allocations{{instance=\"{dev_target}\"}}"
        ));
        async move { n.map(|_| ()) }
    })
    .await;
    // A write moves every cluster server's applied index past where it was.
    let before: f64 = prometheus
        .value(&format!(
            "skiff_raft_applied_index{{instance=\"{}\"}}",
            servers[0]
        ))
        .unwrap()
        .parse()
        .unwrap();
    let mut client = skiff_tests::connect(&cluster.url(leader)).await.unwrap();
    client
        .apply_job(&job_yaml("web", 1, "exec sleep 3600", ""))
        .await
        .unwrap();
    wait_for(
        "the write in every server's applied index",
        Duration::from_secs(60),
        || {
            let moved = servers.iter().all(|s| {
                prometheus
                    .value(&format!("skiff_raft_applied_index{{instance=\"{s}\"}}"))
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > before)
            });
            async move { moved.then_some(()) }
        },
    )
    .await;
    client.delete_job("web").await.unwrap();
}
