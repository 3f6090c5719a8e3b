//! Writes the seed corpus of every fuzz target under `fuzz/corpus/` (run
//! from the repository root: `make fuzz-seeds`): a few well-formed inputs
//! per target, so the fuzzers start from what the real callers send, and
//! the hostile cases the review found. Seeds are named `seed-*`; inputs
//! the fuzzers keep are added beside them.

use std::path::{Path, PathBuf};

use prost::Message;
use raft::prelude::{ConfState, Entry, HardState, MessageType, Snapshot};
use skiff_proto::pb;

fn main() {
    let root = PathBuf::from("fuzz/corpus");
    spec(&root.join("spec"));
    cluster_api(&root.join("cluster_api"));
    node_api(&root.join("node_api"));
    peer(&root.join("peer"));
    agent_api(&root.join("agent_api"));
    layer(&root.join("layer"));
    wal(&root.join("wal"));
    println!("seeds written under {}", root.display());
}

fn put(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
}

/// A selector byte, then the message.
fn call(pick: u8, msg: &impl Message) -> Vec<u8> {
    let mut v = vec![pick];
    v.extend(msg.encode_to_vec());
    v
}

fn spec(dir: &Path) {
    let mut examples: Vec<PathBuf> = std::fs::read_dir("examples")
        .expect("run from the repository root")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    for p in examples {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        put(dir, &name, &std::fs::read(&p).unwrap());
    }
    put(dir, "json", br#"{"name": "j", "replicas": 2, "task": {"image": "oci:/srv/images/busybox:latest", "command": ["sleep", "60"], "env": {"A": "1"}}}"#);
    put(dir, "deep", "[".repeat(200).as_bytes());
    put(
        dir,
        "aliases",
        b"a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
    );
    put(
        dir,
        "workdir-proc",
        b"name: w\ntask: {image: 'oci:/i', workdir: /proc/self/fd/7}\n",
    );
    put(dir, "big-numbers", b"name: n\nreplicas: 99999999999999999999\ntask: {image: 'oci:/i', resources: {cpu: 1e400, memory: -1}}\n");
}

fn job_spec() -> pb::JobSpec {
    let spec = skiff_model::JobSpec::from_yaml(
        "name: web\nreplicas: 2\ntask: {image: 'oci:/srv/images/busybox:latest', command: [sleep, '3600'], resources: {cpu: 100m, memory: 32Mi}}\n",
    )
    .unwrap();
    pb::JobSpec::from(&spec)
}

fn cluster_api(dir: &Path) {
    let apply = pb::ApplyJobRequest {
        spec: Some(job_spec()),
    };
    put(dir, "apply-job", &call(0, &apply));
    put(
        dir,
        "delete-job",
        &call(
            1,
            &pb::DeleteJobRequest {
                name: "web".into(),
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "get-job",
        &call(
            2,
            &pb::GetJobRequest {
                name: "web".into(),
                ..Default::default()
            },
        ),
    );
    put(dir, "list-jobs", &call(3, &pb::ListJobsRequest::default()));
    put(
        dir,
        "list-allocs",
        &call(
            4,
            &pb::ListAllocsRequest {
                job: "web".into(),
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "list-nodes",
        &call(5, &pb::ListNodesRequest::default()),
    );
    put(
        dir,
        "drain",
        &call(
            6,
            &pb::SetNodeEligibilityRequest {
                name: "n1".into(),
                draining: true,
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "exec",
        &call(
            9,
            &pb::ExecRequest {
                alloc_id: "0123456789abcdef0123456789abcdef".into(),
                command: vec!["true".into()],
                ..Default::default()
            },
        ),
    );
    put(dir, "status", &call(10, &pb::StatusRequest::default()));
    put(dir, "watch", &call(11, &pb::WatchRequest::default()));
    put(
        dir,
        "top",
        &call(
            40,
            &pb::TopRequest {
                allocs: true,
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "events",
        &call(
            39,
            &pb::EventsRequest {
                follow: true,
                types: vec!["warning".into()],
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "scale",
        &call(
            18,
            &pb::ScaleJobRequest {
                name: "web".into(),
                replicas: 3,
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "create-user",
        &call(
            25,
            &pb::CreateUserRequest {
                name: "ana".into(),
                role: pb::UserRole::Developer as i32,
                ..Default::default()
            },
        ),
    );
    let ns = skiff_model::namespace::Namespace::from_yaml(
        "name: team-a\nquota: {cpu: 4, memory: 8Gi, allocations: 20}\n",
    )
    .unwrap();
    put(
        dir,
        "apply-namespace",
        &call(
            31,
            &pb::ApplyNamespaceRequest {
                namespace: Some(pb::Namespace::from(&ns)),
            },
        ),
    );
    let queue = skiff_model::queue::Queue::from_yaml(
        "name: team-a\ncohort: lab\nnamespaces: [team-a]\nnominal: {gpus: {any: 4}}\n",
    )
    .unwrap();
    put(
        dir,
        "apply-queue",
        &call(
            41,
            &pb::ApplyQueueRequest {
                queue: Some(pb::Queue::from(&queue)),
            },
        ),
    );
    let mut sync = skiff_model::sync::SyncSource::new("lab", "/srv/git/lab.git", "default");
    sync.path = "jobs".into();
    sync.prune = Some("owner=gitops".into());
    put(
        dir,
        "apply-sync",
        &call(
            46,
            &pb::ApplySyncRequest {
                source: Some(pb::SyncSource::from(&sync)),
            },
        ),
    );
    put(
        dir,
        "describe-queue",
        &call(
            43,
            &pb::DescribeQueueRequest {
                name: "team-a".into(),
            },
        ),
    );
    put(
        dir,
        "list-node-images",
        &call(34, &pb::ListNodeImagesRequest { node: "n1".into() }),
    );
    put(
        dir,
        "pull-node-image",
        &call(
            35,
            &pb::PullNodeImageRequest {
                node: "n1".into(),
                image: "alpine:3.20".into(),
                namespace: "default".into(),
            },
        ),
    );
    put(
        dir,
        "set-registry-login",
        &call(
            36,
            &pb::SetRegistryLoginRequest {
                namespace: "default".into(),
                registry: "registry.lab:5000".into(),
                username: "ci".into(),
                password: "pw".into(),
            },
        ),
    );
    put(
        dir,
        "list-registry-logins",
        &call(37, &pb::ListRegistryLoginsRequest::default()),
    );
    put(
        dir,
        "delete-registry-login",
        &call(
            38,
            &pb::DeleteRegistryLoginRequest {
                namespace: "default".into(),
                registry: "registry.lab:5000".into(),
            },
        ),
    );
}

fn node_api(dir: &Path) {
    let register = pb::RegisterRequest {
        name: "n1".into(),
        address: "127.0.0.1:7702".into(),
        capacity: Some(pb::Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ..Default::default()
        }),
        agent_version: "fuzz".into(),
        ..Default::default()
    };
    put(dir, "register", &call(0, &register));
    put(
        dir,
        "check-metrics-token",
        &call(
            4,
            &pb::CheckMetricsTokenRequest {
                authorization: "Bearer skiffu1.abc.def".into(),
            },
        ),
    );
    put(
        dir,
        "heartbeat",
        &call(
            1,
            &pb::HeartbeatRequest {
                name: "n1".into(),
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "watch",
        &call(
            2,
            &pb::WatchAllocationsRequest {
                node: "n1".into(),
                min_index: 0,
                without_peers: false,
            },
        ),
    );
    let update = pb::AllocStatusUpdate {
        alloc_id: "0123456789abcdef0123456789abcdef".into(),
        status: pb::AllocStatus::Running as i32,
        healthy: Some(true),
        ..Default::default()
    };
    put(
        dir,
        "update",
        &call(
            3,
            &pb::UpdateAllocStatusRequest {
                node: "n1".into(),
                updates: vec![update],
            },
        ),
    );
}

fn raft_message(t: MessageType, f: impl FnOnce(&mut raft::prelude::Message)) -> Vec<u8> {
    use protobuf::Message as _;
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(t);
    m.from = 2;
    m.to = 1;
    m.term = 1;
    f(&mut m);
    m.write_to_bytes().unwrap()
}

fn peer(dir: &Path) {
    let env = |message: Vec<u8>| pb::RaftEnvelope { message };
    put(
        dir,
        "heartbeat",
        &call(
            0,
            &env(raft_message(MessageType::MsgHeartbeat, |m| m.commit = 1)),
        ),
    );
    put(
        dir,
        "append",
        &call(
            0,
            &env(raft_message(MessageType::MsgAppend, |m| {
                m.index = 1;
                m.log_term = 1;
                m.commit = 2;
                m.entries = vec![Entry {
                    index: 2,
                    term: 1,
                    data: b"{}".to_vec().into(),
                    ..Default::default()
                }]
                .into();
            })),
        ),
    );
    put(
        dir,
        "vote",
        &call(
            0,
            &env(raft_message(MessageType::MsgRequestVote, |m| {
                m.term = 5;
                m.index = 10;
                m.log_term = 4;
            })),
        ),
    );
    put(
        dir,
        "snapshot",
        &call(
            1,
            &env(raft_message(MessageType::MsgSnapshot, |m| {
                let mut s = Snapshot::default();
                s.mut_metadata().index = 100;
                s.mut_metadata().term = 3;
                s.mut_metadata().set_conf_state(ConfState {
                    voters: vec![1, 2],
                    ..Default::default()
                });
                s.data = b"{\"jobs\":{},\"nodes\":{},\"allocs\":{},\"evals\":{},\"index\":100,\"last_unblock_index\":0}".to_vec().into();
                m.set_snapshot(s);
            })),
        ),
    );
    put(
        dir,
        "relayed-heartbeat",
        &call(
            2,
            &pb::HeartbeatRequest {
                name: "n1".into(),
                ..Default::default()
            },
        ),
    );
    put(dir, "ages", &call(3, &pb::HeartbeatAgesRequest {}));
    put(dir, "secrets-key", &call(4, &pb::SecretsKeyRequest {}));
    put(
        dir,
        "membership",
        &call(
            5,
            &pb::MembershipRequest {
                change: Some(pb::membership_request::Change::Remove(7)),
            },
        ),
    );
}

fn agent_api(dir: &Path) {
    let id = "0123456789abcdef0123456789abcdef".to_string();
    put(
        dir,
        "logs",
        &call(
            0,
            &pb::AgentLogsRequest {
                alloc_id: id.clone(),
                tail: 10,
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "logs-escape",
        &call(
            0,
            &pb::AgentLogsRequest {
                alloc_id: "../../../etc".into(),
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "exec",
        &call(
            1,
            &pb::AgentExecRequest {
                alloc_id: id,
                command: vec!["cat".into(), "/etc/hostname".into()],
                ..Default::default()
            },
        ),
    );
    put(
        dir,
        "reset-gpu",
        &call(
            4,
            &pb::ResetGpuRequest {
                uuid: "GPU-0".into(),
            },
        ),
    );
    put(dir, "list-images", &call(2, &pb::ListImagesRequest {}));
    put(
        dir,
        "pull-image",
        &call(
            3,
            &pb::PullImageRequest {
                image: "registry.lab:5000/team/app:v1".into(),
                namespace: "default".into(),
                logins: vec![pb::RegistryLogin {
                    registry: "registry.lab:5000".into(),
                    username: "ci".into(),
                    password: "pw".into(),
                }],
            },
        ),
    );
}

/// A tar entry with a name written as raw bytes (the tar crate refuses to
/// write `..` or absolute names itself).
fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(1_600_000_000);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn layer(dir: &Path) {
    use tar::EntryType as T;
    let tar = |f: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    };
    put(
        dir,
        "plain",
        &tar(&|b| {
            entry(b, T::Directory, "bin/", None, b"");
            entry(b, T::Regular, "bin/sh", None, b"#!/bin/true\n");
            entry(b, T::Symlink, "bin/ash", Some("sh"), b"");
            entry(b, T::Link, "bin/hard", Some("bin/sh"), b"");
        }),
    );
    put(
        dir,
        "absolute",
        &tar(&|b| entry(b, T::Regular, "/etc/evil", None, b"x")),
    );
    put(
        dir,
        "dotdot",
        &tar(&|b| entry(b, T::Regular, "../beside/evil", None, b"x")),
    );
    put(
        dir,
        "symlink-escape",
        &tar(&|b| {
            entry(b, T::Symlink, "out", Some("../beside"), b"");
            entry(b, T::Regular, "out/evil", None, b"x");
        }),
    );
    put(
        dir,
        "absolute-symlink",
        &tar(&|b| {
            entry(b, T::Symlink, "etc", Some("/tmp"), b"");
            entry(b, T::Regular, "etc/evil", None, b"x");
        }),
    );
    put(
        dir,
        "hardlink-escape",
        &tar(&|b| entry(b, T::Link, "passwd", Some("../../../../etc/passwd"), b"")),
    );
    put(
        dir,
        "whiteouts",
        &tar(&|b| {
            entry(b, T::Directory, "d/", None, b"");
            entry(b, T::Regular, "d/.wh..wh..opq", None, b"");
            entry(b, T::Regular, ".wh.gone", None, b"");
            entry(b, T::Regular, ".wh...", None, b"");
        }),
    );
    put(
        dir,
        "device",
        &tar(&|b| entry(b, T::Char, "dev/null", None, b"")),
    );
}

fn wal(dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let raft_dir = tmp.path().join("raft");
    {
        let mut log = skiff_store::log::RaftLog::open(&raft_dir).unwrap();
        let entries: Vec<Entry> = (1..=5)
            .map(|i| Entry {
                index: i,
                term: 1,
                data: format!("entry {i}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 5,
            ..Default::default()
        };
        log.persist(&entries, Some(&hs), true).unwrap();
    }
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&raft_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    segments.sort();
    let bytes = std::fs::read(&segments[0]).unwrap();
    // The records, without the zeros the segment is made ahead of them.
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let records = &bytes[..end];
    put(dir, "five-entries", records);
    put(dir, "torn", &records[..records.len() * 2 / 3]);
    let mut flipped = records.to_vec();
    flipped[records.len() / 2] ^= 0xff;
    put(dir, "flipped", &flipped);
    let mut zeroed_length = records.to_vec();
    zeroed_length[..4].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
    put(dir, "huge-length", &zeroed_length);
}
