//! A task's named ports (`ports: [{name: http, container: 8080, host: 0}]`)
//! and what they become once placed: the host ports the scheduler holds
//! for them on the node, and the variables the container is given.
//!
//! An allocation's [`Allocation::ports`] lists every host port it holds:
//! first the task's `resources.ports`, then, in the order of `task.ports`,
//! the host port of each published entry (its fixed `host`, or the one the
//! scheduler picked for `host: 0`). [`published`] reads that order back.

use std::borrow::Cow;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::alloc::Allocation;
use crate::job::{NetworkMode, TaskSpec};
use crate::resources::TaskResources;

/// Where `host: 0` ports are picked from, on every node.
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 20000..=32000;

/// One named port of a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// `http`, `metrics`: lower-case letters, digits and '-', at most 15
    /// characters; the variables' suffix (`SKIFF_PORT_HTTP`).
    pub name: String,
    /// The port the container listens on (in `network: host`, 0: the host
    /// port).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub container: u16,
    /// Published on the node: `Some(0)` a port the scheduler picks from
    /// [`DYNAMIC_PORTS`], `Some(n)` that port; `None`: not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// A port of a placed allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published<'a> {
    pub name: &'a str,
    /// The port inside the container.
    pub container: u16,
    /// The node's port that forwards to it; `None`: not published.
    pub host: Option<u16>,
}

impl TaskSpec {
    /// How many of its ports ask the scheduler for a host port (`host: 0`).
    pub fn dynamic_ports(&self) -> u32 {
        self.ports.iter().filter(|p| p.host == Some(0)).count() as u32
    }

    /// What one replica asks of a node: `resources`, with the fixed host
    /// ports of `ports` added to the ports it holds and the number of
    /// ports it needs picked for it.
    pub fn ask(&self) -> Cow<'_, TaskResources> {
        if self.ports.iter().all(|p| p.host.is_none()) {
            return Cow::Borrowed(&self.resources);
        }
        let mut r = self.resources.clone();
        r.ports
            .extend(self.ports.iter().filter_map(|p| p.host.filter(|&h| h > 0)));
        r.dynamic_ports = self.dynamic_ports();
        Cow::Owned(r)
    }

    /// The host ports an allocation of this task holds, given the ports
    /// picked for its `host: 0` entries (in order).
    pub fn held_ports(&self, picked: &[u16]) -> Vec<u16> {
        let mut picked = picked.iter();
        let mut held = self.resources.ports.clone();
        for p in &self.ports {
            match p.host {
                Some(0) => held.extend(picked.next()),
                Some(h) => held.push(h),
                None => {}
            }
        }
        held
    }
}

/// The ports of allocation `a` with the host port each got.
pub fn published(a: &Allocation) -> Vec<Published<'_>> {
    let mut held = a.ports.iter().skip(a.task.resources.ports.len()).copied();
    a.task
        .ports
        .iter()
        .map(|p| {
            let host = p.host.and_then(|_| held.next());
            let container = match (p.container, a.task.network) {
                (0, NetworkMode::Host) => host.unwrap_or(0),
                (c, _) => c,
            };
            Published {
                name: &p.name,
                container,
                host,
            }
        })
        .collect()
}

/// `http-alt` → `HTTP_ALT`, the suffix of a port's variables.
pub fn env_suffix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// The `SKIFF_PORT_*`, `SKIFF_HOST_PORT_*` and `SKIFF_ADDR_*` variables of
/// allocation `a`, given the node's address (host part) and the
/// container's own (bridge), if any. `SKIFF_ADDR_*` is where a client
/// reaches the port: the node's address and host port when published,
/// the container's address and port otherwise.
pub fn port_env(
    a: &Allocation,
    node_host: &str,
    container_ip: Option<&str>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for p in published(a) {
        let suffix = env_suffix(p.name);
        env.push((format!("SKIFF_PORT_{suffix}"), p.container.to_string()));
        let addr = match p.host {
            Some(h) => {
                env.push((format!("SKIFF_HOST_PORT_{suffix}"), h.to_string()));
                Some(join_host_port(node_host, h))
            }
            None => container_ip.map(|ip| join_host_port(ip, p.container)),
        };
        if let Some(addr) = addr {
            env.push((format!("SKIFF_ADDR_{suffix}"), addr));
        }
    }
    env
}

/// `ip:port`, with an IPv6 address in brackets.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Picks `n` ports of [`DYNAMIC_PORTS`] that are not in `held` (sorted),
/// starting the search at an offset drawn from `seed` so that a port
/// given up is not handed out again at once. `None` when fewer are free.
pub fn pick_dynamic(held: &[u16], n: u32, seed: u64) -> Option<Vec<u16>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let (lo, hi) = (*DYNAMIC_PORTS.start(), *DYNAMIC_PORTS.end());
    let span = u64::from(hi - lo) + 1;
    let start = lo + (seed % span) as u16;
    let free = |p: &u16| held.binary_search(p).is_err();
    let picked: Vec<u16> = (start..=hi)
        .chain(lo..start)
        .filter(free)
        .take(n as usize)
        .collect();
    (picked.len() == n as usize).then_some(picked)
}

/// How many ports of [`DYNAMIC_PORTS`] `held` (sorted) leaves free.
pub fn dynamic_free(held: &[u16]) -> u32 {
    let lo = held.partition_point(|&p| p < *DYNAMIC_PORTS.start());
    let hi = held.partition_point(|&p| p <= *DYNAMIC_PORTS.end());
    let span = u32::from(DYNAMIC_PORTS.end() - DYNAMIC_PORTS.start()) + 1;
    span.saturating_sub((hi - lo) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_skip_held_ports_and_wrap_around() {
        let held = [31999, 32000];
        let seed = 31999 - 20000;
        assert_eq!(pick_dynamic(&held, 2, seed), Some(vec![20000, 20001]));
        assert_eq!(pick_dynamic(&held, 0, seed), Some(vec![]));
        assert_eq!(dynamic_free(&held), 12001 - 2);
        let all: Vec<u16> = DYNAMIC_PORTS.collect();
        assert_eq!(dynamic_free(&all), 0);
        assert_eq!(pick_dynamic(&all, 1, 7), None);
        // Ports outside the range do not count against it.
        assert_eq!(dynamic_free(&[80, 8080, 40000]), 12001);
    }

    #[test]
    fn the_variables_name_each_port() {
        let spec = crate::JobSpec::from_yaml(
            "name: web\ntask:\n  image: 'oci:/i'\n  network: bridge\n  ports:\n  - {name: http-alt, container: 8080, host: 0}\n  - {name: admin, container: 9000}\n  - {name: fixed, container: 70, host: 7070}\n",
        )
        .unwrap();
        assert_eq!(spec.task.dynamic_ports(), 1);
        assert_eq!(spec.task.ask().ports, [7070]);
        assert_eq!(spec.task.ask().dynamic_ports, 1);
        let mut a = Allocation::new("a1", "web", 1, 0, "n1", spec.task.clone());
        a.ports = spec.task.held_ports(&[20005]);
        assert_eq!(a.ports, [20005, 7070]);
        let env = port_env(&a, "192.0.2.1", Some("10.88.0.5"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("SKIFF_PORT_HTTP_ALT"), Some("8080"));
        assert_eq!(get("SKIFF_HOST_PORT_HTTP_ALT"), Some("20005"));
        assert_eq!(get("SKIFF_ADDR_HTTP_ALT"), Some("192.0.2.1:20005"));
        assert_eq!(get("SKIFF_PORT_ADMIN"), Some("9000"));
        assert_eq!(get("SKIFF_HOST_PORT_ADMIN"), None);
        assert_eq!(get("SKIFF_ADDR_ADMIN"), Some("10.88.0.5:9000"));
        assert_eq!(get("SKIFF_ADDR_FIXED"), Some("192.0.2.1:7070"));
    }
}
