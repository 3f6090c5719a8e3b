//! `skiff get endpoints [JOB]`: a job's ready replicas and where to reach
//! each of its ports: the container's address (bridge) and, for a
//! published port, the node's address and host port.

use serde::Serialize;
use skiff_model::Allocation;

use super::connect;
use crate::args::ClientOpts;
use crate::output::{print_list, Format};

/// One ready replica.
#[derive(Debug, Serialize)]
pub struct EndpointOut {
    pub namespace: String,
    pub job: String,
    pub alloc_id: String,
    pub node: String,
    /// The container's address (`network: bridge`); empty otherwise.
    pub address: String,
    pub ports: Vec<PortOut>,
}

#[derive(Debug, Serialize)]
pub struct PortOut {
    pub name: String,
    pub container: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// `ip:port` inside the cluster (the container's), when it has an address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// `node-ip:host-port`, when published.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub published: String,
}

/// The endpoint of `a`, given its node's address (host part).
pub fn endpoint(a: &Allocation, node_host: &str) -> EndpointOut {
    let (namespace, job) = skiff_model::split_job_key(&a.job);
    let join = skiff_model::ports::join_host_port;
    EndpointOut {
        namespace: namespace.to_string(),
        job: job.to_string(),
        alloc_id: a.id.clone(),
        node: a.node.clone(),
        address: a.address.clone(),
        ports: a
            .published()
            .iter()
            .map(|p| PortOut {
                name: p.name.to_string(),
                container: p.container,
                protocol: p.protocol.as_str(),
                address: if a.address.is_empty() {
                    String::new()
                } else {
                    join(&a.address, p.container)
                },
                published: p.host.map(|h| join(node_host, h)).unwrap_or_default(),
            })
            .collect(),
    }
}

fn ports_cell(e: &EndpointOut) -> String {
    if e.ports.is_empty() {
        return "-".into();
    }
    e.ports
        .iter()
        .map(|p| {
            let mut inside = if p.address.is_empty() {
                p.container.to_string()
            } else {
                p.address.clone()
            };
            if p.protocol != "tcp" {
                inside = format!("{inside}/{}", p.protocol);
            }
            if p.published.is_empty() {
                format!("{}={inside}", p.name)
            } else {
                format!("{}={inside} ({})", p.name, p.published)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn get_endpoints(
    job: Option<&str>,
    output: Format,
    client: &ClientOpts,
) -> anyhow::Result<()> {
    let mut c = connect(client).await?;
    let allocs = c.list_allocs(job, None).await?;
    let nodes = c.list_nodes().await?;
    let host_of = |node: &str| {
        nodes
            .iter()
            .find(|n| n.node.name == node)
            .map(|n| skiff_model::workload::host_of(&n.node.address))
            .unwrap_or_default()
    };
    let mut items: Vec<EndpointOut> = allocs
        .iter()
        .filter(|a| a.is_endpoint())
        .map(|a| endpoint(a, &host_of(&a.node)))
        .collect();
    items.sort_by(|a, b| {
        (&a.namespace, &a.job, &a.alloc_id).cmp(&(&b.namespace, &b.job, &b.alloc_id))
    });
    let all = client.all_namespaces;
    let mut headers = vec!["JOB", "ALLOC", "NODE", "ADDRESS", "PORTS"];
    if all {
        headers.insert(0, "NAMESPACE");
    }
    print_list(output, &items, &headers, headers.len(), |e| {
        let mut row = vec![
            e.job.clone(),
            e.alloc_id[..8.min(e.alloc_id.len())].to_string(),
            e.node.clone(),
            if e.address.is_empty() {
                "-".into()
            } else {
                e.address.clone()
            },
            ports_cell(e),
        ];
        if all {
            row.insert(0, e.namespace.clone());
        }
        row
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{AllocStatus, DesiredStatus};

    #[test]
    fn an_endpoint_names_each_port_inside_and_published() {
        let spec = skiff_model::JobSpec::from_yaml(
            "name: web\ntask:\n  image: 'oci:/i'\n  network: bridge\n  ports: [{name: http, container: 8080, host: 0}, {name: metrics, container: 9100}]\n",
        )
        .unwrap();
        let mut a = Allocation::new(
            "0123456789abcdef",
            "default/web",
            1,
            0,
            "n1",
            spec.task.clone(),
        );
        a.ports = spec.task.held_ports(&[20417]);
        a.address = "10.88.0.2".into();
        let e = endpoint(&a, "192.0.2.7");
        assert_eq!(
            ports_cell(&e),
            "http=10.88.0.2:8080 (192.0.2.7:20417), metrics=10.88.0.2:9100"
        );
        assert_eq!((e.namespace.as_str(), e.job.as_str()), ("default", "web"));
        // Only a running, ready replica that is wanted serves.
        assert!(!a.is_endpoint());
        a.status = AllocStatus::Running;
        a.healthy = Some(true);
        assert!(a.is_endpoint());
        a.desired = DesiredStatus::Stop;
        assert!(!a.is_endpoint());
    }
}
