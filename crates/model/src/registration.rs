//! The rules a node's registration must pass before the servers store it:
//! its name, its amounts, its address and labels, and a GPU inventory the
//! scheduler can trust (at most [`MAX_GPUS_PER_NODE`], unique UUIDs, MIG
//! instances under a GPU in MIG mode, links only between two of its GPUs).
//!
//! The server turns the agent's message into these model values at the
//! edge, then asks here; each rule returns the first broken one as a
//! [`FieldError`], which the server sends back as it reads.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::error::FieldError;
use crate::gpu::{Gpu, GpuLink, MAX_GPUS_PER_NODE};
use crate::resources::Resources;

/// Longest node name, label key or GPU UUID (a DNS name's limit).
const MAX_NAME: usize = 253;
/// Longest MIG profile name.
const MAX_MIG_PROFILE: usize = 32;
/// Most NVLink peers one GPU may report.
const MAX_NVLINK_PEERS: usize = 64;

/// What an agent asks to be registered with, besides its name (which
/// [`check_node_name`] checks on every call an agent makes).
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub labels: &'a BTreeMap<String, String>,
    /// What the machine has.
    pub capacity: Resources,
    /// What is kept back for the system.
    pub reserved: Resources,
    /// Where the agent answers log and exec requests: `IP:PORT`.
    pub address: &'a str,
    pub gpus: &'a [Gpu],
    pub gpu_links: &'a [GpuLink],
}

/// Node names: host-name characters, 1 to 253 of them.
pub fn check_node_name(name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "name",
            format!(
                "{:?} must be 1 to 253 letters, digits, '-', '.' or '_'",
                crate::error::clipped(name)
            ),
        ))
    }
}

/// Checks a registration's rules in order and returns the first broken.
pub fn check_registration(r: &Registration<'_>) -> Result<(), FieldError> {
    if r.capacity.cpu_millis == 0 || r.capacity.memory_bytes == 0 {
        return Err(FieldError::new(
            "capacity",
            "cpu and memory must both be more than 0",
        ));
    }
    if r.address.parse::<SocketAddr>().is_err() {
        return Err(FieldError::new(
            "address",
            format!("{:?} must be IP:PORT", r.address),
        ));
    }
    for key in r.labels.keys() {
        if key.is_empty() || key.len() > MAX_NAME {
            return Err(FieldError::new(
                "labels",
                format!("key {key:?} must be 1 to 253 characters"),
            ));
        }
    }
    if r.reserved.gpus > 0 {
        return Err(FieldError::new(
            "reserved.gpus",
            "GPUs cannot be reserved; leave them out of gpus instead",
        ));
    }
    check_gpus(r.gpus)?;
    check_gpu_links(r.gpus, r.gpu_links)
}

/// A node's GPUs: at most 64, each with a unique UUID and bounded texts; a
/// MIG instance names a GPU of the node in MIG mode as its parent.
pub fn check_gpus(gpus: &[Gpu]) -> Result<(), FieldError> {
    if gpus.len() > MAX_GPUS_PER_NODE {
        return Err(FieldError::new(
            "gpus",
            format!(
                "{} GPUs; a node may report at most {MAX_GPUS_PER_NODE}",
                gpus.len()
            ),
        ));
    }
    for (i, g) in gpus.iter().enumerate() {
        let field = |name: &str| format!("gpus[{i}].{name}");
        if g.uuid.is_empty() || g.uuid.len() > MAX_NAME {
            return Err(FieldError::new(
                field("uuid"),
                "must be 1 to 253 characters",
            ));
        }
        if g.model.len() > MAX_NAME {
            return Err(FieldError::new(
                field("model"),
                "must be at most 253 characters",
            ));
        }
        if gpus[..i].iter().any(|o| o.uuid == g.uuid) {
            return Err(FieldError::new(
                field("uuid"),
                format!("{:?} is reported twice", g.uuid),
            ));
        }
        let texts = [
            ("health_reason", &g.health_reason, 1024),
            ("compute_capability", &g.compute_capability, 16),
            ("pci_bus_id", &g.pci_bus_id, 64),
        ];
        for (name, text, max) in texts {
            if text.len() > max {
                return Err(FieldError::new(
                    field(name),
                    format!("must be at most {max} characters"),
                ));
            }
        }
        if let Some(p) = &g.mig_profile {
            if p.is_empty() || p.len() > MAX_MIG_PROFILE {
                return Err(FieldError::new(
                    field("mig_profile"),
                    "must be 1 to 32 characters",
                ));
            }
        }
        if g.mig_enabled && g.mig_profile.is_some() {
            return Err(FieldError::new(
                format!("gpus[{i}]"),
                "a MIG instance cannot be in MIG mode itself",
            ));
        }
        if let Some(parent) = &g.parent {
            if !gpus.iter().any(|o| o.uuid == *parent && o.mig_enabled) {
                return Err(FieldError::new(
                    field("parent"),
                    format!("{parent:?} is not one of the node's GPUs in MIG mode"),
                ));
            }
        }
        if g.nvlink_peers.len() > MAX_NVLINK_PEERS
            || g.nvlink_peers.iter().any(|p| p.len() > MAX_NAME)
        {
            return Err(FieldError::new(
                field("nvlink_peers"),
                "at most 64 peers of at most 253 characters",
            ));
        }
    }
    Ok(())
}

/// Links only between two different GPUs of the node, at most 64 × 64 of
/// them.
pub fn check_gpu_links(gpus: &[Gpu], links: &[GpuLink]) -> Result<(), FieldError> {
    let max_links = MAX_GPUS_PER_NODE * MAX_GPUS_PER_NODE;
    if links.len() > max_links {
        return Err(FieldError::new(
            "gpu_links",
            format!("{} links; at most {max_links}", links.len()),
        ));
    }
    for (i, l) in links.iter().enumerate() {
        let path = format!("gpu_links[{i}]");
        for (end, uuid) in [("a", &l.a), ("b", &l.b)] {
            if !gpus.iter().any(|g| g.uuid == *uuid) {
                return Err(FieldError::new(
                    format!("{path}.{end}"),
                    format!("{uuid:?} is not one of the node's gpus"),
                ));
            }
        }
        if l.a == l.b {
            return Err(FieldError::new(path, "links a GPU to itself"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::LinkLevel;

    fn gpu(uuid: &str) -> Gpu {
        Gpu::new(uuid, "A100", 1)
    }

    fn link(a: &str, b: &str) -> GpuLink {
        GpuLink {
            a: a.into(),
            b: b.into(),
            level: LinkLevel::NvLink,
        }
    }

    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

    /// The first broken rule of a registration that differs from a good
    /// one by `change`, as the server sends it.
    fn refusal<'a>(change: impl FnOnce(&mut Registration<'a>)) -> String {
        let mut r = Registration {
            labels: &NO_LABELS,
            capacity: Resources::new(1000, 1 << 30),
            reserved: Resources::ZERO,
            address: "127.0.0.1:7702",
            gpus: &[],
            gpu_links: &[],
        };
        change(&mut r);
        check_registration(&r).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_registration_passes() {
        let labels = BTreeMap::new();
        let gpus = [
            gpu("GPU-a"),
            Gpu {
                mig_enabled: true,
                ..gpu("GPU-b")
            },
            Gpu {
                mig_profile: Some("1g.10gb".into()),
                parent: Some("GPU-b".into()),
                ..gpu("MIG-1")
            },
        ];
        let links = [link("GPU-a", "GPU-b")];
        let r = Registration {
            labels: &labels,
            capacity: Resources::new(1000, 1 << 30).with_gpus(2),
            reserved: Resources::new(100, 1 << 20),
            address: "[::1]:7702",
            gpus: &gpus,
            gpu_links: &links,
        };
        assert_eq!(check_registration(&r), Ok(()));
        assert_eq!(check_node_name("node-1.rack_2"), Ok(()));
    }

    #[test]
    fn node_names_are_host_names() {
        for bad in ["", "a b", "node/1", &"a".repeat(254)] {
            let e = check_node_name(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("name: ")
                    && e.ends_with("must be 1 to 253 letters, digits, '-', '.' or '_'"),
                "{e}"
            );
        }
    }

    #[test]
    fn amounts_address_and_labels_are_refused_by_name() {
        assert_eq!(
            refusal(|r| r.capacity = Resources::new(0, 1 << 30)),
            "capacity: cpu and memory must both be more than 0"
        );
        assert_eq!(
            refusal(|r| r.address = "localhost"),
            "address: \"localhost\" must be IP:PORT"
        );
        let empty_key = BTreeMap::from([(String::new(), "x".to_string())]);
        assert_eq!(
            refusal(|r| r.labels = &empty_key),
            "labels: key \"\" must be 1 to 253 characters"
        );
        assert_eq!(
            refusal(|r| r.reserved = Resources::ZERO.with_gpus(1)),
            "reserved.gpus: GPUs cannot be reserved; leave them out of gpus instead"
        );
    }

    #[test]
    fn a_malformed_gpu_inventory_is_refused_at_its_first_broken_rule() {
        let many: Vec<Gpu> = (0..65).map(|i| gpu(&i.to_string())).collect();
        let cases: Vec<(Vec<Gpu>, &str)> = vec![
            (many, "gpus: 65 GPUs; a node may report at most 64"),
            (vec![gpu("")], "gpus[0].uuid: must be 1 to 253 characters"),
            (
                vec![gpu("a"), gpu("a")],
                "gpus[1].uuid: \"a\" is reported twice",
            ),
            (
                vec![Gpu {
                    pci_bus_id: "x".repeat(65),
                    ..gpu("a")
                }],
                "gpus[0].pci_bus_id: must be at most 64 characters",
            ),
            (
                vec![Gpu {
                    mig_profile: Some(String::new()),
                    ..gpu("a")
                }],
                "gpus[0].mig_profile: must be 1 to 32 characters",
            ),
            (
                vec![Gpu {
                    mig_enabled: true,
                    mig_profile: Some("1g.10gb".into()),
                    ..gpu("a")
                }],
                "gpus[0]: a MIG instance cannot be in MIG mode itself",
            ),
            (
                vec![
                    gpu("GPU-a"),
                    Gpu {
                        mig_profile: Some("1g.10gb".into()),
                        parent: Some("GPU-a".into()),
                        ..gpu("MIG-1")
                    },
                ],
                "gpus[1].parent: \"GPU-a\" is not one of the node's GPUs in MIG mode",
            ),
            (
                vec![Gpu {
                    nvlink_peers: vec!["p".into(); 65],
                    ..gpu("a")
                }],
                "gpus[0].nvlink_peers: at most 64 peers of at most 253 characters",
            ),
        ];
        for (gpus, want) in cases {
            assert_eq!(refusal(|r| r.gpus = &gpus), want);
        }
    }

    #[test]
    fn links_join_two_different_gpus_of_the_node() {
        let gpus = [gpu("a"), gpu("b")];
        let cases = [
            (
                vec![link("a", "zz")],
                "gpu_links[0].b: \"zz\" is not one of the node's gpus",
            ),
            (
                vec![link("a", "b"), link("zz", "a")],
                "gpu_links[1].a: \"zz\" is not one of the node's gpus",
            ),
            (vec![link("a", "a")], "gpu_links[0]: links a GPU to itself"),
            (
                vec![link("a", "b"); 64 * 64 + 1],
                "gpu_links: 4097 links; at most 4096",
            ),
        ];
        for (links, want) in cases {
            assert_eq!(
                refusal(|r| {
                    r.gpus = &gpus;
                    r.gpu_links = &links;
                }),
                want
            );
        }
    }
}
