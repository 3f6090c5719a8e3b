//! The store end to end in one process: real raft-rs, real sled files.

use skiff_model::JobSpec;
use skiff_store::{Command, Outcome, RaftConfig, Role, Store, StoreError};

fn job(name: &str, replicas: u32) -> Command {
    Command::UpsertJob {
        spec: JobSpec::from_yaml(&format!(
            "name: {name}\nreplicas: {replicas}\ntask: {{image: 'oci:/i'}}"
        ))
        .unwrap(),
    }
}

#[tokio::test]
async fn a_single_voter_elects_itself_and_commits_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), RaftConfig::default()).unwrap();
    let out = store.propose(&job("web", 2)).await.unwrap();
    assert!(matches!(out, Outcome::JobUpserted { changed: true, .. }));
    assert_eq!(store.status().role, Role::Leader);
    assert!(store.state().jobs.contains_key("web"));
    let applied = *store.subscribe().borrow();
    assert_eq!(applied, store.state().index);
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = Store::open(dir.path(), RaftConfig::default()).unwrap();
        for i in 0..50 {
            store.propose(&job(&format!("j{i}"), 1)).await.unwrap();
        }
        let st = store.state().clone();
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .unwrap();
        st
    };
    let store = Store::open(dir.path(), RaftConfig::default()).unwrap();
    assert_eq!(store.state().jobs, before.jobs);
    assert_eq!(store.state().index, before.index);
    // And it keeps going from where it was.
    store.propose(&job("after", 1)).await.unwrap();
    assert!(store.state().index > before.index);
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || s2.shutdown())
        .await
        .unwrap();
    assert!(matches!(
        store.propose(&job("late", 1)).await,
        Err(StoreError::Stopped)
    ));
}

#[tokio::test]
async fn concurrent_proposals_are_batched_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), RaftConfig::default()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.propose(&job(&format!("c{i}"), 1)).await
        }));
    }
    for t in tasks {
        assert!(matches!(
            t.await.unwrap().unwrap(),
            Outcome::JobUpserted { .. }
        ));
    }
    assert_eq!(store.state().jobs.len(), 200);
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .unwrap();
}
