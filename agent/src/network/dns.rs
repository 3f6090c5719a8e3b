//! The node's DNS for its bridged containers, served with hickory on the
//! bridge's gateway address, port 53 (each container's `/etc/resolv.conf`
//! names it). It answers for the cluster's names from the endpoints the
//! servers send on the allocation watch (ready replicas only):
//!
//! - `JOB.NAMESPACE.skiff`: A, the job's ready replicas' addresses;
//! - `ALLOC.JOB.NAMESPACE.skiff`: A, one replica's address;
//! - `_PORT._tcp.JOB.NAMESPACE.skiff` (`_udp` for a UDP port): SRV, one
//!   per ready replica with a port of that name: its port and its
//!   `ALLOC…` name (the address rides along as an additional record).
//!
//! A container sees only the names of the namespaces it may connect to
//! (its own, and those whose `policy.network_from` names its namespace or
//! `*`, as the firewall rules say): any other namespace's names are
//! NXDOMAIN to it. A question from an address that is no container's (the
//! host) sees every name.
//!
//! Every answer lives [`TTL`] seconds. Other names are forwarded to the
//! `--dns-upstream` resolvers (the host's by default), or do not exist
//! when there are none. A name the cluster does not have is NXDOMAIN; a name it
//! has, asked for another type (AAAA), is an empty answer.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::resolver::config::{ConnectionConfig, NameServerConfig};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use skiff_proto::pb;

use super::firewall::Members;

/// How long clients may keep an answer, in seconds: a replica that stops
/// being ready leaves their caches this long after it leaves ours (the
/// default `shutdown_delay` of a task with named ports waits as long).
pub const TTL: u32 = skiff_model::job::DEFAULT_SHUTDOWN_DELAY.as_secs() as u32;

pub use skiff_model::dns::DOMAIN;

/// Where names outside the cluster go (`--dns-upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// The host's resolvers (the `nameserver` lines of `/etc/resolv.conf`).
    Host,
    /// None: other names do not exist (NXDOMAIN).
    None,
    /// These resolvers.
    Servers(Vec<SocketAddr>),
}

impl Upstream {
    /// `host`, `none`, or a comma-separated list of `IP` or `IP:PORT`.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        match text.trim() {
            "host" | "" => return Ok(Upstream::Host),
            "none" => return Ok(Upstream::None),
            _ => {}
        }
        let servers = text
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        format!(
                            "--dns-upstream {s:?}: `host`, `none`, or resolvers as IP or IP:PORT, comma-separated"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstream::Servers(servers))
    }

    /// The resolvers to forward to.
    fn servers(&self) -> Vec<SocketAddr> {
        match self {
            Upstream::None => Vec::new(),
            Upstream::Servers(s) => s.clone(),
            Upstream::Host => std::fs::read_to_string("/etc/resolv.conf")
                .map(|text| nameservers(&text))
                .unwrap_or_default(),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf.
fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The records of one name.
#[derive(Debug, Default)]
struct Entry {
    /// The namespace the name is under (`None`: the zone itself).
    namespace: Option<String>,
    a: Vec<Record>,
    srv: Vec<Record>,
}

/// The entry of `name`, under namespace `ns`.
fn under<'n>(names: &'n mut HashMap<LowerName, Entry>, name: &Name, ns: &str) -> &'n mut Entry {
    let entry = names.entry(name.into()).or_default();
    if entry.namespace.is_none() {
        entry.namespace = Some(ns.to_string());
    }
    entry
}

/// The cluster's names, as of the servers' last endpoints.
#[derive(Debug, Default)]
pub struct Records {
    names: HashMap<LowerName, Entry>,
}

impl Records {
    /// The records of `endpoints` (entries without an IPv4 address or with
    /// names that are not DNS labels are left out).
    pub fn from_wire(endpoints: &pb::Endpoints) -> Records {
        let mut names: HashMap<LowerName, Entry> = HashMap::new();
        let zone = Name::from_ascii(format!("{DOMAIN}.")).expect("a valid name");
        for e in &endpoints.endpoints {
            let Ok(ip) = e.address.parse::<Ipv4Addr>() else {
                continue;
            };
            let Ok(namespace) = zone.prepend_label(e.namespace.as_str()) else {
                continue;
            };
            let Ok(job) = namespace.prepend_label(e.job.as_str()) else {
                continue;
            };
            let Ok(alloc) = job.prepend_label(e.alloc_id.as_str()) else {
                continue;
            };
            names.entry((&zone).into()).or_default();
            // Every name here is under the endpoint's namespace.
            let ns = e.namespace.to_ascii_lowercase();
            let a = |name: &Name| Record::from_rdata(name.clone(), TTL, RData::A(A(ip)));
            under(&mut names, &job, &ns).a.push(a(&job));
            under(&mut names, &alloc, &ns).a.push(a(&alloc));
            // The names above these exist too (with no records).
            under(&mut names, &namespace, &ns);
            for p in &e.ports {
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                let proto = if p.protocol == "udp" { "_udp" } else { "_tcp" };
                let Ok(by_proto) = job.prepend_label(proto) else {
                    continue;
                };
                under(&mut names, &by_proto, &ns);
                let Ok(srv) = by_proto.prepend_label(format!("_{}", p.name)) else {
                    continue;
                };
                let record = Record::from_rdata(
                    srv.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, 10, port, alloc.clone())),
                );
                under(&mut names, &srv, &ns).srv.push(record);
            }
        }
        Records { names }
    }

    /// The answer to `name`/`kind`: the answers and their additional
    /// records, or `None` when the cluster has no such name.
    fn answer(
        &self,
        name: &LowerName,
        kind: RecordType,
        sees: &dyn Fn(&str) -> bool,
    ) -> Option<(Vec<Record>, Vec<Record>)> {
        let entry = self
            .names
            .get(name)
            .filter(|e| e.namespace.as_deref().is_none_or(sees))?;
        Some(match kind {
            RecordType::A => (entry.a.clone(), Vec::new()),
            RecordType::SRV => {
                let extra = entry
                    .srv
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => self.names.get(&LowerName::new(&srv.target)),
                        _ => None,
                    })
                    .flat_map(|e| e.a.iter().cloned())
                    .collect();
                (entry.srv.clone(), extra)
            }
            RecordType::ANY => {
                let mut all = entry.a.clone();
                all.extend(entry.srv.iter().cloned());
                (all, Vec::new())
            }
            _ => (Vec::new(), Vec::new()),
        })
    }
}

/// Who sees which namespaces' names, built once per member list (a
/// question looks its asker up by address instead of reading the list).
#[derive(Debug, Default)]
struct Visibility {
    /// The namespaces (indices into `sees`) each container address is in:
    /// normally one; several while an address just given up is reused
    /// (the servers' list lags), and then it sees what any of them may.
    of_address: HashMap<Ipv4Addr, Vec<usize>>,
    /// Per namespace: its own name and those of the namespaces that let
    /// it connect (lower-case).
    sees: Vec<Vec<String>>,
}

impl Visibility {
    fn of(members: &Members) -> Visibility {
        let mut of_address: HashMap<Ipv4Addr, Vec<usize>> = HashMap::new();
        for (i, n) in members.namespaces.iter().enumerate() {
            for ip in &n.addresses {
                of_address.entry(*ip).or_default().push(i);
            }
        }
        let sees = members
            .namespaces
            .iter()
            .map(|asker| {
                members
                    .namespaces
                    .iter()
                    .filter(|m| {
                        m.name == asker.name || m.from.iter().any(|f| f == "*" || *f == asker.name)
                    })
                    .map(|m| m.name.as_str())
                    .chain(std::iter::once(asker.name.as_str()))
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .collect();
        Visibility { of_address, sees }
    }

    /// Whether a question from `from` may see namespace `ns`'s names: an
    /// address that is no container's sees all.
    fn sees(&self, from: IpAddr, ns: &str) -> bool {
        let IpAddr::V4(ip) = from else {
            return true;
        };
        match self.of_address.get(&ip) {
            None => true,
            Some(askers) => askers.iter().any(|&i| self.sees[i].iter().any(|n| n == ns)),
        }
    }
}

/// Answers the cluster's names and hands the rest to the forwarder.
struct Handler {
    records: Arc<RwLock<Records>>,
    visibility: Arc<RwLock<Visibility>>,
    zone: LowerName,
    forward: Option<Catalog>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let query = match request.request_info() {
            Ok(info) => info.query.clone(),
            Err(_) => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return send(&mut response, msg, request).await;
            }
        };
        if !self.zone.zone_of(query.name()) {
            return match &self.forward {
                Some(catalog) => catalog.handle_request::<R, T>(request, response).await,
                // The only resolver containers have: the name does not
                // exist for them (so a resolver goes on down its search
                // list, which it does not after a refusal).
                None => {
                    let msg = builder.error_msg(&request.metadata, ResponseCode::NXDomain);
                    send(&mut response, msg, request).await
                }
            };
        }
        let found = {
            let visibility = self.visibility.read().unwrap_or_else(|p| p.into_inner());
            let from = request.src().ip();
            self.records
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .answer(query.name(), query.query_type(), &|ns: &str| {
                    visibility.sees(from, ns)
                })
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = self.forward.is_some();
        let (answers, extra) = match found {
            Some(found) => found,
            None => {
                metadata.response_code = ResponseCode::NXDomain;
                (Vec::new(), Vec::new())
            }
        };
        let msg = builder.build(metadata, answers.iter(), [], [], extra.iter());
        send(&mut response, msg, request).await
    }
}

/// Sends `msg`; a failure (the client went away) is logged and answered
/// as a server failure to hickory's bookkeeping.
async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a DNS answer");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            hickory_server::proto::op::Header {
                metadata,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// A forwarder for every name to `servers`.
fn forwarder(servers: &[SocketAddr]) -> Result<Catalog, String> {
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    let config = ForwardConfig {
        name_servers,
        options: None,
    };
    let handler = ForwardZoneHandler::builder_tokio(config)
        .build()
        .map_err(|e| format!("the DNS forwarder: {e}"))?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(handler)]);
    Ok(catalog)
}

/// The node's DNS: the records, and the server once it listens.
pub struct Dns {
    upstream: Upstream,
    records: Arc<RwLock<Records>>,
    visibility: Arc<RwLock<Visibility>>,
    serving: tokio::sync::Mutex<Option<(SocketAddr, hickory_server::Server<Handler>)>>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Dns {
    pub fn new(upstream: Upstream) -> Dns {
        Dns {
            upstream,
            records: Arc::default(),
            visibility: Arc::default(),
            serving: tokio::sync::Mutex::default(),
        }
    }

    /// The servers sent the cluster's endpoints (the whole list).
    pub fn set_endpoints(&self, endpoints: &pb::Endpoints) {
        let records = Records::from_wire(endpoints);
        *self.records.write().unwrap_or_else(|p| p.into_inner()) = records;
    }

    /// The cluster's containers by namespace changed: who sees which
    /// names follows.
    pub fn set_members(&self, members: &Members) {
        *self.visibility.write().unwrap_or_else(|p| p.into_inner()) = Visibility::of(members);
    }

    /// Listens on `addr` (UDP and TCP) unless it already does; port 0:
    /// one the system picks. Returns where it listens.
    pub async fn serve(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        let mut serving = self.serving.lock().await;
        if let Some((at, _)) = &*serving {
            if *at == addr || (addr.port() == 0 && at.ip() == addr.ip()) {
                return Ok(*at);
            }
        }
        let bind = |e: std::io::Error| format!("cannot serve DNS on {addr}: {e}");
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(bind)?;
        let addr = udp.local_addr().map_err(bind)?;
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
        let upstream = self.upstream.servers();
        let forward = if upstream.is_empty() {
            None
        } else {
            Some(forwarder(&upstream)?)
        };
        let handler = Handler {
            records: self.records.clone(),
            visibility: self.visibility.clone(),
            zone: LowerName::from(Name::from_ascii(format!("{DOMAIN}.")).expect("a valid name")),
            forward,
        };
        let mut server = hickory_server::Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        tracing::info!(%addr, upstream = ?upstream, "serving DNS to the node's containers");
        *serving = Some((addr, server));
        Ok(addr)
    }

    /// Whether it listens (where containers' resolv.conf should point).
    pub async fn serving_at(&self) -> Option<SocketAddr> {
        self.serving.lock().await.as_ref().map(|(a, _)| *a)
    }
}

/// A bridged container's `/etc/resolv.conf`: the node's DNS, searching its
/// own namespace's names first (`web` is `web.NAMESPACE.skiff`), and the
/// search list tried first for names of fewer than three dots
/// (`_http._tcp.web`, `web.lab`; the node answers those misses itself).
pub fn resolv_conf(server: Ipv4Addr, namespace: &str) -> String {
    format!(
        "# Written by the Skiff agent: the node's DNS answers JOB.NAMESPACE.skiff\n\
         # and forwards other names to the node's resolvers.\n\
         nameserver {server}\n\
         search {namespace}.{DOMAIN} {DOMAIN}\n\
         options ndots:3\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_and_bad_ones_are_named() {
        assert_eq!(Upstream::parse("host").unwrap(), Upstream::Host);
        assert_eq!(Upstream::parse("none").unwrap(), Upstream::None);
        assert_eq!(
            Upstream::parse("192.0.2.1, 127.0.0.1:5353").unwrap(),
            Upstream::Servers(vec![
                "192.0.2.1:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ])
        );
        let e = Upstream::parse("8.8.8.8,dns.example").unwrap_err();
        assert!(e.contains("--dns-upstream \"dns.example\""), "{e}");
        assert_eq!(
            nameservers("# x\nnameserver 192.0.2.53\nsearch lab\nnameserver ::1\n"),
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    use hickory_server::proto::op::{Message, Query};

    fn endpoint(ns: &str, job: &str, id: char, ip: &str, port: u32) -> pb::Endpoint {
        pb::Endpoint {
            namespace: ns.into(),
            job: job.into(),
            alloc_id: id.to_string().repeat(32),
            address: ip.into(),
            ports: vec![
                pb::EndpointPort {
                    name: "http".into(),
                    port,
                    protocol: "tcp".into(),
                },
                pb::EndpointPort {
                    name: "dns".into(),
                    port: 53,
                    protocol: "udp".into(),
                },
            ],
        }
    }

    /// Asks `server` over UDP.
    async fn ask(server: SocketAddr, name: &str, kind: RecordType) -> Message {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut q = Message::query();
        q.metadata.id = 7;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, 7);
        m
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        ips.sort();
        ips
    }

    #[tokio::test]
    async fn the_cluster_names_are_answered_and_follow_the_endpoints() {
        let dns = Dns::new(Upstream::None);
        let at = dns.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(dns.serving_at().await, Some(at));
        dns.set_endpoints(&pb::Endpoints {
            endpoints: vec![
                endpoint("lab", "web", 'a', "10.88.0.5", 8080),
                endpoint("lab", "web", 'b', "10.88.1.9", 8080),
                endpoint("other", "web", 'c', "10.88.0.7", 9000),
                // Not an IPv4 address: left out.
                endpoint("lab", "web", 'd', "fd00::1", 8080),
            ],
        });
        let m = ask(at, "web.lab.skiff.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            a_records(&m),
            [Ipv4Addr::new(10, 88, 0, 5), Ipv4Addr::new(10, 88, 1, 9)]
        );
        assert!(m.answers.iter().all(|r| r.ttl == TTL));
        // Names are case-insensitive.
        let m = ask(at, "WEB.Other.skiff.", RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 88, 0, 7)]);
        // SRV: each replica's port and name, its address alongside.
        let m = ask(at, "_http._tcp.web.lab.skiff.", RecordType::SRV).await;
        let mut srv: Vec<(u16, String)> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.port, s.target.to_ascii())),
                _ => None,
            })
            .collect();
        srv.sort();
        let a_name = format!("{}.web.lab.skiff.", "a".repeat(32));
        let b_name = format!("{}.web.lab.skiff.", "b".repeat(32));
        assert_eq!(srv, [(8080, a_name.clone()), (8080, b_name)]);
        assert_eq!(m.additionals.len(), 2, "{m:?}");
        // A UDP port is under `_udp`.
        let m = ask(at, "_dns._udp.web.other.skiff.", RecordType::SRV).await;
        assert_eq!(m.answers.len(), 1, "{m:?}");
        let m = ask(at, "_dns._tcp.web.other.skiff.", RecordType::SRV).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = ask(at, &a_name, RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 88, 0, 5)]);
        // A name that exists, asked for another type: empty, not missing.
        let m = ask(at, "web.lab.skiff.", RecordType::AAAA).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let m = ask(at, "lab.skiff.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let m = ask(at, "db.lab.skiff.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // No upstream: other names do not exist.
        let m = ask(at, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // A replica leaves: its name goes with it.
        dns.set_endpoints(&pb::Endpoints {
            endpoints: vec![endpoint("lab", "web", 'b', "10.88.1.9", 8080)],
        });
        let m = ask(at, "web.lab.skiff.", RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 88, 1, 9)]);
        let m = ask(at, &a_name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn a_container_sees_the_names_of_the_namespaces_it_may_reach() {
        use super::super::firewall::NamespaceMembers;
        let dns = Dns::new(Upstream::None);
        let at = dns.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        dns.set_endpoints(&pb::Endpoints {
            endpoints: vec![
                endpoint("lab", "web", 'a', "10.88.0.5", 8080),
                endpoint("db", "pg", 'b', "10.88.0.6", 5432),
                endpoint("shared", "cache", 'c', "10.88.0.7", 6379),
                endpoint("open", "docs", 'd', "10.88.0.8", 80),
            ],
        });
        let ns = |name: &str, ips: &[&str], from: &[&str]| NamespaceMembers {
            name: name.into(),
            addresses: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            from: from.iter().map(|s| s.to_string()).collect(),
        };
        // The asking address (the test's 127.0.0.1) is a container of lab.
        dns.set_members(&Members {
            namespaces: vec![
                ns("lab", &["127.0.0.1", "10.88.0.5"], &[]),
                ns("db", &["10.88.0.6"], &["web"]),
                ns("shared", &["10.88.0.7"], &["lab"]),
                ns("open", &["10.88.0.8"], &["*"]),
            ],
            ..Members::default()
        });
        for (name, seen) in [
            ("web.lab.skiff.", true),
            ("cache.shared.skiff.", true),
            ("docs.open.skiff.", true),
            ("pg.db.skiff.", false),
            ("db.skiff.", false),
        ] {
            let m = ask(at, name, RecordType::A).await;
            let code = if seen {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            assert_eq!(m.metadata.response_code, code, "{name}");
        }
        let m = ask(at, "_http._tcp.pg.db.skiff.", RecordType::SRV).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // An address that is no container's (the host) sees every name.
        dns.set_members(&Members {
            namespaces: vec![ns("lab", &["10.88.0.5"], &[])],
            ..Members::default()
        });
        let m = ask(at, "pg.db.skiff.", RecordType::A).await;
        assert_eq!(a_records(&m), [Ipv4Addr::new(10, 88, 0, 6)]);
    }

    #[tokio::test]
    async fn other_names_go_to_the_upstream_resolvers() {
        // An upstream that answers every A question with 192.0.2.99.
        let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_at = upstream.local_addr().unwrap();
        let asked = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            let name = q.queries[0].name().clone();
            r.add_query(q.queries[0].clone());
            r.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 99))),
            ));
            upstream.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            name.to_ascii()
        });
        let dns = Dns::new(Upstream::Servers(vec![up_at]));
        let at = dns.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let m = ask(at, "registry.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 99)]);
        assert_eq!(asked.await.unwrap(), "registry.example.");
        // The cluster's names are still its own.
        let m = ask(at, "web.lab.skiff.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn a_container_searches_its_own_namespace_first() {
        let text = resolv_conf(Ipv4Addr::new(10, 88, 0, 1), "lab");
        assert!(text.contains("nameserver 10.88.0.1\n"), "{text}");
        assert!(text.contains("search lab.skiff skiff\n"), "{text}");
    }
}
