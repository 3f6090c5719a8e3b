//! GPUs end to end, with the fake inventory (`skiff agent --fake-gpus`),
//! a real server, real agents and real runc containers: exact allocation
//! and injection, no double-booking, model and MIG requests, NVLink pairs,
//! CDI specs, health with its quiet period and operator resets, and live
//! metrics in `skiff get nodes -o wide` and `skiff describe node`.

use std::time::Duration;

use skiff_client::Client;
use skiff_model::{AllocStatus, Allocation, JobSpec};
use skiff_tests::gpus::{test_uuid, FakeGpuHost, NVIDIA_MAJOR};
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);
const A100: &str = "NVIDIA A100-SXM4-80GB";
const T4: &str = "Tesla T4";

/// Runs the `skiff` binary against `url`; returns stdout, failing the test
/// when the command fails.
fn skiff_ok(url: &str, args: &[&str]) -> String {
    let out = skiff(url, args);
    assert!(
        out.status.success(),
        "skiff {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A job running `script` in busybox with `resources` (a YAML flow map).
fn gpu_job(name: &str, resources: &str, script: &str) -> JobSpec {
    let yaml = format!(
        "name: {name}\ntask:\n  image: {}\n  command: [sh, -c, {}]\n  resources: {resources}\n",
        busybox_image(),
        serde_json::to_string(script).unwrap()
    );
    JobSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// Waits until the job's latest evaluation is blocked; returns its message.
async fn blocked_reason(client: &mut Client, job: &str) -> String {
    let deadline = std::time::Instant::now() + START;
    loop {
        if let Ok(d) = client.get_job(job).await {
            if let Some(e) = d.latest_eval.filter(|e| e.status == "blocked") {
                return e.message;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{job} never waited for GPUs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node`'s GPU `uuid` satisfies `pred`; returns the node's GPUs.
async fn wait_gpu(
    client: &mut Client,
    node: &str,
    uuid: &str,
    what: &str,
    pred: impl Fn(&skiff_model::Gpu) -> bool,
) -> Vec<skiff_model::Gpu> {
    let deadline = std::time::Instant::now() + START;
    loop {
        let nodes = client.list_nodes().await.unwrap_or_default();
        if let Some(n) = nodes.iter().find(|n| n.node.name == node) {
            if n.node.gpus.iter().any(|g| g.uuid == uuid && pred(g)) {
                return n.node.gpus.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {uuid} on {node}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the job's output holds `marker`; returns the output.
async fn output_with(client: &mut Client, alloc: &Allocation, marker: &str) -> String {
    let deadline = std::time::Instant::now() + START;
    loop {
        let out = stdout_of(client, &alloc.id).await;
        if out.contains(marker) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {marker} in {}'s output: {out}",
            alloc.job
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of `NAME=value` lines in a container's output.
fn var<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{name} not in output:\n{out}"))
}

/// Four GPUs; only GPU 1 and GPU 2 are NVLink-connected, the others meet
/// across the system, so a scheduler that ignored topology would take the
/// lowest positions (0 and 1) instead.
fn four_gpu_node(h: &FakeGpuHost) -> String {
    let mut yaml = h.common_yaml();
    yaml.push_str("gpus:\n");
    for i in 0..4u32 {
        let dev = h.device(&format!("nvidia{i}"), NVIDIA_MAJOR, i);
        yaml.push_str(&format!(
            "  - {{uuid: {}, model: {A100}, memory: 80Gi, index: {i}, device: {}, compute_capability: '8.0', pcie_generation: 4, pcie_width: 16, power_limit_watts: 400, metrics: {{utilization: {}, memory_used: 10Gi, temperature: {}, power_watts: 100}}}}\n",
            test_uuid(1, i),
            dev.display(),
            20 + i,
            40 + i,
        ));
    }
    yaml.push_str(&format!(
        "links:\n  - {{a: {}, b: {}, level: nvlink}}\n",
        test_uuid(1, 1),
        test_uuid(1, 2)
    ));
    yaml
}

/// What the container reports about the GPUs it was given.
const SHOW_GPUS: &str = "echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; \
    echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; \
    echo DEVICES=$(cd /dev && ls -d nvidia* | tr '\\n' ' '); \
    nvidia-smi -L; \
    (echo x > /usr/local/nvidia/bin/nvidia-smi) 2>/dev/null && echo DRIVER=writable || echo DRIVER=read-only; \
    for d in /dev/nvidia[0-9]*; do cat $d >/dev/null 2>/tmp/err; echo OPEN $d $(cat /tmp/err); done; \
    mknod /dev/other c 195 3 && cat /dev/other >/dev/null 2>/tmp/err; echo OPEN-OTHER $(cat /tmp/err); \
    echo DONE; sleep 3600";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gpu_job_gets_an_nvlink_pair_exactly_its_devices_and_no_gpu_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let host = FakeGpuHost::new();
    let file = host.write(&four_gpu_node(&host));
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let file_arg = file.display().to_string();
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &url,
        "gpu-node",
        &["--fake-gpus", &file_arg, "--gpu-metrics-interval", "500ms"],
    );
    let mut client = server.client().await;

    let pair = gpu_job("pair", "{cpu: 100m, memory: 32Mi, gpus: 2}", SHOW_GPUS);
    client.apply_job(&pair).await.unwrap();
    let a = wait_allocs(&mut client, "pair", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    // Two distinct GPUs, and the NVLink-connected pair.
    let mut got = a.gpus.clone();
    got.sort();
    assert_eq!(got, [test_uuid(1, 1), test_uuid(1, 2)], "{:?}", a.gpus);

    let out = output_with(&mut client, &a, "DONE").await;
    let list = a.gpus.join(",");
    assert_eq!(var(&out, "NVIDIA_VISIBLE_DEVICES"), list);
    assert_eq!(var(&out, "CUDA_VISIBLE_DEVICES"), list);
    // Exactly its two GPU nodes, plus the driver's control nodes.
    assert_eq!(
        var(&out, "DEVICES").trim(),
        "nvidia-uvm nvidia1 nvidia2 nvidiactl",
        "{out}"
    );
    assert!(out.contains("GPU 1: stand-in (/dev/nvidia1)"), "{out}");
    assert_eq!(out.matches("stand-in").count(), 2, "{out}");
    assert_eq!(var(&out, "DRIVER"), "read-only");
    // The device cgroup lets it open its own GPUs (the open reaches the
    // kernel, which has no NVIDIA driver here) and no other GPU, even one
    // it makes itself.
    assert!(
        out.contains("OPEN /dev/nvidia1 cat: can't open '/dev/nvidia1': No such device or address"),
        "{out}"
    );
    assert!(
        out.contains("OPEN-OTHER cat: can't open '/dev/other': Operation not permitted"),
        "{out}"
    );

    // The other two GPUs go to the next job; a third finds none left.
    let rest = gpu_job("rest", "{cpu: 100m, memory: 32Mi, gpus: 2}", "sleep 3600");
    client.apply_job(&rest).await.unwrap();
    let b = wait_allocs(&mut client, "rest", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    let mut got = b.gpus.clone();
    got.sort();
    assert_eq!(got, [test_uuid(1, 0), test_uuid(1, 3)]);
    let more = gpu_job("more", "{cpu: 100m, memory: 32Mi, gpus: 1}", "sleep 3600");
    client.apply_job(&more).await.unwrap();
    let why = blocked_reason(&mut client, "more").await;
    assert!(why.ends_with("0/1 nodes: 1 insufficient gpu"), "{why}");

    // Live metrics reach `get nodes -o wide` and `describe node`.
    let wide = wait_for("GPU metrics in get nodes -o wide", START, || {
        let url = url.clone();
        async move {
            let out = skiff_ok(&url, &["get", "nodes", "-o", "wide"]);
            out.contains("21%").then_some(out)
        }
    })
    .await;
    assert!(wide.contains("4/4"), "{wide}");
    assert!(wide.contains(&format!("4 {A100} (80Gi)")), "{wide}");
    assert!(wide.contains("4 ok"), "{wide}");
    assert!(wide.contains("40Gi/320Gi"), "{wide}");
    assert!(wide.contains("43C"), "{wide}");
    assert!(wide.contains("400W"), "{wide}");
    let described = skiff_ok(&url, &["describe", "node", "gpu-node"]);
    assert!(
        described.contains("GPU driver:  550.54.15 (CUDA 12.4)"),
        "{described}"
    );
    assert!(described.contains("gen4 x16"), "{described}");
    assert!(described.contains("GPU usage"), "{described}");
    assert!(
        described.contains(&format!("{} ({})", a.short_id(), "pair")),
        "{described}"
    );
    assert!(described.contains("NV"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_and_mig_requests_pick_the_right_node_and_cdi_specs_are_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();

    // Node "t4s": two T4s, injected through a CDI spec.
    let t4 = FakeGpuHost::new();
    let mut yaml = t4.common_yaml();
    yaml.push_str("gpus:\n");
    for i in 0..2u32 {
        let dev = t4.device(&format!("nvidia{i}"), NVIDIA_MAJOR, i);
        yaml.push_str(&format!(
            "  - {{uuid: {}, model: {T4}, memory: 16Gi, device: {}}}\n",
            test_uuid(2, i),
            dev.display()
        ));
    }
    let t4_file = t4.write(&yaml);
    let cdi = tmp.path().join("cdi");
    std::fs::create_dir_all(&cdi).unwrap();
    std::fs::write(
        cdi.join("nvidia.yaml"),
        format!(
            "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n\
             - name: {}\n  containerEdits:\n    deviceNodes: [{{path: /dev/nvidia0, type: c, major: 195, minor: 0}}]\n    env: [FROM_CDI=gpu0]\n\
             - name: \"1\"\n  containerEdits:\n    deviceNodes: [{{path: /dev/nvidia1, type: c, major: 195, minor: 1}}]\n    env: [FROM_CDI=gpu1]\n\
             containerEdits:\n  env: [NVIDIA_VISIBLE_DEVICES=void, CDI_SPEC=used]\n  deviceNodes: [{{path: /dev/nvidiactl, type: c, major: 195, minor: 255}}]\n",
            test_uuid(2, 0)
        ),
    )
    .unwrap();

    // Node "a100s": one whole A100 and one in MIG mode with two 3g.40gb
    // instances.
    let a100 = FakeGpuHost::new();
    let mut yaml = a100.common_yaml();
    let d0 = a100.device("nvidia0", NVIDIA_MAJOR, 0);
    let d1 = a100.device("nvidia1", NVIDIA_MAJOR, 1);
    let caps: Vec<_> = [21u32, 22, 30, 31]
        .iter()
        .map(|m| a100.device(&format!("nvidia-caps/nvidia-cap{m}"), 236, *m))
        .collect();
    yaml.push_str(&format!(
        "gpus:\n  - {{uuid: {}, model: {A100}, memory: 80Gi, device: {}}}\n\
         \x20 - uuid: {}\n    model: {A100}\n    memory: 80Gi\n    device: {}\n    mig:\n\
         \x20     - {{uuid: MIG-a, profile: 3g.40gb, memory: 40Gi, caps: [{}, {}]}}\n\
         \x20     - {{uuid: MIG-b, profile: 3g.40gb, memory: 40Gi, caps: [{}, {}]}}\n",
        test_uuid(3, 0),
        d0.display(),
        test_uuid(3, 1),
        d1.display(),
        caps[0].display(),
        caps[1].display(),
        caps[2].display(),
        caps[3].display(),
    ));
    let a100_file = a100.write(&yaml);

    let (t4_arg, a100_arg, cdi_arg) = (
        t4_file.display().to_string(),
        a100_file.display().to_string(),
        cdi.display().to_string(),
    );
    let _t4_agent = AgentProc::start(
        &tmp.path().join("t4"),
        &url,
        "t4s",
        &["--fake-gpus", &t4_arg, "--cdi-dirs", &cdi_arg],
    );
    let _a100_agent = AgentProc::start(
        &tmp.path().join("a100"),
        &url,
        "a100s",
        &["--fake-gpus", &a100_arg],
    );
    let mut client = server.client().await;
    let deadline = std::time::Instant::now() + START;
    while client.list_nodes().await.unwrap_or_default().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "both GPU nodes register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A model filter picks the node with that model.
    let show = "echo CDI_SPEC=$CDI_SPEC; echo FROM_CDI=$FROM_CDI; \
        echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; \
        echo DEVICES=$(cd /dev && ls -d nvidia* nvidia-caps/* 2>/dev/null | grep -vx nvidia-caps | tr '\\n' ' '); echo DONE; sleep 3600";
    let on_a100 = gpu_job(
        "on-a100",
        &format!("{{cpu: 100m, memory: 32Mi, gpus: 1, gpu: {{model: {A100}}}}}"),
        show,
    );
    client.apply_job(&on_a100).await.unwrap();
    let a = wait_allocs(&mut client, "on-a100", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    assert_eq!(a.node, "a100s");
    // The GPU in MIG mode is not a whole GPU to give out.
    assert_eq!(a.gpus, [test_uuid(3, 0)]);
    let out = output_with(&mut client, &a, "DONE").await;
    assert_eq!(var(&out, "CDI_SPEC"), "", "no CDI on this node");
    assert_eq!(var(&out, "DEVICES").trim(), "nvidia-uvm nvidia0 nvidiactl");

    let on_t4 = gpu_job(
        "on-t4",
        &format!("{{cpu: 100m, memory: 32Mi, gpus: 2, gpu: {{model: {T4}}}}}"),
        show,
    );
    client.apply_job(&on_t4).await.unwrap();
    let t = wait_allocs(&mut client, "on-t4", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    assert_eq!(t.node, "t4s");
    let out = output_with(&mut client, &t, "DONE").await;
    // The CDI spec's edits: found by UUID for GPU 0, by index for GPU 1;
    // Skiff's own variable wins over the spec's `void`.
    assert_eq!(var(&out, "CDI_SPEC"), "used");
    assert_eq!(
        var(&out, "FROM_CDI"),
        "gpu1",
        "the later device's edit wins"
    );
    assert_eq!(var(&out, "NVIDIA_VISIBLE_DEVICES"), t.gpus.join(","));
    assert_eq!(var(&out, "DEVICES").trim(), "nvidia0 nvidia1 nvidiactl");

    // A MIG request gets an instance, its GPU's node and its capabilities.
    let mig = gpu_job(
        "mig",
        "{cpu: 100m, memory: 32Mi, gpus: 1, gpu: {mig: 3g.40gb}}",
        show,
    );
    client.apply_job(&mig).await.unwrap();
    let m = wait_allocs(&mut client, "mig", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    assert_eq!(m.node, "a100s");
    assert!(m.gpus == ["MIG-a"] || m.gpus == ["MIG-b"], "{:?}", m.gpus);
    let out = output_with(&mut client, &m, "DONE").await;
    assert_eq!(var(&out, "NVIDIA_VISIBLE_DEVICES"), m.gpus[0]);
    let want = if m.gpus[0] == "MIG-a" {
        "nvidia-caps/nvidia-cap21 nvidia-caps/nvidia-cap22 nvidia-uvm nvidia1 nvidiactl"
    } else {
        "nvidia-caps/nvidia-cap30 nvidia-caps/nvidia-cap31 nvidia-uvm nvidia1 nvidiactl"
    };
    assert_eq!(var(&out, "DEVICES").trim(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_that_fell_off_the_bus_is_not_offered_until_its_quiet_period_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let host = FakeGpuHost::new();
    let node_yaml = |lost: bool| {
        let mut yaml = host.common_yaml();
        yaml.push_str("gpus:\n");
        for i in 0..2u32 {
            let dev = host.path(&format!("nvidia{i}"));
            yaml.push_str(&format!(
                "  - {{uuid: {}, model: {A100}, memory: 80Gi, device: {}, lost: {}}}\n",
                test_uuid(4, i),
                dev.display(),
                lost && i == 1,
            ));
        }
        yaml
    };
    for i in 0..2 {
        host.device(&format!("nvidia{i}"), NVIDIA_MAJOR, i);
    }
    let file = host.write(&node_yaml(false));
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let file_arg = file.display().to_string();
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &url,
        "flaky",
        &[
            "--fake-gpus",
            &file_arg,
            "--gpu-metrics-interval",
            "200ms",
            "--gpu-quiet-period",
            "3s",
        ],
    );
    let mut client = server.client().await;

    // One GPU in use; then the other falls off the bus.
    let first = gpu_job("first", "{cpu: 100m, memory: 32Mi, gpus: 1}", "sleep 3600");
    client.apply_job(&first).await.unwrap();
    let a = wait_allocs(&mut client, "first", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    assert_eq!(a.gpus, [test_uuid(4, 0)]);
    host.write(&node_yaml(true));
    wait_gpu(&mut client, "flaky", &test_uuid(4, 1), "unhealthy", |g| {
        !g.healthy && g.health_reason == "fell off the bus"
    })
    .await;
    let nodes = client.list_nodes().await.unwrap();
    assert_eq!(
        nodes[0].node.allocatable.gpus, 1,
        "only the healthy GPU counts"
    );

    // It is not offered: a new job waits, even after a quiet period's
    // length, because the GPU keeps failing its samples.
    let second = gpu_job("second", "{cpu: 100m, memory: 32Mi, gpus: 1}", "sleep 3600");
    client.apply_job(&second).await.unwrap();
    let why = blocked_reason(&mut client, "second").await;
    assert!(why.ends_with("0/1 nodes: 1 insufficient gpu"), "{why}");
    // Wait for the agent to have sampled the GPUs again after a whole quiet
    // period since the fault was seen (samples travel with heartbeats; the
    // server keeps when the latest came). The monitor forgets quiet GPUs
    // right after each sample, so a GPU wrongly forgiven would have been
    // registered healthy, and the job placed, by then. The margin covers
    // one sampling interval (200 ms) and the heartbeat carrying it.
    let quiet_over =
        std::time::Instant::now() + Duration::from_secs(3) + Duration::from_millis(500);
    wait_for("GPU samples from after the quiet period", START, || {
        let mut c = client.clone();
        async move {
            let nodes = c.list_nodes().await.ok()?;
            let n = nodes.into_iter().find(|n| n.node.name == "flaky")?;
            let came = std::time::Instant::now().checked_sub(n.gpu_metrics_age?)?;
            (came > quiet_over).then_some(())
        }
    })
    .await;
    assert!(
        client.get_job("second").await.unwrap().allocs.is_empty(),
        "a GPU that is still lost stays unhealthy"
    );
    let gpus = client.list_nodes().await.unwrap()[0].node.gpus.clone();
    assert!(!gpus[1].healthy);

    // Back on the bus: healthy again once the quiet period has passed
    // without a new fault, and the waiting job gets it.
    host.write(&node_yaml(false));
    let back = std::time::Instant::now();
    wait_gpu(
        &mut client,
        "flaky",
        &test_uuid(4, 1),
        "healthy again",
        |g| g.healthy,
    )
    .await;
    assert!(
        back.elapsed() >= Duration::from_secs(2),
        "healthy again after {:?}, before the quiet period could pass",
        back.elapsed()
    );
    let b = wait_allocs(&mut client, "second", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    assert_eq!(b.gpus, [test_uuid(4, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_xids_flag_the_allocation_and_an_operator_reset_heals_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let host = FakeGpuHost::new();
    let mut yaml = host.common_yaml();
    yaml.push_str("gpus:\n");
    for i in 0..2u32 {
        let dev = host.device(&format!("nvidia{i}"), NVIDIA_MAJOR, i);
        yaml.push_str(&format!(
            "  - {{uuid: {}, model: {A100}, memory: 80Gi, device: {}}}\n",
            test_uuid(5, i),
            dev.display()
        ));
    }
    let file = host.write(&yaml);
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let file_arg = file.display().to_string();
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &url,
        "xid-node",
        &["--fake-gpus", &file_arg, "--gpu-quiet-period", "10m"],
    );
    let mut client = server.client().await;
    let job = gpu_job(
        "trainer",
        "{cpu: 100m, memory: 32Mi, gpus: 1}",
        "sleep 3600",
    );
    client.apply_job(&job).await.unwrap();
    let a = wait_allocs(&mut client, "trainer", 1, AllocStatus::Running, START)
        .await
        .remove(0);
    let held = a.gpus[0].clone();
    let free = if held == test_uuid(5, 0) {
        test_uuid(5, 1)
    } else {
        test_uuid(5, 0)
    };

    // An application XID on the free GPU changes nothing; a critical one
    // on the held GPU, written after it, makes that GPU unhealthy.
    host.inject(&format!(r#"{{"kind":"xid","gpu":"{free}","xid":13}}"#));
    host.inject(&format!(r#"{{"kind":"xid","gpu":"{held}","xid":79}}"#));
    let gpus = wait_gpu(&mut client, "xid-node", &held, "unhealthy", |g| !g.healthy).await;
    let sick = gpus.iter().find(|g| g.uuid == held).unwrap();
    assert_eq!(sick.health_reason, "XID 79: fell off the bus");
    assert!(gpus.iter().find(|g| g.uuid == free).unwrap().healthy);

    // The allocation on it is flagged, and keeps running.
    let flagged = wait_alloc(&mut client, "trainer", "flagged", START, |a| {
        !a.unhealthy_gpus.is_empty()
    })
    .await;
    assert_eq!(
        flagged.unhealthy_gpus,
        [format!("{held}: XID 79: fell off the bus")]
    );
    assert_eq!(flagged.status, AllocStatus::Running);
    let listed = skiff_ok(&url, &["get", "allocs", "--job", "trainer"]);
    assert!(listed.contains("GPU unhealthy:"), "{listed}");

    // The operator checked the GPU: a reset makes it healthy at once, long
    // before its 10-minute quiet period. A UUID prefix that names both
    // GPUs is refused.
    let both = skiff(&url, &["node", "gpu", "reset", "xid-node", &held[..12]]);
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("matches several GPUs"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    let out = skiff_ok(&url, &["node", "gpu", "reset", "xid-node", &held]);
    assert_eq!(
        out,
        format!("node/xid-node gpu {held} reset (was unhealthy: XID 79: fell off the bus)\n")
    );
    let nodes = client.list_nodes().await.unwrap();
    let g = nodes[0].node.gpus.iter().find(|g| g.uuid == held).unwrap();
    assert!(g.healthy, "healthy as soon as the reset answers");
    let cleared = wait_alloc(&mut client, "trainer", "flag cleared", START, |a| {
        a.unhealthy_gpus.is_empty()
    })
    .await;
    assert_eq!(cleared.status, AllocStatus::Running);

    // Resetting a GPU the node does not have says so.
    let bad = skiff(&url, &["node", "gpu", "reset", "xid-node", "GPU-nope"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("node xid-node has no GPU \"GPU-nope\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_samples_sent_to_one_server_are_seen_from_another() {
    let tmp = tempfile::tempdir().unwrap();
    let host = FakeGpuHost::new();
    let file = host.write(&four_gpu_node(&host));
    let file_arg = file.display().to_string();
    let cluster =
        skiff_tests::cluster::ServerCluster::start(&tmp.path().join("servers"), 3, &[]).await;
    let leader = cluster.leader(START).await;
    // The agent talks to one follower; the question goes to the other.
    let (to, asked) = ((leader + 1) % 3, (leader + 2) % 3);
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &cluster.url(to),
        "gpu-node",
        &["--fake-gpus", &file_arg, "--gpu-metrics-interval", "500ms"],
    );
    let url = cluster.url(asked);
    let node = wait_for("the other follower to show the GPU samples", START, || {
        let url = url.clone();
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let n = c.list_nodes().await.ok()?.into_iter().next()?;
            (n.gpu_metrics.len() == 4 && n.heartbeat_age.is_some()).then_some(n)
        }
    })
    .await;
    let mut temps: Vec<u32> = node.gpu_metrics.iter().map(|m| m.temperature_c).collect();
    temps.sort();
    assert_eq!(temps, [40, 41, 42, 43]);
    let wide = skiff_ok(&url, &["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("43C"), "{wide}");
}
