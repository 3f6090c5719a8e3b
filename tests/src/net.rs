//! The test harness's networking: bridges and subnets of each test's own,
//! their removal, the port mappings an agent left, and the namespace
//! policy a test using `network: host` needs.

use std::path::Path;
use std::process::{Command, Stdio};

use skiff_client::Client;

/// Bridges and subnets of each test's own: tests run in parallel, each
/// server and `skiff dev` takes a slot (a /21 of node subnets), each
/// agent a bridge, so no two share a bridge, a subnet or a NAT rule.
static NET_SLOT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub(crate) fn net_slot() -> u32 {
    NET_SLOT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// The /21 of node subnets of slot `slot`: `10.(200..249).X.0/21`, the
/// second number from this process (other test binaries run at once).
pub(crate) fn slot_subnets(slot: u32) -> (String, String) {
    let (b, c) = (200 + std::process::id() % 50, (slot % 32) * 8);
    (format!("10.{b}.{c}.0/21"), format!("10.{b}.{c}.0/24"))
}

/// A bridge name of this process's own (at most 15 characters).
pub(crate) fn slot_bridge(kind: char, slot: u32) -> String {
    format!("sk{}{kind}{slot}", std::process::id() % 10_000)
}

/// Removes a test's bridge and its isolation table, if there.
pub fn remove_bridge(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
    for family in ["inet", "bridge"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &format!("skiff_{name}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Lets the `default` namespace's tasks use `network: host` (a namespace
/// policy; without it such a job is refused).
pub async fn allow_host_network(client: &mut Client) {
    let ns = skiff_model::namespace::Namespace::from_yaml(
        "name: default\npolicy: {host_network: true}\n",
    )
    .unwrap();
    client.apply_namespace(&ns).await.unwrap();
}

/// Undoes the port mappings of the bridged allocations an agent left set
/// up (what its teardown would have done): portmap's rules live in the
/// host's NAT table, outside the data directory, and would otherwise
/// forward a later test's port to a container long gone. Runs each cached
/// portmap call's DEL, as the agent does.
pub(crate) fn remove_port_mappings(agent_dir: &Path) {
    let Ok(dir) = std::fs::read_dir(agent_dir.join("network").join("cni")) else {
        return;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(cached) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let cid = cached["container_id"].as_str().unwrap_or_default();
        let netns = cached["netns"].as_str().unwrap_or_default();
        for step in cached["steps"].as_array().into_iter().flatten() {
            if step["config"]["type"] != "portmap" {
                continue;
            }
            let mut config = step["config"].clone();
            config["cniVersion"] = "1.0.0".into();
            config["name"] = "skiff".into();
            if !step["result"].is_null() {
                config["prevResult"] = step["result"].clone();
            }
            let Ok(mut child) = Command::new("/usr/lib/cni/portmap")
                .env("CNI_COMMAND", "DEL")
                .env("CNI_CONTAINERID", cid)
                .env("CNI_NETNS", netns)
                .env("CNI_IFNAME", step["ifname"].as_str().unwrap_or("eth0"))
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                continue;
            };
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write as _;
                let _ = stdin.write_all(config.to_string().as_bytes());
            }
            let _ = child.wait();
        }
    }
}
