//! Namespaces' registry logins end to end: an admin stores one with the
//! CLI, the servers keep it sealed (never in the clear in Raft's log, its
//! snapshots or the state), resolve the namespace's tags with it and hand
//! it to the nodes running the namespace's work; another namespace on the
//! same node cannot start the private image from the node's cache. The
//! servers of a cluster agree on one secrets key, founding or joining.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::registry::{Registry, RegistryOpts};
use skiff_tests::*;

const PASSWORD: &str = "s3cret-Reg1stry-pw";

/// `skiff registry login` as the administrator, the password on stdin.
fn login(url: &str, ns: &str, registry: &str, user: &str, password: &str) -> std::process::Output {
    let mut child = skiff_tests::pki::skiff_command()
        .args([
            "registry",
            "login",
            "-n",
            ns,
            registry,
            "--username",
            user,
            "--password-stdin",
        ])
        .env("SKIFF_SERVER", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        out.push(p.display().to_string());
                    }
                }
            }
        }
    }
    out
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaces_login_pulls_its_private_image_and_no_other_namespace_can_use_it() {
    require_container_host();
    let tmp = tempfile::tempdir().unwrap();
    let r = Registry::start(RegistryOpts {
        tls: true,
        user: Some(("ana".into(), PASSWORD.into())),
    });
    let digest = r.push(busybox_layout(), "team/private", "v1");
    // Servers and agent trust the registry's CA but hold no credentials.
    let ca = format!("{}={}", r.addr, r.ca_file.as_ref().unwrap().display());
    let server_dir = tmp.path().join("server");
    let server = ServerProc::start_with(&server_dir, "127.0.0.1:0", &["--registry-ca", &ca]);
    let agent_dir = tmp.path().join("agent");
    let agent = AgentProc::start(
        &agent_dir,
        &server.url(),
        "n1",
        &["--registry-ca", &ca, "--stop-grace", "1s"],
    );
    let mut client = server.client().await;
    for ns in ["ml", "web"] {
        let ns = skiff_model::namespace::Namespace::from_yaml(&format!("name: {ns}\n")).unwrap();
        client.apply_namespace(&ns).await.unwrap();
    }

    // The password comes from stdin only; bad input is named.
    let no_stdin = skiff(
        &server.url(),
        &["registry", "login", "-n", "ml", &r.addr, "-u", "ana"],
    );
    assert!(!no_stdin.status.success());
    assert!(
        text(&no_stdin).contains("--password-stdin"),
        "{}",
        text(&no_stdin)
    );
    let bad = login(
        &server.url(),
        "ml",
        "https://registry.lab/v2",
        "ana",
        PASSWORD,
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("registry") && text(&bad).contains("HOST[:PORT]"),
        "{}",
        text(&bad)
    );
    let missing = login(&server.url(), "nope", &r.addr, "ana", PASSWORD);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("\"nope\" not found"),
        "{}",
        text(&missing)
    );
    let stored = login(&server.url(), "ml", &r.addr, "ana", PASSWORD);
    assert!(stored.status.success(), "{}", text(&stored));

    let ls = skiff(&server.url(), &["registry", "ls"]);
    let shown = text(&ls);
    assert!(ls.status.success(), "{shown}");
    assert!(
        shown.contains("ml") && shown.contains(&r.addr) && shown.contains("ana"),
        "{shown}"
    );
    assert!(!shown.contains(PASSWORD), "{shown}");

    // The namespace's tag resolves with its login and its job runs.
    let job = |ns: &str, name: &str, image: &str| {
        let mut spec = JobSpec::from_yaml(&format!(
            "name: {name}\ntask:\n  image: {image}\n  command: [sh, -c, 'sleep 3600']\n  restart: {{policy: never}}\n  resources: {{cpu: 100m, memory: 32Mi}}\n"
        ))
        .unwrap();
        spec.namespace = ns.to_string();
        spec
    };
    let by_tag = format!("{}/team/private:v1", r.addr);
    let applied = client
        .apply_job(&job("ml", "train", &by_tag))
        .await
        .unwrap();
    assert!(
        applied
            .image_note
            .contains(&format!("resolved to {digest}")),
        "{}",
        applied.image_note
    );
    let mut ml = server.client().await.namespace("ml");
    wait_allocs(
        &mut ml,
        "train",
        1,
        AllocStatus::Running,
        Duration::from_secs(60),
    )
    .await;

    // Another namespace on the same node, naming the very digest the node
    // holds, is refused: it holds no login, and the cache is not a way in.
    let by_digest = format!("{}/team/private@{digest}", r.addr);
    client
        .apply_job(&job("web", "peek", &by_digest))
        .await
        .unwrap();
    let mut web = server.client().await.namespace("web");
    let failed = wait_alloc(
        &mut web,
        "peek",
        "the other namespace's pull to be refused",
        Duration::from_secs(60),
        |a| a.status == AllocStatus::Failed,
    )
    .await;
    assert_eq!(failed.node, "n1", "the node that holds the image");
    assert!(
        failed.message.contains(&r.addr) && failed.message.to_lowercase().contains("auth"),
        "{}",
        failed.message
    );

    // The password is nowhere in the clear: not in the servers' data
    // (Raft's log, snapshots, sled) nor logs, not on the node's disk.
    for dir in [&server_dir, &agent_dir] {
        let found = files_holding(dir, PASSWORD.as_bytes());
        assert!(found.is_empty(), "the password in the clear in {found:?}");
    }
    assert!(!server.log().contains(PASSWORD));
    assert!(!agent.log().contains(PASSWORD));

    // An operator's pre-pull uses the node's credentials (none here),
    // or, with -n, the namespace's login.
    let node_only = skiff(&server.url(), &["image", "pull", "--node", "n1", &by_tag]);
    assert!(!node_only.status.success());
    assert!(
        text(&node_only).to_lowercase().contains("auth"),
        "{}",
        text(&node_only)
    );
    let as_ml = skiff(
        &server.url(),
        &["image", "pull", "--node", "n1", "-n", "ml", &by_tag],
    );
    assert!(as_ml.status.success(), "{}", text(&as_ml));
    assert!(text(&as_ml).contains(&digest), "{}", text(&as_ml));

    // Logged out, the namespace's next pull has no credentials.
    let out = skiff(&server.url(), &["registry", "logout", "-n", "ml", &r.addr]);
    assert!(out.status.success(), "{}", text(&out));
    let ls = skiff(&server.url(), &["registry", "ls", "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), "[]");
    let again = skiff(&server.url(), &["registry", "logout", "-n", "ml", &r.addr]);
    assert!(!again.status.success());
    assert!(text(&again).contains("holds no login"), "{}", text(&again));
}

/// The key each server holds.
fn key_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("secrets.key")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_agree_on_one_secrets_key_founding_or_joining() {
    let tmp = tempfile::tempdir().unwrap();
    // Founding servers of a static cluster each start with a key of their
    // own; the first committed wins and the others take it from a peer.
    let cluster = skiff_tests::cluster::ServerCluster::start(tmp.path(), 3, &[]).await;
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    let agreed = wait_for(
        "the servers to hold one key",
        Duration::from_secs(30),
        || {
            let keys: Vec<String> = dirs.iter().map(|d| key_of(d)).collect();
            async move {
                (keys[0].len() == 65 && keys.iter().all(|k| *k == keys[0])).then(|| keys[0].clone())
            }
        },
    )
    .await;
    // A login set through one server opens on every other: its status
    // says the key is theirs (no server refuses it as another's).
    for i in 0..3 {
        let url = cluster.url(i);
        let out = login(
            &url,
            "default",
            "registry.lab:5000",
            &format!("u{i}"),
            PASSWORD,
        );
        assert!(out.status.success(), "server {}: {}", i + 1, text(&out));
    }
    let ls = skiff(&cluster.url(1), &["registry", "ls", "-o", "json"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("\"u2\""),
        "{}",
        text(&ls)
    );
    // A server that joins later takes the same key.
    let via = cluster.url(0);
    let joined_dir = tmp.path().join("s4");
    let _joined =
        ServerProc::start_with(&joined_dir, "127.0.0.1:0", &["--id", "4", "--join", &via]);
    wait_for(
        "the joined server to hold the key",
        Duration::from_secs(30),
        || {
            let ok = key_of(&joined_dir) == agreed;
            async move { ok.then_some(()) }
        },
    )
    .await;
    for d in dirs.iter().chain([&joined_dir]) {
        assert!(files_holding(d, PASSWORD.as_bytes()).is_empty());
    }
    // Never the key itself in Raft: only its id.
    let key_hex = agreed.trim().as_bytes().to_vec();
    for d in &dirs {
        let found: Vec<String> = files_holding(d, &key_hex)
            .into_iter()
            .filter(|f| !f.ends_with("secrets.key"))
            .collect();
        assert!(found.is_empty(), "the key outside secrets.key: {found:?}");
    }
}
