//! gRPC health (`grpc.health.v1`) and server reflection on every port,
//! asked with the generated clients as `grpc_health_probe` and `grpcurl`
//! would: the API port answers without a client certificate; the peer
//! port only a member, the agent's port only a server. A server that has
//! lost its leader says NOT_SERVING.

use std::time::Duration;

use skiff_pki::Identity;
use skiff_tests::cluster::ServerCluster;
use skiff_tests::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// A TLS channel to `addr` (host:port), trusting the test CA, presenting
/// `who`'s certificate if any.
async fn channel(addr: &str, who: Option<Identity>) -> Result<Channel, String> {
    let ca = &test_pki().ca;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name(skiff_pki::SERVER_DNS);
    if let Some(who) = who {
        let leaf = ca.issue(&who, Duration::from_secs(3600)).unwrap();
        config = config.identity(tonic::transport::Identity::from_pem(
            leaf.cert_pem,
            leaf.key_pem,
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(config)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// `Health/Check` of `service` ("" for the whole process).
async fn check(ch: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(r.into_inner().status())
}

/// The services reflection lists (`grpcurl list`).
async fn list_services(ch: Channel) -> Result<Vec<String>, tonic::Status> {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    let answer = stream.message().await?.expect("an answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            let mut names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
            names.sort();
            Ok(names)
        }
        other => panic!("not a service list: {other:?}"),
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("https://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_answers_health_and_reflection_to_whom_it_should() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = ServerCluster::start(tmp.path(), 3, &[]).await;
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let api = host_port(&cluster.url(leader));

    // The API port: no client certificate needed.
    let anyone = channel(&api, None).await.unwrap();
    wait_for("the leader serving", Duration::from_secs(10), || {
        let ch = anyone.clone();
        async move { (check(ch, "").await.ok()? == ServingStatus::Serving).then_some(()) }
    })
    .await;
    assert_eq!(
        check(anyone.clone(), "skiff.v1.Cluster").await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = check(anyone.clone(), "skiff.v1.Nope").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let services = list_services(anyone.clone()).await.unwrap();
    for s in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "skiff.v1.Access",
        "skiff.v1.Cluster",
        "skiff.v1.NodeApi",
    ] {
        assert!(services.iter().any(|x| x == s), "{s} in {services:?}");
    }
    // Without a certificate the rest of the API still refuses.
    let mut c = skiff_proto::pb::cluster_client::ClusterClient::new(anyone.clone());
    let e = c
        .list_jobs(skiff_proto::pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // The peer port: members only.
    let data_dir = cluster.servers[leader].lock().unwrap().data_dir.clone();
    let peer = std::fs::read_to_string(data_dir.join("peer.addr"))
        .unwrap()
        .trim()
        .to_string();
    let member = channel(&peer, Some(Identity::Server(1))).await.unwrap();
    assert_eq!(
        check(member.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );
    assert!(list_services(member)
        .await
        .unwrap()
        .contains(&"skiff.v1.Peer".to_string()));
    let user = channel(&peer, Some(Identity::User("admin".into())))
        .await
        .unwrap();
    let e = check(user, "").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // (No certificate: the peer port's handshake refuses it.)
    let nobody = match channel(&peer, None).await {
        Ok(ch) => check(ch, "").await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    assert!(nobody.is_err(), "{nobody:?}");

    // The other two servers gone: no leader, not serving.
    let lone = (leader + 1) % 3;
    let lone_api = host_port(&cluster.url(lone));
    for i in (0..3).filter(|&i| i != lone) {
        cluster.kill9(i).await;
    }
    let lone_ch = channel(&lone_api, None).await.unwrap();
    wait_for(
        "the lone server not serving",
        Duration::from_secs(30),
        || {
            let ch = lone_ch.clone();
            async move { (check(ch, "").await.ok()? == ServingStatus::NotServing).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serves_health_to_servers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProc::start(&tmp.path().join("server"));
    let _agent = AgentProc::start(&tmp.path().join("agent"), &server.url(), "n1", &[]);
    let client = server.client().await;
    let addr = wait_for("the node registered", Duration::from_secs(30), || {
        let mut c = client.clone();
        async move { Some(c.list_nodes().await.ok()?.first()?.node.address.clone()) }
    })
    .await;
    let as_server = |addr: String| async move {
        let ca = &test_pki().ca;
        let leaf = ca
            .issue(&Identity::Server(1), Duration::from_secs(3600))
            .unwrap();
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.cert_pem()))
            .domain_name(skiff_pki::identity::node_dns("n1"))
            .identity(tonic::transport::Identity::from_pem(
                leaf.cert_pem,
                leaf.key_pem,
            ));
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let ch = as_server(addr.clone()).await;
    wait_for("the agent serving", Duration::from_secs(30), || {
        let ch = ch.clone();
        async move { (check(ch, "").await.ok()? == ServingStatus::Serving).then_some(()) }
    })
    .await;
    assert_eq!(
        check(ch.clone(), "skiff.v1.AgentApi").await.unwrap(),
        ServingStatus::Serving
    );
    assert!(list_services(ch)
        .await
        .unwrap()
        .contains(&"skiff.v1.AgentApi".to_string()));
}
