//! A task's named ports (`ports: [{name: http, container: 8080, host: 0}]`)
//! and what they become once placed: the host ports the scheduler holds
//! for them on the node, and the variables the container is given.
//!
//! An allocation's [`Allocation::ports`] lists every host port it holds:
//! first the task's `resources.ports`, then, in the order of `task.ports`,
//! the host port of each published entry (its fixed `host`, or the one the
//! scheduler picked for `host: 0`). `Allocation::published` reads that
//! order back.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

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
    /// TCP (the default) or UDP. A host port is held whole whatever the
    /// protocol: a UDP port and a TCP port never share a number on a node.
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
}

/// A port's transport protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn is_tcp(&self) -> bool {
        *self == Protocol::Tcp
    }

    /// `tcp` or `udp` (CNI's and DNS SRV's spelling).
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// `tcp` (or empty) or `udp`.
    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "" | "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }
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
    pub protocol: Protocol,
}

/// `http-alt` → `HTTP_ALT`, the suffix of a port's variables.
pub fn env_suffix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
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
}
