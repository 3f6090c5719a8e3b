//! Namespaces: what the jobs of one namespace may ask for (a policy an
//! admin sets) and how much they may hold at once (a quota). Jobs of a
//! namespace nobody described get no more than Docker's defaults and no
//! cap. The checks are pure functions of a spec and the jobs already in
//! the namespace, so the state machine runs them the same way on every
//! server, serialised with every other write: two concurrent applies can
//! never both fit under a quota only one of them fits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::JobSpec;
use crate::lifecycle::DEFAULT_CAPABILITIES;
use crate::quantity::{format_cpu, format_memory_human};

/// The key of a GPU quota that counts requests naming no model.
pub const ANY_GPU: &str = "any";

/// Quota GPU units per whole GPU: a MIG instance counts as its share of
/// its GPU's compute slices (7 on A100, H100 and H200; 4 on A30), and 28
/// is the least number both divide.
pub const GPU_UNITS: u64 = 28;

/// A namespace as an admin described it (`skiff namespace apply`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// A DNS-1123 label.
    pub name: String,
    #[serde(default, skip_serializing_if = "Policy::is_empty")]
    pub policy: Policy,
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub quota: Quota,
}

/// What tasks of the namespace may ask for beyond the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Capabilities beyond Docker's default set that `cap_add` may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Directories besides the nodes' image roots under which `oci:`
    /// layouts may be named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_paths: Vec<String>,
    /// Tasks may use `network: host` (gangs always may): they share the
    /// node's network, its loopback and every port on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// The other namespaces whose containers may open connections to this
    /// one's (`*`: every namespace). A namespace's own containers always
    /// may; others may not unless named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_from: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.capabilities.is_empty()
            && self.image_paths.is_empty()
            && !self.host_network
            && self.network_from.is_empty()
    }

    /// Whether containers of namespace `from` may open connections to
    /// containers of the namespace `own` this policy is of.
    pub fn lets_in(&self, own: &str, from: &str) -> bool {
        from == own || self.network_from.iter().any(|n| n == "*" || n == from)
    }
}

/// Checks `spec`'s network against namespace `name`'s policy: `network:
/// host` needs `host_network: true`, except for a gang (whose ranks talk
/// over the host's network).
pub fn check_network(name: &str, host_network: bool, spec: &JobSpec) -> Result<(), String> {
    if spec.task.network == crate::job::NetworkMode::Host && !spec.gang && !host_network {
        return Err(format!(
            "task.network: host is not allowed in namespace {name:?}: it would share the node's network, loopback and ports; use bridge (the default), or have an admin set policy.host_network: true (skiff namespace apply)"
        ));
    }
    Ok(())
}

/// The most the namespace's jobs may hold at once; a missing amount is
/// not capped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Allocations running at once (replicas of services, parallelism of
    /// batch jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
    /// GPUs by model name, and [`ANY_GPU`] for requests that name none.
    /// When any is given, a model not listed has a quota of 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpus: BTreeMap<String, u64>,
}

impl Quota {
    pub fn is_empty(&self) -> bool {
        self.cpu_millis.is_none()
            && self.memory_bytes.is_none()
            && self.allocations.is_none()
            && self.gpus.is_empty()
    }
}

/// What jobs hold against a quota; GPUs in [`GPU_UNITS`] per GPU, by the
/// quota's key (model name or [`ANY_GPU`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub allocations: u64,
    pub gpu_units: BTreeMap<String, u64>,
}

impl Usage {
    /// What `spec` holds when all it wants runs: `wanted()` allocations
    /// (replicas of a service, parallelism of a batch job).
    pub fn of_job(spec: &JobSpec) -> Usage {
        let n = u64::from(spec.wanted());
        let r = &spec.task.resources;
        let mut usage = Usage {
            cpu_millis: r.cpu_millis.saturating_mul(n),
            memory_bytes: r.memory_bytes.saturating_mul(n),
            allocations: n,
            gpu_units: BTreeMap::new(),
        };
        let per_replica = match &r.gpu.mig {
            Some(profile) => mig_units(profile, r.gpu.model.as_deref()) * u64::from(r.gpus.max(1)),
            None => u64::from(r.gpus) * GPU_UNITS,
        };
        if per_replica > 0 {
            let key = r.gpu.model.clone().unwrap_or_else(|| ANY_GPU.to_string());
            usage.gpu_units.insert(key, per_replica.saturating_mul(n));
        }
        usage
    }

    pub fn add(&mut self, other: &Usage) {
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.allocations = self.allocations.saturating_add(other.allocations);
        for (k, v) in &other.gpu_units {
            let e = self.gpu_units.entry(k.clone()).or_default();
            *e = e.saturating_add(*v);
        }
    }
}

/// The quota units one MIG instance of `profile` (`2g.20gb`) counts as:
/// its compute slices out of its GPU's (4 on an A30, else 7).
pub fn mig_units(profile: &str, model: Option<&str>) -> u64 {
    let slices: u64 = profile
        .split_once('g')
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1);
    let of = if model.is_some_and(|m| m.contains("A30")) {
        4
    } else {
        7
    };
    (slices.min(of) * GPU_UNITS).div_ceil(of)
}

/// One amount of a quota check: its name, cap, use, request and how to
/// print it.
type Check<'a> = (&'a str, Option<u64>, u64, u64, &'a dyn Fn(u64) -> String);

/// A number of GPUs in quota units, as people read it (`2`, `0.29`).
pub fn format_gpus(units: u64) -> String {
    if units.is_multiple_of(GPU_UNITS) {
        (units / GPU_UNITS).to_string()
    } else {
        format!("{:.2}", units as f64 / GPU_UNITS as f64)
    }
}

impl Namespace {
    /// Checks `spec` against the policy: every capability `cap_add` names
    /// beyond Docker's defaults must be allowed. The error names the field
    /// and the rule.
    pub fn check_capabilities(&self, spec: &JobSpec) -> Result<(), String> {
        check_capabilities(&self.name, &self.policy.capabilities, spec)
    }

    /// Whether an `oci:` layout at `path` (absolute) is allowed: under one
    /// of `roots` (the nodes' image roots) or the policy's image paths.
    pub fn image_path_allowed<'a>(
        &'a self,
        path: &str,
        roots: impl IntoIterator<Item = &'a String>,
    ) -> bool {
        roots
            .into_iter()
            .chain(&self.policy.image_paths)
            .any(|root| path_under(path, root))
    }

    /// Checks that `used` (everything else in the namespace) plus `spec`
    /// fits the quota; the error says what is used and what is left.
    pub fn check_quota(&self, used: &Usage, spec: &JobSpec) -> Result<(), String> {
        let q = &self.quota;
        let wants = Usage::of_job(spec);
        let over = |what: &str, cap: u64, used: u64, wants: u64, fmt: &dyn Fn(u64) -> String| {
            format!(
                "quota of namespace {:?} exceeded: {what} {} used of {}, {} left; job {:?} needs {}",
                self.name,
                fmt(used),
                fmt(cap),
                fmt(cap.saturating_sub(used)),
                spec.name,
                fmt(wants)
            )
        };
        let plain = |n: u64| n.to_string();
        let checks: [Check; 3] = [
            (
                "cpu",
                q.cpu_millis,
                used.cpu_millis,
                wants.cpu_millis,
                &format_cpu,
            ),
            (
                "memory",
                q.memory_bytes,
                used.memory_bytes,
                wants.memory_bytes,
                &format_memory_human,
            ),
            (
                "allocations",
                q.allocations,
                used.allocations,
                wants.allocations,
                &plain,
            ),
        ];
        for (what, cap, used, wants, fmt) in checks {
            if let Some(cap) = cap {
                if used.saturating_add(wants) > cap {
                    return Err(over(what, cap, used, wants, fmt));
                }
            }
        }
        if !q.gpus.is_empty() {
            for (key, wants) in &wants.gpu_units {
                let cap = q
                    .gpus
                    .get(key)
                    .copied()
                    .unwrap_or(0)
                    .saturating_mul(GPU_UNITS);
                let used = used.gpu_units.get(key).copied().unwrap_or(0);
                if used.saturating_add(*wants) > cap {
                    let what = if key == ANY_GPU {
                        "GPUs naming no model (`any`)".to_string()
                    } else {
                        format!("GPUs {key:?}")
                    };
                    return Err(over(&what, cap, used, *wants, &format_gpus));
                }
            }
        }
        Ok(())
    }
}

/// Checks that every capability `spec` adds is in Docker's default set or
/// in `allowed`, the policy of namespace `ns`.
pub fn check_capabilities(ns: &str, allowed: &[String], spec: &JobSpec) -> Result<(), String> {
    for (i, cap) in spec.task.security.cap_add.iter().enumerate() {
        if DEFAULT_CAPABILITIES.contains(&cap.as_str()) || allowed.iter().any(|c| c == cap) {
            continue;
        }
        return Err(format!(
            "task.security.cap_add[{i}]: {cap} is beyond Docker's default capabilities and the policy of namespace {ns:?} does not allow it (an admin allows it with `policy: {{capabilities: [{cap}]}}` in `skiff namespace apply`)"
        ));
    }
    Ok(())
}

/// Whether `path` is `root` or below it, by whole components (`/srv/a`
/// is not under `/srv/ab`); `..` never counts as below.
pub fn path_under(path: &str, root: &str) -> bool {
    if path.split('/').any(|c| c == "..") {
        return false;
    }
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return path.starts_with('/');
    }
    path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ImageRef, TaskSpec};
    use crate::resources::TaskResources;

    fn job(name: &str, replicas: u32, cpu: u64, gpus: u32, model: Option<&str>) -> JobSpec {
        let mut task = TaskSpec::new(ImageRef::parse("oci:/srv/images/bb").unwrap());
        task.resources = TaskResources::new(cpu, 1 << 20);
        task.resources.gpus = gpus;
        task.resources.gpu.model = model.map(str::to_string);
        JobSpec::new(name, replicas, task)
    }

    #[test]
    fn paths_are_under_roots_by_whole_components() {
        assert!(path_under("/srv/images/bb", "/srv/images"));
        assert!(path_under("/srv/images", "/srv/images/"));
        assert!(!path_under("/srv/imagesx/bb", "/srv/images"));
        assert!(!path_under("/srv/images/../../etc", "/srv/images"));
    }

    #[test]
    fn capabilities_beyond_the_defaults_need_the_policy() {
        let mut ns = Namespace {
            name: "lab".into(),
            ..Namespace::default()
        };
        let mut spec = job("web", 1, 100, 0, None);
        spec.task.security.cap_add = vec!["CHOWN".into(), "SYS_ADMIN".into()];
        let err = ns.check_capabilities(&spec).unwrap_err();
        assert!(
            err.starts_with("task.security.cap_add[1]: SYS_ADMIN"),
            "{err}"
        );
        ns.policy.capabilities = vec!["SYS_ADMIN".into()];
        ns.check_capabilities(&spec).unwrap();
    }

    #[test]
    fn quotas_say_what_is_used_and_left() {
        let ns = Namespace {
            name: "lab".into(),
            quota: Quota {
                cpu_millis: Some(2000),
                gpus: [("NVIDIA H100".to_string(), 2), (ANY_GPU.to_string(), 1)].into(),
                ..Quota::default()
            },
            ..Namespace::default()
        };
        let mut used = Usage::default();
        used.add(&Usage::of_job(&job("a", 3, 500, 0, None)));
        ns.check_quota(&used, &job("b", 1, 500, 0, None)).unwrap();
        let err = ns
            .check_quota(&used, &job("b", 2, 500, 0, None))
            .unwrap_err();
        assert!(
            err.contains("cpu 1500m used of 2, 500m left; job \"b\" needs 1"),
            "{err}"
        );
        ns.check_quota(&used, &job("g", 2, 0, 1, Some("NVIDIA H100")))
            .unwrap();
        let err = ns
            .check_quota(&used, &job("g", 3, 0, 1, Some("NVIDIA H100")))
            .unwrap_err();
        assert!(
            err.contains("GPUs \"NVIDIA H100\" 0 used of 2, 2 left"),
            "{err}"
        );
        let err = ns
            .check_quota(&used, &job("g", 1, 0, 1, Some("NVIDIA A100")))
            .unwrap_err();
        assert!(err.contains("0 left"), "{err}");
        let err = ns.check_quota(&used, &job("g", 2, 0, 1, None)).unwrap_err();
        assert!(err.contains("`any`"), "{err}");
    }

    #[test]
    fn a_mig_instance_counts_as_its_share_of_the_slices() {
        assert_eq!(mig_units("1g.10gb", Some("NVIDIA H100 80GB HBM3")), 4);
        assert_eq!(mig_units("7g.80gb", None), GPU_UNITS);
        assert_eq!(mig_units("1g.6gb", Some("NVIDIA A30")), 7);
        assert_eq!(format_gpus(7 * 4), "1");
        assert_eq!(format_gpus(4), "0.14");
        // Seven 1g instances fit one GPU of quota, an eighth does not.
        let ns = Namespace {
            name: "lab".into(),
            quota: Quota {
                gpus: [(ANY_GPU.to_string(), 1)].into(),
                ..Quota::default()
            },
            ..Namespace::default()
        };
        let mut spec = job("m", 7, 0, 1, None);
        spec.task.resources.gpu.mig = Some("1g.10gb".into());
        ns.check_quota(&Usage::default(), &spec).unwrap();
        spec.replicas = 8;
        assert!(ns.check_quota(&Usage::default(), &spec).is_err());
    }
}
