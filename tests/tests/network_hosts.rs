//! Bridged containers on two hosts: each host is a network namespace the
//! test makes (one agent in each, both on a test LAN bridge with the
//! server on the host side). The agents route each other's subnets via
//! each other's addresses, so a container on one host reaches a container
//! on the other at its own address (not masqueraded), reaches the world
//! outside the cluster through outbound NAT, and opens no Skiff port on
//! the server's host or on the other node. It finds the other host's
//! replicas by name through its own node's DNS (A and SRV records).
//! Containers of another namespace reach them (on the same host and
//! across) only while the web's namespace lets that one in. A bridged
//! gang's rank on one host reaches rank 0 on the other by MASTER_ADDR.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skiff_tests::*;

/// A LAN of `hosts` simulated hosts: a bridge on this host (address
/// `P.1/24`) and one network namespace per host (`P.2`, `P.3`, ...),
/// all removed when dropped.
struct Lan {
    bridge: String,
    prefix: String,
    hosts: Vec<String>,
}

fn run(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{args:?} failed");
}

impl Lan {
    fn new(hosts: usize) -> Lan {
        let pid = std::process::id() % 10_000;
        let lan = Lan {
            bridge: format!("skl{pid}"),
            prefix: format!("10.{}.230", 100 + std::process::id() % 100),
            hosts: (0..hosts).map(|i| format!("skh{pid}h{i}")).collect(),
        };
        lan.remove();
        run(&["ip", "link", "add", &lan.bridge, "type", "bridge"]);
        let host_ip = format!("{}.1/24", lan.prefix);
        run(&["ip", "addr", "add", &host_ip, "dev", &lan.bridge]);
        run(&["ip", "link", "set", &lan.bridge, "up"]);
        for (i, ns) in lan.hosts.iter().enumerate() {
            let veth = format!("{}v{i}", lan.bridge);
            run(&["ip", "netns", "add", ns]);
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "lan0", "netns", ns,
            ]);
            run(&["ip", "link", "set", &veth, "master", &lan.bridge, "up"]);
            let ip = format!("{}/24", lan.host(i));
            run(&["ip", "-n", ns, "addr", "add", &ip, "dev", "lan0"]);
            run(&["ip", "-n", ns, "link", "set", "lan0", "up"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// Host `i`'s address.
    fn host(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }

    /// This host's address on the LAN.
    fn server_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }

    fn remove(&self) {
        for ns in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A job of one replica pinned to the node labelled `host=HOST`.
fn pinned(name: &str, host: &str, script: &str, task_extra: &str) -> skiff_model::JobSpec {
    let yaml = format!(
        "name: {name}\nconstraints: [{{label: host, op: '=', value: {host}}}]\ntask:\n  image: {}\n  command: [sh, -c, {}]\n  network: bridge\n  resources: {{cpu: 100m, memory: 32Mi}}\n{task_extra}",
        busybox_image(),
        serde_json::to_string(script).unwrap()
    );
    skiff_model::JobSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// A service outside the cluster's containers, on this host's LAN
/// address at a port of the published range (which containers may open):
/// it answers each request with the address it came from.
fn outside_service(ip: &str) -> u16 {
    let listener = (31_000..31_500)
        .find_map(|p| std::net::TcpListener::bind((ip, p)).ok())
        .expect("a free port");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let from = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.read(&mut [0u8; 1024]);
            let _ = write!(conn, "HTTP/1.0 200 OK\r\n\r\nfrom={from}\n");
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_on_two_hosts_reach_each_other_but_no_skiff_port() {
    require_container_host();
    assert!(
        Path::new("/usr/lib/cni/bridge").is_file(),
        "install containernetworking-plugins"
    );
    let tmp = tempfile::tempdir().unwrap();
    let lan = Lan::new(2);
    let x = 100 + std::process::id() % 100;
    let server = ServerProc::start_with(
        &tmp.path().join("server"),
        &format!("{}:0", lan.server_ip()),
        &["--node-subnets", &format!("10.{x}.128.0/20")],
    );
    let agents: Vec<AgentProc> = (0..2)
        .map(|i| {
            AgentProc::start_in(
                &lan.hosts[i],
                &format!("{}:0", lan.host(i)),
                &tmp.path().join(format!("agent{i}")),
                &server.url(),
                &format!("h{i}"),
                &["--label", &format!("host=h{i}"), "--stop-grace", "1s"],
            )
        })
        .collect();
    let mut client = server.client().await;
    wait_for("both hosts registered", Duration::from_secs(30), || {
        let mut c = client.clone();
        async move { (c.list_nodes().await.ok()?.len() == 2).then_some(()) }
    })
    .await;
    let nodes = client.list_nodes().await.unwrap();
    // Each host's subnet, as the servers assigned it (in the order the
    // hosts registered): `10.X.Y.0/24` -> `10.X.Y.`.
    let prefix = |i: usize| {
        let name = format!("h{i}");
        let n = nodes.iter().find(|n| n.node.name == name).unwrap();
        n.node.subnet.trim_end_matches("0/24").to_string()
    };
    let agent_port = |i: usize| {
        let name = format!("h{i}");
        let n = nodes.iter().find(|n| n.node.name == name).unwrap();
        n.node.address.rsplit_once(':').unwrap().1.to_string()
    };

    // Two web servers on h1, both on port 8080 (each in its own network
    // namespace).
    let mut spec = pinned(
        "web",
        "h1",
        "mkdir -p /tmp/www && echo \"$SKIFF_ALLOC_ID\" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        "  ports: [{name: http, container: 8080}]\n  probes:\n    readiness: {http: {path: /, port: 8080}, period: 200ms}\n",
    );
    spec.replicas = 2;
    client.apply_job(&spec).await.unwrap();
    let webs = wait_for("both web replicas ready", Duration::from_secs(60), || {
        let mut c = client.clone();
        async move {
            let all = allocs_of(&mut c, "web").await;
            let ready = all
                .iter()
                .filter(|a| a.healthy == Some(true) && !a.address.is_empty())
                .count();
            (ready == 2).then_some(all)
        }
    })
    .await;
    let web = webs[0].clone();
    assert!(
        web.address.starts_with(&prefix(1)),
        "h1's subnet: {}",
        web.address
    );

    // A fixed host port published on h1 (outside the dynamic range, which
    // containers elsewhere may open): open to containers on h0 too.
    let fixed = pinned(
        "fixed",
        "h1",
        "mkdir -p /tmp/www && echo \"$SKIFF_ALLOC_ID\" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
        "  ports: [{name: http, container: 8080, host: 18080}]\n  probes:\n    readiness: {http: {path: /, port: 8080}, period: 200ms}\n",
    );
    client.apply_job(&fixed).await.unwrap();
    let fixed = wait_for("the fixed-port job ready", Duration::from_secs(60), || {
        let mut c = client.clone();
        async move {
            allocs_of(&mut c, "fixed")
                .await
                .into_iter()
                .find(|a| a.healthy == Some(true))
        }
    })
    .await;

    // A client on h0: the web replica by its address; the world outside
    // (NAT); the server's API port and h1's agent port (both refused).
    let outside = outside_service(&lan.server_ip());
    let api_port = server.addr.rsplit_once(':').unwrap().1.to_string();
    let probe = |target: &str, port: &str, what: &str| {
        format!("if timeout 5 nc -w 2 {target} {port} </dev/null; then echo {what}=reached; else echo {what}=blocked; fi")
    };
    // By name: the job's SRV records (each replica's port and name;
    // busybox's nslookup searches only for names without a dot),
    // each name's address, then a request to each; and the A records.
    let by_name = "for i in $(seq 1 150); do srv=$(nslookup -type=srv _http._tcp.web.default.skiff 2>&1); [ $(echo \"$srv\" | grep -c 'service = ') -ge 2 ] && break; sleep 0.2; done; echo \"$srv\" | grep 'service = ' | while read -r _ _ _ _ _ port target; do ip=$(nslookup \"$target\" | awk '/^Address: /{print $2}' | tail -n 1); echo \"srv=$(get $ip $port) at $ip:$port\"; done; echo \"a=$(nslookup web | awk '/^Address: /{print $2}' | sort | tr '\\n' ' ')\"";
    let script = format!(
        // (nc, not busybox's wget, which crashes in Debian's build.)
        "get() {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc -w 2 $1 $2 | tail -n 1; }}; for i in $(seq 1 50); do body=$(get {} 8080) && [ -n \"$body\" ] && break; sleep 0.2; done; echo \"web=$body\"; for i in $(seq 1 50); do fixed=$(get {h1} 18080) && [ -n \"$fixed\" ] && break; sleep 0.2; done; echo \"fixed=$fixed\"; echo \"outside=$(get {} {outside})\"; {}; {}; {by_name}; echo done; sleep 3600",
        web.address,
        lan.server_ip(),
        probe(&lan.server_ip(), &api_port, "api"),
        probe(&lan.host(1), &agent_port(1), "agent"),
        h1 = lan.host(1),
    );
    client
        .apply_job(&pinned("client", "h0", &script, ""))
        .await
        .unwrap();
    let c = wait_for("the client running on h0", Duration::from_secs(60), || {
        let mut c = client.clone();
        async move {
            allocs_of(&mut c, "client")
                .await
                .into_iter()
                .find(|a| !a.address.is_empty())
        }
    })
    .await;
    assert!(
        c.address.starts_with(&prefix(0)),
        "h0's subnet: {}",
        c.address
    );
    let out = wait_for("the client's report", Duration::from_secs(60), || {
        let mut cl = client.clone();
        let id = c.id.clone();
        async move {
            let out = stdout_of(&mut cl, &id).await;
            out.lines().any(|l| l == "done").then_some(out)
        }
    })
    .await;
    // (h1 lets in new connections from h0's subnet only: had h0
    // masqueraded it, h1's forward chain would have dropped it.)
    assert!(
        out.contains(&format!("web={}", web.id)),
        "across hosts: {out}"
    );
    assert!(
        out.contains(&format!("fixed={}", fixed.id)),
        "h1's fixed host port 18080 from a container on h0: {out}"
    );
    // Outbound NAT: the world outside sees h0's address.
    assert!(
        out.contains(&format!("outside=from={}", lan.host(0))),
        "{out}"
    );
    assert!(
        out.contains("api=blocked"),
        "a container opened the server's API: {out}"
    );
    assert!(
        out.contains("agent=blocked"),
        "a container opened another node's agent: {out}"
    );
    // By name: both replicas, through their SRV records and addresses.
    for w in &webs {
        assert!(
            out.contains(&format!("srv={} at {}:8080", w.id, w.address)),
            "replica {} at {} by its SRV record: {out}",
            w.id,
            w.address
        );
    }
    let mut addresses: Vec<&str> = webs.iter().map(|w| w.address.as_str()).collect();
    addresses.sort();
    assert!(
        out.contains(&format!("a={} ", addresses.join(" "))),
        "the job's name has both addresses: {out}"
    );

    // The routes are the agents' own, and go with the other node.
    let routes = Command::new("ip")
        .args(["-n", &lan.hosts[0], "route", "show", "proto", "83"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(
        routes.contains(&format!("{}0/24 via {}", prefix(1), lan.host(1))),
        "{routes}"
    );
    // Another namespace's containers, one on each host, try both web
    // replicas over and over.
    let tries = webs
        .iter()
        .map(|w| format!("if timeout 3 nc -w 1 {ip} 8080 </dev/null; then echo {ip}=reached; else echo {ip}=blocked; fi", ip = w.address))
        .collect::<Vec<_>>()
        .join("; ");
    let other = skiff_model::namespace::Namespace::from_yaml("name: other\n").unwrap();
    client.apply_namespace(&other).await.unwrap();
    let mut peeks = Vec::new();
    for host in ["h0", "h1"] {
        let mut spec = pinned(
            &format!("peek-{host}"),
            host,
            &format!("while true; do {tries}; echo round; sleep 0.3; done"),
            "",
        );
        spec.namespace = "other".into();
        client.apply_job(&spec).await.unwrap();
        let a = wait_for(
            "the other namespace's client running",
            Duration::from_secs(60),
            || {
                let mut c = client.clone().namespace("other");
                let key = format!("peek-{host}");
                async move {
                    allocs_of(&mut c, &key)
                        .await
                        .into_iter()
                        .find(|a| !a.address.is_empty())
                }
            },
        )
        .await;
        peeks.push(a.id);
    }
    // Rounds printed from now on, of every peek.
    let watcher = client.clone();
    let rounds_after = |start: Vec<usize>| {
        let client = watcher.clone();
        let peeks = peeks.clone();
        async move {
            let mut all = Vec::new();
            for (id, from) in peeks.iter().zip(start) {
                let out = stdout_of(&mut client.clone(), id).await;
                all.push(out.get(from.min(out.len())..).unwrap_or("").to_string());
            }
            all
        }
    };
    let lengths = || async {
        let mut v = Vec::new();
        for id in &peeks {
            v.push(stdout_of(&mut watcher.clone(), id).await.len());
        }
        v
    };
    // Let in: every try of a later round reaches both replicas.
    let policy = |from: &str| {
        skiff_model::namespace::Namespace::from_yaml(&format!(
            "name: default\npolicy: {{network_from: [{from}]}}\n"
        ))
        .unwrap()
    };
    client.apply_namespace(&policy("other")).await.unwrap();
    let start = lengths().await;
    let reached_all = |out: &str| {
        out.split("round\n").any(|r| {
            webs.iter()
                .all(|w| r.contains(&format!("{}=reached", w.address)))
        })
    };
    wait_for(
        "the other namespace let in",
        Duration::from_secs(30),
        || {
            let f = rounds_after(start.clone());
            async move { f.await.iter().all(|o| reached_all(o)).then_some(()) }
        },
    )
    .await;
    // Not let in (the default): a later round is blocked on both.
    client.apply_namespace(&policy("lab")).await.unwrap();
    let start = lengths().await;
    let blocked_all = |out: &str| {
        out.split("round\n").skip(1).any(|r| {
            webs.iter()
                .all(|w| r.contains(&format!("{}=blocked", w.address)))
        })
    };
    wait_for(
        "the other namespace kept out",
        Duration::from_secs(30),
        || {
            let f = rounds_after(start.clone());
            async move { f.await.iter().all(|o| blocked_all(o)).then_some(()) }
        },
    )
    .await;
    // A bridged gang, one rank per host: rank 1 reaches rank 0 at
    // MASTER_ADDR (rank 0's DNS name), MASTER_PORT.
    let gang = skiff_model::JobSpec::from_yaml(&format!(
        "name: ddp\ntype: batch\ngang: true\nreplicas: 2\nspread: {{label: host, max_skew: 1}}\ntask:\n  image: {}\n  network: bridge\n  resources: {{cpu: 100m, memory: 32Mi}}\n  command: [sh, -c, {}]\n",
        busybox_image(),
        serde_json::to_string(
            "echo \"rank $RANK: rank 0 at $MASTER_ADDR:$MASTER_PORT\"; if [ \"$RANK\" = 0 ]; then nc -l -p \"$MASTER_PORT\"; else for i in $(seq 1 100); do echo \"heard from rank $RANK\" | nc -w 2 \"$MASTER_ADDR\" \"$MASTER_PORT\" && break; sleep 0.3; done; fi"
        )
        .unwrap()
    ))
    .unwrap();
    client.apply_job(&gang).await.unwrap();
    let ranks = wait_for("both ranks done", Duration::from_secs(90), || {
        let mut c = client.clone();
        async move {
            let all = allocs_of(&mut c, "ddp").await;
            (all.len() == 2
                && all
                    .iter()
                    .all(|a| a.status == skiff_model::AllocStatus::Complete))
            .then_some(all)
        }
    })
    .await;
    let rank0 = ranks
        .iter()
        .find(|a| a.gang.as_ref().map(|g| g.rank) == Some(0))
        .unwrap();
    assert_ne!(ranks[0].node, ranks[1].node, "one rank per host");
    let heard = stdout_of(&mut client, &rank0.id).await;
    assert!(
        heard.contains(&format!("rank 0 at {}.ddp.default.skiff:29500", rank0.id)),
        "{heard}"
    );
    assert!(heard.contains("heard from rank 1"), "{heard}");
    client.delete_job("ddp").await.unwrap();
    let mut in_other = client.clone().namespace("other");
    for host in ["h0", "h1"] {
        in_other.delete_job(&format!("peek-{host}")).await.unwrap();
    }
    client.delete_job("web").await.unwrap();
    client.delete_job("client").await.unwrap();
    client.delete_job("fixed").await.unwrap();
    // Both hosts tear their containers' networks down.
    wait_for("both hosts torn down", Duration::from_secs(60), || {
        let left: usize = (0..2)
            .map(|i| {
                let dir = tmp.path().join(format!("agent{i}/network/netns"));
                std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
            })
            .sum();
        async move { (left == 0).then_some(()) }
    })
    .await;
    drop(agents);
}
