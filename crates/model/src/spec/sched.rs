//! Parsing and validation of the job fields the scheduler reads: `priority`,
//! `gang`, `constraints`, `spread`, `distinct_hosts`, `affinities`, and the
//! task's `resources.gpus`, `resources.gpu` and `resources.ports`. The
//! types are in [`crate::placement`] and [`crate::gpu`].

use serde_json::{Map, Value};

use crate::gpu::{GpuFilter, MAX_GPUS_PER_NODE};
use crate::job::{JobSpec, NetworkMode, TaskSpec, MAX_PRIORITY};
use crate::placement::{label_number, Affinity, Constraint, ConstraintOp, Spread, MAX_VALUES};
use crate::quantity::parse_memory;
use crate::resources::TaskResources;

use super::fields::{
    self, as_object, as_string, check_unknown, join, kind, scalar_text, string_list, Errors,
    AFFINITY_FIELDS, GPU_FIELDS, RULE_FIELDS, SPREAD_FIELDS,
};

/// Most constraints (and, separately, affinities) one job may list.
const MAX_RULES: usize = 64;
/// Most host ports one task may claim.
const MAX_PORTS: usize = 64;
/// Longest label key or value a rule may name.
const MAX_LABEL: usize = 253;

/// The scheduling fields of a job, as parsed (before value rules).
#[derive(Default)]
pub(super) struct JobRules {
    pub priority: Option<u8>,
    pub gang: bool,
    pub constraints: Vec<Constraint>,
    pub spread: Option<Spread>,
    pub distinct_hosts: bool,
    pub affinities: Vec<Affinity>,
}

/// A top-level flag: false when absent (or broken, which is reported).
fn flag(obj: &Map<String, Value>, field: &str, errs: &mut Errors) -> bool {
    obj.get(field)
        .and_then(|v| fields::boolean(v, field, errs))
        .unwrap_or(false)
}

pub(super) fn parse_job_rules(obj: &Map<String, Value>, errs: &mut Errors) -> JobRules {
    let mut rules = JobRules {
        gang: flag(obj, "gang", errs),
        distinct_hosts: flag(obj, "distinct_hosts", errs),
        ..JobRules::default()
    };
    if let Some(v) = obj.get("priority") {
        // Out-of-range values are reported here; validate_job_rules only
        // sees what fit in a u8.
        rules.priority =
            fields::number(v, "priority", 0, u64::from(MAX_PRIORITY), errs).map(|p| p as u8);
    }
    if let Some(v) = obj.get("constraints") {
        for (i, item) in list(v, "constraints", errs).iter().enumerate() {
            let path = format!("constraints[{i}]");
            if let Some((rule, _)) = parse_rule(item, &path, RULE_FIELDS, errs) {
                validate_rule(&rule, &path, errs);
                rules.constraints.push(rule);
            }
        }
    }
    if let Some(v) = obj.get("affinities") {
        for (i, item) in list(v, "affinities", errs).iter().enumerate() {
            let path = format!("affinities[{i}]");
            if let Some((rule, weight)) = parse_rule(item, &path, AFFINITY_FIELDS, errs) {
                validate_rule(&rule, &path, errs);
                match weight {
                    Some(weight) => {
                        validate_weight(weight, &path, errs);
                        rules.affinities.push(Affinity { rule, weight });
                    }
                    None => errs.push(&join(&path, "weight"), "is required: -100 to 100, not 0"),
                }
            }
        }
    }
    if let Some(v) = obj.get("spread") {
        rules.spread = parse_spread(v, "spread", errs);
    }
    rules
}

fn list<'a>(v: &'a Value, path: &str, errs: &mut Errors) -> &'a [Value] {
    match v {
        Value::Array(items) if items.len() > MAX_RULES => {
            errs.push(
                path,
                format!("has {} items; at most {MAX_RULES}", items.len()),
            );
            &[]
        }
        Value::Array(items) => items,
        other => {
            errs.push(path, format!("must be a list, not {}", kind(other)));
            &[]
        }
    }
}

/// One `{label, op, value | values [, weight]}` item.
fn parse_rule(
    v: &Value,
    path: &str,
    fields: &[&str],
    errs: &mut Errors,
) -> Option<(Constraint, Option<i32>)> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, fields, errs);
    let label = match obj.get("label") {
        Some(v) => as_string(v, &join(path, "label"), errs),
        None => {
            errs.push(&join(path, "label"), "is required");
            None
        }
    };
    let op = match obj.get("op") {
        Some(Value::String(s)) => match ConstraintOp::parse(s) {
            Some(op) => Some(op),
            None => {
                errs.push(
                    &join(path, "op"),
                    format!(
                        "{s:?} is not an operator; expected one of: {}",
                        ConstraintOp::ALL.map(|o| o.as_str()).join(", ")
                    ),
                );
                None
            }
        },
        Some(other) => {
            errs.push(
                &join(path, "op"),
                format!("must be a string, not {}", kind(other)),
            );
            None
        }
        None => {
            errs.push(&join(path, "op"), "is required");
            None
        }
    };
    let mut values = Vec::new();
    let mut shape_ok = true;
    if let Some(v) = obj.get("value") {
        match scalar_text(v) {
            Some(t) => values.push(t),
            None => {
                errs.push(
                    &join(path, "value"),
                    format!("must be a string or a number, not {}", kind(v)),
                );
                shape_ok = false;
            }
        }
    }
    if let Some(v) = obj.get("values") {
        let vpath = join(path, "values");
        match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match scalar_text(item) {
                        Some(t) => values.push(t),
                        None => {
                            errs.push(
                                &format!("{vpath}[{i}]"),
                                format!("must be a string or a number, not {}", kind(item)),
                            );
                            shape_ok = false;
                        }
                    }
                }
            }
            other => {
                errs.push(&vpath, format!("must be a list, not {}", kind(other)));
                shape_ok = false;
            }
        }
    }
    let weight = match obj.get("weight") {
        None => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(w) if (-100..=100).contains(&w) => Some(w as i32),
            _ => {
                errs.push(
                    &join(path, "weight"),
                    format!("{n} must be a whole number from -100 to 100"),
                );
                return None;
            }
        },
        Some(other) => {
            errs.push(
                &join(path, "weight"),
                format!("must be a number, not {}", kind(other)),
            );
            return None;
        }
    };
    let op = op?;
    // Which of `value` / `values` the operator takes.
    if shape_ok {
        let single = !matches!(
            op,
            ConstraintOp::In | ConstraintOp::NotIn | ConstraintOp::Exists
        );
        if op == ConstraintOp::Exists {
            for f in ["value", "values"] {
                if obj.contains_key(f) {
                    errs.push(&join(path, f), "exists takes no value");
                }
            }
        } else if single && obj.contains_key("values") {
            errs.push(
                &join(path, "values"),
                format!("{} takes one `value`, not a list", op.as_str()),
            );
        } else if !single && obj.contains_key("value") {
            errs.push(
                &join(path, "value"),
                format!("{} takes a list in `values`", op.as_str()),
            );
        } else if single && !obj.contains_key("value") {
            errs.push(
                &join(path, "value"),
                format!("is required for {}", op.as_str()),
            );
        } else if !single && !obj.contains_key("values") {
            errs.push(
                &join(path, "values"),
                format!("is required for {}", op.as_str()),
            );
        }
    }
    Some((
        Constraint {
            label: label?,
            op,
            values,
        },
        weight,
    ))
}

fn parse_spread(v: &Value, path: &str, errs: &mut Errors) -> Option<Spread> {
    let obj = as_object(v, path, errs)?;
    check_unknown(obj, path, SPREAD_FIELDS, errs);
    let label = match obj.get("label") {
        Some(v) => as_string(v, &join(path, "label"), errs),
        None => {
            errs.push(&join(path, "label"), "is required");
            None
        }
    };
    let max_skew = match obj.get("max_skew") {
        None => Some(1),
        Some(v) => fields::number(v, &join(path, "max_skew"), 0, 1000, errs).map(|n| n as u32),
    };
    Some(Spread {
        label: label?,
        max_skew: max_skew?,
    })
}

/// Reads `gpus`, `gpu` and `ports` of a task's `resources` map into `r`.
pub(super) fn parse_task_resources(
    obj: &Map<String, Value>,
    path: &str,
    r: &mut TaskResources,
    errs: &mut Errors,
) {
    if let Some(v) = obj.get("gpus") {
        if let Some(n) = fields::number(v, &join(path, "gpus"), 0, MAX_GPUS_PER_NODE as u64, errs) {
            r.gpus = n as u32;
        }
    }
    if let Some(v) = obj.get("gpu") {
        let gpath = join(path, "gpu");
        if let Some(g) = as_object(v, &gpath, errs) {
            check_unknown(g, &gpath, GPU_FIELDS, errs);
            let mut filter = GpuFilter::default();
            if let Some(m) = g.get("model") {
                filter.model = as_string(m, &join(&gpath, "model"), errs);
            }
            if let Some(m) = g.get("min_memory") {
                if let Some(b) =
                    fields::quantity(m, &join(&gpath, "min_memory"), parse_memory, errs)
                {
                    filter.min_memory_bytes = b;
                }
            }
            if let Some(u) = g.get("uuids") {
                filter.uuids = string_list(u, &join(&gpath, "uuids"), errs);
            }
            if let Some(m) = g.get("mig") {
                filter.mig = as_string(m, &join(&gpath, "mig"), errs);
            }
            // Pinned GPUs without a count ask for all of them.
            if r.gpus == 0 && !obj.contains_key("gpus") {
                r.gpus = filter.uuids.len().min(MAX_GPUS_PER_NODE) as u32;
            }
            r.gpu = filter;
        }
    }
    if let Some(v) = obj.get("ports") {
        let ppath = join(path, "ports");
        match v {
            Value::Array(items) if items.len() > MAX_PORTS => errs.push(
                &ppath,
                format!("has {} items; at most {MAX_PORTS}", items.len()),
            ),
            Value::Array(items) => {
                let mut ports = Vec::new();
                let mut all_ok = true;
                for (i, item) in items.iter().enumerate() {
                    match fields::port(item, &format!("{ppath}[{i}]"), errs) {
                        Some(p) => ports.push(p),
                        None => all_ok = false,
                    }
                }
                // The list's own rules (duplicates) name positions; check
                // them only on a list kept whole.
                if all_ok {
                    r.ports = ports;
                }
            }
            other => errs.push(
                &ppath,
                format!("must be a list of port numbers, not {}", kind(other)),
            ),
        }
    }
}

/// A MIG profile name as NVIDIA writes it: `[Cc.]Gg.Mgb`, optionally with
/// a `+me`-style suffix (`1g.10gb`, `1c.3g.40gb`, `1g.10gb+me`).
pub(super) fn valid_mig_profile(p: &str) -> bool {
    fn number_then<'a>(s: &'a str, unit: &str) -> Option<&'a str> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        (digits > 0 && digits <= 4)
            .then(|| s[digits..].strip_prefix(unit))
            .flatten()
    }
    if p.len() > 32 {
        return false;
    }
    let (core, suffix) = match p.split_once('+') {
        Some((c, s)) => (c, Some(s)),
        None => (p, None),
    };
    if suffix.is_some_and(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_lowercase())) {
        return false;
    }
    let rest = number_then(core, "c.").unwrap_or(core);
    number_then(rest, "g.")
        .and_then(|r| number_then(r, "gb"))
        .is_some_and(str::is_empty)
}

/// Value rules of the task's GPU and port requests.
pub(super) fn validate_task_resources(task: &TaskSpec, path: &str, errs: &mut Errors) {
    let r = &task.resources;
    let rpath = join(path, "resources");
    if r.gpus as usize > MAX_GPUS_PER_NODE {
        errs.push(
            &join(&rpath, "gpus"),
            format!(
                "{} must be a whole number from 0 to {MAX_GPUS_PER_NODE}",
                r.gpus
            ),
        );
    }
    let gpath = join(&rpath, "gpu");
    if !r.gpu.is_empty() && r.gpus == 0 {
        errs.push(
            &gpath,
            format!("selects GPUs, but {rpath}.gpus asks for none; set gpus to at least 1"),
        );
    }
    if let Some(m) = &r.gpu.model {
        if m.is_empty() || m.len() > MAX_LABEL {
            errs.push(
                &join(&gpath, "model"),
                format!("must be 1 to {MAX_LABEL} characters"),
            );
        }
    }
    if let Some(p) = &r.gpu.mig {
        if !valid_mig_profile(p) {
            errs.push(
                &join(&gpath, "mig"),
                format!("{p:?} is not a MIG profile; expected e.g. 1g.10gb, 3g.40gb or 1c.2g.20gb"),
            );
        }
    }
    let uuids = &r.gpu.uuids;
    for (i, u) in uuids.iter().enumerate() {
        if u.is_empty() || u.len() > MAX_LABEL {
            errs.push(
                &format!("{gpath}.uuids[{i}]"),
                format!("must be 1 to {MAX_LABEL} characters"),
            );
        } else if uuids[..i].contains(u) {
            errs.push(
                &format!("{gpath}.uuids[{i}]"),
                format!("{u:?} is listed twice"),
            );
        }
    }
    if !uuids.is_empty() && uuids.len() < r.gpus as usize {
        errs.push(
            &join(&gpath, "uuids"),
            format!(
                "pins {} GPU(s) but {rpath}.gpus asks for {}",
                uuids.len(),
                r.gpus
            ),
        );
    }
    let ppath = join(&rpath, "ports");
    if r.ports.len() > MAX_PORTS {
        errs.push(
            &ppath,
            format!("has {} items; at most {MAX_PORTS}", r.ports.len()),
        );
    }
    for (i, p) in r.ports.iter().enumerate() {
        if *p == 0 {
            errs.push(
                &format!("{ppath}[{i}]"),
                "0 must be a port number from 1 to 65535",
            );
        } else if r.ports[..i].contains(p) {
            errs.push(
                &format!("{ppath}[{i}]"),
                format!("port {p} is listed twice"),
            );
        }
    }
    if !r.ports.is_empty() && task.network == NetworkMode::None {
        errs.push(
            &ppath,
            format!("host ports need {path}.network: host or bridge (this task uses none)"),
        );
    }
}

/// Value rules of the job's scheduling fields, however the spec was built.
pub(super) fn validate_job_rules(spec: &JobSpec, errs: &mut Errors) {
    validate_rules(
        spec.priority,
        &spec.constraints,
        &spec.affinities,
        spec.spread.as_ref(),
        errs,
    );
}

/// The rules [`parse_job_rules`] does not check item by item as it goes.
pub(super) fn validate_parsed_rules(rules: &JobRules, errs: &mut Errors) {
    if let Some(s) = &rules.spread {
        validate_spread(s, errs);
    }
}

fn validate_spread(s: &Spread, errs: &mut Errors) {
    validate_label_key(&s.label, "spread.label", errs);
    if s.max_skew == 0 || s.max_skew > 1000 {
        errs.push(
            "spread.max_skew",
            format!("{} must be a whole number from 1 to 1000", s.max_skew),
        );
    }
}

fn validate_weight(weight: i32, path: &str, errs: &mut Errors) {
    if weight == 0 || !(-100..=100).contains(&weight) {
        errs.push(
            &join(path, "weight"),
            format!("{weight} must be from -100 to 100, not 0"),
        );
    }
}

fn validate_rules(
    priority: u8,
    constraints: &[Constraint],
    affinities: &[Affinity],
    spread: Option<&Spread>,
    errs: &mut Errors,
) {
    let spec = JobSpecRules {
        priority,
        constraints,
        affinities,
        spread,
    };
    if spec.priority > MAX_PRIORITY {
        errs.push(
            "priority",
            format!(
                "{} must be a whole number from 0 to {MAX_PRIORITY}",
                spec.priority
            ),
        );
    }
    if spec.constraints.len() > MAX_RULES {
        errs.push(
            "constraints",
            format!("has {} items; at most {MAX_RULES}", spec.constraints.len()),
        );
    }
    for (i, c) in spec.constraints.iter().enumerate() {
        validate_rule(c, &format!("constraints[{i}]"), errs);
    }
    if spec.affinities.len() > MAX_RULES {
        errs.push(
            "affinities",
            format!("has {} items; at most {MAX_RULES}", spec.affinities.len()),
        );
    }
    for (i, a) in spec.affinities.iter().enumerate() {
        let path = format!("affinities[{i}]");
        validate_rule(&a.rule, &path, errs);
        validate_weight(a.weight, &path, errs);
    }
    if let Some(s) = spec.spread {
        validate_spread(s, errs);
    }
}

struct JobSpecRules<'a> {
    priority: u8,
    constraints: &'a [Constraint],
    affinities: &'a [Affinity],
    spread: Option<&'a Spread>,
}

fn validate_label_key(key: &str, path: &str, errs: &mut Errors) {
    if key.is_empty() || key.len() > MAX_LABEL {
        errs.push(path, format!("must be 1 to {MAX_LABEL} characters"));
    }
}

fn validate_rule(c: &Constraint, path: &str, errs: &mut Errors) {
    validate_label_key(&c.label, &join(path, "label"), errs);
    let (min, max) = c.op.arity();
    let n = c.values.len();
    if n < min || n > max {
        let field = if max > 1 { "values" } else { "value" };
        let rule = match (min, max) {
            (0, 0) => "exists takes no value".to_string(),
            (1, 1) => format!("{} takes exactly one value", c.op.as_str()),
            _ => format!("{} takes 1 to {MAX_VALUES} values, not {n}", c.op.as_str()),
        };
        // The parser already said so when the field was present but wrong.
        let prefix = format!("{path}.");
        if !errs.0.iter().any(|e| e.field.starts_with(&prefix)) {
            errs.push(&join(path, field), rule);
        }
        return;
    }
    for (i, v) in c.values.iter().enumerate() {
        if v.len() > MAX_LABEL {
            errs.push(
                &format!("{path}.values[{i}]"),
                format!("is longer than {MAX_LABEL} characters"),
            );
        }
    }
    if c.op.is_numeric() {
        if let Some(v) = c.values.first() {
            if label_number(v).is_none() {
                errs.push(
                    &join(path, "value"),
                    format!("{v:?} must be a number for {}", c.op.as_str()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_mig_profile;
    use crate::job::JobSpec;
    use crate::placement::{ConstraintOp, Spread};

    const BASE: &str = "name: x\ntask: {image: 'oci:/i'}\n";

    fn errors_of(extra: &str) -> Vec<String> {
        match JobSpec::from_yaml(&format!("{BASE}{extra}")) {
            Ok(spec) => panic!("expected errors, got {spec:?}"),
            Err(e) => e.field_errors().iter().map(|e| e.to_string()).collect(),
        }
    }

    fn assert_has(errs: &[String], want: &str) {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }

    #[test]
    fn the_scheduling_fields_parse_with_their_defaults() {
        let spec = JobSpec::from_yaml(BASE).unwrap();
        assert_eq!(spec.priority, 50);
        assert!(!spec.gang && !spec.distinct_hosts);
        let spec = JobSpec::from_yaml(&format!(
            "{BASE}priority: 80\ngang: true\ndistinct_hosts: true\n\
             constraints:\n  - {{label: zone, op: in, values: [a, b]}}\n  - {{label: cores, op: '>', value: 8}}\n  - {{label: ssd, op: exists}}\n\
             spread: {{label: rack}}\n\
             affinities:\n  - {{label: zone, op: '=', value: a, weight: -20}}\n"
        ))
        .unwrap();
        assert_eq!(spec.priority, 80);
        assert!(spec.gang && spec.distinct_hosts);
        assert_eq!(spec.constraints.len(), 3);
        assert_eq!(spec.constraints[0].op, ConstraintOp::In);
        assert_eq!(spec.constraints[1].values, ["8"]);
        assert_eq!(
            spec.spread,
            Some(Spread {
                label: "rack".into(),
                max_skew: 1
            })
        );
        assert_eq!(spec.affinities[0].weight, -20);
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec, "{yaml}");
    }

    #[test]
    fn gpu_and_port_requests_parse_and_round_trip() {
        let spec = JobSpec::from_yaml(
            "name: x\ntask:\n  image: 'oci:/i'\n  resources:\n    cpu: 2\n    memory: 1Gi\n    gpus: 2\n    gpu: {model: A100, min_memory: 40Gi}\n    ports: [8080, 9090]\n",
        )
        .unwrap();
        let r = &spec.task.resources;
        assert_eq!(r.gpus, 2);
        assert_eq!(r.gpu.model.as_deref(), Some("A100"));
        assert_eq!(r.gpu.min_memory_bytes, 40 << 30);
        assert_eq!(r.ports, [8080, 9090]);
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec, "{yaml}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&json).unwrap(), spec);
        // Pinned GPUs without a count ask for all of them.
        let pinned = JobSpec::from_yaml(
            "name: x\ntask: {image: 'oci:/i', resources: {gpu: {uuids: [GPU-a, GPU-b]}}}",
        )
        .unwrap();
        assert_eq!(pinned.task.resources.gpus, 2);
    }

    #[test]
    fn bad_scheduling_fields_name_the_field_and_the_rule() {
        let errs = errors_of(
            "priority: 101\ngang: yes please\n\
             constraints:\n  - {label: zone, op: '~', value: a}\n  - {label: zone, op: in, value: a}\n  - {label: cores, op: '<', value: many}\n  - {op: exists, colour: red}\n\
             spread: {label: '', max_skew: 0}\n\
             affinities:\n  - {label: zone, op: '=', value: a}\n  - {label: zone, op: '=', value: a, weight: 0}\n  - {label: zone, op: '=', value: a, weight: 500}\n",
        );
        for want in [
            "priority: 101 must be a whole number from 0 to 100",
            "gang: must be true or false",
            "constraints[0].op: \"~\" is not an operator; expected one of: =, !=, in, not_in, exists, <, >",
            "constraints[1].value: in takes a list in `values`",
            "constraints[2].value: \"many\" must be a number for <",
            "constraints[3].colour: unknown field",
            "constraints[3].label: is required",
            "spread.label: must be 1 to 253 characters",
            "spread.max_skew: 0 must be a whole number from 1 to 1000",
            "affinities[0].weight: is required",
            "affinities[1].weight: 0 must be from -100 to 100, not 0",
            "affinities[2].weight: 500 must be a whole number from -100 to 100",
        ] {
            assert_has(&errs, want);
        }
    }

    #[test]
    fn mig_requests_parse_and_bad_profiles_are_named() {
        let spec = JobSpec::from_yaml(
            "name: x\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 1Gi, gpus: 1, gpu: {mig: 1g.18gb}}}",
        )
        .unwrap();
        assert_eq!(spec.task.resources.gpu.mig.as_deref(), Some("1g.18gb"));
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_yaml(&yaml).unwrap(), spec, "{yaml}");
        for good in ["1g.10gb", "7g.80gb", "1c.3g.40gb", "1g.10gb+me"] {
            assert!(valid_mig_profile(good), "{good}");
        }
        for bad in ["", "1g", "g.10gb", "1g.10", "1g.10gb+", "1g.10gb+ME", "big"] {
            assert!(!valid_mig_profile(bad), "{bad}");
        }
        let err = JobSpec::from_yaml(
            "name: x\ntask: {image: 'oci:/i', resources: {cpu: 1, memory: 1Gi, gpus: 1, gpu: {mig: huge}}}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("task.resources.gpu.mig: \"huge\" is not a MIG profile"),
            "{err}"
        );
    }

    #[test]
    fn bad_gpu_and_port_requests_name_the_field_and_the_rule() {
        let task = |r: &str, net: &str| {
            JobSpec::from_yaml(&format!(
                "name: x\ntask: {{image: 'oci:/i', network: {net}, resources: {r}}}"
            ))
            .unwrap_err()
            .field_errors()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
        };
        let errs = task(
            "{gpus: 65, gpu: {model: '', uuids: [a, a], vendor: x}, ports: [0, 80, 70000]}",
            "host",
        );
        for want in [
            "task.resources.gpus: 65 must be a whole number from 0 to 64",
            "task.resources.gpu.vendor: unknown field",
            "task.resources.gpu.model: must be 1 to 253 characters",
            "task.resources.gpu.uuids[1]: \"a\" is listed twice",
            "task.resources.ports[0]: 0 must be a port number from 1 to 65535",
            "task.resources.ports[2]: 70000 must be a port number from 1 to 65535",
        ] {
            assert_has(&errs, want);
        }
        let errs = task("{ports: [80, 443, 80]}", "host");
        assert_eq!(errs, ["task.resources.ports[2]: port 80 is listed twice"]);
        let errs = task("{gpus: 0, gpu: {model: A100}}", "host");
        assert_has(
            &errs,
            "task.resources.gpu: selects GPUs, but task.resources.gpus asks for none",
        );
        let errs = task("{gpus: 3, gpu: {uuids: [GPU-1]}}", "host");
        assert_has(
            &errs,
            "task.resources.gpu.uuids: pins 1 GPU(s) but task.resources.gpus asks for 3",
        );
        let errs = task("{ports: [80]}", "none");
        assert_has(
            &errs,
            "task.resources.ports: host ports need task.network: host",
        );
    }

    #[test]
    fn a_spec_built_in_code_is_checked_by_the_same_rules() {
        let mut spec = JobSpec::from_yaml(BASE).unwrap();
        spec.priority = 200;
        spec.constraints.push(crate::placement::Constraint::new(
            "zone",
            ConstraintOp::Exists,
            &["a"],
        ));
        spec.task.resources.ports = vec![0];
        let errs: Vec<String> = spec
            .validate()
            .unwrap_err()
            .field_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_has(&errs, "priority: 200 must be a whole number from 0 to 100");
        assert_has(&errs, "constraints[0].value: exists takes no value");
        assert_has(&errs, "task.resources.ports[0]: 0 must be a port number");
    }
}
