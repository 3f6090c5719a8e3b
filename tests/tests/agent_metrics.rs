//! `GET /metrics` on an agent: what each allocation's cgroup used, its
//! restarts and OOM kills, container starts, and the GPUs under DCGM's
//! names with the job holding them (fake inventory); dcgm-exporter's
//! job-mapping files; the servers' service discovery listing the agent;
//! series gone with their allocation; clean under `promtool`.

use std::time::Duration;

use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::gpus::{test_uuid, FakeGpuHost, NVIDIA_MAJOR};
use skiff_tests::prom::{http_get, metrics_addr, promtool_check, sample, sample_with, scrape};
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// Two fake GPUs with live samples.
fn two_gpus(h: &FakeGpuHost) -> String {
    let mut yaml = h.common_yaml();
    yaml.push_str("gpus:\n");
    for i in 0..2u32 {
        let dev = h.device(&format!("nvidia{i}"), NVIDIA_MAJOR, i);
        yaml.push_str(&format!(
            "  - {{uuid: {}, model: NVIDIA H200, memory: 80Gi, index: {i}, device: {}, pci_bus_id: '00000000:0{i}:00.0', metrics: {{utilization: {}, memory_used: 10Gi, temperature: 50, power_watts: 250, ecc_corrected: 3}}}}\n",
            test_uuid(7, i),
            dev.display(),
            40 + i,
        ));
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_exports_its_allocations_gpus_and_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let host = FakeGpuHost::new();
    let file = host.write(&two_gpus(&host));
    let mapping = tmp.path().join("dcgm-jobs");
    let server = ServerProc::start(&tmp.path().join("server"));
    let (file_arg, mapping_arg) = (file.display().to_string(), mapping.display().to_string());
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "n1",
        &[
            "--fake-gpus",
            &file_arg,
            "--gpu-metrics-interval",
            "500ms",
            "--dcgm-job-mapping-dir",
            &mapping_arg,
        ],
    );
    let mut client = server.client().await;
    let addr = metrics_addr(&tmp.path().join("agent"));

    // The servers list the agent for Prometheus' service discovery, once
    // it registered.
    let server_metrics = metrics_addr(&tmp.path().join("server"));
    let (head, groups) = wait_for("the agent in the service discovery", START, || {
        let (head, sd) = http_get(&server_metrics, "/v1/sd/agents");
        async move {
            let groups: serde_json::Value = serde_json::from_str(&sd).ok()?;
            (!groups.as_array()?.is_empty()).then_some((head, groups))
        }
    })
    .await;
    assert!(head.contains("application/json"), "{head}");
    assert_eq!(groups[0]["targets"][0], addr.as_str(), "{groups}");
    assert_eq!(groups[0]["labels"]["node"], "n1", "{groups}");

    client
        .apply_job(&job_yaml("web", 1, "exec sleep 3600", ""))
        .await
        .unwrap();
    // OOM-killed at each run, started again a second later.
    client
        .apply_job(&job_yaml(
            "hog",
            1,
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
            "  restart: {policy: on-failure, backoff: {initial: 1s, max: 1s}}\n  resources: {cpu: 100m, memory: 16Mi}\n",
        ))
        .await
        .unwrap();
    let train = JobSpec::from_yaml(&format!(
        "name: train\ntask:\n  image: {}\n  command: [sh, -c, 'exec sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi, gpus: 1}}\n",
        busybox_image()
    ))
    .unwrap();
    client.apply_job(&train).await.unwrap();
    let web = wait_allocs(&mut client, "web", 1, AllocStatus::Running, START).await;
    let train = wait_allocs(&mut client, "train", 1, AllocStatus::Running, START).await;
    let web_id = web[0].id.clone();
    let gpu = train[0].gpus[0].clone();

    let body = wait_for("the OOM kills and restarts counted", START, || {
        let (_, body) = scrape(&addr);
        async move {
            let hog = [("job", "hog"), ("namespace", "default")];
            let ooms = sample_with(&body, "skiff_alloc_oom_kills_total", &hog)?;
            let restarts = sample_with(&body, "skiff_alloc_restarts_total", &hog)?;
            (ooms >= 1.0 && restarts >= 1.0).then_some(body)
        }
    })
    .await;
    let web_labels = [
        ("namespace", "default"),
        ("job", "web"),
        ("alloc", web_id.as_str()),
        ("task", "web"),
    ];
    let memory = sample_with(&body, "skiff_alloc_memory_working_set_bytes", &web_labels);
    assert!(memory.is_some_and(|m| m > 0.0), "{body}");
    assert!(
        sample_with(&body, "skiff_alloc_pids", &web_labels).is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        sample_with(&body, "skiff_alloc_cpu_seconds_total", &web_labels).is_some(),
        "{body}"
    );
    assert_eq!(
        sample_with(&body, "skiff_alloc_ready", &web_labels),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample_with(&body, "skiff_alloc_memory_request_bytes", &web_labels),
        Some(32.0 * 1024.0 * 1024.0),
        "{body}"
    );
    assert!(
        sample(&body, "skiff_container_start_duration_seconds_count").is_some_and(|n| n >= 3.0),
        "{body}"
    );

    // The GPUs, as dcgm-exporter names them, the held one with its job.
    let held = wait_for("the GPU samples", START, || {
        let (_, body) = scrape(&addr);
        let gpu = gpu.clone();
        async move {
            sample_with(
                &body,
                "DCGM_FI_DEV_GPU_UTIL",
                &[("UUID", &gpu), ("job", "train"), ("Hostname", "n1")],
            )
            .map(|v| (v, body))
        }
    })
    .await;
    let (util, body) = held;
    assert!(util == 40.0 || util == 41.0, "{body}");
    assert_eq!(
        sample_with(&body, "DCGM_FI_DEV_FB_USED", &[("UUID", &gpu)]),
        Some(10240.0),
        "{body}"
    );
    assert_eq!(
        sample_with(&body, "DCGM_FI_DEV_POWER_USAGE", &[("UUID", &gpu)]),
        Some(250.0),
        "{body}"
    );
    assert_eq!(
        sample_with(&body, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", &[("UUID", &gpu)]),
        Some(3.0),
        "{body}"
    );
    assert!(body.contains("# TYPE DCGM_FI_DEV_ECC_SBE_VOL_TOTAL counter"));
    // dcgm-exporter's job-mapping file for the held GPU's index.
    let index = if gpu == test_uuid(7, 0) { "0" } else { "1" };
    let other = if index == "0" { "1" } else { "0" };
    let read = |n: &str| std::fs::read_to_string(mapping.join(n)).unwrap_or_default();
    assert_eq!(read(index), "default/train\n");
    assert_eq!(read(other), "");

    // Skiff's own series pass Prometheus' linter (DCGM's camelCase labels
    // and counter names are dcgm-exporter's, kept on purpose).
    let ours: String = body
        .lines()
        .filter(|l| l.contains("skiff_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let said = promtool_check(&ours);
    assert!(said.is_empty(), "promtool: {said}");

    // Every series the shipped Grafana dashboard asks for is one a server
    // or this agent serves.
    let (_, server_body) = scrape(&metrics_addr(&tmp.path().join("server")));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/skiff-dashboard.json")).unwrap(),
    )
    .unwrap();
    let used = skiff_tests::prom::dashboard_metrics(&dashboard);
    assert!(used.len() > 20, "{used:?}");
    let unknown: Vec<&String> = used
        .iter()
        .filter(|n| {
            !skiff_tests::prom::serves(&body, n) && !skiff_tests::prom::serves(&server_body, n)
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard asks for series nobody serves: {unknown:?}"
    );

    // An allocation's series go with it.
    client.delete_job("web").await.unwrap();
    wait_for("the deleted allocation's series to go", START, || {
        let (_, body) = scrape(&addr);
        let gone = !body.contains(&web_id);
        async move { gone.then_some(()) }
    })
    .await;
    client.delete_job("train").await.unwrap();
    wait_for("the GPU's job-mapping file to empty", START, || {
        let empty = read(index).is_empty();
        async move { empty.then_some(()) }
    })
    .await;
    client.delete_job("hog").await.unwrap();
}

#[test]
fn skiff_dev_serves_its_server_and_agent_metrics_on_one_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = skiff_tests::dev::DevProc::start(&tmp.path().join("dev"), &[]);
    let addr = metrics_addr(&dev.data_dir.join("server"));
    let deadline = std::time::Instant::now() + START;
    let body = loop {
        let (_, body) = scrape(&addr);
        if body.contains("skiff_agent_build_info") {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(sample(&body, "skiff_raft_leader_known").is_some(), "{body}");
    assert_eq!(
        sample(&body, "skiff_agent_allocations"),
        Some(0.0),
        "{body}"
    );
    // The agent has no address of its own to discover.
    let (_, sd) = http_get(&addr, "/v1/sd/agents");
    assert_eq!(sd.trim(), "[]");
    let said = promtool_check(&body);
    assert!(said.is_empty(), "promtool: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skiff_top_shows_what_nodes_and_allocations_use_against_their_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let mut client = server.client().await;
    // Busy on a quarter core, holding some memory in its working set.
    client
        .apply_job(&job_yaml(
            "busy",
            1,
            "head -c 8m /dev/zero > /tmp/blob; cat /tmp/blob /tmp/blob > /dev/null; while :; do :; done",
            "",
        ))
        .await
        .unwrap();
    let busy = wait_allocs(&mut client, "busy", 1, AllocStatus::Running, START).await;
    let id = busy[0].id.clone();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = skiff(&server.url(), args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let alloc = wait_for("the allocation's use in skiff top", START, || {
        let all = json(&["top", "allocs", "-o", "json"]);
        let id = id.clone();
        async move {
            let a = all
                .as_array()?
                .iter()
                .find(|a| a["allocId"] == id.as_str())?;
            let cpu: u64 = a["cpuMillis"].as_str()?.parse().ok()?;
            (a["sampled"] == true && cpu > 20).then(|| a.clone())
        }
    })
    .await;
    let num = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // The job's default request is 100m; the loop uses what its quota
    // lets it (about that), never much more.
    assert_eq!(num(&alloc["cpuRequestedMillis"]), 100, "{alloc}");
    assert!(num(&alloc["cpuMillis"]) <= 200, "{alloc}");
    assert!(num(&alloc["memoryBytes"]) > 0, "{alloc}");
    assert_eq!(num(&alloc["memoryRequestedBytes"]), 32 << 20, "{alloc}");
    assert_eq!(alloc["job"], "busy");

    let nodes = json(&["top", "nodes", "-o", "json"]);
    let n = &nodes[0];
    assert_eq!(n["node"], "n1", "{nodes}");
    assert_eq!(num(&n["cpuRequestedMillis"]), 100, "{nodes}");
    assert!(num(&n["cpuMillis"]) > 0, "{nodes}");
    assert!(num(&n["memoryBytes"]) > 0, "{nodes}");
    assert!(n["ageMs"].is_string(), "reported: {nodes}");
    // The table names the columns a person reads.
    let table = skiff(&server.url(), &["top", "nodes"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("CPU%") && text.contains("MEMORY ASKED") && text.contains("n1"),
        "{text}"
    );
    let table = skiff(&server.url(), &["top", "allocs", "--job", "busy"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains(&id[..8]) && text.contains("100m"), "{text}");
    client.delete_job("busy").await.unwrap();
}
