//! Access control as an attacker and an operator meet it: real servers and
//! agents over mutual TLS on loopback, credentials generated for the test
//! (a CA made with `skiff ca create`, tokens made with `skiff token
//! create`). What is checked is what each would notice: a refused call and
//! its code, a cluster whose state did not move.

use std::time::Duration;

use skiff_client::join::{join, Joiner};
use skiff_client::{Client, ClientTls, Code, JoinRole};
use skiff_pki::{Ca, Identity, CA_LIFETIME};
use skiff_proto::pb;
use skiff_tests::cluster::ServerCluster;
use skiff_tests::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const HOUR: Duration = Duration::from_secs(3600);

/// Credentials for `who`, signed by `ca`.
fn creds(ca: &Ca, who: Identity) -> ClientTls {
    let leaf = ca.issue(&who, HOUR).unwrap();
    ClientTls {
        token: None,
        ca_pem: test_pki().ca.cert_pem().to_string(),
        identity: Some((leaf.cert_pem, leaf.key_pem)),
    }
}

/// A TLS channel to `addr` (host:port) presenting `tls`'s certificate.
async fn channel(addr: &str, tls: &ClientTls) -> Result<Channel, tonic::transport::Error> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .domain_name(skiff_pki::SERVER_DNS);
    if let Some((c, k)) = &tls.identity {
        config = config.identity(tonic::transport::Identity::from_pem(c, k));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(config)?
        .connect()
        .await
}

fn registration(name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        name: name.into(),
        capacity: Some(pb::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: 0,
        }),
        address: "127.0.0.1:1".into(),
        agent_version: "test".into(),
        ..Default::default()
    }
}

/// A node that joined with a token through `url`: its credentials.
async fn joined_node(url: &str, name: &str) -> ClientTls {
    let token = join_token(url, "node");
    let j = join(url, &token, &Joiner::Node(name.into())).await.unwrap();
    ClientTls {
        token: None,
        ca_pem: j.ca_pem,
        identity: Some((j.cert_pem, j.key_pem)),
    }
}

#[tokio::test]
async fn the_client_api_wants_a_certificate_of_the_cluster_and_the_right_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let url = server.url();
    let mut admin = server.client().await;

    // No client certificate: only the join call is open.
    let anonymous = ClientTls {
        token: None,
        ca_pem: test_pki().ca.cert_pem().to_string(),
        identity: None,
    };
    let err = Client::connect_with(&url, Some(&anonymous))
        .await
        .unwrap()
        .apply_job(&shell_job("intruder", 1, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    // A certificate from another CA does not get past the handshake.
    let other = Ca::generate(CA_LIFETIME).unwrap();
    let stranger = creds(&other, Identity::User("admin".into()));
    let refused = match Client::connect_with(&url, Some(&stranger)).await {
        Err(_) => true,
        Ok(mut c) => c.list_jobs().await.is_err(),
    };
    assert!(refused, "a certificate of another CA was accepted");

    // Plaintext to a TLS port gets nowhere.
    let plain = format!("http://{}", server.addr);
    let refused = match Client::connect(&plain).await {
        Err(_) => true,
        Ok(mut c) => c.list_jobs().await.is_err(),
    };
    assert!(refused, "a plaintext client was answered");

    // A node's certificate is for the node API only.
    let node = joined_node(&url, "n1").await;
    let err = Client::connect_with(&url, Some(&node))
        .await
        .unwrap()
        .apply_job(&shell_job("intruder", 1, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("node \"n1\" may not"), "{err}");

    // A user the cluster never made has no rights, whoever signed for it.
    let bob = creds(&test_pki().ca, Identity::User("bob".into()));
    let err = Client::connect_with(&url, Some(&bob))
        .await
        .unwrap()
        .list_jobs()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // None of them got a job in.
    assert!(admin.list_jobs().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_node_speaks_only_for_itself_and_not_after_it_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let url = server.url();
    let mut admin = server.client().await;
    let a = joined_node(&url, "node-a").await;
    let mut as_a =
        pb::node_api_client::NodeApiClient::new(channel(&server.addr, &a).await.unwrap());

    as_a.register(registration("node-a")).await.unwrap();
    let err = as_a.register(registration("node-b")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = as_a
        .heartbeat(pb::HeartbeatRequest {
            name: "node-b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let nodes: Vec<String> = admin
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node.name)
        .collect();
    assert_eq!(nodes, ["node-a"], "node-b was never registered");

    // The name is taken: another machine with a fresh token cannot be node-a.
    let token = join_token(&url, "node");
    let err = join(&url, &token, &Joiner::Node("node-a".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has joined already"), "{err}");

    // Removed: the old certificate stops working at once, the name is free.
    let out = skiff(&url, &["node", "remove", "node-a"]);
    assert!(out.status.success(), "{out:?}");
    let err = as_a
        .heartbeat(pb::HeartbeatRequest {
            name: "node-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("was removed"), "{err:?}");
    assert!(admin.list_nodes().await.unwrap().is_empty());
    join(&url, &token, &Joiner::Node("node-a".into()))
        .await
        .expect("the name may join again after `skiff node remove`");
}

#[tokio::test]
async fn expired_revoked_and_foreign_tokens_cannot_join_and_no_secret_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let url = server.url();
    let mut admin = server.client().await;

    // Revoked with the CLI: refused, and `skiff token ls` says so.
    let revoked = join_token(&url, "node");
    let id = revoked.split('.').nth(2).unwrap().to_string();
    let out = skiff(&url, &["token", "revoke", &id]);
    assert!(out.status.success(), "{out:?}");
    let err = join(&url, &revoked, &Joiner::Node("r".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    let ls = skiff(&url, &["token", "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{ls}"
    );

    // Expired: a token of one second, tried once its time is up.
    let short = admin
        .create_token(skiff_client::JoinRole::Node, 1, "short")
        .await
        .unwrap();
    let left = short.expires_ms.saturating_sub(skiff_server_time_ms());
    tokio::time::sleep(Duration::from_millis(left + 50)).await;
    let err = join(&url, &short.token, &Joiner::Node("late".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // A node token does not make a server.
    let node_token = join_token(&url, "node");
    let err = join(&url, &node_token, &Joiner::Server(7))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("node"), "{err}");

    // A wrong secret, and a token whose pin names another CA: the second is
    // refused before anything is sent to the server.
    let mut parts: Vec<&str> = node_token.split('.').collect();
    parts[3] = "wrongsecretwrong";
    let err = join(&url, &parts.join("."), &Joiner::Node("w".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown token"), "{err}");
    let other_pin = Ca::generate(CA_LIFETIME).unwrap().pin().unwrap();
    let mut parts: Vec<&str> = node_token.split('.').collect();
    parts[1] = &other_pin;
    let err = join(&url, &parts.join("."), &Joiner::Node("p".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pin"), "{err}");
    let err = join(&url, "skiff1.garbage", &Joiner::Node("g".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("skiff1."), "{err}");

    // Nobody joined with any of them.
    assert!(admin.list_nodes().await.unwrap().is_empty());
    let tokens = admin.list_tokens().await.unwrap();
    assert!(tokens.iter().all(|t| t.uses == 0), "{tokens:?}");

    // The secrets were never written to the server's log.
    let log = server.log();
    for token in [&revoked, &short.token, &node_token] {
        let secret = token.rsplit('.').next().unwrap();
        assert!(!log.contains(secret), "a token secret is in the server log");
    }
}

/// Three servers holding one job, converged: the leader, the state's
/// digest, and a follower (`target`) with its peer address.
struct Steady {
    cluster: ServerCluster,
    leader: usize,
    digest: u64,
    target: usize,
    target_id: u64,
    peer_addr: String,
}

impl Steady {
    async fn start(dir: &std::path::Path) -> Steady {
        let cluster = ServerCluster::start(dir, 3, &[]).await;
        let leader = cluster.leader(Duration::from_secs(30)).await;
        let mut admin = connect(&cluster.url(leader)).await.unwrap();
        admin
            .apply_job(&shell_job("steady", 0, "true"))
            .await
            .unwrap();
        // Quiet first: every server has recorded its addresses (each
        // record is a change of the state, which a loaded machine may
        // see late).
        wait_for(
            "every server's addresses recorded",
            Duration::from_secs(30),
            || {
                let mut c = admin.clone();
                async move {
                    let (members, _) = c.members().await.ok()?;
                    (members.len() == 3 && members.iter().all(|m| !m.api_addr.is_empty()))
                        .then_some(())
                }
            },
        )
        .await;
        let digest = cluster.converged(&[0, 1, 2], Duration::from_secs(30)).await;
        let target = (leader + 1) % 3;
        let data_dir = cluster.servers[target].lock().unwrap().data_dir.clone();
        let peer_addr = std::fs::read_to_string(data_dir.join("peer.addr"))
            .unwrap()
            .trim()
            .to_string();
        Steady {
            cluster,
            leader,
            digest,
            target,
            target_id: target as u64 + 1,
            peer_addr,
        }
    }
}

#[tokio::test]
async fn a_member_cannot_send_raft_messages_as_another_and_outsiders_cannot_send_any() {
    let tmp = tempfile::tempdir().unwrap();
    let Steady {
        cluster,
        leader,
        digest,
        target,
        target_id,
        peer_addr,
    } = Steady::start(tmp.path()).await;
    let member = (target + 1) % 3;
    let member_id = member as u64 + 1;
    let forged_from = 6 - target_id - member_id; // the third server
                                                 // A heartbeat with a far higher term would depose the target's leader
                                                 // if it were believed.
    let raft = |from: u64, to: u64| {
        let mut m = skiff_store::RaftMessage::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = 1_000;
        pb::RaftEnvelope {
            message: protobuf::Message::write_to_bytes(&m).unwrap(),
        }
    };
    let send = |who: ClientTls, env: pb::RaftEnvelope| {
        let addr = peer_addr.trim().to_string();
        async move {
            let ch = channel(&addr, &who).await.map_err(|e| e.to_string())?;
            pb::peer_client::PeerClient::new(ch)
                .raft(tokio_stream::iter(vec![env]))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    };
    let as_member = creds(&test_pki().ca, Identity::Server(member_id));
    let err = send(as_member.clone(), raft(forged_from, target_id))
        .await
        .unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");
    let err = send(as_member, raft(member_id, 99)).await.unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");
    let stranger = creds(&test_pki().ca, Identity::Server(9));
    let err = send(stranger, raft(9, target_id)).await.unwrap_err();
    assert!(err.contains("not a member"), "{err}");
    let user = creds(&test_pki().ca, Identity::User("admin".into()));
    let err = send(user, raft(forged_from, target_id)).await.unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");

    // Nothing moved: the same leader, term and state everywhere.
    let after = cluster.converged(&[0, 1, 2], Duration::from_secs(30)).await;
    assert_eq!(after, digest);
    let status = cluster.status(target).await.unwrap();
    assert_eq!(status.leader_id, leader as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_stop_a_server_with_a_heartbeat_past_its_log_nor_send_snapshots_by_the_stream(
) {
    let tmp = tempfile::tempdir().unwrap();
    let Steady {
        cluster,
        leader,
        digest,
        target,
        target_id,
        peer_addr,
    } = Steady::start(tmp.path()).await;
    let member_id = ((target + 1) % 3) as u64 + 1;
    let as_member = creds(&test_pki().ca, Identity::Server(member_id));
    let message = |kind: raft::eraftpb::MessageType, commit: u64| {
        let mut m = skiff_store::RaftMessage::default();
        m.set_msg_type(kind);
        m.from = member_id;
        m.to = target_id;
        m.term = 1_000;
        m.commit = commit;
        pb::RaftEnvelope {
            message: protobuf::Message::write_to_bytes(&m).unwrap(),
        }
    };
    let stream = |env: pb::RaftEnvelope| {
        let (addr, who) = (peer_addr.clone(), as_member.clone());
        async move {
            let ch = channel(&addr, &who).await.map_err(|e| e.to_string())?;
            pb::peer_client::PeerClient::new(ch)
                .raft(tokio_stream::iter(vec![env]))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    };

    // The review's crash: a heartbeat that commits a billion entries.
    stream(message(
        raft::eraftpb::MessageType::MsgHeartbeat,
        1_000_000_000,
    ))
    .await
    .unwrap();
    // A snapshot on the Raft stream is not taken, whatever it holds.
    let err = stream(message(raft::eraftpb::MessageType::MsgSnapshot, 0))
        .await
        .unwrap_err();
    assert!(err.starts_with("InvalidArgument"), "{err}");
    // A node's certificate is refused before a large body is read.
    let node = creds(&test_pki().ca, Identity::Node("n1".into()));
    let ch = channel(&peer_addr, &node).await.unwrap();
    let err = pb::peer_snapshot_client::PeerSnapshotClient::new(ch)
        .max_encoding_message_size(usize::MAX)
        .snapshot(pb::RaftEnvelope {
            message: vec![0; 8 << 20],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // A relayed heartbeat with a huge node name is refused by its rule.
    let ch = channel(&peer_addr, &as_member).await.unwrap();
    let err = pb::peer_client::PeerClient::new(ch)
        .heartbeat(pb::HeartbeatRequest {
            name: "n".repeat(1 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("name:"), "{err:?}");

    // The target still serves, under the same leader, with the same state.
    let after = cluster.converged(&[0, 1, 2], Duration::from_secs(30)).await;
    assert_eq!(after, digest);
    let status = cluster.status(target).await.unwrap();
    assert_eq!(status.leader_id, leader as u64 + 1);
    let log = cluster.servers[target].lock().unwrap().log();
    assert!(log.contains("committing past the end of the log"), "{log}");
}

#[tokio::test]
async fn only_servers_may_call_an_agent_and_insecure_mode_still_serves_plaintext() {
    require_container_host();
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let _agent = AgentProc::start(&tmp.path().join("a"), &server.url(), "worker", &[]);
    let admin = server.client().await;
    let address = wait_for("the agent to register", Duration::from_secs(30), || {
        let mut c = admin.clone();
        async move { Some(c.list_nodes().await.ok()?.first()?.node.address.clone()) }
    })
    .await;
    assert!(
        _agent.data_dir.join("tls").join("node.key").exists(),
        "the node keeps its credentials"
    );

    // The administrator's own certificate is not a server's.
    let admin_tls = creds(&test_pki().ca, Identity::User("admin".into()));
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&admin_tls.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &admin_tls.identity.as_ref().unwrap().0,
            &admin_tls.identity.as_ref().unwrap().1,
        ))
        .domain_name(skiff_pki::identity::node_dns("worker"));
    let ch = Channel::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = pb::agent_api_client::AgentApiClient::new(ch)
        .exec(pb::AgentExecRequest {
            alloc_id: "0".repeat(32),
            command: vec!["id".into()],
            timeout_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // --insecure: plaintext, nobody checked (and the log says so).
    let plain = ServerProc::start_with(&tmp.path().join("p"), "127.0.0.1:0", &["--insecure"]);
    assert!(plain.url().starts_with("http://"));
    let mut c = wait_for("the insecure server", Duration::from_secs(20), || {
        let url = plain.url();
        async move { Client::connect(&url).await.ok() }
    })
    .await;
    c.apply_job(&shell_job("open", 0, "true")).await.unwrap();
    assert!(plain.log().contains("INSECURE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_audits_changes_and_denials_and_skiff_audit_merges_them() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ServerCluster::start(tmp.path(), 3, &[]).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    // A change through a follower, by the admin.
    let mut admin = connect(&cluster.url(follower)).await.unwrap();
    admin
        .apply_job(&shell_job("audited", 0, "true"))
        .await
        .unwrap();
    // A denial at the leader: a node's certificate cannot apply jobs.
    let node = creds(&test_pki().ca, Identity::Node("intruder".into()));
    let mut as_node = Client::connect_with(&cluster.url(leader), Some(&node))
        .await
        .unwrap();
    let err = as_node
        .apply_job(&shell_job("forged", 0, "true"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // A token: its id may be audited, its secret never.
    let word = join_token(&cluster.url(leader), "node");

    let out = skiff_command()
        .args(["audit", "-o", "json", "--since", "1h", "--server"])
        .arg(cluster.url(leader))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find = |method: &str, object: &str| {
        records
            .iter()
            .find(|r| r["method"] == method && r["object"] == object)
            .unwrap_or_else(|| panic!("no {method} of {object} in {records:#?}"))
            .clone()
    };
    let applied = find("Cluster/ApplyJob", "job/audited");
    assert_eq!(applied["identity"], "user/admin");
    assert_eq!(applied["outcome"], "OK");
    assert_eq!(applied["server"], follower as u64 + 1);
    let denied = find("Cluster/ApplyJob", "job/forged");
    assert_eq!(denied["identity"], "node/intruder");
    assert_eq!(denied["outcome"], "PERMISSION_DENIED");
    assert_eq!(denied["server"], leader as u64 + 1);
    let id = word.trim().split('.').nth(2).unwrap();
    assert_eq!(
        find("Access/CreateToken", &format!("token/{id}"))["outcome"],
        "OK"
    );
    let times: Vec<u64> = records
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged by time");

    // The files are the servers' own, private, and hold no secret.
    let secret = word.trim().rsplit('.').next().unwrap();
    for s in &cluster.servers {
        let dir = s.lock().unwrap().data_dir.join("audit");
        let file = dir.join("audit.log");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(secret),
            "a token's secret in {}",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_may_do_what_its_row_says_and_a_revoked_user_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    let url = server.url();
    let mut admin = server.client().await;
    admin
        .apply_job(&shell_job("existing", 0, "true"))
        .await
        .unwrap();
    let viewer = make_user(&url, tmp.path(), "vic", "viewer", "");
    let developer = make_user(&url, tmp.path(), "dev", "developer", "");
    let operator = make_user(&url, tmp.path(), "otto", "operator", "");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&viewer).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let denied = |r: Result<_, skiff_client::ClientError>| {
        let err = r.expect_err("refused");
        assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
        err.to_string()
    };

    // viewer: reads, never writes.
    let mut vic = as_user(&viewer).await;
    assert_eq!(vic.list_jobs().await.unwrap().len(), 1);
    let err = denied(vic.apply_job(&shell_job("v", 0, "true")).await.map(|_| ()));
    assert!(
        err.contains("user \"vic\" (viewer) may not apply jobs"),
        "{err}"
    );
    denied(
        vic.set_node_eligibility("n1", true, false, None)
            .await
            .map(|_| ()),
    );

    // developer: changes jobs; runs no node, makes no token.
    let mut dev = as_user(&developer).await;
    dev.apply_job(&shell_job("by-dev", 0, "true"))
        .await
        .unwrap();
    denied(
        dev.set_node_eligibility("n1", true, false, None)
            .await
            .map(|_| ()),
    );
    denied(dev.create_token(JoinRole::Node, 60, "").await.map(|_| ()));
    denied(dev.list_users().await.map(|_| ()));

    // operator: runs nodes (this one is unknown: past the permission, a
    // NOT_FOUND), changes no job, execs into nothing.
    let mut otto = as_user(&operator).await;
    let err = otto
        .set_node_eligibility("n1", true, false, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    denied(otto.apply_job(&shell_job("o", 0, "true")).await.map(|_| ()));
    denied(otto.delete_job("existing").await.map(|_| ()));
    denied(
        otto.exec(&"0".repeat(32), &["id".to_string()], None)
            .await
            .map(|_| ()),
    );

    // Revoked: the very next call on the same connection is refused, and
    // the name is never given out again.
    let out = skiff_command()
        .args(["user", "revoke", "vic", "--server", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = denied(vic.list_jobs().await.map(|_| ()));
    assert!(err.contains("unknown or revoked"), "{err}");
    let again = skiff_command()
        .args([
            "user", "create", "vic", "--role", "admin", "--server", &url, "--out",
        ])
        .arg(tmp.path().join("vic2.conf"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never given out again"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let users = admin.list_users().await.unwrap();
    let names: Vec<(&str, bool)> = users.iter().map(|u| (u.name.as_str(), u.revoked)).collect();
    assert_eq!(names, [("dev", false), ("otto", false), ("vic", true)]);

    // Only the jobs the admin and the developer applied exist.
    let mut jobs: Vec<String> = admin
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|(j, _)| j.name().to_string())
        .collect();
    jobs.sort();
    assert_eq!(jobs, ["by-dev", "existing"]);

    // A user renews its own certificate into its own file, which then
    // works as before; a revoked one cannot.
    let before = std::fs::read_to_string(&developer).unwrap();
    let renew = |conf: &std::path::Path| {
        skiff_command()
            .args(["user", "renew", "--server", &url, "--config"])
            .arg(conf)
            .output()
            .unwrap()
    };
    let out = renew(&developer);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = std::fs::read_to_string(&developer).unwrap();
    assert_ne!(before, after);
    let mode = std::fs::metadata(&developer).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    as_user(&developer).await.list_jobs().await.unwrap();
    assert!(!renew(&viewer).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_renews_its_certificate_before_it_expires_and_keeps_working() {
    require_container_host();
    let tmp = tempfile::tempdir().unwrap();
    // Certificates for joins and renewals last 9 s: renewed after 6.
    let server = ServerProc::start_with(
        &tmp.path().join("s"),
        "127.0.0.1:0",
        &["--cert-lifetime", "9s"],
    );
    let agent = AgentProc::start(&tmp.path().join("a"), &server.url(), "renewer", &[]);
    let mut admin = server.client().await;
    let cert_file = agent.data_dir.join("tls").join("node.crt");
    let first = wait_for("the node to join", Duration::from_secs(30), || {
        let f = cert_file.clone();
        async move { std::fs::read_to_string(f).ok() }
    })
    .await;
    let (_, first_until) = skiff_pki::ca::validity(&first).unwrap();
    let joined_at = skiff_tests::skiff_server_time_ms() as i64 / 1000;
    assert!(
        first_until - joined_at <= 10,
        "the join got the short lifetime"
    );

    // Past the first certificate's end: a newer one is in use, the node
    // still heartbeats, and the servers still reach its API (logs).
    wait_for(
        "the first certificate to expire",
        Duration::from_secs(30),
        || {
            let now = skiff_tests::skiff_server_time_ms() as i64 / 1000;
            async move { (now > first_until + 1).then_some(()) }
        },
    )
    .await;
    let now = std::fs::read_to_string(&cert_file).unwrap();
    assert_ne!(now, first, "the certificate was renewed");
    assert!(skiff_pki::ca::validity(&now).unwrap().1 > first_until);
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(agent.data_dir.join("tls/node.key"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(key_mode & 0o777, 0o600);
    wait_for("a fresh heartbeat", Duration::from_secs(20), || {
        let mut c = admin.clone();
        async move {
            let n = c.list_nodes().await.ok()?.into_iter().next()?;
            (n.heartbeat_age? < Duration::from_secs(2)).then_some(())
        }
    })
    .await;
    admin
        .apply_job(&shell_job("after-renewal", 1, "echo renewed; sleep 600"))
        .await
        .unwrap();
    let a = wait_alloc(
        &mut admin,
        "after-renewal",
        "running",
        Duration::from_secs(30),
        |a| a.status == skiff_model::AllocStatus::Running,
    )
    .await;
    let out = wait_for(
        "its output through the agent's API",
        Duration::from_secs(20),
        || {
            let (mut c, id) = (admin.clone(), a.id.clone());
            async move {
                let out = stdout_of(&mut c, &id).await;
                out.contains("renewed").then_some(out)
            }
        },
    )
    .await;
    assert!(out.contains("renewed"));
    let log = agent.log();
    assert!(log.contains("node certificate renewed"), "{log}");
    assert!(
        log.contains("serving the agent's API with the renewed certificate"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_renews_its_certificate_and_keeps_serving_and_replicating() {
    let tmp = tempfile::tempdir().unwrap();
    let lifetime = ["--cert-lifetime", "9s"];
    let first = ServerProc::start_with(&tmp.path().join("s1"), "127.0.0.1:0", &lifetime);
    let via = first.url();
    let second = tokio::task::spawn_blocking({
        let dir = tmp.path().join("s2");
        move || {
            ServerProc::start_with(
                &dir,
                "127.0.0.1:0",
                &["--id", "2", "--join", &via, "--cert-lifetime", "9s"],
            )
        }
    })
    .await
    .unwrap();
    // The joined server's certificate lasts 9 s (its signer's setting).
    let cert_file = second.data_dir.join("tls").join("server.crt");
    let original = std::fs::read_to_string(&cert_file).unwrap();
    let (_, until) = skiff_pki::ca::validity(&original).unwrap();
    assert!(until - skiff_tests::skiff_server_time_ms() as i64 / 1000 <= 10);
    wait_for(
        "the second server to be promoted",
        Duration::from_secs(30),
        || {
            let url = first.url();
            async move {
                let (m, _) = connect(&url).await.ok()?.members().await.ok()?;
                (m.iter().filter(|m| m.voter).count() == 2).then_some(())
            }
        },
    )
    .await;

    wait_for(
        "its first certificate to expire",
        Duration::from_secs(30),
        || {
            let now = skiff_tests::skiff_server_time_ms() as i64 / 1000;
            async move { (now > until + 1).then_some(()) }
        },
    )
    .await;
    let now = std::fs::read_to_string(&cert_file).unwrap();
    assert_ne!(now, original, "renewed");
    assert!(skiff_pki::ca::validity(&now).unwrap().1 > until);
    // A new TLS connection to its API (the old certificate would fail the
    // handshake now), a write through it, replicated to the first server.
    let mut c2 = connect(&second.url()).await.unwrap();
    c2.apply_job(&shell_job("after-server-renewal", 0, "true"))
        .await
        .unwrap();
    wait_for(
        "the write on the first server",
        Duration::from_secs(20),
        || {
            let url = first.url();
            async move {
                let jobs = connect(&url).await.ok()?.list_jobs().await.ok()?;
                jobs.iter()
                    .any(|(j, _)| j.name() == "after-server-renewal")
                    .then_some(())
            }
        },
    )
    .await;
    let log = second.log();
    assert!(log.contains("server certificate renewed"), "{log}");
    assert!(
        log.contains("serving again with the renewed certificate"),
        "{log}"
    );
}

#[tokio::test]
async fn every_port_speaks_tls_1_3_only() {
    use rustls::pki_types::{CertificateDer, ServerName};
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("s"));
    server.client().await;
    let peer_addr = std::fs::read_to_string(server.data_dir.join("peer.addr")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca = skiff_pki::ca::der_of(test_pki().ca.cert_pem()).unwrap();
    roots.add(CertificateDer::from(ca)).unwrap();
    let handshake = |version: &'static rustls::SupportedProtocolVersion, addr: String| {
        let roots = roots.clone();
        async move {
            let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr.trim()).await.unwrap();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(ServerName::try_from("server.skiff").unwrap(), tcp)
                .await
                .map(|_| ())
        }
    };
    for addr in [server.addr.to_string(), peer_addr] {
        handshake(&rustls::version::TLS13, addr.clone())
            .await
            .unwrap_or_else(|e| panic!("TLS 1.3 to {addr}: {e}"));
        let err = handshake(&rustls::version::TLS12, addr.clone())
            .await
            .expect_err("a TLS 1.2 client was answered");
        assert!(
            err.to_string().to_lowercase().contains("handshake")
                || err.to_string().to_lowercase().contains("alert"),
            "{addr}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_is_renewed_with_its_key_and_every_holder_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    // A CA of 9 s, renewed for 9 s each time.
    let ca = Ca::generate(Duration::from_secs(9)).unwrap();
    let (cert, key) = (tmp.path().join("ca.crt"), tmp.path().join("ca.key"));
    std::fs::write(&cert, ca.cert_pem()).unwrap();
    std::fs::write(&key, &ca.0.key_pem).unwrap();
    let (_, old_until) = skiff_pki::ca::validity(ca.cert_pem()).unwrap();
    let server = ServerProc::start_with(
        &tmp.path().join("s"),
        "127.0.0.1:0",
        &[
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
            "--ca-lifetime",
            "9s",
        ],
    );
    let url = server.url();
    let admin_conf = server.data_dir.join("admin.conf");
    let as_admin = |args: &[&str]| {
        let out = std::process::Command::new(skiff_bin())
            .args(args)
            .args(["--server", &url])
            .env("SKIFF_CONFIG", &admin_conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let token = as_admin(&["token", "create", "--role", "node", "--ttl", "1h"]);
    let _agent = AgentProc::start(&tmp.path().join("a"), &url, "n1", &["--token", &token]);
    let config = skiff_client::config::ClientConfig::load(&admin_conf).unwrap();
    let mut admin = Client::connect_config(&config).await.unwrap();

    // Two thirds into its life the leader renews it: same key, new dates.
    wait_for("the CA to be renewed", Duration::from_secs(30), || {
        let log = server.log();
        async move { log.contains("cluster CA certificate renewed").then_some(()) }
    })
    .await;
    let (_, csr) = skiff_pki::ca::request().unwrap();
    let made = admin
        .create_user("after-renewal", skiff_client::UserRole::Viewer, &[], &csr)
        .await
        .unwrap();
    let (_, new_until) = skiff_pki::ca::validity(&made.ca_pem).unwrap();
    assert!(new_until > old_until, "{new_until} > {old_until}");
    assert_eq!(
        skiff_pki::ca::pin_of(&made.ca_pem).unwrap(),
        ca.pin().unwrap(),
        "the pin join tokens carry is unchanged"
    );

    // Past the first certificate's end, whoever still holds it (the
    // admin's file, the agent) keeps working: new connections, and a
    // container placed, started and reported through the agent.
    wait_for(
        "the first CA certificate to expire",
        Duration::from_secs(30),
        || {
            let now = skiff_tests::skiff_server_time_ms() as i64 / 1000;
            async move { (now > old_until + 1).then_some(()) }
        },
    )
    .await;
    let mut fresh = Client::connect_config(&config).await.unwrap();
    fresh
        .apply_job(&job_yaml(
            "after-ca-renewal",
            1,
            "echo ok",
            "  restart: {policy: never}\n",
        ))
        .await
        .unwrap();
    wait_allocs(
        &mut fresh,
        "after-ca-renewal",
        1,
        skiff_model::AllocStatus::Complete,
        Duration::from_secs(60),
    )
    .await;
    // A node joining now, with a token made now, still finds the cluster
    // by the same pin.
    let token = as_admin(&["token", "create", "--role", "node", "--ttl", "1h"]);
    assert!(token.contains(&ca.pin().unwrap()));
}
