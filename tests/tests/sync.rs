//! `skiff sync` end to end: a real server with generated credentials
//! follows a bare git repository the test makes with `git`, applying each
//! commit, pruning what the branch no longer describes, refusing a bad
//! commit whole (the last good one keeps running, the error reported),
//! setting back a job deleted by hand, and writing only where its
//! describer may; remotes fetched by the leader over git:// (git daemon)
//! and HTTPS (git-http-backend behind TLS, trusted through SSL_CERT_FILE),
//! and what an unreachable or untrusted remote reports.

use std::path::Path;
use std::time::Duration;

use skiff_client::{Client, Code};
use skiff_model::sync::{SyncRecord, SyncSource};
use skiff_tests::*;

const WAIT: Duration = Duration::from_secs(60);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=Lab", "-c", "user.email=lab@example.org"])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository at `origin` (branch main) and a work tree at `work`
/// that pushes to it; the work tree.
fn repository(origin: &Path, work: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(origin).unwrap();
    git(origin, &["init", "-q", "--bare", "-b", "main"]);
    std::fs::create_dir_all(work).unwrap();
    git(work, &["init", "-q", "-b", "main"]);
    git(work, &["remote", "add", "origin", origin.to_str().unwrap()]);
    work.to_path_buf()
}

/// Commits the work tree and pushes it; the new head.
fn commit(work: &Path, message: &str) -> String {
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

fn job(name: &str, env: &str) -> String {
    format!(
        "name: {name}\nlabels: {{owner: gitops}}\ntask:\n  image: {}\n  command: [sleep, '3600']\n  env: {{MODE: {env}}}\n  resources: {{cpu: 10m, memory: 8Mi}}\n",
        busybox_image()
    )
}

async fn status(client: &mut Client, name: &str) -> Option<SyncRecord> {
    client
        .list_syncs()
        .await
        .ok()?
        .into_iter()
        .find(|r| r.source.name == name)
}

/// Waits until the sync's status satisfies `ok`.
async fn wait_status(client: &Client, what: &str, ok: impl Fn(&SyncRecord) -> bool) -> SyncRecord {
    wait_for(what, WAIT, || {
        let mut c = client.clone();
        let ok = &ok;
        async move { status(&mut c, "lab").await.filter(|r| ok(r)) }
    })
    .await
}

async fn job_version(client: &mut Client, name: &str) -> Option<u64> {
    client
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .find(|(j, _)| j.spec.name == name)
        .map(|(j, _)| j.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_follows_its_branch_and_a_bad_commit_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let mut client = server.client().await;

    // The lab's repository: a bare one, and a clone people commit in.
    let origin = tmp.path().join("origin.git");
    let work = repository(&origin, &tmp.path().join("work"));
    let jobs = work.join("jobs");
    std::fs::create_dir_all(jobs.join("batch")).unwrap();
    std::fs::write(jobs.join("web.yaml"), job("web", "one")).unwrap();
    std::fs::write(jobs.join("batch/api.yml"), job("api", "one")).unwrap();
    std::fs::write(jobs.join("README.md"), "not a spec").unwrap();
    std::fs::write(work.join("elsewhere.yaml"), job("outside", "one")).unwrap();
    let first = commit(&work, "web and api");

    // A job of someone else's (no owner label) shares the namespace.
    let manual = tmp.path().join("manual.yaml");
    std::fs::write(
        &manual,
        job("manual", "x").replace("{owner: gitops}", "{team: web}"),
    )
    .unwrap();
    assert!(skiff(&url, &["apply", "-f", manual.to_str().unwrap()])
        .status
        .success());

    let repo = origin.display().to_string();
    let out = skiff(
        &url,
        &[
            "sync",
            "apply",
            "lab",
            "--repo",
            &repo,
            "--path",
            "jobs",
            "--prune",
            "-l",
            "owner=gitops",
            "--interval",
            "1s",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = wait_status(&client, "the first commit applied", |r| {
        r.status.commit == first
    })
    .await;
    assert_eq!(r.status.error, "");
    assert_eq!(r.status.jobs, ["api", "web"]);
    assert_eq!(job_version(&mut client, "web").await, Some(1));
    assert_eq!(job_version(&mut client, "api").await, Some(1));
    assert_eq!(
        job_version(&mut client, "outside").await,
        None,
        "only the sync's path is read"
    );
    let text = String::from_utf8_lossy(&skiff(&url, &["sync", "status"]).stdout).into_owned();
    assert!(text.contains("lab") && text.contains("in sync"), "{text}");
    assert!(text.contains(&first[..12]), "{text}");

    // A change and a removal: web rolls to version 2, api is pruned, the
    // job the selector does not match stays.
    std::fs::write(jobs.join("web.yaml"), job("web", "two")).unwrap();
    std::fs::remove_file(jobs.join("batch/api.yml")).unwrap();
    let second = commit(&work, "web two; api retired");
    let r = wait_status(&client, "the second commit applied", |r| {
        r.status.commit == second
    })
    .await;
    assert_eq!(r.status.pruned, ["api"]);
    assert_eq!(r.status.jobs, ["web"]);
    assert_eq!(job_version(&mut client, "web").await, Some(2));
    assert_eq!(job_version(&mut client, "api").await, None);
    assert_eq!(job_version(&mut client, "manual").await, Some(1));

    // A bad commit: one broken spec beside a good change. Nothing of it
    // is applied; the error names the file and the field.
    std::fs::write(jobs.join("web.yaml"), job("web", "three")).unwrap();
    std::fs::write(
        jobs.join("broken.yaml"),
        "name: Broken_Name\ntask: {image: 'oci:/nowhere'}\n",
    )
    .unwrap();
    let bad = commit(&work, "a broken spec");
    let r = wait_status(&client, "the bad commit refused", |r| {
        r.status.head == bad && !r.status.error.is_empty()
    })
    .await;
    assert_eq!(
        r.status.commit, second,
        "the last good commit keeps running"
    );
    let error = &r.status.error;
    assert!(error.contains(&format!("commit {}", &bad[..12])), "{error}");
    assert!(error.contains("jobs/broken.yaml"), "{error}");
    assert!(error.contains("name"), "{error}");
    assert!(
        error.contains(&format!("commit {} keeps running", &second[..12])),
        "{error}"
    );
    assert_eq!(job_version(&mut client, "web").await, Some(2));
    let shown = skiff(&url, &["sync", "status", "lab"]);
    let text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success());
    assert!(text.contains("State:      error"), "{text}");
    assert!(text.contains("broken.yaml"), "{text}");

    // Fixed: the change waiting behind the broken file lands.
    std::fs::remove_file(jobs.join("broken.yaml")).unwrap();
    let fixed = commit(&work, "fix");
    let r = wait_status(&client, "the fixed commit applied", |r| {
        r.status.commit == fixed
    })
    .await;
    assert_eq!(r.status.error, "");
    assert_eq!(job_version(&mut client, "web").await, Some(3));

    // Drift: web deleted by hand comes back, and the status says so.
    assert!(skiff(&url, &["delete", "job", "web"]).status.success());
    let r = wait_status(&client, "the drift set back", |r| {
        r.status.drift.iter().any(|d| d == "web: deleted")
    })
    .await;
    assert_eq!(r.status.commit, fixed);
    assert!(job_version(&mut client, "web").await.is_some());

    // The controller's writes are in the audit log as the sync.
    let audit = skiff(&url, &["audit", "-o", "json"]);
    let text = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(text.contains("sync/lab"), "{text}");

    // Deleting the sync leaves its jobs.
    assert!(skiff(&url, &["sync", "delete", "lab"]).status.success());
    assert!(status(&mut client, "lab").await.is_none());
    assert!(job_version(&mut client, "web").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_writes_only_where_its_describer_may_and_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let mut admin = server.client().await;
    admin
        .apply_namespace(&skiff_model::namespace::Namespace::from_yaml("name: web\n").unwrap())
        .await
        .unwrap();
    let dev = make_user(&url, tmp.path(), "dev", "developer", "web");
    let mut dev = as_user(&dev).await;

    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("web.yaml"),
        job("web", "one").replace("name: web\n", "name: web\nnamespace: default\n"),
    )
    .unwrap();
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &["commit", "-q", "-m", "a spec for another namespace"],
    );
    let head = git(&repo, &["rev-parse", "HEAD"]);

    // Not in a namespace the developer may not write to.
    let mut source = SyncSource::new("lab", repo.to_str().unwrap(), "default");
    source.interval_secs = 1;
    let err = dev.apply_sync(&source).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // A broken source names every broken field.
    let mut broken = source.clone();
    broken.namespace = "web".into();
    broken.path = "../up".into();
    broken.branch = "a..b".into();
    let err = dev.apply_sync(&broken).await.unwrap_err().to_string();
    assert!(err.contains("path") && err.contains("branch"), "{err}");
    // In its own namespace: the spec naming another is refused, nothing
    // is written to either.
    source.namespace = "web".into();
    dev.apply_sync(&source).await.unwrap();
    let r = wait_status(&dev, "the foreign spec refused", |r| {
        r.status.head == head && !r.status.error.is_empty()
    })
    .await;
    assert!(
        r.status
            .error
            .contains("web.yaml: the spec names namespace \"default\", sync lab writes to \"web\""),
        "{}",
        r.status.error
    );
    assert!(
        r.status.error.contains("nothing applied yet"),
        "{}",
        r.status.error
    );
    assert!(admin.list_jobs().await.unwrap().is_empty());

    // A branch that does not exist is reported as such.
    source.branch = "prod".into();
    dev.apply_sync(&source).await.unwrap();
    let r = wait_status(&dev, "the missing branch reported", |r| {
        r.status.error.contains("branch \"prod\" not found")
    })
    .await;
    assert_eq!(r.status.commit, "");
}

/// A git server the test started, and its loopback port; killed on drop.
struct Served {
    child: std::process::Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git daemon` serving `base` on a free loopback port.
fn git_daemon(base: &Path) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // git-daemon itself (`git daemon` would leave it running as its
    // child when killed).
    let exec = git(Path::new("/"), &["--exec-path"]);
    let child = std::process::Command::new(Path::new(&exec).join("git-daemon"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .arg("--reuseaddr")
        .arg("--export-all")
        .arg("--listen=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .spawn()
        .expect("git daemon (Debian's git package)");
    Served { child, port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_branch_is_fetched_by_the_leader_and_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let server = ServerProc::start(&data);
    let client = server.client().await;
    let mut reader = client.clone();

    let served = tmp.path().join("served");
    let origin = served.join("lab.git");
    let work = repository(&origin, &tmp.path().join("work"));
    std::fs::write(work.join("web.yaml"), job("web", "one")).unwrap();
    let first = commit(&work, "web");
    let daemon = git_daemon(&served);

    let mut source = SyncSource::new(
        "lab",
        &format!("git://127.0.0.1:{}/lab.git", daemon.port),
        "default",
    );
    source.interval_secs = 1;
    reader.apply_sync(&source).await.unwrap();
    // The daemon may still be starting: the first looks fail, and say so.
    let r = wait_status(&client, "the remote's first commit applied", |r| {
        r.status.commit == first
    })
    .await;
    assert_eq!(r.status.error, "");
    assert_eq!(job_version(&mut reader, "web").await, Some(1));
    assert!(
        data.join("sync/lab.git/HEAD").exists(),
        "fetched into the data directory"
    );

    std::fs::write(work.join("web.yaml"), job("web", "two")).unwrap();
    let second = commit(&work, "web two");
    wait_status(&client, "the remote's second commit applied", |r| {
        r.status.commit == second
    })
    .await;
    assert_eq!(job_version(&mut reader, "web").await, Some(2));

    // The remote gone: the error says so and the commit keeps running.
    drop(daemon);
    std::fs::write(work.join("web.yaml"), job("web", "three")).unwrap();
    commit(&work, "web three, never fetched");
    let r = wait_status(&client, "the unreachable remote reported", |r| {
        r.status.error.contains("cannot fetch")
    })
    .await;
    assert!(
        r.status
            .error
            .contains(&format!("commit {} keeps running", &second[..12])),
        "{}",
        r.status.error
    );
    assert_eq!(job_version(&mut reader, "web").await, Some(2));
}

/// git-http-backend over TLS (tests/scripts/git-https.py) serving `base`
/// with a certificate for 127.0.0.1 from a fresh CA; the server and the
/// CA's certificate file.
fn git_https(base: &Path, dir: &Path) -> (Served, std::path::PathBuf) {
    let ca = skiff_pki::Ca::generate(Duration::from_secs(3600)).unwrap();
    let leaf = ca
        .issue_for_host(
            "git",
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let (cert, key, ca_file, port_file) = (
        dir.join("git.crt"),
        dir.join("git.key"),
        dir.join("ca.crt"),
        dir.join("git.port"),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let exec = git(Path::new("/"), &["--exec-path"]);
    let child = std::process::Command::new("/usr/bin/python3")
        .arg(repo_root().join("tests/scripts/git-https.py"))
        .arg(base)
        .arg(Path::new(&exec).join("git-http-backend"))
        .args([&cert, &key, &port_file])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let mut served = Served { child, port: 0 };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    served.port = loop {
        if let Ok(p) = std::fs::read_to_string(&port_file) {
            break p.trim().parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTPS git server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (served, ca_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_is_fetched_over_https_with_the_servers_trust_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("served");
    let work = repository(&served.join("lab.git"), &tmp.path().join("work"));
    std::fs::write(work.join("web.yaml"), job("web", "one")).unwrap();
    let first = commit(&work, "web");
    let (https, ca) = git_https(&served, tmp.path());
    // The servers' HTTPS clients trust the system's roots; SSL_CERT_FILE
    // replaces them, as for any rustls-native-certs program.
    let server = ServerProc::start_with_env(
        &tmp.path().join("server"),
        "127.0.0.1:0",
        &[],
        &[("SSL_CERT_FILE", ca.to_str().unwrap())],
    );
    let client = server.client().await;
    let mut reader = client.clone();
    let mut source = SyncSource::new(
        "lab",
        &format!("https://127.0.0.1:{}/lab.git", https.port),
        "default",
    );
    source.interval_secs = 1;
    reader.apply_sync(&source).await.unwrap();
    let r = wait_status(&client, "the commit fetched over HTTPS applied", |r| {
        r.status.commit == first || !r.status.error.is_empty()
    })
    .await;
    assert_eq!(r.status.error, "");
    assert_eq!(job_version(&mut reader, "web").await, Some(1));

    // A server that does not trust the CA fetches nothing, and says so.
    let other = ServerProc::start(&tmp.path().join("other"));
    let client = other.client().await;
    client.clone().apply_sync(&source).await.unwrap();
    let r = wait_status(&client, "the untrusted certificate refused", |r| {
        !r.status.error.is_empty()
    })
    .await;
    assert!(
        r.status
            .error
            .starts_with("cannot fetch https://127.0.0.1:"),
        "{}",
        r.status.error
    );
    assert!(
        r.status.error.contains("invalid peer certificate"),
        "the cause is named: {}",
        r.status.error
    );
    assert_eq!(r.status.commit, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_next_leader_carries_on_from_the_applied_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster =
        skiff_tests::cluster::ServerCluster::start(&tmp.path().join("servers"), 3, &[]).await;
    let leader = cluster.leader(WAIT).await;
    let other = (leader + 1) % 3;
    let client = skiff_tests::connect(&cluster.url(other)).await.unwrap();
    let mut reader = client.clone();

    let origin = tmp.path().join("origin.git");
    let work = repository(&origin, &tmp.path().join("work"));
    std::fs::write(work.join("web.yaml"), job("web", "one")).unwrap();
    let first = commit(&work, "web");
    let mut source = SyncSource::new("lab", origin.to_str().unwrap(), "default");
    source.interval_secs = 1;
    reader.apply_sync(&source).await.unwrap();
    // Read through a follower: the status is replicated.
    let r = wait_status(&client, "the first commit applied", |r| {
        r.status.commit == first
    })
    .await;
    let applied_at = r.status.applied_at_ms;

    cluster.kill9(leader).await;
    let next = cluster.leader(WAIT).await;
    assert_ne!(next, leader);
    std::fs::write(work.join("api.yaml"), job("api", "one")).unwrap();
    let second = commit(&work, "api");
    let client = skiff_tests::connect(&cluster.url(next)).await.unwrap();
    let mut reader = client.clone();
    let r = wait_status(&client, "the new leader applied the next commit", |r| {
        r.status.commit == second
    })
    .await;
    assert!(r.status.applied_at_ms >= applied_at);
    assert_eq!(r.status.jobs, ["api", "web"]);
    assert_eq!(job_version(&mut reader, "api").await, Some(1));
}
