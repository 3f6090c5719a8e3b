//! Reading a namespace (`skiff namespace apply -f ns.yaml`): every broken
//! rule reported, each naming its field, as for jobs.

use serde_json::Value;

use crate::error::SpecError;
use crate::lifecycle::{normalize_capability, CAPABILITIES};
use crate::namespace::{Namespace, Policy, Quota};
use crate::quantity::{parse_cpu, parse_memory};

use super::check_dns_label;
use super::fields::{as_object, as_string, check_unknown, number, quantity, string_list, Errors};

const NAMESPACE_FIELDS: &[&str] = &["name", "policy", "quota"];
const POLICY_FIELDS: &[&str] = &[
    "capabilities",
    "image_paths",
    "host_network",
    "network_from",
];
const QUOTA_FIELDS: &[&str] = &["cpu", "memory", "allocations", "gpus"];
/// Most GPUs a quota may name for one model.
const MAX_GPUS: u64 = 1 << 20;

impl Namespace {
    /// Parses and validates a namespace written in YAML (or JSON).
    pub fn from_yaml(text: &str) -> Result<Namespace, SpecError> {
        let value = super::read_document(text)?;
        let mut errs = Errors::new();
        let read = parse(&value, &mut errs);
        errs.finish(read)
    }

    /// Checks the rules on values, however the namespace was built.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut errs = Errors::new();
        validate(self, &mut errs);
        errs.finish(Some(()))
    }
}

fn parse(root: &Value, errs: &mut Errors) -> Option<Namespace> {
    let obj = as_object(root, "", errs)?;
    check_unknown(obj, "", NAMESPACE_FIELDS, errs);
    let name = match obj.get("name") {
        Some(v) => as_string(v, "name", errs),
        None => {
            errs.push("name", "is required");
            None
        }
    };
    let mut policy = Policy::default();
    if let Some(p) = obj.get("policy").and_then(|v| as_object(v, "policy", errs)) {
        check_unknown(p, "policy", POLICY_FIELDS, errs);
        if let Some(v) = p.get("capabilities") {
            policy.capabilities = string_list(v, "policy.capabilities", errs)
                .iter()
                .map(|c| normalize_capability(c))
                .collect();
        }
        if let Some(v) = p.get("image_paths") {
            policy.image_paths = string_list(v, "policy.image_paths", errs);
        }
        if let Some(v) = p.get("host_network") {
            policy.host_network =
                super::fields::boolean(v, "policy.host_network", errs).unwrap_or(false);
        }
        if let Some(v) = p.get("network_from") {
            policy.network_from = string_list(v, "policy.network_from", errs);
        }
    }
    let quota = obj
        .get("quota")
        .map(|v| parse_quota(v, "quota", errs))
        .unwrap_or_default();
    let ns = Namespace {
        name: name?,
        policy,
        quota,
    };
    validate(&ns, errs);
    Some(ns)
}

/// Reads a quota (`{cpu, memory, allocations, gpus: {MODEL: N}}`) at
/// `path`; namespaces and queues write them alike.
pub(super) fn parse_quota(v: &Value, path: &str, errs: &mut Errors) -> Quota {
    let mut quota = Quota::default();
    let Some(q) = as_object(v, path, errs) else {
        return quota;
    };
    check_unknown(q, path, QUOTA_FIELDS, errs);
    quota.cpu_millis = q
        .get("cpu")
        .and_then(|v| quantity(v, &format!("{path}.cpu"), parse_cpu, errs));
    quota.memory_bytes = q
        .get("memory")
        .and_then(|v| quantity(v, &format!("{path}.memory"), parse_memory, errs));
    quota.allocations = q.get("allocations").and_then(|v| {
        number(
            v,
            &format!("{path}.allocations"),
            0,
            u64::from(u32::MAX),
            errs,
        )
    });
    let gpus_path = format!("{path}.gpus");
    if let Some(g) = q.get("gpus").and_then(|v| as_object(v, &gpus_path, errs)) {
        for (model, v) in g {
            let at = format!("{gpus_path}.{model}");
            if let Some(n) = number(v, &at, 0, MAX_GPUS, errs) {
                quota.gpus.insert(model.clone(), n);
            }
        }
    }
    quota
}

/// Checks a quota's GPU model names and counts.
pub(super) fn validate_quota_gpus(q: &Quota, path: &str, errs: &mut Errors) {
    for (model, n) in &q.gpus {
        if model.is_empty() || model.len() > 256 || *n > MAX_GPUS {
            errs.push(
                &format!("{path}.gpus.{model}"),
                format!("must name a GPU model (or `any`) with 0 to {MAX_GPUS} GPUs"),
            );
        }
    }
}

fn validate(ns: &Namespace, errs: &mut Errors) {
    if let Err(rule) = check_dns_label(&ns.name) {
        errs.push("name", format!("{:?} {rule}", ns.name));
    }
    for (i, cap) in ns.policy.capabilities.iter().enumerate() {
        if !CAPABILITIES.contains(&cap.as_str()) {
            errs.push(
                &format!("policy.capabilities[{i}]"),
                format!("{cap:?} is not a Linux capability"),
            );
        }
    }
    for (i, path) in ns.policy.image_paths.iter().enumerate() {
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.len() > 4096 {
            errs.push(
                &format!("policy.image_paths[{i}]"),
                format!("{path:?} must be an absolute path without `..`"),
            );
        }
    }
    for (i, from) in ns.policy.network_from.iter().enumerate() {
        if from != "*" && check_dns_label(from).is_err() {
            errs.push(
                &format!("policy.network_from[{i}]"),
                format!("{from:?} must be a namespace name (a DNS label) or `*` (every namespace)"),
            );
        }
    }
    validate_quota_gpus(&ns.quota, "quota", errs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_reads_its_policy_and_quota() {
        let ns = Namespace::from_yaml(
            "name: team-a\npolicy: {capabilities: [cap_net_admin], image_paths: [/data/images]}\nquota: {cpu: 4, memory: 8Gi, allocations: 10, gpus: {\"NVIDIA H100 80GB HBM3\": 8, any: 2}}\n",
        )
        .unwrap();
        assert_eq!(ns.policy.capabilities, ["NET_ADMIN"]);
        assert_eq!(ns.quota.cpu_millis, Some(4000));
        assert_eq!(ns.quota.memory_bytes, Some(8 << 30));
        assert_eq!(ns.quota.allocations, Some(10));
        assert_eq!(ns.quota.gpus["any"], 2);
        assert!(ns.policy.lets_in("team-a", "team-a"));
        assert!(!ns.policy.lets_in("team-a", "team-b"));
        let open = Namespace::from_yaml("name: db\npolicy: {network_from: [web, ops]}\n").unwrap();
        assert!(open.policy.lets_in("db", "web") && !open.policy.lets_in("db", "lab"));
        let all = Namespace::from_yaml("name: dns\npolicy: {network_from: ['*']}\n").unwrap();
        assert!(all.policy.lets_in("dns", "anyone"));
        let e = Namespace::from_yaml("name: db\npolicy: {network_from: [Web_1]}\n").unwrap_err();
        assert!(e.to_string().contains("policy.network_from[0]"), "{e}");
        // Its serialized form reads back the same.
        let text = serde_json::to_string(&ns).unwrap();
        assert_eq!(serde_json::from_str::<Namespace>(&text).unwrap(), ns);
    }

    #[test]
    fn every_broken_rule_is_named() {
        let err = Namespace::from_yaml(
            "name: Team_A\npolicy: {capabilities: [FLY], image_paths: [rel/dir]}\nquota: {cpu: lots, pods: 3}\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "quota.pods: unknown field",
            "quota.cpu:",
            "name: \"Team_A\" must be a DNS-1123 label",
            "policy.capabilities[0]: \"FLY\" is not a Linux capability",
            "policy.image_paths[0]: \"rel/dir\" must be an absolute path",
        ] {
            assert!(err.contains(part), "{part} missing from {err}");
        }
    }
}
