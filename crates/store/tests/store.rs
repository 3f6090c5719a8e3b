//! The store end to end in one process: real raft-rs, real sled files.
//! Several stores are wired together through an in-memory transport that
//! can cut links, to exercise replication, partitions, snapshots and
//! membership quickly; the same scenarios run over gRPC between real
//! processes in tests/.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_model::JobSpec;
use skiff_store::{
    Bootstrap, Command, ConfChangeType, Outcome, RaftConfig, RaftMessage, Role, ServerInfo, Store,
    StoreError, Transport,
};

fn job(name: &str, replicas: u32) -> Command {
    Command::UpsertJob {
        spec: JobSpec::from_yaml(&format!(
            "name: {name}\nreplicas: {replicas}\ntask: {{image: 'oci:/i'}}"
        ))
        .unwrap(),
    }
}

/// Delivers messages between stores of one process; links can be cut.
#[derive(Default)]
struct Net {
    stores: Mutex<HashMap<u64, Store>>,
    cut: Mutex<BTreeSet<(u64, u64)>>,
}

struct Link {
    net: Arc<Net>,
}

impl Transport for Link {
    fn send(&self, msg: RaftMessage) {
        let (from, to) = (msg.from, msg.to);
        let is_snapshot = msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
        let blocked = self.net.cut.lock().unwrap().contains(&(from, to));
        let stores = self.net.stores.lock().unwrap();
        let (Some(target), false) = (stores.get(&to), blocked) else {
            if let Some(sender) = stores.get(&from) {
                sender.report_unreachable(to);
                if is_snapshot {
                    sender.report_snapshot(to, false);
                }
            }
            return;
        };
        target.step(msg);
        if is_snapshot {
            if let Some(sender) = stores.get(&from) {
                sender.report_snapshot(to, true);
            }
        }
    }
}

impl Net {
    fn isolate(&self, id: u64, ids: &[u64]) {
        let mut cut = self.cut.lock().unwrap();
        for &other in ids {
            if other != id {
                cut.insert((id, other));
                cut.insert((other, id));
            }
        }
    }
    fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }
}

fn cfg(id: u64, snapshot_entries: u64) -> RaftConfig {
    RaftConfig {
        id,
        tick: Duration::from_millis(20),
        snapshot_entries,
        ..RaftConfig::default()
    }
}

struct Cluster {
    net: Arc<Net>,
    dirs: HashMap<u64, tempfile::TempDir>,
}

impl Cluster {
    fn new(ids: &[u64], snapshot_entries: u64) -> Cluster {
        let net = Arc::new(Net::default());
        let mut dirs = HashMap::new();
        for &id in ids {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(
                dir.path(),
                cfg(id, snapshot_entries),
                Bootstrap::Voters(ids.to_vec()),
                Arc::new(Link { net: net.clone() }),
            )
            .unwrap();
            net.stores.lock().unwrap().insert(id, store);
            dirs.insert(id, dir);
        }
        Cluster { net, dirs }
    }

    fn store(&self, id: u64) -> Store {
        self.net.stores.lock().unwrap()[&id].clone()
    }

    async fn leader(&self) -> Store {
        for _ in 0..500 {
            let stores: Vec<Store> = self.net.stores.lock().unwrap().values().cloned().collect();
            let leaders: Vec<&Store> = stores.iter().filter(|s| s.is_leader()).collect();
            if leaders.len() == 1 {
                return leaders[0].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no single leader elected");
    }

    async fn stop(&self, id: u64) {
        let s = self.net.stores.lock().unwrap().remove(&id).unwrap();
        tokio::task::spawn_blocking(move || s.shutdown())
            .await
            .unwrap();
    }

    fn start(&mut self, id: u64, bootstrap: Bootstrap, snapshot_entries: u64) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().unwrap());
        let store = Store::open(
            dir.path(),
            cfg(id, snapshot_entries),
            bootstrap,
            Arc::new(Link {
                net: self.net.clone(),
            }),
        )
        .unwrap();
        self.net.stores.lock().unwrap().insert(id, store);
    }

    /// Waits until every running store has applied the same index and
    /// holds the same state.
    async fn converged(&self) -> u64 {
        for _ in 0..500 {
            let stores: Vec<Store> = self.net.stores.lock().unwrap().values().cloned().collect();
            let digests: BTreeSet<(u64, u64)> = stores
                .iter()
                .map(|s| {
                    let st = s.state();
                    (st.index, st.digest())
                })
                .collect();
            if digests.len() == 1 {
                return digests.into_iter().next().unwrap().0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stores: Vec<Store> = self.net.stores.lock().unwrap().values().cloned().collect();
        let seen: Vec<_> = stores
            .iter()
            .map(|s| (s.status(), s.state().index, s.state().digest()))
            .collect();
        panic!("stores did not converge: {seen:#?}");
    }

    async fn shutdown(self) {
        let stores: Vec<Store> = self
            .net
            .stores
            .lock()
            .unwrap()
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in stores {
            tokio::task::spawn_blocking(move || s.shutdown())
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn a_single_voter_elects_itself_and_commits_writes() {
    let c = Cluster::new(&[1], 0);
    let store = c.store(1);
    let out = store.propose(&job("web", 2)).await.unwrap();
    assert!(matches!(out, Outcome::JobUpserted { changed: true, .. }));
    assert_eq!(store.status().role, Role::Leader);
    assert!(store.state().jobs.contains_key("web"));
    assert_eq!(*store.subscribe().borrow(), store.state().index);
    c.shutdown().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let mut c = Cluster::new(&[1], 0);
    for i in 0..50 {
        c.store(1).propose(&job(&format!("j{i}"), 1)).await.unwrap();
    }
    let before = c.store(1).state().clone();
    c.stop(1).await;
    c.start(1, Bootstrap::Voters(vec![1]), 0);
    let store = c.store(1);
    assert_eq!(store.state().jobs, before.jobs);
    // At or just past it: back as leader of a new term, the server may
    // already have applied that term's empty entry.
    assert!(store.state().index >= before.index);
    store.propose(&job("after", 1)).await.unwrap();
    assert!(store.state().index > before.index);
    c.stop(1).await;
    assert!(matches!(
        store.propose(&job("late", 1)).await,
        Err(StoreError::Stopped)
    ));
}

#[tokio::test]
async fn concurrent_proposals_are_batched_and_all_answered() {
    let c = Cluster::new(&[1], 0);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = c.store(1);
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
    assert_eq!(c.store(1).state().jobs.len(), 200);
    c.shutdown().await;
}

#[tokio::test]
async fn three_voters_replicate_and_a_followers_proposals_reach_the_leader() {
    let c = Cluster::new(&[1, 2, 3], 0);
    let leader = c.leader().await;
    leader.propose(&job("web", 3)).await.unwrap();
    c.converged().await;
    let follower = (1..=3)
        .map(|i| c.store(i))
        .find(|s| !s.is_leader())
        .unwrap();
    assert!(follower.state().jobs.contains_key("web"));
    // Proposed on a follower, committed by the leader, answered by the
    // follower with the outcome of applying it.
    let out = follower.propose(&job("from-follower", 1)).await.unwrap();
    assert!(matches!(out, Outcome::JobUpserted { changed: true, .. }));
    assert!(follower.state().jobs.contains_key("from-follower"));
    c.converged().await;
    assert!(leader.state().jobs.contains_key("from-follower"));
    // A follower's read barrier waits for what the leader committed.
    leader.propose(&job("later", 1)).await.unwrap();
    follower.read_barrier(Duration::from_secs(5)).await.unwrap();
    assert!(follower.state().jobs.contains_key("later"));
    c.shutdown().await;
}

#[tokio::test]
async fn a_minority_cannot_commit_and_everyone_converges_after_healing() {
    let c = Cluster::new(&[1, 2, 3], 0);
    let old = c.leader().await;
    let old_id = old.status().id;
    old.propose(&job("before", 1)).await.unwrap();
    c.net.isolate(old_id, &[1, 2, 3]);
    // The isolated leader cannot commit (check_quorum makes it step down).
    let stuck =
        tokio::time::timeout(Duration::from_secs(2), old.propose(&job("minority", 1))).await;
    assert!(
        !matches!(stuck, Ok(Ok(_))),
        "a minority committed: {stuck:?}"
    );
    // The majority elects a new leader and goes on.
    let new = loop {
        let l = c.leader().await;
        if l.status().id != old_id {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    new.propose(&job("majority", 1)).await.unwrap();
    c.net.heal();
    c.converged().await;
    for id in 1..=3 {
        let st = c.store(id).state().clone();
        assert!(st.jobs.contains_key("majority"));
        assert!(!st.jobs.contains_key("minority"));
    }
    c.shutdown().await;
}

#[tokio::test]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut c = Cluster::new(&[1, 2, 3], 20);
    let leader = c.leader().await;
    let lagging = (1..=3).find(|i| *i != leader.status().id).unwrap();
    c.stop(lagging).await;
    for i in 0..100 {
        leader.propose(&job(&format!("j{i}"), 1)).await.unwrap();
    }
    let st = leader.status();
    assert!(st.first_index > 30, "the log was compacted: {st:?}");
    c.start(lagging, Bootstrap::Voters(vec![1, 2, 3]), 20);
    c.converged().await;
    let back = c.store(lagging);
    assert!(back.status().snapshot_index > 1, "caught up by snapshot");
    assert_eq!(back.state().jobs.len(), 100);
    c.shutdown().await;
}

#[tokio::test]
async fn the_log_is_trimmed_up_to_the_saved_state_without_taking_a_snapshot() {
    let mut c = Cluster::new(&[1], 20);
    let store = c.store(1);
    for i in 0..200 {
        store.propose(&job(&format!("j{i}"), 1)).await.unwrap();
    }
    // Saves run behind Raft; a compaction trims up to the last one.
    let mut trimmed = false;
    for _ in 0..250 {
        if store.status().first_index > 100 {
            trimmed = true;
            break;
        }
        store.propose(&job("tick", 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = store.status();
    assert!(trimmed, "the log was never trimmed: {st:?}");
    assert_eq!(
        st.snapshot_index, 1,
        "no snapshot is taken while no peer needs one: {st:?}"
    );
    let before = store.state().clone();
    c.stop(1).await;
    c.start(1, Bootstrap::Voters(vec![1]), 20);
    let back = c.store(1);
    assert_eq!(back.state().jobs, before.jobs);
    assert!(
        back.state().index >= before.index,
        "a new term's empty entry may follow"
    );
    back.propose(&job("after", 1)).await.unwrap();
    c.shutdown().await;
}

#[tokio::test]
async fn servers_join_as_learners_get_promoted_and_can_be_removed() {
    let mut c = Cluster::new(&[1, 2, 3], 10);
    let leader = c.leader().await;
    for i in 0..30 {
        leader.propose(&job(&format!("j{i}"), 1)).await.unwrap();
    }
    c.start(4, Bootstrap::Join, 10);
    let info = ServerInfo {
        id: 4,
        api_addr: "127.0.0.1:4".into(),
        peer_addr: "127.0.0.1:5".into(),
    };
    leader
        .change_membership(
            vec![(4, ConfChangeType::AddLearnerNode)],
            Some(info.clone()),
        )
        .await
        .unwrap();
    c.converged().await;
    assert_eq!(c.store(4).state().jobs.len(), 30, "joined by snapshot");
    assert_eq!(c.store(4).state().servers.get(&4), Some(&info));
    leader
        .change_membership(vec![(4, ConfChangeType::AddNode)], None)
        .await
        .unwrap();
    // The status is published right after the entry that changed it.
    let mut status = leader.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.voters.contains(&4)),
    )
    .await
    .expect("server 4 became a voter")
    .unwrap();
    // Remove a follower, then the leader itself.
    let follower = (1..=3).find(|i| *i != leader.status().id).unwrap();
    leader
        .change_membership(vec![(follower, ConfChangeType::RemoveNode)], None)
        .await
        .unwrap();
    c.stop(follower).await;
    let old_id = leader.status().id;
    leader
        .change_membership(vec![(old_id, ConfChangeType::RemoveNode)], None)
        .await
        .unwrap();
    let mut removed = leader.watch_status();
    tokio::time::timeout(Duration::from_secs(5), removed.wait_for(|s| s.removed))
        .await
        .unwrap()
        .unwrap();
    c.net.stores.lock().unwrap().remove(&old_id);
    let new = c.leader().await;
    assert_ne!(new.status().id, old_id);
    new.propose(&job("after-removals", 1)).await.unwrap();
    c.converged().await;
    c.shutdown().await;
}

/// Messages raft-rs would stop the process on (found by the `peer` fuzz
/// target): a member that sends one must not bring the server down.
#[tokio::test]
async fn peer_messages_that_would_crash_raft_are_dropped_and_the_server_keeps_serving() {
    use raft::eraftpb::{Entry, MessageType};
    let c = Cluster::new(&[1], 0);
    for i in 0..3 {
        c.store(1).propose(&job(&format!("j{i}"), 1)).await.unwrap();
    }
    let committed = c.store(1).status().commit;
    let msg = |t: MessageType, f: &dyn Fn(&mut RaftMessage)| {
        let mut m = RaftMessage::default();
        m.set_msg_type(t);
        m.from = 2;
        m.to = 1;
        m.term = c.store(1).status().term;
        f(&mut m);
        m
    };
    let entry = |index: u64, term: u64| Entry {
        index,
        term,
        data: b"{}".to_vec().into(),
        ..Default::default()
    };
    let hostile = [
        msg(MessageType::MsgPropose, &|_| {}),
        msg(MessageType::MsgReadIndex, &|_| {}),
        msg(MessageType::MsgReadIndexResp, &|_| {}),
        msg(MessageType::MsgHeartbeat, &|m| m.commit = committed + 100),
        msg(MessageType::MsgAppend, &|m| {
            m.index = 0;
            m.log_term = 0;
            m.entries = vec![entry(1, 99)].into();
        }),
        msg(MessageType::MsgAppend, &|m| {
            m.index = 1;
            m.log_term = 1;
            m.entries = vec![entry(5, 1), entry(3, 1)].into();
        }),
    ];
    for m in hostile {
        let kind = m.get_msg_type();
        c.store(1).step(m);
        // It still commits: the Raft thread lives.
        c.store(1)
            .propose(&job("after", 1))
            .await
            .unwrap_or_else(|e| panic!("after {kind:?}: {e}"));
    }
    assert_eq!(c.store(1).status().fatal, None);
}
