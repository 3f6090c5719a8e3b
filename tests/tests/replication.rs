//! A replicated control plane of real `skiff server` processes: leader
//! kills under concurrent load with a linearizability check, partitions,
//! snapshot catch-up, membership changes, random crash-restarts, and watch
//! streams that resume on another server.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_client::Client;
use skiff_model::JobSpec;
use skiff_tests::cluster::ServerCluster;
use skiff_tests::linearizability::{check, Op, OpKind, Verdict};

const SETTLE: Duration = Duration::from_secs(30);

/// A job whose env var `V` holds `value`: writing it is a register write.
fn register_job(name: &str, value: &str) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "name: {name}\nreplicas: 0\ntask: {{image: 'oci:/tmp/none', env: {{V: '{value}'}}}}"
    ))
    .unwrap()
}

/// Connects to one of `urls`, starting at `start`, trying the others in turn.
async fn connect_from(urls: &[String], start: usize) -> Option<Client> {
    for k in 0..urls.len() {
        let url = &urls[(start + k) % urls.len()];
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_secs(1), skiff_tests::connect(url)).await
        {
            return Some(c);
        }
    }
    None
}

/// The names of the jobs a server lists.
async fn job_names(c: &mut Client) -> Vec<String> {
    c.list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|(j, _)| j.spec.name)
        .collect()
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_survive_leader_kill9s_and_the_history_is_linearizable() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Arc::new(ServerCluster::start(tmp.path(), 3, &[]).await);
    cluster.leader(SETTLE).await;
    let urls = cluster.urls();
    let origin = Instant::now();
    let history: Arc<Mutex<Vec<Op>>> = Default::default();
    let created: Arc<Mutex<Vec<String>>> = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut clients = Vec::new();
    for c in 0..8usize {
        let (urls, history, created, stop) =
            (urls.clone(), history.clone(), created.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut client = connect_from(&urls, c).await;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let Some(cl) = client.as_mut() else {
                    client = connect_from(&urls, c + n as usize).await;
                    continue;
                };
                let key = format!("reg-{}", (c as u64 * 7 + n) % 5);
                let call = now_ns(origin);
                match n % 4 {
                    // A new job every fourth operation: it must survive if acknowledged.
                    0 => {
                        let name = format!("new-{c}-{n}");
                        let r = tokio::time::timeout(
                            Duration::from_secs(12),
                            cl.apply_job(&register_job(&name, "x")),
                        )
                        .await;
                        if matches!(r, Ok(Ok(_))) {
                            created.lock().unwrap().push(name);
                        } else {
                            client = None;
                        }
                    }
                    1 | 2 => {
                        let value = format!("{c}-{n}");
                        let r = tokio::time::timeout(
                            Duration::from_secs(12),
                            cl.apply_job(&register_job(&key, &value)),
                        )
                        .await;
                        let ret = match &r {
                            Ok(Ok(_)) => Some(now_ns(origin)),
                            Ok(Err(e)) => {
                                eprintln!("write error: {e}");
                                None
                            }
                            _ => {
                                eprintln!("write timeout");
                                None
                            }
                        };
                        if ret.is_none() {
                            client = None;
                        }
                        history.lock().unwrap().push(Op {
                            key,
                            kind: OpKind::Write(value),
                            call,
                            ret,
                        });
                    }
                    _ => {
                        let r =
                            tokio::time::timeout(Duration::from_secs(12), cl.get_job(&key)).await;
                        let seen = match r {
                            Ok(Ok(d)) => Some(Some(d.job.spec.task.env["V"].clone())),
                            Ok(Err(e)) if e.code() == Some(skiff_client::Code::NotFound) => {
                                Some(None)
                            }
                            _ => None,
                        };
                        match seen {
                            Some(v) => history.lock().unwrap().push(Op {
                                key,
                                kind: OpKind::Read(v),
                                call,
                                ret: Some(now_ns(origin)),
                            }),
                            None => client = None, // a failed read tells nothing
                        }
                    }
                }
            }
        }));
    }

    // Kill the leader three times while the clients run.
    let mut killed = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.leader(SETTLE).await;
        cluster.kill9(leader).await;
        killed.push(leader);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cluster.restart(leader).await;
    }
    // Keep going until at least 1,000 writes were attempted.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let writes = history
            .lock()
            .unwrap()
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Write(_)))
            .count()
            + created.lock().unwrap().len();
        if writes >= 1000 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let history = history.lock().unwrap().clone();
    let created = created.lock().unwrap().clone();
    let writes = history
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Write(_)))
        .count()
        + created.len();
    assert!(writes >= 1000, "only {writes} writes were made");
    let acked: usize = history.iter().filter(|o| o.ret.is_some()).count();
    eprintln!(
        "{} register operations ({} answered), {} jobs created, leaders killed: {killed:?}",
        history.len(),
        acked,
        created.len()
    );

    // Every acknowledged job is there, on every server.
    cluster.converged(&[0, 1, 2], SETTLE).await;
    for i in 0..3 {
        let mut c = skiff_tests::connect(&cluster.url(i)).await.unwrap();
        let names: HashSet<String> = job_names(&mut c).await.into_iter().collect();
        let missing: Vec<&String> = created.iter().filter(|n| !names.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "server {} lost acknowledged jobs: {missing:?}",
            i + 1
        );
    }
    let t = Instant::now();
    assert_eq!(check(&history), Verdict::Linearizable);
    eprintln!("checked in {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_cannot_commit_and_all_converge_after_healing() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ServerCluster::start(tmp.path(), 3, &[]).await;
    let old = cluster.leader(SETTLE).await;
    let mut c = skiff_tests::connect(&cluster.url(old)).await.unwrap();
    c.apply_job(&register_job("before", "1")).await.unwrap();
    // If the job needed an evaluation, the leader commits its plan right
    // after the job: wait for that, so no write of the leader's own is in
    // flight when the partition starts.
    skiff_tests::wait_for("no evaluation of the job to be pending", SETTLE, || {
        let url = cluster.url(old);
        async move {
            let mut c = skiff_tests::connect(&url).await.ok()?;
            let d = c.get_job("before").await.ok()?;
            d.latest_eval
                .is_none_or(|e| e.status == "complete")
                .then_some(())
        }
    })
    .await;
    cluster.converged(&[0, 1, 2], SETTLE).await;

    cluster.partition(&[old]);
    // A write sent to the isolated server does not commit there.
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        c.apply_job(&register_job("minority", "1")),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "the minority acknowledged a write"
    );
    // Read after the cut has taken hold: an acknowledgement already past
    // the proxy when it closed (say, of a rollout update a server proposed
    // on its own) may still commit an entry begun before the partition.
    let commit_before = cluster.status(old).await.unwrap().commit;
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    // The majority elects a leader of its own and goes on.
    let deadline = Instant::now() + SETTLE;
    let new = loop {
        let l = cluster.leader(SETTLE).await;
        if l != old {
            break l;
        }
        assert!(Instant::now() < deadline, "the majority elected no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut m = skiff_tests::connect(&cluster.url(new)).await.unwrap();
    m.apply_job(&register_job("majority", "1")).await.unwrap();
    let isolated = cluster.status(old).await.unwrap();
    assert_eq!(
        isolated.commit, commit_before,
        "the isolated server committed nothing new"
    );
    assert_ne!(isolated.role, "leader", "check_quorum made it step down");
    // Its local state can be read with --stale, and lacks the new job.
    let mut stale = skiff_tests::connect(&cluster.url(old))
        .await
        .unwrap()
        .stale(true);
    let names: Vec<String> = job_names(&mut stale).await.into_iter().collect();
    assert!(!names.contains(&"majority".to_string()));
    // A linearizable read there is refused rather than answered stale.
    let mut strict = skiff_tests::connect(&cluster.url(old)).await.unwrap();
    assert!(strict.list_jobs().await.is_err());
    for i in &majority {
        let mut c = skiff_tests::connect(&cluster.url(*i))
            .await
            .unwrap()
            .stale(true);
        let names: Vec<String> = job_names(&mut c).await.into_iter().collect();
        assert!(names.contains(&"majority".to_string()));
        assert!(
            !names.contains(&"minority".to_string()),
            "an uncommitted write leaked"
        );
    }

    cluster.heal();
    cluster.converged(&[0, 1, 2], SETTLE).await;
    let mut c = skiff_tests::connect(&cluster.url(old)).await.unwrap();
    let names: Vec<String> = job_names(&mut c).await.into_iter().collect();
    assert!(names.contains(&"majority".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    // Compactions every 30 entries; the log is trimmed up to the state
    // saved at the compaction before last: 200 writes leave it trimmed.
    let cluster = ServerCluster::start(tmp.path(), 3, &["--snapshot-entries", "30"]).await;
    let leader = cluster.leader(SETTLE).await;
    let follower = (0..3).find(|i| *i != leader).unwrap();
    cluster.kill9(follower).await;
    let mut c = skiff_tests::connect(&cluster.url(leader)).await.unwrap();
    for i in 0..200 {
        c.apply_job(&register_job(&format!("j{i}"), "v"))
            .await
            .unwrap();
    }
    let s = cluster.status(leader).await.unwrap();
    assert!(s.first_index > 20, "the leader compacted its log: {s:?}");
    cluster.restart(follower).await;
    cluster.converged(&[0, 1, 2], SETTLE).await;
    let back = cluster.status(follower).await.unwrap();
    assert!(
        back.snapshot_index > 1,
        "caught up from a snapshot: {back:?}"
    );
    let log = cluster.servers[follower].lock().unwrap().log();
    assert!(
        log.contains("installing a snapshot from the leader"),
        "{log}"
    );
    let mut c = skiff_tests::connect(&cluster.url(follower)).await.unwrap();
    assert_eq!(c.list_jobs().await.unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_join_and_leave_and_the_cluster_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ServerCluster::start(tmp.path(), 3, &["--snapshot-entries", "30"]).await;
    let leader = cluster.leader(SETTLE).await;
    let mut c = skiff_tests::connect(&cluster.url(leader)).await.unwrap();
    for i in 0..50 {
        c.apply_job(&register_job(&format!("j{i}"), "v"))
            .await
            .unwrap();
    }
    // A fourth server joins through a follower's API.
    let via = cluster.url((leader + 1) % 3);
    let fourth = tokio::task::spawn_blocking({
        let dir = tmp.path().join("s4");
        move || {
            skiff_tests::ServerProc::start_with(&dir, "127.0.0.1:0", &["--id", "4", "--join", &via])
        }
    })
    .await
    .unwrap();
    let urls: Vec<String> = cluster.urls().into_iter().chain([fourth.url()]).collect();
    let voters = |members: &[skiff_client::Member]| -> Vec<u64> {
        let mut v: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        v.sort_unstable();
        v
    };
    let deadline = Instant::now() + SETTLE;
    loop {
        let (members, _) = skiff_tests::connect(&fourth.url())
            .await
            .unwrap()
            .members()
            .await
            .unwrap();
        if voters(&members) == [1, 2, 3, 4] && members.iter().all(|m| m.applied_index.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fourth server was not promoted: {members:?}\n{}",
            fourth.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c4 = skiff_tests::connect(&fourth.url()).await.unwrap();
    assert_eq!(
        c4.list_jobs().await.unwrap().len(),
        50,
        "it joined with the state"
    );
    c4.apply_job(&register_job("after-join", "v"))
        .await
        .unwrap();

    // Remove a follower, then the leader itself.
    let leader = cluster.leader(SETTLE).await;
    let follower = (0..3).find(|i| *i != leader).unwrap();
    c4.remove_member(follower as u64 + 1).await.unwrap();
    c4.apply_job(&register_job("after-removing-a-follower", "v"))
        .await
        .unwrap();
    c4.remove_member(leader as u64 + 1).await.unwrap();
    c4.apply_job(&register_job("after-removing-the-leader", "v"))
        .await
        .unwrap();

    let (members, leader_id) = c4.members().await.unwrap();
    let left = voters(&members);
    assert_eq!(left.len(), 2, "{members:?}");
    assert!(!left.contains(&(leader as u64 + 1)) && !left.contains(&(follower as u64 + 1)));
    assert!(left.contains(&leader_id));
    // The removed leader stops by itself.
    let deadline = Instant::now() + SETTLE;
    while cluster.servers[leader].lock().unwrap().is_running() {
        assert!(Instant::now() < deadline, "the removed leader kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survivors: Vec<String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader && *i != follower)
        .map(|(_, u)| u.clone())
        .collect();
    for u in survivors {
        let mut c = skiff_tests::connect(&u).await.unwrap();
        assert_eq!(c.list_jobs().await.unwrap().len(), 53);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_crash_restarts_under_load_end_with_identical_state() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster =
        Arc::new(ServerCluster::start(tmp.path(), 3, &["--snapshot-entries", "200"]).await);
    cluster.leader(SETTLE).await;
    let urls = cluster.urls();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (urls, stop) = (urls.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut client = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                if client.is_none() {
                    client = connect_from(&urls, w + n as usize).await;
                }
                if let Some(c) = client.as_mut() {
                    let r = tokio::time::timeout(
                        Duration::from_secs(5),
                        c.apply_job(&register_job(&format!("w{w}-{}", n % 50), &n.to_string())),
                    )
                    .await;
                    if !matches!(r, Ok(Ok(_))) {
                        client = None;
                    }
                }
            }
        }));
    }
    // A seeded sequence of crashes: which server, and for how long.
    let mut seed = 0x5eed_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700 + rand() % 800)).await;
        let victim = (rand() % 3) as usize;
        cluster.kill9(victim).await;
        tokio::time::sleep(Duration::from_millis(300 + rand() % 700)).await;
        cluster.restart(victim).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    cluster.converged(&[0, 1, 2], SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumes_on_another_server_without_loss_or_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ServerCluster::start(tmp.path(), 3, &[]).await;
    let leader = cluster.leader(SETTLE).await;
    let a = (leader + 1) % 3; // the server the first watch uses, then killed
    let b = (leader + 2) % 3;
    let mut writer = skiff_tests::connect(&cluster.url(leader)).await.unwrap();
    writer.apply_job(&register_job("seed", "0")).await.unwrap();
    let start = cluster.status(leader).await.unwrap().applied;

    // A reference watch on the leader sees everything from `start`.
    let mut reference = skiff_tests::connect(&cluster.url(leader))
        .await
        .unwrap()
        .watch(start)
        .await
        .unwrap();
    let mut first = skiff_tests::connect(&cluster.url(a))
        .await
        .unwrap()
        .watch(start)
        .await
        .unwrap();
    for i in 0..20 {
        writer
            .apply_job(&register_job("w", &i.to_string()))
            .await
            .unwrap();
    }
    // Read part of the stream from `a`, then lose `a`.
    let mut got = Vec::new();
    while got.len() < 15 {
        let e = first.next().await.unwrap().unwrap();
        got.push((e.index, e.kind.clone(), e.key.clone(), e.json.clone()));
    }
    cluster.kill9(a).await;
    for i in 20..40 {
        writer
            .apply_job(&register_job("w", &i.to_string()))
            .await
            .unwrap();
    }
    let resume_from = got.last().unwrap().0;
    // Events of one index arrive together; drop the partial last index and
    // resume from the one before, as a client tracking complete indexes does.
    got.retain(|e| e.0 < resume_from);
    let last_complete = got.last().map(|e| e.0).unwrap_or(start);
    let mut second = skiff_tests::connect(&cluster.url(b))
        .await
        .unwrap()
        .watch(last_complete)
        .await
        .unwrap();
    // Read until the last write's job event: one index carries several
    // events (job, version history, evaluation...), in no promised order.
    let w_writes = |got: &[(u64, String, String, Option<String>)]| {
        got.iter().filter(|e| e.1 == "job" && e.2 == "w").count()
    };
    while w_writes(&got) < 40 {
        let e = tokio::time::timeout(Duration::from_secs(10), second.next())
            .await
            .expect("the resumed watch stopped short of the last write")
            .unwrap()
            .unwrap();
        got.push((e.index, e.kind.clone(), e.key.clone(), e.json.clone()));
    }
    let mut want = Vec::new();
    while want.len() < got.len() {
        let e = reference.next().await.unwrap().unwrap();
        want.push((e.index, e.kind.clone(), e.key.clone(), e.json.clone()));
    }
    assert_eq!(got, want, "the resumed watch lost or repeated events");
    let writes: BTreeMap<String, usize> =
        got.iter()
            .filter(|e| e.1 == "job")
            .fold(BTreeMap::new(), |mut m, e| {
                *m.entry(e.2.clone()).or_default() += 1;
                m
            });
    assert_eq!(writes.get("w"), Some(&40));
}
