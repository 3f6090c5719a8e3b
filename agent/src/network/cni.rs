//! Calling CNI plugins as the CNI specification says: the plugin binary
//! named by `type`, found on the CNI path, run from the host's network
//! namespace with `CNI_*` variables and its configuration on stdin; exit
//! 0 means stdout holds the result, anything else an error object (on
//! stdout, or text on stderr). Debian's plugins speak 1.0.0 at most.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// The CNI version the configurations say.
pub const CNI_VERSION: &str = "1.0.0";

/// One plugin call's inputs.
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub config: &'a Value,
}

/// The plugin `name` on `path` (directories, in order).
pub fn find(path: &[PathBuf], name: &str) -> Option<PathBuf> {
    path.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Runs the plugin `config.type`; its result (ADD) or `Null`.
pub async fn run(path: &[PathBuf], call: Call<'_>) -> Result<Value, String> {
    let kind = call
        .config
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a plugin configuration without \"type\"")?;
    let binary = find(path, kind).ok_or_else(|| {
        format!(
            "CNI plugin {kind:?} not found in {} (install containernetworking-plugins, or set --cni-path)",
            path.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        )
    })?;
    let cni_path = std::env::join_paths(path).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let input = serde_json::to_vec(call.config).map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&input)
            .await
            .map_err(|e| format!("{kind}: writing its configuration: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{kind}: {e}"))?;
    if out.status.success() {
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "CNI plugin {kind} {}: its result is not JSON: {e}",
                call.command
            )
        });
    }
    let why = match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(err) => {
            let msg = err.get("msg").and_then(Value::as_str).unwrap_or("");
            match err.get("details").and_then(Value::as_str) {
                Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                _ => msg.to_string(),
            }
        }
        Err(_) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
    };
    Err(format!("CNI plugin {kind} {}: {why}", call.command))
}

/// A plugin's configuration as sent: the network's name and version, and
/// `prevResult` when there is one.
pub fn with_network(plugin: &Value, network: &str, prev: Option<&Value>) -> Value {
    let mut c = plugin.clone();
    if let Some(m) = c.as_object_mut() {
        m.insert("cniVersion".into(), Value::from(CNI_VERSION));
        m.insert("name".into(), Value::from(network));
        match prev {
            Some(p) if !p.is_null() => {
                m.insert("prevResult".into(), p.clone());
            }
            _ => {
                m.remove("prevResult");
            }
        }
    }
    c
}

/// The first IPv4 address of a result, without its prefix length.
pub fn first_ipv4(result: &Value) -> Option<String> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next())
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_carry_the_network_and_the_previous_result() {
        let plugin = serde_json::json!({"type": "bridge", "bridge": "skiff0"});
        let prev = serde_json::json!({"ips": [{"address": "10.88.0.7/24"}]});
        let c = with_network(&plugin, "skiff", Some(&prev));
        assert_eq!(c["cniVersion"], CNI_VERSION);
        assert_eq!(c["name"], "skiff");
        assert_eq!(c["prevResult"], prev);
        assert!(with_network(&c, "skiff", None).get("prevResult").is_none());
        assert_eq!(first_ipv4(&prev).as_deref(), Some("10.88.0.7"));
        assert_eq!(first_ipv4(&serde_json::json!({})), None);
    }

    #[tokio::test]
    async fn a_missing_plugin_is_named_with_where_it_was_looked_for() {
        let config = serde_json::json!({"type": "no-such-plugin"});
        let e = run(
            &[PathBuf::from("/nonexistent/cni")],
            Call {
                command: "ADD",
                container_id: "c",
                netns: Path::new("/nonexistent"),
                ifname: "eth0",
                config: &config,
            },
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("no-such-plugin") && e.contains("/nonexistent/cni"),
            "{e}"
        );
    }
}
