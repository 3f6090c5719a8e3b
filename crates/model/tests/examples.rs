//! The files under examples/ are valid jobs.

use skiff_model::JobSpec;

/// Example files that are not jobs (the agent reads the first; the second
/// is a namespace, checked below).
const NOT_JOBS: &[&str] = &["fake-gpus.yaml", "namespace.yaml", "queue.yaml"];

/// The namespace example reads as a namespace.
#[test]
fn the_namespace_example_parses() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/namespace.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let ns = skiff_model::namespace::Namespace::from_yaml(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(ns.name, "ml");
    assert_eq!(ns.quota.gpus["any"], 2);
}

/// The queue example reads as a queue, and the queued job names it.
#[test]
fn the_queue_example_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let text = std::fs::read_to_string(dir.join("queue.yaml")).unwrap();
    let q = skiff_model::queue::Queue::from_yaml(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.cohort.as_deref(), Some("lab"));
    let job = std::fs::read_to_string(dir.join("queued-training.yaml")).unwrap();
    let spec = JobSpec::from_yaml(&job).unwrap();
    assert_eq!(spec.queue.as_deref(), Some(q.name.as_str()));
    assert!(q.admits_namespace(&spec.namespace));
    // The queue example's recipe applies the namespace example first: the
    // job fits its quota.
    let ns = std::fs::read_to_string(dir.join("namespace.yaml")).unwrap();
    let ns = skiff_model::namespace::Namespace::from_yaml(&ns).unwrap();
    assert_eq!(ns.name, spec.namespace);
    ns.check_quota(&Default::default(), &spec)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The gitops directory's files hold jobs, one or several documents each,
/// every one labelled with the owner the docs prune by.
#[test]
fn the_gitops_example_directory_holds_owned_jobs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/gitops");
    let mut jobs = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for doc in text.split("\n---\n") {
            let spec = JobSpec::from_yaml(doc).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(spec.labels["owner"], "gitops");
            jobs += 1;
        }
    }
    assert_eq!(jobs, 3);
}

/// Every file under examples/ parses and survives its own serialized form.
#[test]
fn every_example_parses_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let not_a_job = path
            .file_name()
            .is_some_and(|n| NOT_JOBS.iter().any(|x| n == *x));
        if path.extension().is_some_and(|e| e == "yaml") && !not_a_job {
            let text = std::fs::read_to_string(&path).unwrap();
            let spec =
                JobSpec::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let again = serde_yaml_ng::to_string(&spec).unwrap();
            assert_eq!(
                JobSpec::from_yaml(&again).unwrap(),
                spec,
                "{}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "found {seen} examples in {}", dir.display());
}
