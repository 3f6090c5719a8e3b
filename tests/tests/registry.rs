//! The test registry the image work stands on (Debian's docker-registry,
//! seeded by skopeo from umoci layouts), plain and with TLS and basic
//! auth, and registry references normalised as Docker does naming what
//! it serves.

use std::process::Command;
use std::time::Duration;

use skiff_agent::image::grants::Asker;
use skiff_model::registry_ref::RegistryRef;
use skiff_tests::registry::{self, Registry, RegistryOpts};
use skiff_tests::*;

#[test]
fn a_plain_registry_serves_one_image_under_two_tags_and_by_digest() {
    let layout = busybox_layout();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let v1 = r.push(layout, "team/busybox", "v1");
    let v2 = r.push(layout, "team/busybox", "v2");
    assert!(v1.starts_with("sha256:"), "{v1}");
    assert_eq!(v1, v2, "one image under two tags");
    let by_tag = RegistryRef::parse(&format!("{}/team/busybox:v1", r.addr)).unwrap();
    assert_eq!(by_tag.registry, r.addr);
    assert_eq!(r.digest(&by_tag.to_string()).unwrap(), v1);
    let mut by_digest = by_tag.pinned(&v1);
    by_digest.tag = None;
    assert_eq!(r.digest(&by_digest.to_string()).unwrap(), v1);
    let missing = r
        .digest(&format!("{}/team/busybox:nope", r.addr))
        .unwrap_err();
    assert!(missing.contains("manifest unknown"), "{missing}");
}

#[test]
fn a_tls_registry_with_basic_auth_takes_its_user_and_refuses_others() {
    let layout = busybox_layout();
    let r = Registry::start(RegistryOpts {
        tls: true,
        user: Some(("ana".into(), "s3cret".into())),
    });
    let digest = r.push(layout, "busybox", "latest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    let ca_dir = r
        .ca_file
        .as_ref()
        .unwrap()
        .parent()
        .unwrap()
        .join("certs.d");
    let with = |creds: &str| {
        Command::new("skopeo")
            .args(["inspect", "--format", "{{.Digest}}"])
            .arg(format!("--cert-dir={}", ca_dir.display()))
            .arg(format!("--creds={creds}"))
            .arg(format!("docker://{}/busybox:latest", r.addr))
            .output()
            .unwrap()
    };
    let wrong = with("ana:wrong");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let right = with("ana:s3cret");
    assert_eq!(String::from_utf8_lossy(&right.stdout).trim(), digest);
    // Without the test CA the certificate is not trusted.
    let untrusted = Command::new("skopeo")
        .args(["inspect", "--creds=ana:s3cret"])
        .arg(format!("docker://{}/busybox:latest", r.addr))
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
}

/// Registry access that speaks plain HTTP to `addr`.
fn insecure_access(addr: &str) -> std::sync::Arc<skiff_registry::RegistryAccess> {
    std::sync::Arc::new(
        skiff_registry::RegistryAccess::load(&skiff_registry::AccessConfig {
            insecure: vec![addr.to_string()],
            ..Default::default()
        })
        .unwrap(),
    )
}

fn blobs_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_pulls_by_tag_and_by_digest_into_one_content_store_and_unpacks_it() {
    use skiff_agent::image::registry::Puller;
    let layout = busybox_layout();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let digest = r.push(layout, "team/busybox", "v1");
    r.push(layout, "team/busybox", "v2");
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    let puller = Puller::new(&content, insecure_access(&r.addr)).unwrap();
    let v1 = RegistryRef::parse(&format!("{}/team/busybox:v1", r.addr)).unwrap();
    let top = puller
        .pull(&v1, Default::default(), &Asker::node())
        .await
        .unwrap();
    assert_eq!(top.digest().to_string(), digest);
    let kept = blobs_in(&content);
    assert!(kept >= 3, "manifest, config and a layer: {kept}");
    // The same image under another tag, and by digest: nothing new.
    let v2 = RegistryRef::parse(&format!("{}/team/busybox:v2", r.addr)).unwrap();
    puller
        .pull(&v2, Default::default(), &Asker::node())
        .await
        .unwrap();
    let mut pinned = v1.pinned(&digest);
    pinned.tag = None;
    assert_eq!(
        puller
            .pull(&pinned, Default::default(), &Asker::node())
            .await
            .unwrap()
            .digest()
            .to_string(),
        digest
    );
    assert_eq!(blobs_in(&content), kept, "stored once, shared");
    // What was pulled unpacks like any layout: busybox is there.
    let store = skiff_agent::image::ImageStore::new(tmp.path().join("images"));
    let prepared = store.unpack(&puller.source().unwrap(), &top).unwrap();
    assert!(
        prepared.rootfs.join("bin/busybox").is_file() || prepared.rootfs.join("bin/sh").exists()
    );
    // A tag that is not there: the error names the registry and the reference.
    let missing = RegistryRef::parse(&format!("{}/team/busybox:nope", r.addr)).unwrap();
    let e = puller
        .pull(&missing, Default::default(), &Asker::node())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&r.addr) && e.contains("team/busybox:nope"),
        "{e}"
    );
    // Without --insecure-registry the plain registry is not spoken to
    // over HTTP.
    let strict = Puller::new(&tmp.path().join("strict"), Default::default()).unwrap();
    assert!(strict
        .pull(&v1, Default::default(), &Asker::node())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_an_image_pulled_by_tag_and_by_digest_from_a_registry() {
    use skiff_model::{AllocStatus, JobSpec};
    let layout = busybox_layout();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let digest = r.push(layout, "team/busybox", "v1");
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let _agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "puller",
        &["--insecure-registry", &r.addr, "--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    for (name, image) in [
        ("by-tag", format!("{}/team/busybox:v1", r.addr)),
        ("by-digest", format!("{}/team/busybox@{digest}", r.addr)),
    ] {
        let spec = JobSpec::from_yaml(&format!(
            "name: {name}\ntask:\n  image: {image}\n  command: [sh, -c, 'echo pulled; sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi}}\n"
        ))
        .unwrap();
        client.apply_job(&spec).await.unwrap();
        let a = wait_allocs(
            &mut client,
            name,
            1,
            AllocStatus::Running,
            Duration::from_secs(60),
        )
        .await
        .remove(0);
        let out = client
            .exec(
                &a.id,
                &["sh".into(), "-c".into(), "echo $((6*7))".into()],
                None,
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    }
    // One content store on the node, the blobs once.
    let blobs = blobs_in(&agent_dir.join("images/content"));
    assert!(blobs >= 3, "{blobs}");
    // A tag the registry does not have: the allocation fails, saying so.
    let spec = JobSpec::from_yaml(&format!(
        "name: missing\ntask:\n  image: {}/team/busybox:nope\n  restart: {{policy: never}}\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        r.addr
    ))
    .unwrap();
    client.apply_job(&spec).await.unwrap();
    let failed = wait_alloc(
        &mut client,
        "missing",
        "the pull to fail",
        Duration::from_secs(60),
        |a| a.status == AllocStatus::Failed,
    )
    .await;
    assert!(
        failed.message.contains("team/busybox:nope") && failed.message.contains(&r.addr),
        "{}",
        failed.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_tries_again_while_the_registry_is_unreachable_and_not_when_it_refuses() {
    use skiff_agent::image::registry::Puller;
    let layout = busybox_layout();
    let mut registry = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let digest = registry.push(layout, "team/busybox", "v1");
    let addr = registry.addr.clone();
    registry.stop();
    let tmp = tempfile::tempdir().unwrap();
    let puller = Puller::new(&tmp.path().join("content"), insecure_access(&addr)).unwrap();
    let image = RegistryRef::parse(&format!("{addr}/team/busybox:v1")).unwrap();
    // The registry is back a second after the pull began (its tries span
    // 3.5 s of back-off).
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        registry.restart();
        registry
    });
    let began = std::time::Instant::now();
    let pulled = puller
        .pull(&image, Default::default(), &Asker::node())
        .await;
    let registry = back.join().unwrap();
    let top =
        pulled.unwrap_or_else(|e| panic!("after {:?}: {e}\n{}", began.elapsed(), registry.log()));
    assert_eq!(top.digest().to_string(), digest);
    assert!(
        began.elapsed() >= Duration::from_millis(900),
        "it waited for the registry"
    );
    // A refusal (the tag is not there) is answered at once, not retried.
    let missing = RegistryRef::parse(&format!("{addr}/team/busybox:nope")).unwrap();
    let began = std::time::Instant::now();
    assert!(puller
        .pull(&missing, Default::default(), &Asker::node())
        .await
        .is_err());
    assert!(
        began.elapsed() < Duration::from_millis(400),
        "{:?}",
        began.elapsed()
    );
}

/// A copy of the busybox layout whose `latest` has one more variable: a
/// different image (another manifest digest).
fn variant_layout(dir: &std::path::Path) -> std::path::PathBuf {
    let copy = dir.join("variant");
    let st = Command::new("cp")
        .arg("-a")
        .arg(busybox_layout())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("umoci")
        .args(["config", "--config.env", "MOVED=yes", "--image"])
        .arg(format!("{}:latest", copy.display()))
        .status()
        .unwrap();
    assert!(st.success(), "umoci config");
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_pin_a_tag_to_its_digest_so_a_moved_tag_changes_nothing_until_applied_again() {
    use skiff_model::{AllocStatus, JobSpec};
    let tmp = tempfile::tempdir().unwrap();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let first = r.push(busybox_layout(), "team/app", "v1");
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &["--insecure-registry", &r.addr],
    );
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "pin",
        &["--insecure-registry", &r.addr, "--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    let spec = JobSpec::from_yaml(&format!(
        "name: app\ntask:\n  image: {}/team/app:v1\n  command: [sh, -c, 'sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        r.addr
    ))
    .unwrap();
    let applied = client.apply_job(&spec).await.unwrap();
    assert!(
        applied.image_note.contains(&format!("resolved to {first}")),
        "{}",
        applied.image_note
    );
    assert_eq!(
        applied
            .job
            .spec
            .task
            .image
            .registry
            .as_ref()
            .unwrap()
            .digest
            .as_deref(),
        Some(first.as_str()),
        "the version records the digest"
    );
    let execs = client.clone();
    let moved = |a: &skiff_model::Allocation| {
        let (mut c, id) = (execs.clone(), a.id.clone());
        async move {
            let out = c
                .exec(
                    &id,
                    &["sh".into(), "-c".into(), "echo ${MOVED:-no}".into()],
                    None,
                )
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let one = wait_allocs(
        &mut client,
        "app",
        1,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(moved(&one[0]).await, "no");
    // The tag moves to another image. A new replica of the same version
    // still runs the bytes the version names.
    let second = r.push(&variant_layout(tmp.path()), "team/app", "v1");
    assert_ne!(second, first);
    client.scale_job("app", 2).await.unwrap();
    let two = wait_allocs(
        &mut client,
        "app",
        2,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    for a in &two {
        assert_eq!(moved(a).await, "no", "{}", a.id);
    }
    // Applying the same spec again resolves the tag again: a new version.
    let again = client.apply_job(&spec).await.unwrap();
    assert!(again.changed, "a new digest is a new version");
    assert_eq!(again.job.version, 2);
    assert!(
        again.image_note.contains(&format!("resolved to {second}")),
        "{}",
        again.image_note
    );
    // A registry the servers cannot reach: the tag stays, and the apply
    // says so.
    let unreachable = JobSpec::from_yaml(
        "name: far\ntask:\n  image: 127.0.0.1:1/team/app:v1\n  resources: {cpu: 100m, memory: 32Mi}\n",
    )
    .unwrap();
    let far = client.apply_job(&unreachable).await.unwrap();
    assert!(
        far.image_note.contains("not resolved"),
        "{}",
        far.image_note
    );
    assert_eq!(
        far.job.spec.task.image.registry.as_ref().unwrap().digest,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_tls_registry_is_pulled_from_with_its_ca_and_credentials_and_wrong_ones_are_named(
) {
    use skiff_model::{AllocStatus, JobSpec};
    let tmp = tempfile::tempdir().unwrap();
    let r = Registry::start(RegistryOpts {
        tls: true,
        user: Some(("ana".into(), "s3cret".into())),
    });
    let digest = r.push(busybox_layout(), "team/private", "v1");
    let ca = format!("{}={}", r.addr, r.ca_file.as_ref().unwrap().display());
    let auth_file = |name: &str, pass: &str| {
        let path = tmp.path().join(name);
        let token = {
            use std::io::Write as _;
            // base64 of "ana:PASS", by the base64 program coreutils has.
            let mut child = Command::new("base64")
                .arg("-w0")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("ana:{pass}").as_bytes())
                .unwrap();
            String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
        };
        std::fs::write(
            &path,
            format!(r#"{{"auths": {{"{}": {{"auth": "{token}"}}}}}}"#, r.addr),
        )
        .unwrap();
        path.display().to_string()
    };
    let (good, bad) = (
        auth_file("good.json", "s3cret"),
        auth_file("bad.json", "wrong"),
    );
    let flags = |auth: &str| -> Vec<String> {
        vec![
            "--registry-ca".into(),
            ca.clone(),
            "--registry-auth".into(),
            auth.into(),
        ]
    };
    let server_flags = flags(&good);
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &server_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut agent_flags = flags(&good);
    agent_flags.extend(["--stop-grace".to_string(), "1s".to_string()]);
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "private",
        &agent_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut client = server.client().await;
    let spec = |name: &str| {
        JobSpec::from_yaml(&format!(
            "name: {name}\ntask:\n  image: {}/team/private:v1\n  command: [sh, -c, 'sleep 3600']\n  restart: {{policy: never}}\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
            r.addr
        ))
        .unwrap()
    };
    let applied = client.apply_job(&spec("private")).await.unwrap();
    assert!(
        applied
            .image_note
            .contains(&format!("resolved to {digest}")),
        "{}",
        applied.image_note
    );
    wait_allocs(
        &mut client,
        "private",
        1,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    // Another agent, whose credentials are wrong: its pull fails, naming
    // the registry, the image and the refusal.
    let mut wrong_flags = flags(&bad);
    wrong_flags.extend(["--label".to_string(), "creds=wrong".to_string()]);
    let _wrong = AgentProc::start(
        &tmp.path().join("wrong"),
        &server.url(),
        "wrong",
        &wrong_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let there = JobSpec::from_yaml(&format!(
        "name: there\nconstraints: [{{label: creds, op: in, values: [wrong]}}]\ntask:\n  image: {}/team/private:v1\n  restart: {{policy: never}}\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        r.addr
    ))
    .unwrap();
    client.apply_job(&there).await.unwrap();
    let failed = wait_alloc(
        &mut client,
        "there",
        "the pull to be refused",
        Duration::from_secs(60),
        |a| a.status == AllocStatus::Failed,
    )
    .await;
    assert_eq!(failed.node, "wrong");
    assert!(
        failed.message.contains(&r.addr) && failed.message.to_lowercase().contains("auth"),
        "{}",
        failed.message
    );
    assert!(
        !failed.message.contains("wrong") || !failed.message.contains("ana:"),
        "no secret shown"
    );
}

/// `umoci` with these arguments, which must succeed.
fn umoci(args: &[&str]) {
    let out = Command::new("umoci").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "umoci {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The OCI name of this machine's architecture, and another one.
fn arches() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "arm64"),
        "aarch64" => ("arm64", "amd64"),
        other => panic!("no OCI name known for {other}"),
    }
}

/// A copy of the busybox layout with more tags, each one layer more:
/// `base` (busybox + /etc/base.txt), `a` (base + /etc/a.txt), `b` (base +
/// a layer that whites /etc/base.txt out and adds /etc/b.txt), and `multi`, an index naming
/// `a` for this machine's platform and `b` for another one. Returns the
/// layout and the digests of `multi`, `a`'s manifest and `b`'s manifest.
fn layered_layout(dir: &std::path::Path) -> (std::path::PathBuf, String, String, String) {
    let layout = dir.join("layered");
    let st = Command::new("cp")
        .arg("-a")
        .arg(busybox_layout())
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    // Each tag: unpack its parent, change the tree, repack as one layer
    // more (umoci 0.4's `insert` writes truncated tars).
    let derive = |from: &str, to: &str, edit: &dyn Fn(&std::path::Path)| {
        let bundle = dir.join(format!("bundle-{to}"));
        let image = |tag: &str| format!("{}:{tag}", layout.display());
        umoci(&["unpack", "--image", &image(from), bundle.to_str().unwrap()]);
        edit(&bundle.join("rootfs/etc"));
        umoci(&["repack", "--image", &image(to), bundle.to_str().unwrap()]);
        std::fs::remove_dir_all(&bundle).unwrap();
    };
    let write = |name: &'static str| {
        move |etc: &std::path::Path| std::fs::write(etc.join(name), format!("{name}\n")).unwrap()
    };
    derive("latest", "base", &write("base.txt"));
    derive("base", "a", &write("a.txt"));
    derive("base", "b", &|etc| {
        std::fs::remove_file(etc.join("base.txt")).unwrap();
        write("b.txt")(etc);
    });

    // The index for `multi`, written as a blob and tagged in index.json.
    let index_file = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_file).unwrap()).unwrap();
    let tagged = |tag: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("tag {tag} in {index}"))
            .clone()
    };
    let (here, there) = arches();
    let entry = |tag: &str, arch: &str| {
        let mut m = tagged(tag);
        m.as_object_mut().unwrap().remove("annotations");
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m
    };
    let (a_digest, b_digest) = (
        tagged("a")["digest"].as_str().unwrap().to_string(),
        tagged("b")["digest"].as_str().unwrap().to_string(),
    );
    let multi = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("b", there), entry("a", here)],
    }))
    .unwrap();
    let hex = {
        use std::io::Write as _;
        let mut sum = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        sum.stdin.take().unwrap().write_all(&multi).unwrap();
        let out = sum.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    };
    std::fs::write(layout.join("blobs/sha256").join(&hex), &multi).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": multi.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(&index_file, serde_json::to_vec(&index).unwrap()).unwrap();
    (layout, format!("sha256:{hex}"), a_digest, b_digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_fetched_once_per_node_shared_across_images_and_concurrent_pulls() {
    use skiff_agent::image::registry::Puller;
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _, a_digest, _) = layered_layout(tmp.path());
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    assert_eq!(r.push_tag(&layout, "a", "lab/a", "1"), a_digest);
    r.push_tag(&layout, "b", "lab/b", "1");
    let content = tmp.path().join("content");
    let puller = Puller::new(&content, insecure_access(&r.addr)).unwrap();
    let a = RegistryRef::parse(&format!("{}/lab/a:1", r.addr)).unwrap();
    let b = RegistryRef::parse(&format!("{}/lab/b:1", r.addr)).unwrap();
    // Three starts of the same image at once wait for one pull: a config
    // and three layers (busybox, base.txt, a.txt) are downloaded once.
    let node = Asker::node();
    let (p1, p2, p3) = tokio::join!(
        puller.pull(&a, Default::default(), &node),
        puller.pull(&a, Default::default(), &node),
        puller.pull(&a, Default::default(), &node)
    );
    for p in [&p1, &p2, &p3] {
        assert_eq!(p.as_ref().unwrap().digest().to_string(), a_digest);
    }
    assert_eq!(puller.blobs_fetched(), 4, "config + 3 layers, once");
    // Image b shares two layers with a: only its config and its own
    // layer are fetched.
    let b_top = puller
        .pull(&b, Default::default(), &Asker::node())
        .await
        .unwrap();
    assert_eq!(
        puller.blobs_fetched(),
        4 + 2,
        "shared layers are stored once"
    );
    // Both unpack with every layer applied, whiteouts included.
    let store = skiff_agent::image::ImageStore::new(tmp.path().join("images"));
    let source = puller.source().unwrap();
    let a_fs = store.unpack(&source, p1.as_ref().unwrap()).unwrap().rootfs;
    let b_fs = store.unpack(&source, &b_top).unwrap().rootfs;
    assert!(a_fs.join("etc/base.txt").is_file() && a_fs.join("etc/a.txt").is_file());
    assert!(a_fs.join("bin/busybox").exists() || a_fs.join("bin/sh").exists());
    assert!(!b_fs.join("etc/base.txt").exists(), "whited out in b");
    assert!(b_fs.join("etc/b.txt").is_file() && !b_fs.join("etc/a.txt").exists());
    // Named by digest and held whole, the image is used without asking
    // the registry (if-not-present): it works with the registry gone.
    drop(r);
    let mut pinned = a.pinned(&a_digest);
    pinned.tag = None;
    let again = puller
        .pull(&pinned, Default::default(), &Asker::node())
        .await
        .unwrap();
    assert_eq!(again.digest().to_string(), a_digest);
    // `pull: always` asks the registry at every start, so it fails now,
    // naming the registry and the reference.
    let e = puller
        .pull(&pinned, skiff_model::PullPolicy::Always, &Asker::node())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&pinned.registry) && e.contains("lab/a"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_index_pulls_only_this_nodes_platform() {
    use skiff_agent::image::registry::Puller;
    let tmp = tempfile::tempdir().unwrap();
    let (layout, multi_digest, a_digest, b_digest) = layered_layout(tmp.path());
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    r.push_tag(&layout, "multi", "lab/multi", "1");
    let content = tmp.path().join("content");
    let puller = Puller::new(&content, insecure_access(&r.addr)).unwrap();
    let image = RegistryRef::parse(&format!("{}/lab/multi:1", r.addr)).unwrap();
    let top = puller
        .pull(&image, Default::default(), &Asker::node())
        .await
        .unwrap();
    assert_eq!(top.digest().to_string(), multi_digest, "the index itself");
    let held = |d: &str| content.join("blobs/sha256").join(&d[7..]).is_file();
    assert!(held(&a_digest), "this platform's manifest is fetched");
    assert!(!held(&b_digest), "the other platform's is not");
    assert_eq!(
        puller.blobs_fetched(),
        4,
        "a's config and three layers only"
    );
    let store = skiff_agent::image::ImageStore::new(tmp.path().join("images"));
    let prepared = store.unpack(&puller.source().unwrap(), &top).unwrap();
    assert_eq!(prepared.manifest_digest, a_digest);
    assert!(prepared.rootfs.join("etc/a.txt").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_bytes_do_not_match_its_digest_is_refused_and_not_kept() {
    use skiff_agent::image::registry::Puller;
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _, _, _) = layered_layout(tmp.path());
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    r.push_tag(&layout, "a", "lab/a", "1");
    // The registry's copy of the top layer (a.txt) is damaged in place.
    let manifest: serde_json::Value = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let d = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "a")
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap())
            .unwrap()
    };
    let top_layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = r.blob_file(&top_layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let content = tmp.path().join("content");
    let puller = Puller::new(&content, insecure_access(&r.addr)).unwrap();
    let image = RegistryRef::parse(&format!("{}/lab/a:1", r.addr)).unwrap();
    let e = puller
        .pull(&image, Default::default(), &Asker::node())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&r.addr) && e.contains("lab/a:1") && e.contains(&top_layer),
        "names the registry, reference and blob: {e}"
    );
    assert!(e.to_lowercase().contains("digest"), "says why: {e}");
    let names: Vec<String> = std::fs::read_dir(content.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| top_layer.ends_with(n.as_str()) || n.contains("partial")),
        "nothing of the bad layer is kept: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_asked_first_in_order_and_the_registry_last() {
    use skiff_agent::image::registry::Puller;
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _, a_digest, b_digest) = layered_layout(tmp.path());
    let plain = || RegistryOpts {
        tls: false,
        user: None,
    };
    // The registry holds b only; its mirror holds a; the first mirror
    // named is down.
    let upstream = Registry::start(plain());
    let mirror = Registry::start(plain());
    let dead = format!("127.0.0.1:{}", registry::free_port());
    upstream.push_tag(&layout, "b", "lab/b", "1");
    mirror.push_tag(&layout, "a", "lab/a", "1");
    let access = skiff_registry::RegistryAccess::load(&skiff_registry::AccessConfig {
        insecure: vec![upstream.addr.clone(), mirror.addr.clone(), dead.clone()],
        mirrors: vec![
            format!("{}=http://{dead}", upstream.addr),
            format!("{}=http://{}", upstream.addr, mirror.addr),
        ],
        ..Default::default()
    })
    .unwrap();
    let puller = Puller::new(&tmp.path().join("content"), std::sync::Arc::new(access)).unwrap();
    let a = RegistryRef::parse(&format!("{}/lab/a:1", upstream.addr)).unwrap();
    let top = puller
        .pull(&a, Default::default(), &Asker::node())
        .await
        .unwrap();
    assert_eq!(top.digest().to_string(), a_digest, "served by the mirror");
    // What no mirror has comes from the registry itself.
    let b = RegistryRef::parse(&format!("{}/lab/b:1", upstream.addr)).unwrap();
    let top = puller
        .pull(&b, Default::default(), &Asker::node())
        .await
        .unwrap();
    assert_eq!(top.digest().to_string(), b_digest);
    // What nobody has fails with the registry's own answer, naming it.
    let c = RegistryRef::parse(&format!("{}/lab/c:1", upstream.addr)).unwrap();
    let e = puller
        .pull(&c, Default::default(), &Asker::node())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&upstream.addr) && e.contains("lab/c:1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_pull_resumes_and_never_uses_half_a_layer() {
    use skiff_model::{AllocStatus, JobSpec};
    const BIG: usize = 6 << 20;
    let tmp = tempfile::tempdir().unwrap();
    // busybox + one layer holding 6 MiB of random bytes (gzip cannot
    // shrink them), served through a proxy passing 1 MiB/s.
    let layout = tmp.path().join("big");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(busybox_layout())
        .arg(&layout)
        .status()
        .unwrap()
        .success());
    let bundle = tmp.path().join("bundle");
    let (image, bundle_s) = (
        format!("{}:latest", layout.display()),
        bundle.display().to_string(),
    );
    umoci(&["unpack", "--image", &image, &bundle_s]);
    let mut noise = vec![0u8; BIG];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut urandom, &mut noise).unwrap();
    std::fs::write(bundle.join("rootfs/big.bin"), &noise).unwrap();
    umoci(&["repack", "--image", &image, &bundle_s]);
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    r.push(&layout, "lab/big", "1");
    let proxy = registry::SlowProxy::start(&r.addr, 1 << 20);

    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let mut agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "puller",
        &["--insecure-registry", &proxy.addr, "--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    let spec = JobSpec::from_yaml(&format!(
        "name: big\ntask:\n  image: {}/lab/big:1\n  command: [sh, -c, 'sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        proxy.addr
    ))
    .unwrap();
    client.apply_job(&spec).await.unwrap();
    // While it pulls, the allocation says so and how far it has got.
    let pulling = wait_alloc(
        &mut client,
        "big",
        "its pull under way",
        Duration::from_secs(60),
        |a| a.reason == "pulling" && a.message.contains(" MiB of "),
    )
    .await;
    assert_eq!(pulling.status, AllocStatus::Pending);
    assert!(
        pulling
            .message
            .contains(&format!("{}/lab/big:1", proxy.addr)),
        "{}",
        pulling.message
    );
    let shown = skiff(&server.url(), &["get", "allocs", "-o", "wide"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("pulling") && shown.contains(" MiB of "),
        "{shown}"
    );
    let described = skiff(&server.url(), &["describe", "alloc", &pulling.id[..8]]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("Status:    pulling") && described.contains(" MiB of "),
        "{described}"
    );
    // Killed once half of the big layer is on disk.
    let blobs = agent_dir.join("images/content/blobs/sha256");
    let partial = || {
        std::fs::read_dir(&blobs).ok().and_then(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
                .find(|e| e.metadata().is_ok_and(|m| m.len() > (3 << 20)))
                .map(|e| e.path())
        })
    };
    let half = wait_for("a download under way", Duration::from_secs(60), || async {
        partial()
    })
    .await;
    agent.kill9();
    let held_before_restart = std::fs::metadata(&half).map_or(0, |m| m.len());
    let served_before_restart = proxy.served();
    let held_whole: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.len() >= BIG as u64))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        held_whole.iter().all(|n| n.contains(".partial")),
        "the big layer was not complete when the agent died, so only a partial file may hold it: {held_whole:?}"
    );
    // Started again, the agent resumes the download where the dead one
    // stopped (a range request), checks the whole layer against its
    // digest, and runs the container on the whole image.
    agent.restart();
    let a = wait_allocs(
        &mut client,
        "big",
        1,
        AllocStatus::Running,
        Duration::from_secs(90),
    )
    .await
    .remove(0);
    assert!(!half.exists(), "the partial download became the blob");
    let fetched_after = proxy.served() - served_before_restart;
    assert!(
        held_before_restart > (3 << 20) && fetched_after < (BIG as u64) - (held_before_restart / 2),
        "resumed: {held_before_restart} bytes were on disk, {fetched_after} more fetched for a {BIG}-byte layer"
    );
    assert!(
        agent.log().contains("resuming a download"),
        "{}",
        agent.log()
    );
    let out = client
        .exec(
            &a.id,
            &["sh".into(), "-c".into(), "wc -c < /big.bin".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        BIG.to_string(),
        "the container sees the whole layer"
    );
    let left: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_frees_an_unused_image_and_keeps_the_one_in_use() {
    use skiff_model::{AllocStatus, JobSpec};
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _, a_digest, b_digest) = layered_layout(tmp.path());
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    r.push_tag(&layout, "a", "lab/a", "1");
    r.push_tag(&layout, "b", "lab/b", "1");
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    // A cache capped far below two images: whatever is not in use goes
    // (the 2-minute minimum age is lifted for the test).
    let _agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "gc",
        &[
            "--insecure-registry",
            &r.addr,
            "--stop-grace",
            "1s",
            "--image-cache-size",
            "4Ki",
            "--image-gc-min-age",
            "0s",
            "--image-gc-every",
            "200ms",
        ],
    );
    let mut client = server.client().await;
    for (name, repo) in [("keep", "lab/a"), ("drop", "lab/b")] {
        let spec = JobSpec::from_yaml(&format!(
            "name: {name}\ntask:\n  image: {}/{repo}:1\n  command: [sh, -c, 'sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
            r.addr
        ))
        .unwrap();
        client.apply_job(&spec).await.unwrap();
    }
    for name in ["keep", "drop"] {
        wait_allocs(
            &mut client,
            name,
            1,
            AllocStatus::Running,
            Duration::from_secs(60),
        )
        .await;
    }
    let images = agent_dir.join("images");
    let blob = |d: &str| images.join("content/blobs/sha256").join(&d[7..]);
    let tree = |d: &str| images.join("rootfs").join(&d[7..]);
    let layers = |manifest: &str| -> Vec<String> {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(manifest)).unwrap()).unwrap();
        let mut out = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        out.extend(
            m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string()),
        );
        out
    };
    let (a_blobs, b_blobs) = (layers(&a_digest), layers(&b_digest));
    let b_only: Vec<&String> = b_blobs.iter().filter(|d| !a_blobs.contains(d)).collect();
    assert_eq!(b_only.len(), 2, "b's config and its own layer");
    // Both in use: both kept, however small the cap.
    assert!(tree(&a_digest).is_dir() && tree(&b_digest).is_dir());

    client.delete_job("drop").await.unwrap();
    wait_for("b to be collected", Duration::from_secs(60), || async {
        (!tree(&b_digest).exists() && b_only.iter().all(|d| !blob(d).exists())).then_some(())
    })
    .await;
    assert!(!blob(&b_digest).exists(), "b's manifest goes too");
    // a, in use, is whole: its tree, its manifest and every blob, the
    // layers it shared with b included.
    assert!(tree(&a_digest).is_dir());
    for d in a_blobs.iter().chain([&a_digest]) {
        assert!(blob(d).is_file(), "{d} of the image in use is kept");
    }
    let a = wait_allocs(
        &mut client,
        "keep",
        1,
        AllocStatus::Running,
        Duration::from_secs(10),
    )
    .await
    .remove(0);
    let out = client
        .exec(&a.id, &["cat".into(), "/etc/a.txt".into()], None)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a.txt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pre_pulls_an_image_on_a_node_and_lists_the_cache() {
    use skiff_model::{AllocStatus, JobSpec};
    let tmp = tempfile::tempdir().unwrap();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let digest = r.push(busybox_layout(), "team/busybox", "v1");
    let server = ServerProc::start(&tmp.path().join("server"));
    let agent_dir = tmp.path().join("agent");
    let _agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "prepull",
        &["--insecure-registry", &r.addr, "--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    wait_for("the node", Duration::from_secs(30), || {
        let mut c = client.clone();
        async move { (!c.list_nodes().await.ok()?.is_empty()).then_some(()) }
    })
    .await;
    let image = format!("{}/team/busybox:v1", r.addr);
    let out = skiff(
        &server.url(),
        &["image", "pull", "--node", "prepull", &image],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&digest) && said.contains("node/prepull pulled"),
        "{said}"
    );
    // Listed with its size, not in use yet.
    let ls = |args: &[&str]| {
        let mut all = vec!["image", "ls"];
        all.extend_from_slice(args);
        let out = skiff(&server.url(), &all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed: serde_json::Value =
        serde_json::from_str(&ls(&["--node", "prepull", "-o", "json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["reference"], image.as_str());
    assert_eq!(listed[0]["digest"], digest.as_str());
    assert!(
        listed[0]["size_bytes"].as_u64().unwrap() > 100_000,
        "busybox's tree and blobs"
    );
    assert_eq!(listed[0]["in_use"], false);
    // A job on it starts from the cache and marks it in use.
    let spec = JobSpec::from_yaml(&format!(
        "name: warm\ntask:\n  image: {image}\n  command: [sh, -c, 'sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi}}\n"
    ))
    .unwrap();
    client.apply_job(&spec).await.unwrap();
    wait_allocs(
        &mut client,
        "warm",
        1,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    let table = ls(&[]);
    assert!(
        table.contains("prepull") && table.contains("yes"),
        "{table}"
    );
    // Layouts are not pulled; unknown nodes are named.
    let out = skiff(
        &server.url(),
        &["image", "pull", "--node", "prepull", "oci:/srv/images/x:1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("only registry images are pulled"),
        "{err}"
    );
    let out = skiff(&server.url(), &["image", "pull", "--node", "nope", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("\"nope\" not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_the_servers_cannot_resolve_is_pinned_by_the_first_node_that_pulls_it() {
    use skiff_model::{AllocStatus, JobSpec};
    let tmp = tempfile::tempdir().unwrap();
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    let digest = r.push(busybox_layout(), "team/busybox", "v1");
    // The servers may not speak plain HTTP to this registry; the node may.
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(
        &tmp.path().join("agent"),
        &server.url(),
        "first",
        &["--insecure-registry", &r.addr, "--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    let spec = JobSpec::from_yaml(&format!(
        "name: pin\ntask:\n  image: {}/team/busybox:v1\n  command: [sh, -c, 'sleep 3600']\n  resources: {{cpu: 100m, memory: 32Mi}}\n",
        r.addr
    ))
    .unwrap();
    let applied = client.apply_job(&spec).await.unwrap();
    assert!(
        applied
            .image_note
            .contains("the first node to pull it pins"),
        "{}",
        applied.image_note
    );
    assert!(applied
        .job
        .spec
        .task
        .image
        .registry
        .as_ref()
        .unwrap()
        .digest
        .is_none());
    wait_allocs(
        &mut client,
        "pin",
        1,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    // The node said what it pulled: the version now names those bytes.
    let pinned = wait_for("the version to be pinned", Duration::from_secs(30), || {
        let mut c = client.clone();
        async move {
            let job = c.get_job("pin").await.ok()?.job;
            job.spec
                .task
                .image
                .registry
                .as_ref()?
                .digest
                .clone()
                .map(|d| (d, job.version))
        }
    })
    .await;
    assert_eq!(pinned.0, digest);
    assert_eq!(
        pinned.1, applied.job.version,
        "pinned in place, no new version"
    );
    // A replica placed now is given the digest.
    client.scale_job("pin", 2).await.unwrap();
    let allocs = wait_allocs(
        &mut client,
        "pin",
        2,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;
    for a in &allocs {
        assert_eq!(
            a.task.image.registry.as_ref().unwrap().digest.as_deref(),
            Some(digest.as_str())
        );
    }
    // Applying the same spec again while the servers still cannot reach
    // the registry keeps the pinned digest: no new version (only the
    // replica count goes back to the spec's).
    let again = client.apply_job(&spec).await.unwrap();
    assert_eq!(
        again.job.version, applied.job.version,
        "{}",
        again.image_note
    );
    assert!(
        again.image_note.contains(&format!("keeping {digest}")),
        "{}",
        again.image_note
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_download_that_does_not_match_its_digest_is_started_over() {
    use skiff_agent::image::registry::Puller;
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _, a_digest, _) = layered_layout(tmp.path());
    let r = Registry::start(RegistryOpts {
        tls: false,
        user: None,
    });
    r.push_tag(&layout, "a", "lab/a", "1");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&a_digest[7..])).unwrap(),
    )
    .unwrap();
    let top_layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // An earlier agent left 10 bytes of the top layer, and they are wrong.
    let content = tmp.path().join("content");
    let blobs = content.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        blobs.join(format!("{}.partial", &top_layer[7..])),
        b"0123456789",
    )
    .unwrap();
    let puller = Puller::new(&content, insecure_access(&r.addr)).unwrap();
    let image = RegistryRef::parse(&format!("{}/lab/a:1", r.addr)).unwrap();
    let top = puller
        .pull(&image, Default::default(), &Asker::node())
        .await
        .unwrap();
    // Resumed, found wrong as a whole, fetched again: the blob is right.
    let store = skiff_agent::image::ImageStore::new(tmp.path().join("images"));
    let prepared = store.unpack(&puller.source().unwrap(), &top).unwrap();
    assert!(prepared.rootfs.join("etc/a.txt").is_file());
    assert!(!blobs.join(format!("{}.partial", &top_layer[7..])).exists());
}
