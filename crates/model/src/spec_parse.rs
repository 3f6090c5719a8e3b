//! Turns an untyped YAML/JSON tree into a [`JobSpec`], collecting every broken
//! rule with the dotted path of its field instead of stopping at the first.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{FieldError, SpecError};
use crate::job::{
    ImageRef, JobSpec, NetworkMode, TaskResources, TaskSpec, DEFAULT_CPU_MILLIS,
    DEFAULT_MEMORY_BYTES, DEFAULT_PRIORITY, MAX_REPLICAS, MIN_MEMORY_BYTES,
};
use crate::quantity::{format_memory, parse_cpu, parse_memory};
use crate::spec_sched;

const JOB_FIELDS: &[&str] = &[
    "name",
    "type",
    "replicas",
    "priority",
    "gang",
    "constraints",
    "spread",
    "distinct_hosts",
    "affinities",
    "task",
];
const TASK_FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "env",
    "workdir",
    "resources",
    "network",
];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "gpus", "gpu", "ports"];
/// Most CPU one task may ask for: 1024 cores.
const MAX_CPU_MILLIS: u64 = 1024 * 1000;
const MAX_ARGS: usize = 1024;
const MAX_ENV: usize = 1024;
const MAX_STRING: usize = 64 * 1024;

pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }
}

pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Reports fields the object holds that are not in `allowed`.
pub(crate) fn check_unknown(
    obj: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
    errs: &mut Errors,
) {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            errs.push(
                &join(path, key),
                format!("unknown field; expected one of: {}", allowed.join(", ")),
            );
        }
    }
}

pub(crate) fn as_object<'a>(
    v: &'a Value,
    path: &str,
    errs: &mut Errors,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            errs.push(path, format!("must be a map, not {}", kind(other)));
            None
        }
    }
}

pub(crate) fn as_string(v: &Value, path: &str, errs: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) if s.len() > MAX_STRING => {
            errs.push(path, format!("is longer than {MAX_STRING} bytes"));
            None
        }
        Value::String(s) => Some(s.clone()),
        other => {
            errs.push(path, format!("must be a string, not {}", kind(other)));
            None
        }
    }
}

/// Scalars written without quotes (`PORT: 80`, `cpu: 0.5`) are taken as text.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn string_list(v: &Value, path: &str, errs: &mut Errors) -> Vec<String> {
    let Value::Array(items) = v else {
        errs.push(path, format!("must be a list of strings, not {}", kind(v)));
        return Vec::new();
    };
    if items.len() > MAX_ARGS {
        errs.push(
            path,
            format!("has {} items; at most {MAX_ARGS}", items.len()),
        );
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| as_string(item, &format!("{path}[{i}]"), errs))
        .collect()
}

pub(crate) fn parse_job(root: &Value) -> Result<JobSpec, SpecError> {
    let mut errs = Errors(Vec::new());
    let spec = parse_job_inner(root, &mut errs);
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
    if let Some(v) = obj.get("type") {
        match v.as_str() {
            Some("service") => {}
            Some(other) => errs.push(
                "type",
                format!("{other:?} is not supported; the only job type so far is \"service\""),
            ),
            None => errs.push("type", format!("must be a string, not {}", kind(v))),
        }
    }
    let replicas = match obj.get("replicas") {
        None => Some(1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(r) if r <= u64::from(MAX_REPLICAS) => Some(r as u32),
            _ => {
                errs.push(
                    "replicas",
                    format!("{n} must be a whole number from 0 to {MAX_REPLICAS}"),
                );
                None
            }
        },
        Some(other) => {
            errs.push("replicas", format!("must be a number, not {}", kind(other)));
            None
        }
    };
    let task = match obj.get("task") {
        Some(v) => parse_task(v, "task", errs),
        None => {
            errs.push("task", "is required");
            None
        }
    };
    let rules = spec_sched::parse_job_rules(obj, errs);
    spec_sched::validate_parsed_rules(&rules, errs);
    let spec = JobSpec {
        name: name?,
        replicas: replicas?,
        priority: rules.priority.unwrap_or(DEFAULT_PRIORITY),
        gang: rules.gang,
        constraints: rules.constraints,
        spread: rules.spread,
        distinct_hosts: rules.distinct_hosts,
        affinities: rules.affinities,
        task: task?,
    };
    Some(spec)
}

fn parse_task(v: &Value, path: &str, errs: &mut Errors) -> Option<TaskSpec> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, TASK_FIELDS, errs);

    let image = match obj.get("image") {
        Some(v) => as_string(v, &join(path, "image"), errs).and_then(|s| {
            ImageRef::parse(&s)
                .map_err(|e| errs.push(&join(path, "image"), e))
                .ok()
        }),
        None => {
            errs.push(&join(path, "image"), "is required");
            None
        }
    };
    let command = obj
        .get("command")
        .map(|v| string_list(v, &join(path, "command"), errs))
        .unwrap_or_default();
    let args = obj
        .get("args")
        .map(|v| string_list(v, &join(path, "args"), errs))
        .unwrap_or_default();

    let mut env = BTreeMap::new();
    if let Some(v) = obj.get("env") {
        let env_path = join(path, "env");
        if let Some(map) = as_object(v, &env_path, errs) {
            if map.len() > MAX_ENV {
                errs.push(
                    &env_path,
                    format!("has {} entries; at most {MAX_ENV}", map.len()),
                );
            }
            for (key, value) in map.iter().take(MAX_ENV) {
                match scalar_text(value) {
                    Some(text) => {
                        env.insert(key.clone(), text);
                    }
                    None => errs.push(
                        &join(&env_path, key),
                        format!("must be a string, not {}", kind(value)),
                    ),
                }
            }
        }
    }
    let workdir = obj
        .get("workdir")
        .and_then(|v| as_string(v, &join(path, "workdir"), errs));
    let resources = match obj.get("resources") {
        Some(v) => parse_resources(v, &join(path, "resources"), errs),
        None => Some(TaskResources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES)),
    };
    let network = match obj.get("network") {
        None => Some(NetworkMode::Host),
        Some(v) => match v.as_str() {
            Some("host") => Some(NetworkMode::Host),
            Some("none") => Some(NetworkMode::None),
            _ => {
                errs.push(
                    &join(path, "network"),
                    format!(
                        "{} is not a network mode; expected host or none",
                        serde_json::to_string(v).unwrap_or_default()
                    ),
                );
                None
            }
        },
    };
    let task = TaskSpec {
        image: image?,
        command,
        args,
        env,
        workdir,
        resources: resources?,
        network: network?,
    };
    validate_task(&task, path, errs);
    Some(task)
}

fn parse_resources(v: &Value, path: &str, errs: &mut Errors) -> Option<TaskResources> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, RESOURCE_FIELDS, errs);
    let cpu = match obj.get("cpu") {
        None => Some(DEFAULT_CPU_MILLIS),
        Some(v) => match scalar_text(v) {
            Some(text) => parse_cpu(&text)
                .map_err(|e| errs.push(&join(path, "cpu"), e.to_string()))
                .ok(),
            None => {
                errs.push(
                    &join(path, "cpu"),
                    format!("must be a quantity, not {}", kind(v)),
                );
                None
            }
        },
    };
    let memory = match obj.get("memory") {
        None => Some(DEFAULT_MEMORY_BYTES),
        Some(v) => match scalar_text(v) {
            Some(text) => parse_memory(&text)
                .map_err(|e| errs.push(&join(path, "memory"), e.to_string()))
                .ok(),
            None => {
                errs.push(
                    &join(path, "memory"),
                    format!("must be a quantity, not {}", kind(v)),
                );
                None
            }
        },
    };
    let mut r = TaskResources::new(cpu?, memory?);
    spec_sched::parse_task_resources(obj, path, &mut r, errs);
    Some(r)
}

/// Rules on values, whatever form the spec arrived in.
pub(crate) fn validate_job(spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Errors(Vec::new());
    validate_name(&spec.name, &mut errs);
    if spec.replicas > MAX_REPLICAS {
        errs.push(
            "replicas",
            format!(
                "{} must be a whole number from 0 to {MAX_REPLICAS}",
                spec.replicas
            ),
        );
    }
    validate_task(&spec.task, "task", &mut errs);
    spec_sched::validate_job_rules(spec, &mut errs);
    errs.0
}

fn validate_name(name: &str, errs: &mut Errors) {
    if let Err(rule) = check_dns_label(name) {
        errs.push("name", format!("{name:?} {rule}"));
    }
}

fn validate_task(task: &TaskSpec, path: &str, errs: &mut Errors) {
    if let Some(first) = task.command.first() {
        if first.is_empty() {
            errs.push(
                &join(path, "command[0]"),
                "must name a program, not be empty",
            );
        }
    }
    for (key, value) in &task.env {
        let field = join(path, &format!("env.{key}"));
        if !is_env_name(key) {
            errs.push(
                &field,
                "is not a valid variable name: letters, digits and '_', not starting with a digit",
            );
        } else if key.starts_with("SKIFF_") {
            errs.push(
                &field,
                "names starting with SKIFF_ are reserved for variables Skiff sets",
            );
        }
        if value.contains('\0') {
            errs.push(&field, "must not contain a NUL byte");
        }
    }
    for (list, items) in [("command", &task.command), ("args", &task.args)] {
        for (i, arg) in items.iter().enumerate() {
            if arg.contains('\0') {
                errs.push(
                    &join(path, &format!("{list}[{i}]")),
                    "must not contain a NUL byte",
                );
            }
        }
    }
    if let Some(dir) = &task.workdir {
        if !dir.starts_with('/') {
            errs.push(
                &join(path, "workdir"),
                format!("{dir:?} must be an absolute path"),
            );
        }
    }
    let r = &task.resources;
    spec_sched::validate_task_resources(task, path, errs);
    let cpu = join(path, "resources.cpu");
    if r.cpu_millis == 0 {
        errs.push(&cpu, "must be more than 0");
    } else if r.cpu_millis > MAX_CPU_MILLIS {
        errs.push(&cpu, "must be at most 1024 cores");
    }
    if r.memory_bytes < MIN_MEMORY_BYTES {
        errs.push(
            &join(path, "resources.memory"),
            format!(
                "{} is below the minimum of {}",
                format_memory(r.memory_bytes),
                format_memory(MIN_MEMORY_BYTES)
            ),
        );
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

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = r#"
name: hello
replicas: 2
task:
  image: oci:./images/busybox:latest
  command: ["sh", "-c", "echo hello from $SKIFF_ALLOC_ID; sleep 3600"]
  env: {GREETING: hi}
  resources: {cpu: 250m, memory: 64Mi}
"#;

    fn errors_of(text: &str) -> Vec<String> {
        match JobSpec::from_yaml(text) {
            Ok(spec) => panic!("expected errors, got {spec:?}"),
            Err(e) => e.field_errors().iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_readme_example_parses() {
        let spec = JobSpec::from_yaml(HELLO).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.task.image.path, "./images/busybox");
        assert_eq!(spec.task.image.tag.as_deref(), Some("latest"));
        assert_eq!(spec.task.resources, TaskResources::new(250, 64 << 20));
        assert_eq!(spec.task.env["GREETING"], "hi");
        assert_eq!(spec.task.network, NetworkMode::Host);
    }

    #[test]
    fn a_bad_quantity_names_the_field_and_the_rule() {
        let text = HELLO.replace("64Mi", "64Q");
        assert_eq!(
            errors_of(&text),
            vec!["task.resources.memory: \"64Q\" is not a quantity"]
        );
    }

    #[test]
    fn every_error_is_listed_not_only_the_first() {
        let text = r#"
name: Hello_World
replicas: -1
colour: blue
task:
  image: docker.io/busybox
  imagee: typo
  env: {"1BAD": x, SKIFF_JOB: y}
  resources: {cpu: lots, memory: 64Q, disk: 1Gi}
  network: bridge
"#;
        let errs = errors_of(text);
        let expect = [
            "colour: unknown field",
            "name: \"Hello_World\" must be a DNS-1123 label",
            "replicas: -1 must be a whole number from 0 to 1000",
            "task.imagee: unknown field",
            "task.image: \"docker.io/busybox\" must be oci:PATH[:TAG]",
            "task.resources.disk: unknown field",
            "task.resources.cpu: \"lots\" is not a quantity",
            "task.resources.memory: \"64Q\" is not a quantity",
            "task.network: \"bridge\" is not a network mode",
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
            .replace("docker.io/busybox", "oci:/img")
            .replace("  imagee: typo\n", "")
            .replace("cpu: lots, memory: 64Q, disk: 1Gi", "cpu: 1")
            .replace("bridge", "none");
        let errs = errors_of(&shaped);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("name: "));
        assert!(errs[1].starts_with("task.env.1BAD: is not a valid variable name"));
        assert!(errs[2].starts_with("task.env.SKIFF_JOB: names starting with SKIFF_ are reserved"));
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
    fn defaults_fill_in_what_is_left_out() {
        let spec = JobSpec::from_yaml("name: x\ntask: {image: 'oci:/i'}").unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(
            spec.task.resources,
            TaskResources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES)
        );
        assert_eq!(spec.task.image.tag, None);
    }

    #[test]
    fn numbers_in_env_and_resources_are_taken_as_text() {
        let spec = JobSpec::from_yaml(
            "name: x\ntask: {image: 'oci:/i', env: {PORT: 80, DEBUG: true}, resources: {cpu: 0.5, memory: 67108864}}",
        )
        .unwrap();
        assert_eq!(spec.task.env["PORT"], "80");
        assert_eq!(spec.task.env["DEBUG"], "true");
        assert_eq!(spec.task.resources, TaskResources::new(500, 64 << 20));
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
    fn image_refs_follow_skopeo_syntax() {
        let r = ImageRef::parse("oci:/var/images/bb:1.36").unwrap();
        assert_eq!(
            (r.path.as_str(), r.tag.as_deref()),
            ("/var/images/bb", Some("1.36"))
        );
        let r = ImageRef::parse("oci:/var/images/bb").unwrap();
        assert_eq!((r.path.as_str(), r.tag), ("/var/images/bb", None));
        let r = ImageRef::parse("oci:rel/dir").unwrap();
        assert!(r.is_relative());
        assert!(ImageRef::parse("busybox:latest").is_err());
        assert!(ImageRef::parse("oci::tag").is_err());
        assert!(ImageRef::parse("oci:/x:bad tag").is_err());
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
