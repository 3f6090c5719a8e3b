//! Reading a job spec and the rules it must pass.
//!
//! [`JobSpec::from_yaml`] turns an untyped YAML/JSON tree into a
//! [`JobSpec`], collecting every broken rule with the dotted path of its
//! field instead of stopping at the first; [`JobSpec::validate`] checks the
//! rules on values however the spec was built (from YAML, or from a gRPC
//! message). The job's top level is read here; each group of fields has
//! its own module:
//!
//! - [`fields`]: the shared toolkit (paths, the error list, readers for one
//!   value, the keys each map may hold);
//! - [`task`]: the task's image, command, environment and amounts;
//! - [`lifecycle`]: restart, probes, security and stop fields;
//! - [`sched`]: the fields the scheduler reads (priority, constraints,
//!   spread, affinities, GPU and port requests);
//! - [`workload`]: type, update, batch and gang fields.
//!
//! The types themselves are in [`crate::job`] and the modules it uses;
//! nothing there depends on this module.

mod depth;
mod fields;
mod lifecycle;
mod namespace;
mod ports;
mod queue;
mod sched;
mod task;
mod workload;

#[cfg(test)]
mod properties;

use serde_json::Value;

use crate::error::{FieldError, SpecError};
use crate::job::{JobSpec, NetworkMode, TaskSpec, DEFAULT_PRIORITY, MAX_REPLICAS};

use fields::{as_string, check_unknown, kind, Errors, JOB_FIELDS};

/// Largest job spec accepted, in bytes of YAML or JSON text.
pub const MAX_SPEC_BYTES: usize = 1024 * 1024;

impl JobSpec {
    /// Parses and validates a job written in YAML (JSON is YAML too).
    /// Every broken rule is reported, each naming its field.
    pub fn from_yaml(text: &str) -> Result<JobSpec, SpecError> {
        parse_job(&read_document(text)?)
    }

    /// Reads a job from the untyped tree of its YAML form (what
    /// `from_yaml` reads after the YAML syntax), filling in left-out fields
    /// and checking every rule. The gRPC API turns its messages into this
    /// tree, so a spec means the same whichever way it came.
    pub fn from_value(value: &Value) -> Result<JobSpec, SpecError> {
        parse_job(value)
    }

    /// Checks the rules that hold for a spec however it was built (from YAML,
    /// or from a gRPC message). Returns every broken rule.
    pub fn validate(&self) -> Result<(), SpecError> {
        let errors = validate_job(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid(errors))
        }
    }
}

impl TaskSpec {
    /// Reads a task from the untyped tree of its YAML form (the `task:` of
    /// a job), as [`JobSpec::from_value`] does; errors name `task.FIELD`.
    pub fn from_value(value: &Value) -> Result<TaskSpec, SpecError> {
        let mut errs = Errors::new();
        let task = task::parse_task(value, "task", NetworkMode::Bridge, &mut errs);
        match task {
            Some(task) if errs.0.is_empty() => Ok(task),
            _ => Err(SpecError::Invalid(errs.0)),
        }
    }
}

/// `labels: {KEY: VALUE}`: every key and value checked, at most
/// [`crate::labels::MAX_LABELS`].
fn parse_labels(v: &Value, errs: &mut Errors) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Some(map) = fields::as_object(v, "labels", errs) else {
        return out;
    };
    if map.len() > crate::labels::MAX_LABELS {
        errs.push(
            "labels",
            format!("at most {} labels", crate::labels::MAX_LABELS),
        );
    }
    for (k, v) in map {
        let path = format!("labels.{k}");
        if let Err(e) = crate::labels::check_key(k) {
            errs.push(&path, format!("key {e}"));
            continue;
        }
        let Some(value) = fields::scalar_text(v) else {
            errs.push(&path, "must be a string");
            continue;
        };
        match crate::labels::check_value(&value) {
            Ok(()) => {
                out.insert(k.clone(), value);
            }
            Err(e) => errs.push(&path, format!("value {e}")),
        }
    }
    out
}

/// The untyped tree of a YAML (or JSON) document, after the checks every
/// spec gets before its fields are read: its size and its nesting.
pub(super) fn read_document(text: &str) -> Result<Value, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge {
            size: text.len(),
            limit: MAX_SPEC_BYTES,
        });
    }
    depth::check_depth(text)?;
    serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))
}

/// The whole job as it is stored, and copied into every allocation.
fn check_size(spec: &JobSpec, errs: &mut Errors) {
    let size = serde_json::to_vec(spec).map_or(usize::MAX, |v| v.len());
    if size > crate::job::MAX_JOB_BYTES {
        errs.push(
            "",
            format!(
                "the job is {size} bytes once stored; at most {} (its env, command and args are copied into every replica)",
                crate::job::MAX_JOB_BYTES
            ),
        );
    }
}

fn parse_job(root: &Value) -> Result<JobSpec, SpecError> {
    let mut errs = Errors::new();
    let spec = parse_job_inner(root, &mut errs);
    if let (Some(spec), true) = (&spec, errs.0.is_empty()) {
        check_size(spec, &mut errs);
    }
    match spec {
        Some(spec) if errs.0.is_empty() => Ok(spec),
        _ => Err(SpecError::Invalid(errs.0)),
    }
}

fn parse_job_inner(root: &Value, errs: &mut Errors) -> Option<JobSpec> {
    let obj = match root {
        Value::Object(m) => m,
        Value::Null => {
            errs.push("", "spec is empty");
            return None;
        }
        other => {
            errs.push("", format!("spec must be a map, not {}", kind(other)));
            return None;
        }
    };
    check_unknown(obj, "", JOB_FIELDS, errs);

    let name = match obj.get("name") {
        Some(v) => as_string(v, "name", errs).inspect(|n| validate_name(n, errs)),
        None => {
            errs.push("name", "is required");
            None
        }
    };
    let namespace = match obj.get("namespace") {
        None => Some(crate::job::DEFAULT_NAMESPACE.to_string()),
        Some(v) => as_string(v, "namespace", errs).inspect(|n| validate_namespace(n, errs)),
    };
    let labels = obj
        .get("labels")
        .map(|v| parse_labels(v, errs))
        .unwrap_or_default();
    let queue = obj.get("queue").and_then(|v| {
        as_string(v, "queue", errs).filter(|q| match check_dns_label(q) {
            Ok(()) => true,
            Err(rule) => {
                errs.push("queue", format!("{q:?} {rule}"));
                false
            }
        })
    });
    let workload = workload::parse_workload(obj, errs);
    let replicas = match obj.get("replicas") {
        None => Some(1),
        Some(v) => {
            fields::number(v, "replicas", 0, u64::from(MAX_REPLICAS), errs).map(|r| r as u32)
        }
    };
    let task = match obj.get("task") {
        // A gang's ranks talk over the host's network (NCCL); everything
        // else gets its own namespace on the node's bridge.
        Some(v) => {
            let gang = obj.get("gang").and_then(Value::as_bool) == Some(true);
            let default = if gang {
                NetworkMode::Host
            } else {
                NetworkMode::Bridge
            };
            task::parse_task(v, "task", default, errs)
        }
        None => {
            errs.push("task", "is required");
            None
        }
    };
    let rules = sched::parse_job_rules(obj, errs);
    sched::validate_parsed_rules(&rules, errs);
    let mut spec = JobSpec {
        name: name?,
        namespace: namespace?,
        labels,
        queue,
        job_type: workload.job_type,
        replicas: replicas?,
        priority: rules.priority.unwrap_or(DEFAULT_PRIORITY),
        gang: rules.gang,
        constraints: rules.constraints,
        spread: rules.spread,
        distinct_hosts: rules.distinct_hosts,
        affinities: rules.affinities,
        update: workload.update,
        versions_kept: workload.versions_kept,
        completions: workload.completions,
        parallelism: workload.parallelism,
        backoff_limit: workload.backoff_limit,
        gang_failure: workload.gang_failure,
        master_port: workload.master_port,
        task: task?,
    };
    if spec.is_batch() && !workload::restart_policy_given(obj) {
        spec.task.restart.policy = spec.default_restart_policy();
    }
    workload::validate_workload(&spec, errs);
    Some(spec)
}

/// Rules on values, whatever form the spec arrived in.
fn validate_job(spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Errors::new();
    validate_name(&spec.name, &mut errs);
    validate_namespace(&spec.namespace, &mut errs);
    if spec.replicas > MAX_REPLICAS {
        errs.push(
            "replicas",
            format!(
                "{} must be a whole number from 0 to {MAX_REPLICAS}",
                spec.replicas
            ),
        );
    }
    task::validate_task(&spec.task, "task", &mut errs);
    sched::validate_job_rules(spec, &mut errs);
    workload::validate_workload(spec, &mut errs);
    if errs.0.is_empty() {
        check_size(spec, &mut errs);
    }
    errs.0
}

fn validate_name(name: &str, errs: &mut Errors) {
    if let Err(rule) = check_dns_label(name) {
        errs.push("name", format!("{name:?} {rule}"));
    }
}

fn validate_namespace(ns: &str, errs: &mut Errors) {
    if let Err(rule) = check_dns_label(ns) {
        errs.push("namespace", format!("{ns:?} {rule}"));
    }
}

/// Kubernetes' DNS-1123 label rule.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > 63 {
        return Err("must be at most 63 characters");
    }
    let bytes = name.as_bytes();
    let ok_inner = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_inner || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit");
    }
    Ok(())
}

/// Every error `from_yaml` reports for `text`, as the user reads them
/// (the tests of each room of `spec/` use it).
#[cfg(test)]
fn errors_of(text: &str) -> Vec<String> {
    match JobSpec::from_yaml(text) {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(e) => e.field_errors().iter().map(|e| e.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NetworkMode;
    use crate::resources::TaskResources;

    const HELLO: &str = r#"
name: hello
replicas: 2
task:
  image: oci:./images/busybox:latest
  command: ["sh", "-c", "echo hello from $SKIFF_ALLOC_ID; sleep 3600"]
  env: {GREETING: hi}
  resources: {cpu: 250m, memory: 64Mi}
"#;

    #[test]
    fn the_readme_example_parses() {
        let spec = JobSpec::from_yaml(HELLO).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.task.image.path, "./images/busybox");
        assert_eq!(spec.task.image.tag.as_deref(), Some("latest"));
        assert_eq!(spec.task.resources, TaskResources::new(250, 64 << 20));
        assert_eq!(spec.task.env["GREETING"], "hi");
        // The default network is the bridge; a gang's is the host's.
        assert_eq!(spec.task.network, NetworkMode::Bridge);
        let gang = JobSpec::from_yaml(&format!("{HELLO}gang: true\n")).unwrap();
        assert_eq!(gang.task.network, NetworkMode::Host);
    }

    #[test]
    fn every_error_is_listed_not_only_the_first() {
        let text = r#"
name: Hello_World
replicas: -1
colour: blue
task:
  image: docker.io/Busybox
  imagee: typo
  env: {"1BAD": x, SKIFF_JOB: y}
  resources: {cpu: lots, memory: 64Q, disk: 1Gi}
  network: bridged
"#;
        let errs = errors_of(text);
        let expect = [
            "colour: unknown field",
            "name: \"Hello_World\" must be a DNS-1123 label",
            "replicas: -1 must be a whole number from 0 to 1000",
            "task.imagee: unknown field",
            "task.image: \"docker.io/Busybox\" is not an image reference",
            "task.resources.disk: unknown field",
            "task.resources.cpu: \"lots\" is not a quantity",
            "task.resources.memory: \"64Q\" is not a quantity",
            "task.network: \"bridged\" is not a network mode",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        // The value rules that need a whole spec (name, env names) are still
        // checked once the shape is right.
        let shaped = text
            .replace("replicas: -1", "replicas: 1")
            .replace("colour: blue\n", "")
            .replace("docker.io/Busybox", "oci:/img")
            .replace("  imagee: typo\n", "")
            .replace("cpu: lots, memory: 64Q, disk: 1Gi", "cpu: 1")
            .replace("network: bridged", "network: none");
        let errs = errors_of(&shaped);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("name: "));
        assert!(errs[1].starts_with("task.env.1BAD: is not a valid variable name"));
        assert!(errs[2].starts_with("task.env.SKIFF_JOB: names starting with SKIFF_ are reserved"));
    }

    #[test]
    fn large_strings_and_large_jobs_are_refused_naming_the_field_and_the_limit() {
        let job = |env: &str, args: &str| {
            format!("name: big\nreplicas: 20\ntask: {{image: 'oci:/i', env: {{{env}}}, args: [{args}]}}")
        };
        // The review's spec: 15 variables of 64 KB.
        let env: Vec<String> = (0..15)
            .map(|i| format!("V{i}: {}", "x".repeat(64_000)))
            .collect();
        let errs = errors_of(&job(&env.join(", "), ""));
        assert_eq!(errs.len(), 15, "{errs:#?}");
        assert!(
            errs[0].starts_with("task.env.V0: is 64000 bytes; at most 32768"),
            "{}",
            errs[0]
        );
        let errs = errors_of(&job("", &format!("'{}'", "a".repeat(40_000))));
        assert!(
            errs[0].starts_with("task.args[0]: is 40000 bytes; at most 32768"),
            "{errs:?}"
        );
        // Each variable within the limit, the whole job over its own.
        let env: Vec<String> = (0..9)
            .map(|i| format!("V{i}: {}", "x".repeat(30_000)))
            .collect();
        let errs = errors_of(&job(&env.join(", "), ""));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains("once stored; at most 262144"),
            "{}",
            errs[0]
        );
        // The same rules hold for a spec built another way (the API's).
        let mut spec = JobSpec::from_yaml(&job("A: b", "")).unwrap();
        spec.task.env.insert("HUGE".into(), "y".repeat(40_000));
        let e = spec.validate().unwrap_err().to_string();
        assert!(e.contains("task.env.HUGE: is 40000 bytes"), "{e}");
        // Just within: accepted.
        let env: Vec<String> = (0..7)
            .map(|i| format!("V{i}: {}", "x".repeat(32_768)))
            .collect();
        assert!(JobSpec::from_yaml(&job(&env.join(", "), "")).is_ok());
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert_eq!(
            errors_of("replicas: 1"),
            vec!["name: is required", "task: is required"]
        );
        assert_eq!(
            errors_of("name: x\ntask: {}"),
            vec!["task.image: is required"]
        );
        assert_eq!(errors_of(""), vec!["spec is empty"]);
        assert_eq!(errors_of("[1, 2]"), vec!["spec must be a map, not a list"]);
    }

    #[test]
    fn syntax_errors_and_oversized_specs_are_refused() {
        assert!(matches!(
            JobSpec::from_yaml("name: [unclosed"),
            Err(SpecError::Syntax(_))
        ));
        let big = format!("name: x\n# {}", "a".repeat(crate::MAX_SPEC_BYTES));
        assert!(matches!(
            JobSpec::from_yaml(&big),
            Err(SpecError::TooLarge { .. })
        ));
    }

    #[test]
    fn serialized_spec_is_valid_input_again() {
        let spec = JobSpec::from_yaml(HELLO).unwrap();
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(check_dns_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }
}
