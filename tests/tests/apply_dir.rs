//! `skiff apply -f DIR [--prune -l SELECTOR]` and labels end to end,
//! against a real server with generated credentials: a directory of
//! specs (nested, several documents in one file, JSON) is applied job by
//! job; a broken file stops everything (nothing applied, nothing pruned);
//! pruning deletes only what the selector matches and the directory no
//! longer describes.

use std::path::Path;

use skiff_tests::*;

fn job(name: &str, labels: &str) -> String {
    format!(
        "name: {name}\nlabels: {labels}\ntask:\n  image: {}\n  command: [sleep, '3600']\n  resources: {{cpu: 10m, memory: 8Mi}}\n",
        busybox_image()
    )
}

fn run(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = skiff(url, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_applied_whole_or_not_at_all_and_prune_takes_only_what_it_owns() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let url = server.url();
    let mut client = server.client().await;
    let dir = tmp.path().join("specs");
    let owned = "{owner: gitops, team: web}";
    write(&dir, "web.yaml", &job("web", owned));
    write(
        &dir,
        "more/two.yml",
        &format!("{}---\n{}", job("api", owned), job("worker", owned)),
    );
    let cron = skiff_model::JobSpec::from_yaml(&job("cron", "{owner: gitops}")).unwrap();
    let json = serde_json::to_string(&cron).unwrap();
    write(&dir, "more/cron.json", &json);
    write(&dir, "README.md", "not a spec");
    // A job of someone else's, with no owner label.
    std::fs::write(tmp.path().join("manual.yaml"), job("manual", "{team: web}")).unwrap();
    let manual = tmp.path().join("manual.yaml").display().to_string();
    assert!(run(&url, &["apply", "-f", &manual]).0);

    let d = dir.display().to_string();
    // The plan first: every job new, and the scheduler's dry run says why
    // nothing can be placed yet (no node); exit code 2: changes.
    let planned = skiff(&url, &["plan", "-f", &d]);
    let text = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert_eq!(planned.status.code(), Some(2), "{text}");
    assert!(text.contains("job/web: new, version 1"), "{text}");
    assert!(
        text.contains("cannot place 1 now: 0/0 nodes: no nodes are registered"),
        "{text}"
    );
    assert!(
        text.contains("4 job(s): 4 would change, 0 would be refused"),
        "{text}"
    );
    assert!(
        client.list_jobs().await.unwrap().len() == 1,
        "plan wrote nothing"
    );

    let (ok, out, err) = run(&url, &["apply", "-f", &d]);
    assert!(ok, "{err}");
    let planned = skiff(&url, &["plan", "-f", &d]);
    let text = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert_eq!(
        planned.status.code(),
        Some(0),
        "nothing would change: {text}"
    );
    assert!(text.contains("job/api: no change (version 1)"), "{text}");
    for name in ["web", "api", "worker", "cron"] {
        assert!(
            out.contains(&format!("job/{name} created (version 1)")),
            "{out}"
        );
    }
    let (_, listed, _) = run(&url, &["get", "jobs", "-l", "owner=gitops"]);
    for name in ["web", "api", "worker", "cron"] {
        assert!(listed.contains(name), "{listed}");
    }
    assert!(!listed.contains("manual"), "{listed}");
    let (_, wide, _) = run(&url, &["get", "jobs", "-l", "team=web", "-o", "wide"]);
    assert!(wide.contains("owner=gitops,team=web"), "{wide}");
    assert!(wide.contains("manual"), "{wide}");

    // Labels are metadata: changing one keeps the version.
    write(
        &dir,
        "web.yaml",
        &job("web", "{owner: gitops, team: frontend}"),
    );
    let planned = skiff(&url, &["plan", "-f", &d]);
    let text = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert_eq!(planned.status.code(), Some(2), "{text}");
    assert!(
        text.contains("job/web: changes labels; same version 1"),
        "{text}"
    );
    let bigger = std::fs::read_to_string(dir.join("more/cron.json"))
        .unwrap()
        .replace("3600", "7200");
    let cron_file = tmp.path().join("cron-next.json");
    std::fs::write(&cron_file, &bigger).unwrap();
    let planned = skiff(&url, &["plan", "-f", &cron_file.display().to_string()]);
    let text = String::from_utf8_lossy(&planned.stdout).into_owned();
    assert!(
        text.contains("job/cron: changes task.command; new version 2 (a rollout)"),
        "{text}"
    );
    let (ok, out, err) = run(&url, &["apply", "-f", &d]);
    assert!(ok, "{err}");
    assert!(out.contains("job/web configured (version 1)"), "{out}");
    assert!(out.contains("job/api unchanged"), "{out}");

    // One broken file: nothing is applied, nothing pruned, every broken
    // rule named.
    std::fs::remove_file(dir.join("more/cron.json")).unwrap();
    write(
        &dir,
        "web.yaml",
        &job("web", "{owner: gitops, team: changed}"),
    );
    write(
        &dir,
        "zz-broken.yaml",
        "name: Bad_Name\nlabels: {owner: gitops}\ntask: {image: 'oci:/i'}\n",
    );
    let (ok, _, err) = run(&url, &["apply", "-f", &d, "--prune", "-l", "owner=gitops"]);
    assert!(!ok);
    assert!(err.contains("1 broken spec(s); nothing applied"), "{err}");
    assert_eq!(skiff(&url, &["plan", "-f", &d]).status.code(), Some(1));
    assert!(
        err.contains("zz-broken.yaml: ") && err.contains("name:"),
        "{err}"
    );
    let jobs = client.list_jobs().await.unwrap();
    assert!(
        jobs.iter().any(|(j, _)| j.spec.name == "cron"),
        "not pruned"
    );
    let web = jobs.iter().find(|(j, _)| j.spec.name == "web").unwrap();
    assert_eq!(web.0.spec.labels["team"], "frontend", "not applied");

    // Prune needs a selector.
    std::fs::remove_file(dir.join("zz-broken.yaml")).unwrap();
    let (ok, _, err) = run(&url, &["apply", "-f", &d, "--prune"]);
    assert!(!ok && err.contains("--prune needs a selector"), "{err}");

    // With it: the job the directory no longer describes goes; the one
    // the selector does not match stays.
    let (ok, out, err) = run(&url, &["apply", "-f", &d, "--prune", "-l", "owner=gitops"]);
    assert!(ok, "{err}");
    assert!(out.contains("job/cron pruned"), "{out}");
    assert!(out.contains("job/web configured"), "{out}");
    let names: Vec<String> = client
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|(j, _)| j.spec.name)
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains(&"manual".to_string()) && !names.contains(&"cron".to_string()));
}
