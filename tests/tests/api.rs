//! The client API's rules, end to end against real servers: lists come a
//! page at a time, a watch sends only what its filters ask for, a deleted
//! object is NOT_FOUND everywhere, every write says its index, and a broken
//! spec names every field in the status details.

use std::collections::BTreeSet;
use std::time::Duration;

use skiff_client::{Client, Code, WatchOptions};
use skiff_model::{AllocStatus, JobSpec};
use skiff_tests::*;

const START: Duration = Duration::from_secs(60);

/// The ids of a job's allocations (`None`: every allocation), listed two
/// to a page, each page from the token of the one before.
async fn alloc_ids_in_pages_of_two(client: &mut Client, job: Option<&str>) -> Vec<String> {
    let mut got = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_allocs_page(job, None, 2, token.take())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        got.extend(page.items.into_iter().map(|a| a.id));
        match page.next {
            Some(next) => token = Some(next),
            None => return got,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_a_page_at_a_time_in_order_without_loss_or_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "node-a", &[]);
    let mut client = server.client().await;
    let mut names: Vec<String> = (0..7).map(|i| format!("job-{i}")).collect();
    names.sort();
    for name in &names {
        client
            .apply_job(&shell_job(name, 1, "sleep 3600"))
            .await
            .unwrap();
    }
    client
        .apply_job(&job_yaml("many", 5, "sleep 3600", ""))
        .await
        .unwrap();
    names.push("many".into());
    names.sort();

    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = Vec::new();
    loop {
        let page = client.list_jobs_page(3, token.take()).await.unwrap();
        pages.push(page.items.len());
        seen.extend(page.items.into_iter().map(|(j, _)| j.spec.name));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, names, "every job once, in name order");
    assert_eq!(pages, [3, 3, 2]);

    let allocs = wait_allocs(&mut client, "many", 5, AllocStatus::Running, START).await;
    let mut want: Vec<String> = allocs.into_iter().map(|a| a.id).collect();
    want.sort();
    let got = alloc_ids_in_pages_of_two(&mut client, Some("many")).await;
    assert_eq!(got, want, "allocations by id, each once");
    // The whole cluster's allocations, a page at a time: each page starts
    // where the last ended.
    let mut everything: Vec<String> = client
        .list_allocs(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    everything.sort();
    let got = alloc_ids_in_pages_of_two(&mut client, None).await;
    assert_eq!(got, everything, "all allocations by id, each once");

    let nodes = client.list_nodes_page(1, None).await.unwrap();
    assert_eq!((nodes.items.len(), nodes.next), (1, None));

    let err = client
        .list_jobs_page(5000, None)
        .await
        .expect_err("a page that large is refused");
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert_eq!(err.field_violations()[0].0, "page_size", "{err}");
    let err = client
        .list_jobs_page(3, Some("job-3".into()))
        .await
        .expect_err("a token the API did not give out is refused");
    assert_eq!(err.field_violations()[0].0, "page_token", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_only_what_its_filters_ask_for() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "node-a", &[]);
    let mut client = server.client().await;
    let from = client
        .apply_job(&shell_job("early", 1, "true"))
        .await
        .unwrap()
        .index;
    let options = |kinds: &[&str], job: Option<&str>, node: Option<&str>| WatchOptions {
        from_index: from,
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        job: job.map(String::from),
        node: node.map(String::from),
    };
    let mut by_job = client
        .watch_with(options(&["job", "allocation"], Some("web"), None))
        .await
        .unwrap();
    let mut by_node = client
        .watch_with(options(&["node", "allocation"], None, Some("node-a")))
        .await
        .unwrap();
    let mut everything = client.watch_with(options(&[], None, None)).await.unwrap();

    client
        .apply_job(&job_yaml("web", 2, "sleep 3600", ""))
        .await
        .unwrap();
    client
        .apply_job(&job_yaml("other", 1, "sleep 3600", ""))
        .await
        .unwrap();
    wait_allocs(&mut client, "web", 2, AllocStatus::Running, START).await;
    wait_allocs(&mut client, "other", 1, AllocStatus::Running, START).await;
    let last = client.delete_job("other").await.unwrap();

    // Read each watch up to the delete's index.
    async fn until(watch: &mut skiff_client::Watch, last: u64) -> Vec<skiff_client::WatchEvent> {
        let mut events = Vec::new();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), watch.next())
                .await
                .expect("events keep coming")
                .unwrap()
                .expect("the stream stays open");
            let done = e.index >= last;
            events.push(e);
            if done {
                return events;
            }
        }
    }
    // The filtered watches may end before `last` (nothing of theirs is
    // written then); the unfiltered one sees it.
    let all = until(&mut everything, last).await;
    let kinds: BTreeSet<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "job",
        "allocation",
        "evaluation",
        "deployment",
        "job_version",
    ] {
        assert!(kinds.contains(k), "an unfiltered watch sees {k}: {kinds:?}");
    }
    assert!(
        all.iter()
            .any(|e| e.kind == "job" && e.key == "other" && e.json.is_none()),
        "the deletion of job other"
    );
    assert!(
        all.windows(2).all(|w| w[0].index <= w[1].index),
        "in index order"
    );
    // (The read stopped at the first event of index `last`.)
    for (i, e) in all.iter().enumerate().filter(|(_, e)| e.index < last) {
        let last_of_its_index = all.get(i + 1).is_none_or(|next| next.index != e.index);
        assert_eq!(
            e.last_in_index, last_of_its_index,
            "only the last event of index {} says the index is complete",
            e.index
        );
    }

    let web_allocs: usize = all
        .iter()
        .filter(|e| {
            e.kind == "allocation"
                && e.json
                    .as_deref()
                    .is_some_and(|j| j.contains("\"job\":\"web\""))
        })
        .count();
    let mut web = Vec::new();
    while web
        .iter()
        .filter(|e: &&skiff_client::WatchEvent| e.kind == "allocation")
        .count()
        < web_allocs
    {
        web.push(
            tokio::time::timeout(Duration::from_secs(30), by_job.next())
                .await
                .expect("the job's events come")
                .unwrap()
                .unwrap(),
        );
    }
    for e in &web {
        assert!(matches!(e.kind.as_str(), "job" | "allocation"), "{e:?}");
        let json = e.json.as_deref().unwrap_or_default();
        assert!(
            e.key == "web" || json.contains("\"job\":\"web\""),
            "only job web and its allocations: {e:?}"
        );
    }
    assert!(web.iter().any(|e| e.kind == "job"));
    // Objects come as the public messages in the proto3 JSON mapping.
    let job = web.iter().find(|e| e.kind == "job").unwrap();
    let value: serde_json::Value = serde_json::from_str(job.json.as_deref().unwrap()).unwrap();
    assert_eq!(value["spec"]["name"], "web");
    assert_eq!(
        value["spec"]["task"]["resources"]["memoryBytes"],
        "33554432"
    );

    let node_events = until(&mut by_node, last).await;
    for e in &node_events {
        assert!(matches!(e.kind.as_str(), "node" | "allocation"), "{e:?}");
        if e.kind == "allocation" {
            if let Some(json) = &e.json {
                assert!(json.contains("\"node\":\"node-a\""), "{json}");
            }
        }
    }
    assert!(node_events.iter().any(|e| e.kind == "allocation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_is_not_found_everywhere_and_every_write_says_its_index() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let mut client = server.client().await;
    let spec = JobSpec::from_yaml(&format!(
        "name: gone\nreplicas: 2\ntask: {{image: '{}'}}",
        busybox_image()
    ))
    .unwrap();
    let applied = client.apply_job(&spec).await.unwrap();
    assert!(applied.index > 0);
    let again = client.apply_job(&spec).await.unwrap();
    assert!(
        !again.changed && again.index > applied.index,
        "an unchanged apply is a write too"
    );
    let scaled = client.scale_job("gone", 3).await.unwrap();
    assert_eq!(scaled.spec.replicas, 3);
    let deleted = client.delete_job("gone").await.unwrap();
    assert!(deleted > again.index);

    let e = client.get_job("gone").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = client.get_rollout("gone").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = client.scale_job("gone", 1).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = client.delete_job("gone").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = client.control_rollout("gone", "pause").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_spec_names_every_field_in_the_status_details() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let mut client = server.client().await;
    let mut spec = shell_job("broken", 1, "true");
    spec.replicas = 5000;
    spec.task.resources.memory_bytes = 1024;
    spec.name = "Broken".into();
    let e = client.apply_job(&spec).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let fields: BTreeSet<String> = e.field_violations().into_iter().map(|(f, _)| f).collect();
    for f in ["spec.name", "spec.replicas"] {
        assert!(fields.contains(f), "{f} among {fields:?}: {e}");
    }
    for (field, rule) in e.field_violations() {
        assert!(!rule.is_empty(), "{field} says which rule");
        assert!(
            e.to_string().contains(&rule),
            "the message lists it too: {e}"
        );
    }
}
