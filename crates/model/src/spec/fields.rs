//! The toolkit every spec parser shares: the dotted path of a field, the
//! list that collects broken rules, readers for one YAML value each
//! (string, number, duration, port, quantity) that report what they
//! expected in the same words everywhere, and the keys each YAML map may
//! hold.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::duration::{format_duration, parse_duration};
use crate::error::FieldError;
use crate::quantity::QuantityError;

/// Longest string accepted anywhere in a spec.
const MAX_STRING: usize = 64 * 1024;
/// Most items in one list of strings (`command`, `args`, `uuids`...).
const MAX_ARGS: usize = 1024;

// The keys each YAML map may hold. They are kept by hand because the
// parsers read an untyped tree (to report every broken rule, not the
// first); the tests below check them against the serde forms, which
// `skiff get job -o yaml` writes and the stored JSON uses.

pub(super) const JOB_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "queue",
    "type",
    "replicas",
    "priority",
    "gang",
    "constraints",
    "spread",
    "distinct_hosts",
    "affinities",
    "update",
    "versions_kept",
    "completions",
    "parallelism",
    "backoff_limit",
    "gang_failure",
    "master_port",
    "task",
];
pub(super) const TASK_FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "env",
    "workdir",
    "resources",
    "network",
    "restart",
    "probes",
    "security",
    "stop_signal",
    "stop_grace",
    "shutdown_delay",
    "pids_limit",
    "pull",
    "ports",
];
pub(super) const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "gpus", "gpu", "ports"];
pub(super) const GPU_FIELDS: &[&str] = &["model", "min_memory", "uuids", "mig"];
pub(super) const RESTART_FIELDS: &[&str] = &["policy", "backoff"];
pub(super) const BACKOFF_FIELDS: &[&str] = &["initial", "max", "reset_after"];
pub(super) const PROBES_FIELDS: &[&str] = &["liveness", "readiness", "startup"];
pub(super) const PROBE_FIELDS: &[&str] = &[
    "exec",
    "http",
    "tcp",
    "period",
    "timeout",
    "success_threshold",
    "failure_threshold",
    "initial_delay",
];
pub(super) const EXEC_FIELDS: &[&str] = &["command"];
pub(super) const HTTP_FIELDS: &[&str] = &["path", "port"];
pub(super) const TCP_FIELDS: &[&str] = &["port"];
pub(super) const SECURITY_FIELDS: &[&str] = &["read_only_rootfs", "user", "cap_add", "cap_drop"];
pub(super) const RULE_FIELDS: &[&str] = &["label", "op", "value", "values"];
pub(super) const AFFINITY_FIELDS: &[&str] = &["label", "op", "value", "values", "weight"];
pub(super) const SPREAD_FIELDS: &[&str] = &["label", "max_skew"];
pub(super) const UPDATE_FIELDS: &[&str] = &[
    "max_unavailable",
    "max_surge",
    "min_healthy",
    "healthy_deadline",
    "progress_deadline",
    "auto_rollback",
    "canary",
];

/// Every broken rule found so far, each with its field.
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn new() -> Errors {
        Errors(Vec::new())
    }

    pub(super) fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// `read` when nothing was broken, else every broken rule.
    pub(super) fn finish<T>(self, read: Option<T>) -> Result<T, crate::error::SpecError> {
        match read {
            Some(v) if self.0.is_empty() => Ok(v),
            _ => Err(crate::error::SpecError::Invalid(self.0)),
        }
    }
}

/// The dotted path of `child` under `parent` (`task` + `image`).
pub(super) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// What a value is, in words, for "must be X, not Y".
pub(super) fn kind(v: &Value) -> &'static str {
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
pub(super) fn check_unknown(
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

pub(super) fn as_object<'a>(
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

pub(super) fn as_string(v: &Value, path: &str, errs: &mut Errors) -> Option<String> {
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
pub(super) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn string_list(v: &Value, path: &str, errs: &mut Errors) -> Vec<String> {
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

/// One word of a closed set (`parse` says which), or an error naming the
/// value, what it is not, and what is expected.
pub(super) fn one_of<T>(
    v: &Value,
    path: &str,
    what: &str,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
    errs: &mut Errors,
) -> Option<T> {
    let found = v.as_str().and_then(parse);
    if found.is_none() {
        errs.push(
            path,
            format!(
                "{} is not a {what}; expected {expected}",
                serde_json::to_string(v).unwrap_or_default()
            ),
        );
    }
    found
}

/// `true` or `false`; anything else is reported.
pub(super) fn boolean(v: &Value, path: &str, errs: &mut Errors) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        other => {
            errs.push(path, format!("must be true or false, not {}", kind(other)));
            None
        }
    }
}

/// A whole number from `min` to `max`.
pub(super) fn number(v: &Value, path: &str, min: u64, max: u64, errs: &mut Errors) -> Option<u64> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(x) if (min..=max).contains(&x) => Some(x),
            _ => {
                errs.push(
                    path,
                    format!("{n} must be a whole number from {min} to {max}"),
                );
                None
            }
        },
        other => {
            errs.push(path, format!("must be a number, not {}", kind(other)));
            None
        }
    }
}

/// A port number, 1 to 65535.
pub(super) fn port(v: &Value, path: &str, errs: &mut Errors) -> Option<u16> {
    match v.as_u64() {
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        _ => {
            errs.push(
                path,
                format!(
                    "{} must be a port number from 1 to 65535",
                    serde_json::to_string(v).unwrap_or_default()
                ),
            );
            None
        }
    }
}

/// A duration written with its unit (`10s`, `500ms`, `1m30s`).
pub(super) fn duration(v: &Value, path: &str, errs: &mut Errors) -> Option<Duration> {
    match v {
        Value::String(s) => parse_duration(s).map_err(|e| errs.push(path, e)).ok(),
        Value::Number(n) => {
            errs.push(path, format!("{n} needs a unit: ms, s, m or h (e.g. {n}s)"));
            None
        }
        other => {
            errs.push(
                path,
                format!("must be a duration like 10s, not {}", kind(other)),
            );
            None
        }
    }
}

/// A quantity (`250m`, `64Mi`, or a bare number), read by `parse`.
pub(super) fn quantity(
    v: &Value,
    path: &str,
    parse: fn(&str) -> Result<u64, QuantityError>,
    errs: &mut Errors,
) -> Option<u64> {
    match scalar_text(v) {
        Some(text) => parse(&text)
            .map_err(|e| errs.push(path, e.to_string()))
            .ok(),
        None => {
            errs.push(path, format!("must be a quantity, not {}", kind(v)));
            None
        }
    }
}

/// Reports a duration below `min` or above `max`.
pub(super) fn check_span(
    d: Duration,
    field: &str,
    min: Duration,
    max: Duration,
    errs: &mut Errors,
) {
    if d < min {
        errs.push(
            field,
            format!(
                "{} is below the minimum of {}",
                format_duration(d),
                format_duration(min)
            ),
        );
    } else if d > max {
        errs.push(
            field,
            format!(
                "{} is above the maximum of {}",
                format_duration(d),
                format_duration(max)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
    use serde_json::Value;

    use super::*;
    use crate::gpu::GpuFilter;
    use crate::job::{JobSpec, TaskSpec, UpdateSpec};
    use crate::lifecycle::{Backoff, Probe, ProbeAction, Probes, RestartSpec, Security};
    use crate::placement::{Affinity, Constraint, Spread};
    use crate::resources::TaskResources;

    /// The field names `T`'s `Deserialize` asks for, as serde's derive
    /// lists them (renames applied, skipped fields left out), whatever the
    /// values: a new field shows up here the moment it is declared.
    fn serde_fields<T: DeserializeOwned>() -> Vec<&'static str> {
        let mut fields = None;
        let _ = T::deserialize(FieldNames(&mut fields));
        let mut fields = fields
            .expect("the type deserializes from a struct")
            .to_vec();
        fields.sort_unstable();
        fields
    }

    /// A deserializer that only records the field list of the first struct
    /// asked of it, then stops.
    struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

    #[derive(Debug)]
    struct Stop;

    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("stopped after reading the field names")
        }
    }

    impl std::error::Error for Stop {}

    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = Some(fields);
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    fn sorted(list: &[&'static str]) -> Vec<&'static str> {
        let mut list = list.to_vec();
        list.sort_unstable();
        list
    }

    /// The keys of the map a probe's action is written as.
    fn action_keys(action: ProbeAction) -> Vec<String> {
        let kind = action.kind();
        let form = serde_json::to_value(Probe::new(action)).unwrap();
        let Value::Object(inner) = &form[kind] else {
            panic!("{kind} is not written as a map: {form}");
        };
        let mut keys: Vec<String> = inner.keys().cloned().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn every_key_list_matches_the_serde_form_of_its_type() {
        let cases: [(&str, &[&str], Vec<&str>); 12] = [
            ("job", JOB_FIELDS, serde_fields::<JobSpec>()),
            ("task", TASK_FIELDS, serde_fields::<TaskSpec>()),
            (
                "resources",
                RESOURCE_FIELDS,
                serde_fields::<TaskResources>(),
            ),
            ("resources.gpu", GPU_FIELDS, serde_fields::<GpuFilter>()),
            ("restart", RESTART_FIELDS, serde_fields::<RestartSpec>()),
            ("restart.backoff", BACKOFF_FIELDS, serde_fields::<Backoff>()),
            ("probes", PROBES_FIELDS, serde_fields::<Probes>()),
            ("probe", PROBE_FIELDS, serde_fields::<Probe>()),
            ("security", SECURITY_FIELDS, serde_fields::<Security>()),
            ("affinity", AFFINITY_FIELDS, serde_fields::<Affinity>()),
            ("spread", SPREAD_FIELDS, serde_fields::<Spread>()),
            ("update", UPDATE_FIELDS, serde_fields::<UpdateSpec>()),
        ];
        for (map, list, serde) in cases {
            assert_eq!(sorted(list), serde, "the keys of `{map}`");
        }
        // A constraint is written like an affinity, less the weight its
        // serde form refuses once read.
        let mut constraint = serde_fields::<Constraint>();
        constraint.retain(|f| *f != "weight");
        assert_eq!(sorted(RULE_FIELDS), constraint, "the keys of a constraint");
        // The probe actions are private forms behind Probe's own
        // Serialize: compare with what it writes.
        let actions = [
            (EXEC_FIELDS, ProbeAction::Exec { command: vec![] }),
            (
                HTTP_FIELDS,
                ProbeAction::Http {
                    path: "/".into(),
                    port: 80,
                },
            ),
            (TCP_FIELDS, ProbeAction::Tcp { port: 80 }),
        ];
        for (list, action) in actions {
            let kind = action.kind();
            assert_eq!(sorted(list), action_keys(action), "the keys of `{kind}`");
        }
    }
}
