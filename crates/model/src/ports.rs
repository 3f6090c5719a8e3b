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

/// Where `host: 0` ports are picked from on a node whose agent names no
/// range (`skiff agent --dynamic-ports`).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 20000..=32000;

/// A node's range of dynamic host ports, both ends included (Nomad's
/// `min_dynamic_port`/`max_dynamic_port`, per node as there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: *DYNAMIC_PORTS.start(),
            last: *DYNAMIC_PORTS.end(),
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl PortRange {
    /// The least port a range may start at: below it are the well-known
    /// ports, which a node's own services hold.
    pub const LOWEST: u16 = 1024;

    pub fn is_default(&self) -> bool {
        *self == PortRange::default()
    }

    /// Reads `FIRST-LAST` ("" for the default); the error is the rule.
    pub fn parse(text: &str) -> Result<PortRange, String> {
        if text.is_empty() {
            return Ok(PortRange::default());
        }
        let rule = || {
            format!(
                "{text:?} must be FIRST-LAST, two ports from {} to 65535, the first not above the last (e.g. 20000-32000)",
                PortRange::LOWEST
            )
        };
        let (a, b) = text.split_once('-').ok_or_else(rule)?;
        let (first, last) = (
            a.trim().parse::<u16>().map_err(|_| rule())?,
            b.trim().parse::<u16>().map_err(|_| rule())?,
        );
        let r = PortRange { first, last };
        r.check().map_err(|_| rule())?;
        Ok(r)
    }

    /// The range's own rules.
    pub fn check(&self) -> Result<(), String> {
        if self.first < PortRange::LOWEST || self.first > self.last {
            return Err(format!(
                "{self} must be two ports from {} to 65535, the first not above the last",
                PortRange::LOWEST
            ));
        }
        Ok(())
    }

    /// How many ports it holds.
    pub fn len(&self) -> u32 {
        u32::from(self.last.saturating_sub(self.first)) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

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

/// Picks `n` ports of `range` that are not in `held` (sorted), starting
/// the search at an offset drawn from `seed` so that a port given up is
/// not handed out again at once. `None` when fewer are free.
pub fn pick_dynamic(held: &[u16], n: u32, seed: u64, range: PortRange) -> Option<Vec<u16>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let (lo, hi) = (range.first, range.last);
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

/// How many ports of `range` `held` (sorted) leaves free.
pub fn dynamic_free(held: &[u16], range: PortRange) -> u32 {
    let lo = held.partition_point(|&p| p < range.first);
    let hi = held.partition_point(|&p| p <= range.last);
    range.len().saturating_sub((hi - lo) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_skip_held_ports_and_wrap_around() {
        let d = PortRange::default();
        let held = [31999, 32000];
        let seed = 31999 - 20000;
        assert_eq!(pick_dynamic(&held, 2, seed, d), Some(vec![20000, 20001]));
        assert_eq!(pick_dynamic(&held, 0, seed, d), Some(vec![]));
        assert_eq!(dynamic_free(&held, d), 12001 - 2);
        let all: Vec<u16> = DYNAMIC_PORTS.collect();
        assert_eq!(dynamic_free(&all, d), 0);
        assert_eq!(pick_dynamic(&all, 1, 7, d), None);
        // Ports outside the range do not count against it.
        assert_eq!(dynamic_free(&[80, 8080, 40000], d), 12001);
    }

    #[test]
    fn a_nodes_own_range_is_read_checked_and_picked_from() {
        let r = PortRange::parse("30000-30002").unwrap();
        assert_eq!((r.first, r.last, r.len()), (30000, 30002, 3));
        assert_eq!(r.to_string(), "30000-30002");
        assert_eq!(PortRange::parse(""), Ok(PortRange::default()));
        for bad in ["30000", "80-90", "3-2000000", "40000-30000", "a-b"] {
            let e = PortRange::parse(bad).unwrap_err();
            assert!(e.contains("FIRST-LAST"), "{bad}: {e}");
        }
        assert_eq!(pick_dynamic(&[30000, 30001], 1, 5, r), Some(vec![30002]));
        assert_eq!(pick_dynamic(&[30000, 30001], 2, 5, r), None);
        assert_eq!(dynamic_free(&[20000, 30001], r), 2);
    }
}
