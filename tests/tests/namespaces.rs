//! Namespaces as a lab's teams meet them, on real servers and agents over
//! mutual TLS: a developer works in the namespaces granted and nowhere
//! else, asks only for what the namespace's policy allows, and a quota
//! holds under concurrent applies; an agent runs layouts only from its
//! image roots or the paths the namespace's policy adds.

use std::time::Duration;

use skiff_client::{Client, ClientError, Code, WatchOptions};
use skiff_model::namespace::Namespace;
use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

fn namespace(yaml: &str) -> Namespace {
    Namespace::from_yaml(yaml).unwrap()
}

fn in_ns(ns: &str, spec: JobSpec) -> JobSpec {
    let mut spec = spec;
    spec.namespace = ns.to_string();
    spec
}

fn code_of<T>(r: Result<T, ClientError>) -> (Option<Code>, String) {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => (e.code(), e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developers_act_only_in_their_namespaces_and_ask_only_what_the_policy_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let url = server.url();
    let mut admin = server.client().await;

    // A namespace nobody described holds no job.
    let (code, msg) = code_of(
        admin
            .apply_job(&in_ns("ml", shell_job("t", 0, "true")))
            .await,
    );
    assert_eq!(code, Some(Code::NotFound), "{msg}");
    assert!(msg.contains("skiff namespace apply"), "{msg}");
    for ns in ["ml", "web"] {
        admin
            .apply_namespace(&namespace(&format!("name: {ns}\n")))
            .await
            .unwrap();
    }
    admin
        .apply_job(&shell_job("shared", 0, "true"))
        .await
        .unwrap();
    admin
        .apply_job(&in_ns("web", shell_job("site", 0, "true")))
        .await
        .unwrap();
    // The same name in two namespaces is two jobs.
    admin
        .apply_job(&in_ns("ml", shell_job("site", 0, "true")))
        .await
        .unwrap();

    let dev = make_user(&url, tmp.path(), "dev", "developer", "ml");
    let vic = make_user(&url, tmp.path(), "vic", "viewer", "web");
    let mut dev = as_user(&dev).await.namespace("ml");

    dev.apply_job(&in_ns("ml", shell_job("train", 0, "true")))
        .await
        .unwrap();
    dev.scale_job("train", 0).await.unwrap();
    // Another namespace: neither written nor read.
    let (code, msg) = code_of(dev.apply_job(&shell_job("sneak", 0, "true")).await);
    assert_eq!(code, Some(Code::PermissionDenied), "{msg}");
    assert!(
        msg.contains("may not apply jobs in namespace \"default\" (granted: ml)"),
        "{msg}"
    );
    let mut dev_in_web = dev.clone().namespace("web");
    let (code, _) = code_of(dev_in_web.delete_job("site").await);
    assert_eq!(code, Some(Code::PermissionDenied));
    let (code, _) = code_of(dev_in_web.get_job("site").await);
    assert_eq!(code, Some(Code::PermissionDenied));
    // A list without a namespace shows what the caller may read.
    let mut dev_all = dev.clone().namespace("");
    let keys: Vec<String> = dev_all
        .list_jobs()
        .await
        .unwrap()
        .iter()
        .map(|(j, _)| j.key())
        .collect();
    assert_eq!(keys, ["ml/site", "ml/train"]);
    // So does a watch: nothing of another namespace comes through.
    let mut watch = dev_all
        .watch_with(WatchOptions {
            kinds: vec!["job".into()],
            ..WatchOptions::default()
        })
        .await
        .unwrap();
    admin
        .apply_job(&shell_job("shared", 0, "echo again"))
        .await
        .unwrap();
    dev.apply_job(&in_ns("ml", shell_job("after", 0, "true")))
        .await
        .unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), watch.next())
        .await
        .expect("an event")
        .expect("the watch goes on")
        .expect("an event, not the end");
    assert_eq!(
        first.key, "ml/after",
        "the default job's change is not sent"
    );

    // Capabilities beyond Docker's defaults need the namespace's policy.
    let mut sys_admin = in_ns("ml", shell_job("priv", 0, "true"));
    sys_admin.task.security.cap_add = vec!["SYS_ADMIN".into()];
    let (code, msg) = code_of(dev.apply_job(&sys_admin).await);
    assert_eq!(code, Some(Code::PermissionDenied), "{msg}");
    assert!(
        msg.contains("task.security.cap_add[0]: SYS_ADMIN is beyond Docker's default capabilities"),
        "{msg}"
    );
    // Only an admin sets a policy.
    let (code, _) = code_of(
        dev.apply_namespace(&namespace(
            "name: ml\npolicy: {capabilities: [SYS_ADMIN]}\n",
        ))
        .await,
    );
    assert_eq!(code, Some(Code::PermissionDenied));
    admin
        .apply_namespace(&namespace(
            "name: ml\npolicy: {capabilities: [SYS_ADMIN]}\n",
        ))
        .await
        .unwrap();
    dev.apply_job(&sys_admin).await.unwrap();

    // A viewer granted `web` reads web only, writes nothing.
    let mut vic = as_user(&vic).await;
    let keys: Vec<String> = vic
        .list_jobs()
        .await
        .unwrap()
        .iter()
        .map(|(j, _)| j.key())
        .collect();
    assert_eq!(keys, ["web/site"]);
    let (code, _) = code_of(vic.clone().namespace("ml").list_jobs().await);
    assert_eq!(code, Some(Code::PermissionDenied));

    // A namespace goes only once its jobs have.
    let (code, msg) = code_of(admin.delete_namespace("web").await);
    assert_eq!(code, Some(Code::FailedPrecondition), "{msg}");
    admin
        .clone()
        .namespace("web")
        .delete_job("site")
        .await
        .unwrap();
    admin.delete_namespace("web").await.unwrap();
    let names: Vec<String> = admin
        .list_namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.name)
        .collect();
    assert_eq!(names, ["default", "ml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_never_exceeded_under_concurrent_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let mut admin = server.client().await;
    admin
        .apply_namespace(&namespace(
            "name: lab\nquota: {cpu: 1, memory: 1Gi, allocations: 3, gpus: {any: 0}}\n",
        ))
        .await
        .unwrap();
    let lab = admin.clone().namespace("lab");
    // Twelve clients at once, each asking for one more allocation of the
    // three the quota holds.
    let tries: Vec<_> = (0..12)
        .map(|i| {
            let mut c = lab.clone();
            tokio::spawn(async move {
                c.apply_job(&in_ns("lab", shell_job(&format!("j{i}"), 1, "true")))
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    let mut refusals = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(e) => {
                assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
                refusals.push(e.to_string());
            }
        }
    }
    assert_eq!(admitted, 3, "{refusals:?}");
    assert!(
        refusals[0]
            .contains("quota of namespace \"lab\" exceeded: allocations 3 used of 3, 0 left"),
        "{}",
        refusals[0]
    );
    let jobs = lab.clone().list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 3);
    // Scaling up past the quota is refused as well; down always works.
    let name = jobs[0].0.name().to_string();
    let (code, _) = code_of(lab.clone().scale_job(&name, 2).await);
    assert_eq!(code, Some(Code::ResourceExhausted));
    lab.clone().scale_job(&name, 0).await.unwrap();
    // GPUs the quota does not list are not allowed at all.
    let mut gpu = in_ns("lab", shell_job("gpu", 1, "true"));
    gpu.task.resources.gpus = 1;
    let (code, msg) = code_of(lab.clone().apply_job(&gpu).await);
    assert_eq!(code, Some(Code::ResourceExhausted), "{msg}");
    assert!(
        msg.contains("GPUs naming no model (`any`) 0 used of 0"),
        "{msg}"
    );
    // What is used shows in the list.
    let list = admin.list_namespaces().await.unwrap();
    let (_, used) = list.iter().find(|(n, _)| n.name == "lab").unwrap();
    assert_eq!((used.jobs, used.usage.allocations), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layouts_outside_the_image_roots_need_the_namespace_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let roots = tmp.path().join("images");
    std::fs::create_dir_all(&roots).unwrap();
    let _agent = AgentProc::start(
        &tmp.path().join("a"),
        &server.url(),
        "n1",
        &["--image-roots", roots.to_str().unwrap()],
    );
    let admin = server.client().await;
    let node = wait_for("the node to register", START, || {
        let mut c = admin.clone();
        async move { c.list_nodes().await.ok()?.into_iter().next() }
    })
    .await;
    let mut admin = admin;
    assert_eq!(node.node.image_roots, [roots.display().to_string()]);

    // The busybox layout lies outside the node's roots.
    let (code, msg) = code_of(admin.apply_job(&shell_job("outside", 1, "true")).await);
    assert_eq!(code, Some(Code::PermissionDenied), "{msg}");
    assert!(msg.contains("outside the nodes' image roots"), "{msg}");

    // A namespace whose policy names its directory may run it: the servers
    // send the policy's paths to the agent, which checks again.
    let dir = busybox_layout().parent().unwrap().display().to_string();
    admin
        .apply_namespace(&namespace(&format!(
            "name: lab\npolicy: {{image_paths: ['{dir}']}}\n"
        )))
        .await
        .unwrap();
    let mut lab = admin.clone().namespace("lab");
    lab.apply_job(&in_ns(
        "lab",
        job_yaml("inside", 1, "echo ran", "  restart: {policy: never}\n"),
    ))
    .await
    .unwrap();
    let done = wait_allocs(&mut lab, "inside", 1, AllocStatus::Complete, START).await;
    assert_eq!(done[0].job, "lab/inside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_acts_as_its_user_until_it_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let url = server.url();
    let mut admin = server.client().await;
    admin
        .apply_namespace(&namespace("name: ml\n"))
        .await
        .unwrap();
    make_user(&url, tmp.path(), "ci", "developer", "ml");
    let conf = tmp.path().join("ci-token.conf");
    let out = skiff_command()
        .args([
            "user", "token", "ci", "--ttl", "1h", "--server", &url, "--out",
        ])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("skiffu1."), "{token}");
    let id = token.split('.').nth(1).unwrap().to_string();

    // The file holds the CA and the token, no certificate: the calls act
    // as the developer, in its namespace only.
    let mut ci = as_user(&conf).await.namespace("ml");
    ci.apply_job(&in_ns("ml", shell_job("by-token", 0, "true")))
        .await
        .unwrap();
    let (code, _) = code_of(ci.apply_job(&shell_job("elsewhere", 0, "true")).await);
    assert_eq!(code, Some(Code::PermissionDenied));
    let (code, _) = code_of(ci.create_user_token("ci", 60).await);
    assert_eq!(
        code,
        Some(Code::PermissionDenied),
        "a developer makes no tokens"
    );
    // The CLI takes it from SKIFF_TOKEN too.
    let listed = skiff_command()
        .args(["get", "jobs", "-n", "ml", "--server", &url])
        .env("SKIFF_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("by-token"));

    // A wrong secret is no credential.
    let forged = format!("{}{}", &token[..token.len() - 4], "aaaa");
    let forged_tls = skiff_client::ClientTls {
        token: Some(forged),
        identity: None,
        ..skiff_client::config::ClientConfig::load(&conf)
            .unwrap()
            .tls
            .unwrap()
    };
    let mut forged = Client::connect_with(&url, Some(&forged_tls)).await.unwrap();
    let (code, _) = code_of(forged.list_jobs().await);
    assert_eq!(code, Some(Code::Unauthenticated));

    // Revoked: refused from the next call on.
    admin.revoke_user_token(&id).await.unwrap();
    let (code, msg) = code_of(ci.list_jobs().await);
    assert_eq!(code, Some(Code::Unauthenticated), "{msg}");
    assert!(msg.contains(&id) && msg.contains("revoked"), "{msg}");

    // The audit names the token by its id; its secret is nowhere.
    let secret = token.rsplit('.').next().unwrap();
    assert!(
        !server.log().contains(secret),
        "a token secret is in the log"
    );
    let audit = std::fs::read_to_string(tmp.path().join("s/audit/audit.log")).unwrap();
    assert!(audit.contains(&format!("user-token/{id}")), "{audit}");
    assert!(!audit.contains(secret));
}
