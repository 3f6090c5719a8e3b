//! Properties of the spec parser over generated input: a valid spec
//! survives its own YAML and JSON forms (what `skiff get job -o yaml`
//! writes can be applied again), and no input, however malformed, makes
//! the parser panic or return a spec its own rules refuse. The generators
//! are in `crate::testing`.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value};

use super::fields;
use crate::job::{JobSpec, JobType};
use crate::testing::{text, valid_spec};

/// Any YAML-shaped tree, its map keys mostly ones the parser knows, so
/// that malformed values reach deep into it.
fn tree() -> impl Strategy<Value = Value> {
    let keys: Vec<&str> = [
        fields::JOB_FIELDS,
        fields::TASK_FIELDS,
        fields::RESOURCE_FIELDS,
        fields::GPU_FIELDS,
        fields::RESTART_FIELDS,
        fields::BACKOFF_FIELDS,
        fields::PROBES_FIELDS,
        fields::PROBE_FIELDS,
        fields::EXEC_FIELDS,
        fields::HTTP_FIELDS,
        fields::SECURITY_FIELDS,
        fields::AFFINITY_FIELDS,
        fields::SPREAD_FIELDS,
        fields::UPDATE_FIELDS,
    ]
    .concat();
    let key = prop_oneof![
        4 => proptest::sample::select(keys),
        1 => Just("colour"),
    ]
    .prop_map(str::to_string);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            text(),
            Just("oci:/img".to_string()),
            Just("250m".to_string()),
            Just("64Mi".to_string()),
            Just("10s".to_string()),
            Just("batch".to_string()),
            Just("in".to_string()),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Whether a JSON text reads the same as YAML: JSON leaves DEL, C1
/// controls and the YAML line breaks (NEL, LS, PS) unescaped in strings,
/// which a YAML reader refuses or folds.
fn reads_the_same_as_yaml(json: &str) -> bool {
    json.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
            && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_valid_spec_survives_its_yaml_and_json_forms(spec in valid_spec()) {
        spec.validate().map_err(|e| TestCaseError::fail(format!("generated an invalid spec: {e}")))?;
        let yaml = serde_yaml_ng::to_string(&spec).unwrap();
        prop_assert_eq!(JobSpec::from_yaml(&yaml), Ok(spec.clone()), "{}", yaml);
        // JSON is read as YAML: the JSON form is checked where that reads
        // the same (YAML's own form escapes what JSON does not).
        let json = serde_json::to_string(&spec).unwrap();
        if reads_the_same_as_yaml(&json) {
            prop_assert_eq!(JobSpec::from_yaml(&json), Ok(spec), "{}", json);
        }
    }

    #[test]
    fn no_input_panics_the_parser_or_passes_it_unchecked(
        mut root in btree_map(prop_oneof![Just("name"), Just("task"), Just("type")].prop_map(str::to_string), tree(), 0..3)
            .prop_map(|m| m.into_iter().collect::<Map<_, _>>()),
        extra in tree(),
    ) {
        // Mostly a job-shaped map with a task, plus anything at all.
        root.entry("task").or_insert(extra.clone());
        for doc in [Value::Object(root), extra] {
            let yaml = serde_yaml_ng::to_string(&doc).unwrap();
            if let Ok(spec) = JobSpec::from_yaml(&yaml) {
                prop_assert!(spec.validate().is_ok(), "{}", yaml);
            }
        }
    }

    #[test]
    fn arbitrary_text_is_refused_or_parsed_without_panic(text in "\\PC{0,200}") {
        let _ = JobSpec::from_yaml(&text);
    }
}

#[test]
fn the_generator_makes_every_kind_of_job() {
    // Guards the generator itself: an over-eager filter would test little.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeMap::new();
    for _ in 0..64 {
        let spec = valid_spec().new_tree(&mut runner).unwrap().current();
        let kind = match (spec.job_type, spec.gang) {
            (JobType::Service, false) => "service",
            (JobType::Service, true) => "gang service",
            (JobType::Batch, false) => "batch",
            (JobType::Batch, true) => "gang batch",
        };
        *seen.entry(kind).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}
