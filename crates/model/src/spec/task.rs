//! Parsing and validation of a job's `task`: image, command, environment,
//! working directory, network and the amounts in `resources`. The task's
//! lifecycle fields are read by [`super::lifecycle`], its GPU and port
//! requests by [`super::sched`].

use std::collections::BTreeMap;

use serde_json::Value;

use crate::job::{
    ImageRef, NetworkMode, PullPolicy, TaskSpec, DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES,
    MIN_MEMORY_BYTES,
};
use crate::lifecycle::{Probes, RestartSpec, Security};
use crate::quantity::{format_memory, parse_cpu, parse_memory};
use crate::resources::TaskResources;

use super::fields::{
    self, as_object, as_string, check_unknown, join, kind, one_of, scalar_text, string_list,
    Errors, RESOURCE_FIELDS, TASK_FIELDS,
};
use super::{lifecycle, sched};

/// Most CPU one task may ask for: 1024 cores.
const MAX_CPU_MILLIS: u64 = 1024 * 1000;
/// Most variables in `env`.
const MAX_ENV: usize = 1024;

/// Reads a task; `network` left out is `default_network` (bridge, host for
/// gangs).
pub(super) fn parse_task(
    v: &Value,
    path: &str,
    default_network: NetworkMode,
    errs: &mut Errors,
) -> Option<TaskSpec> {
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
        None => Some(default_network),
        Some(v) => one_of(
            v,
            &join(path, "network"),
            "network mode",
            "host, bridge or none",
            |s| match s {
                "host" => Some(NetworkMode::Host),
                "none" => Some(NetworkMode::None),
                "bridge" => Some(NetworkMode::Bridge),
                _ => None,
            },
            errs,
        ),
    };
    let restart = match obj.get("restart") {
        None => Some(RestartSpec::default()),
        Some(v) => lifecycle::parse_restart(v, &join(path, "restart"), errs),
    };
    let probes = match obj.get("probes") {
        None => Some(Probes::default()),
        Some(v) => lifecycle::parse_probes(v, &join(path, "probes"), errs),
    };
    let security = match obj.get("security") {
        None => Some(Security::default()),
        Some(v) => lifecycle::parse_security(v, &join(path, "security"), errs),
    };
    let stop_signal = obj
        .get("stop_signal")
        .and_then(|v| lifecycle::parse_stop_signal(v, &join(path, "stop_signal"), errs));
    let stop_grace = obj
        .get("stop_grace")
        .map(|v| fields::duration(v, &join(path, "stop_grace"), errs));
    let shutdown_delay = obj
        .get("shutdown_delay")
        .map(|v| fields::duration(v, &join(path, "shutdown_delay"), errs));
    let pids_limit = obj.get("pids_limit").map(|v| {
        fields::number(v, &join(path, "pids_limit"), 0, u64::from(u32::MAX), errs).map(|n| n as u32)
    });
    let pull = match obj.get("pull") {
        None => Some(PullPolicy::IfNotPresent),
        Some(v) => one_of(
            v,
            &join(path, "pull"),
            "pull policy",
            "if-not-present or always",
            |s| match s {
                "if-not-present" => Some(PullPolicy::IfNotPresent),
                "always" => Some(PullPolicy::Always),
                _ => None,
            },
            errs,
        ),
    };
    let ports = match obj.get("ports") {
        None => Some(Vec::new()),
        Some(v) => super::ports::parse_ports(v, &join(path, "ports"), errs),
    };
    let task = TaskSpec {
        image: image?,
        command,
        args,
        env,
        workdir,
        resources: resources?,
        network: network?,
        restart: restart?,
        probes: probes?,
        security: security?,
        stop_signal,
        stop_grace: stop_grace.map(|d| d.ok_or(())).transpose().ok()?,
        shutdown_delay: shutdown_delay.map(|d| d.ok_or(())).transpose().ok()?,
        pids_limit: pids_limit.map(|n| n.ok_or(())).transpose().ok()?,
        pull: pull?,
        ports: ports?,
    };
    validate_task(&task, path, errs);
    Some(task)
}

fn parse_resources(v: &Value, path: &str, errs: &mut Errors) -> Option<TaskResources> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, RESOURCE_FIELDS, errs);
    let cpu = match obj.get("cpu") {
        None => Some(DEFAULT_CPU_MILLIS),
        Some(v) => fields::quantity(v, &join(path, "cpu"), parse_cpu, errs),
    };
    let memory = match obj.get("memory") {
        None => Some(DEFAULT_MEMORY_BYTES),
        Some(v) => fields::quantity(v, &join(path, "memory"), parse_memory, errs),
    };
    let mut r = TaskResources::new(cpu?, memory?);
    sched::parse_task_resources(obj, path, &mut r, errs);
    Some(r)
}

pub(super) fn validate_task(task: &TaskSpec, path: &str, errs: &mut Errors) {
    if let Some(first) = task.command.first() {
        if first.is_empty() {
            errs.push(
                &join(path, "command[0]"),
                "must name a program, not be empty",
            );
        }
    }
    let long = |s: &str| s.len() > crate::job::MAX_STRING_BYTES;
    let too_long = |s: &str| {
        format!(
            "is {} bytes; at most {} (put large data in a file in the image or a volume)",
            s.len(),
            crate::job::MAX_STRING_BYTES
        )
    };
    for (key, value) in &task.env {
        let field = join(path, &format!("env.{key}"));
        if long(value) {
            errs.push(&field, too_long(value));
        }
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
            if long(arg) {
                errs.push(&join(path, &format!("{list}[{i}]")), too_long(arg));
            }
            if arg.contains('\0') {
                errs.push(
                    &join(path, &format!("{list}[{i}]")),
                    "must not contain a NUL byte",
                );
            }
        }
    }
    if let Some(dir) = &task.workdir {
        if let Err(rule) = crate::lifecycle::check_workdir(dir) {
            errs.push(&join(path, "workdir"), format!("{dir:?} {rule}"));
        }
    }
    lifecycle::validate_lifecycle(task, path, errs);
    let r = &task.resources;
    sched::validate_task_resources(task, path, errs);
    super::ports::validate_ports(task, path, errs);
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

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use crate::job::{JobSpec, DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES};
    use crate::resources::TaskResources;
    use crate::spec::errors_of;

    const HELLO: &str = r#"
name: hello
replicas: 2
task:
  image: oci:./images/busybox:latest
  resources: {cpu: 250m, memory: 64Mi}
"#;

    #[test]
    fn a_bad_quantity_names_the_field_and_the_rule() {
        let text = HELLO.replace("64Mi", "64Q");
        assert_eq!(
            errors_of(&text),
            vec!["task.resources.memory: \"64Q\" is not a quantity"]
        );
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
    fn the_pull_policy_defaults_to_if_not_present_and_names_its_values() {
        use crate::job::PullPolicy;
        let spec = JobSpec::from_yaml("name: x\ntask: {image: 'alpine:3.20'}").unwrap();
        assert_eq!(spec.task.pull, PullPolicy::IfNotPresent);
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert!(!yaml.contains("pull"), "the default is not written: {yaml}");
        let spec =
            JobSpec::from_yaml("name: x\ntask: {image: 'alpine:3.20', pull: always}").unwrap();
        assert_eq!(spec.task.pull, PullPolicy::Always);
        let e = JobSpec::from_yaml("name: x\ntask: {image: 'alpine:3.20', pull: never}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("task.pull") && e.contains("if-not-present or always"),
            "{e}"
        );
    }
}
