//! The job files under `examples/` are valid, and the probes example runs
//! as its comments say.

use std::time::Duration;

use skiff_model::{AllocStatus, ImageRef, JobSpec};
use skiff_tests::*;

fn example(name: &str) -> JobSpec {
    let path = repo_root().join("examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    JobSpec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Example files that are not jobs (the agent reads them).
const NOT_JOBS: &[&str] = &["fake-gpus.yaml", "namespace.yaml", "queue.yaml"];

#[test]
fn every_example_is_a_valid_job() {
    let dir = repo_root().join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !NOT_JOBS.contains(&name.as_str()) {
            example(&name);
            n += 1;
        }
    }
    assert!(n >= 4, "examples found: {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_with_probes_example_becomes_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "example",
        &["--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    let mut spec = example("web-with-probes.yaml");
    spec.task.image = ImageRef::parse(&busybox_image()).unwrap();
    client.apply_job(&spec).await.unwrap();
    let allocs = wait_allocs(
        &mut client,
        "web",
        2,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    for a in allocs {
        let id = a.id.clone();
        wait_for("readiness", Duration::from_secs(60), || {
            let url = server.url();
            let id = id.clone();
            async move {
                let mut c = skiff_tests::connect(&url).await.ok()?;
                let all = c.list_allocs(Some("web"), None).await.ok()?;
                all.iter()
                    .any(|x| x.id == id && x.healthy == Some(true))
                    .then_some(())
            }
        })
        .await;
    }
}
