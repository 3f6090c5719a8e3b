//! Namespaces on the wire and in the model. The wire form is read
//! leniently (absent parts are empty); the servers validate the result.

use skiff_model::namespace as m;

use crate::pb;

impl From<&m::Namespace> for pb::Namespace {
    fn from(n: &m::Namespace) -> Self {
        pb::Namespace {
            name: n.name.clone(),
            policy: Some(pb::NamespacePolicy {
                capabilities: n.policy.capabilities.clone(),
                image_paths: n.policy.image_paths.clone(),
                host_network: n.policy.host_network,
                network_from: n.policy.network_from.clone(),
            }),
            quota: Some(pb::NamespaceQuota {
                cpu_millis: n.quota.cpu_millis,
                memory_bytes: n.quota.memory_bytes,
                allocations: n.quota.allocations,
                gpus: n.quota.gpus.clone().into_iter().collect(),
            }),
        }
    }
}

impl From<pb::Namespace> for m::Namespace {
    fn from(n: pb::Namespace) -> Self {
        let policy = n.policy.unwrap_or_default();
        let quota = n.quota.unwrap_or_default();
        m::Namespace {
            name: n.name,
            policy: m::Policy {
                capabilities: policy
                    .capabilities
                    .iter()
                    .map(|c| skiff_model::lifecycle::normalize_capability(c))
                    .collect(),
                image_paths: policy.image_paths,
                host_network: policy.host_network,
                network_from: policy.network_from,
            },
            quota: m::Quota {
                cpu_millis: quota.cpu_millis,
                memory_bytes: quota.memory_bytes,
                allocations: quota.allocations,
                gpus: quota.gpus.into_iter().collect(),
            },
        }
    }
}

impl From<&m::Usage> for pb::NamespaceUsage {
    fn from(u: &m::Usage) -> Self {
        pb::NamespaceUsage {
            cpu_millis: u.cpu_millis,
            memory_bytes: u.memory_bytes,
            allocations: u.allocations,
            gpu_units: u.gpu_units.clone().into_iter().collect(),
            jobs: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_survives_the_wire() {
        let ns = m::Namespace::from_yaml(
            "name: lab\npolicy: {capabilities: [NET_ADMIN], image_paths: [/data], host_network: true}\nquota: {cpu: 2, gpus: {any: 1}}\n",
        )
        .unwrap();
        assert!(ns.policy.host_network);
        assert_eq!(m::Namespace::from(pb::Namespace::from(&ns)), ns);
    }
}
