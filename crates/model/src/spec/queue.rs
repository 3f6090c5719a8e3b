//! Reading a team queue (`skiff queue apply -f queue.yaml`): every broken
//! rule reported, each naming its field, as for jobs and namespaces.

use serde_json::Value;

use crate::error::SpecError;
use crate::queue::Queue;

use super::check_dns_label;
use super::fields::{as_object, as_string, check_unknown, duration, number, string_list, Errors};
use super::namespace::{parse_quota, validate_quota_gpus};

const QUEUE_FIELDS: &[&str] = &[
    "name",
    "cohort",
    "weight",
    "namespaces",
    "nominal",
    "borrowing_limit",
    "lending_limit",
    "backfill_window",
];
/// The largest fair-share weight.
const MAX_WEIGHT: u64 = 1_000;

impl Queue {
    /// Parses and validates a queue written in YAML (or JSON).
    pub fn from_yaml(text: &str) -> Result<Queue, SpecError> {
        let value = super::read_document(text)?;
        let mut errs = Errors::new();
        let read = parse(&value, &mut errs);
        errs.finish(read)
    }

    /// Checks the rules on values, however the queue was built.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut errs = Errors::new();
        validate(self, &mut errs);
        errs.finish(Some(()))
    }
}

fn parse(root: &Value, errs: &mut Errors) -> Option<Queue> {
    let obj = as_object(root, "", errs)?;
    check_unknown(obj, "", QUEUE_FIELDS, errs);
    let name = match obj.get("name") {
        Some(v) => as_string(v, "name", errs),
        None => {
            errs.push("name", "is required");
            None
        }
    };
    let namespaces = match obj.get("namespaces") {
        Some(v) => string_list(v, "namespaces", errs),
        None => Vec::new(),
    };
    let quota = |field: &str, errs: &mut Errors| {
        obj.get(field)
            .map(|v| parse_quota(v, field, errs))
            .unwrap_or_default()
    };
    let q = Queue {
        name: name?,
        cohort: obj.get("cohort").and_then(|v| as_string(v, "cohort", errs)),
        weight: obj
            .get("weight")
            .map_or(Some(1), |v| number(v, "weight", 0, MAX_WEIGHT, errs))
            .unwrap_or(1) as u32,
        namespaces,
        nominal: quota("nominal", errs),
        borrowing_limit: quota("borrowing_limit", errs),
        lending_limit: quota("lending_limit", errs),
        backfill_window: obj
            .get("backfill_window")
            .and_then(|v| duration(v, "backfill_window", errs)),
    };
    validate(&q, errs);
    Some(q)
}

fn validate(q: &Queue, errs: &mut Errors) {
    if let Err(rule) = check_dns_label(&q.name) {
        errs.push("name", format!("{:?} {rule}", q.name));
    }
    if let Some(c) = &q.cohort {
        if let Err(rule) = check_dns_label(c) {
            errs.push("cohort", format!("{c:?} {rule}"));
        }
    }
    if u64::from(q.weight) > MAX_WEIGHT {
        errs.push("weight", format!("must be 0 to {MAX_WEIGHT}"));
    }
    if q.namespaces.is_empty() {
        errs.push(
            "namespaces",
            "is required: name the namespaces whose jobs may submit here, or `*` for every namespace",
        );
    }
    for (i, ns) in q.namespaces.iter().enumerate() {
        if ns != "*" && check_dns_label(ns).is_err() {
            errs.push(
                &format!("namespaces[{i}]"),
                format!("{ns:?} must be a namespace name (a DNS label) or `*`"),
            );
        }
    }
    for (field, quota) in [
        ("nominal", &q.nominal),
        ("borrowing_limit", &q.borrowing_limit),
        ("lending_limit", &q.lending_limit),
    ] {
        validate_quota_gpus(quota, field, errs);
    }
    // A limit on what the queue does not govern would limit nothing (its
    // use of that is not counted at all); a queue lends at most what it
    // is owed.
    for (name, limits, why) in [
        (
            "borrowing_limit",
            &q.borrowing_limit,
            "give it a nominal amount (0 is one) for the queue to count and borrow it",
        ),
        (
            "lending_limit",
            &q.lending_limit,
            "a queue lends only what it is owed",
        ),
    ] {
        for (key, limit) in crate::queue::quota_amounts(limits) {
            let field = match key.strip_prefix(crate::queue::GPU_PREFIX) {
                Some(model) => format!("{name}.gpus.{model}"),
                None => format!("{name}.{key}"),
            };
            let what = crate::queue::resource_name(&key);
            match q.nominal_of(&key) {
                None => errs.push(
                    &field,
                    format!("the nominal quota does not govern {what}: {why}"),
                ),
                Some(n) if name == "lending_limit" && limit > n => errs.push(
                    &field,
                    format!(
                        "{} is more than the nominal {} {what}: a queue lends at most what it is owed",
                        crate::queue::format_amount(&key, limit),
                        crate::queue::format_amount(&key, n)
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    if q.namespaces.len() > 1 && q.namespaces.iter().any(|n| n == "*") {
        errs.push(
            "namespaces",
            "`*` already admits every namespace: give `*` alone, or list the namespaces",
        );
    }
    if q.cohort.is_none() && !q.borrowing_limit.is_empty() {
        errs.push(
            "borrowing_limit",
            "needs a cohort: a queue borrows only from the other queues of its cohort",
        );
    }
    if q.backfill_window
        .is_some_and(|w| w.as_secs() > 7 * 24 * 3600)
    {
        errs.push("backfill_window", "must be at most 7 days (168h)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{gpu_key, GPU_PREFIX};

    #[test]
    fn a_queue_reads_its_quotas_and_limits() {
        let q = Queue::from_yaml(
            "name: team-a\ncohort: lab\nweight: 2\nnamespaces: [team-a]\nnominal: {cpu: 64, memory: 256Gi, gpus: {\"NVIDIA H100 80GB HBM3\": 16, any: 4}}\nborrowing_limit: {gpus: {\"NVIDIA H100 80GB HBM3\": 8}}\nlending_limit: {gpus: {any: 2}}\nbackfill_window: 30m\n",
        )
        .unwrap();
        assert_eq!(q.weight, 2);
        assert_eq!(q.nominal_of("cpu"), Some(64_000));
        let h100 = gpu_key(Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(q.nominal_of(&h100), Some(16 * 28));
        assert_eq!(
            q.nominal_of(&format!("{GPU_PREFIX}A100")),
            Some(0),
            "unnamed models are owed 0"
        );
        assert_eq!(q.nominal_of("allocations"), None, "not governed");
        assert_eq!(q.borrowing_limit_of(&h100), Some(8 * 28));
        assert_eq!(q.lendable_of(&gpu_key(None)), 2 * 28);
        assert_eq!(q.lendable_of(&h100), 16 * 28, "lends all it does not use");
        assert!(q.admits_namespace("team-a") && !q.admits_namespace("team-b"));
        assert_eq!(q.backfill_window().as_secs(), 1800);
        let text = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<Queue>(&text).unwrap(), q);
    }

    #[test]
    fn every_broken_rule_is_named() {
        let err = Queue::from_yaml(
            "name: Team_A\nweight: 5000\nnominal: {gpus: {H100: lots}, pods: 3}\nborrowing_limit: {cpu: 4}\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "name: \"Team_A\" must be a DNS-1123 label",
            "weight:",
            "namespaces: is required",
            "nominal.pods: unknown field",
            "nominal.gpus.H100:",
            "borrowing_limit: needs a cohort",
        ] {
            assert!(err.contains(part), "{part} missing from {err}");
        }
    }

    #[test]
    fn a_queue_lends_only_what_it_is_owed() {
        let err = Queue::from_yaml(
            "name: team-a\ncohort: lab\nnamespaces: ['*']\nnominal: {gpus: {any: 4}}\nlending_limit: {cpu: 2, gpus: {any: 40}}\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "lending_limit.gpus.any: 40 is more than the nominal 4",
            "lending_limit.cpu: the nominal quota does not govern cpu",
        ] {
            assert!(err.contains(part), "{part} missing from {err}");
        }
    }

    #[test]
    fn a_limit_on_what_the_queue_does_not_govern_or_star_beside_names_is_refused() {
        let err = Queue::from_yaml(
            "name: team-a\ncohort: lab\nnamespaces: ['*', vision]\nnominal: {gpus: {any: 4}}\nborrowing_limit: {cpu: 2, gpus: {any: 2}}\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "borrowing_limit.cpu: the nominal quota does not govern cpu",
            "namespaces: `*` already admits every namespace",
        ] {
            assert!(err.contains(part), "{part} missing from {err}");
        }
        assert!(!err.contains("borrowing_limit.gpus"), "{err}");
    }
}
