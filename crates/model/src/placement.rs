//! Placement rules a job may set: hard label constraints, soft weighted
//! affinities, and a spread over a label's values.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a constraint compares a node label with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConstraintOp {
    /// The label is set and equals the value.
    Eq,
    /// The label is not set, or differs from the value.
    Ne,
    /// The label is set to one of the values.
    In,
    /// The label is not set, or is set to none of the values.
    NotIn,
    /// The label is set (to anything).
    Exists,
    /// The label is set to a number below the value.
    Lt,
    /// The label is set to a number above the value.
    Gt,
}

impl ConstraintOp {
    pub const ALL: [ConstraintOp; 7] = [
        ConstraintOp::Eq,
        ConstraintOp::Ne,
        ConstraintOp::In,
        ConstraintOp::NotIn,
        ConstraintOp::Exists,
        ConstraintOp::Lt,
        ConstraintOp::Gt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOp::Eq => "=",
            ConstraintOp::Ne => "!=",
            ConstraintOp::In => "in",
            ConstraintOp::NotIn => "not_in",
            ConstraintOp::Exists => "exists",
            ConstraintOp::Lt => "<",
            ConstraintOp::Gt => ">",
        }
    }

    /// Also accepts `==` for `=`.
    pub fn parse(text: &str) -> Option<ConstraintOp> {
        if text == "==" {
            return Some(ConstraintOp::Eq);
        }
        ConstraintOp::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// How many values the operator takes: `(min, max)`.
    pub fn arity(self) -> (usize, usize) {
        match self {
            ConstraintOp::Exists => (0, 0),
            ConstraintOp::In | ConstraintOp::NotIn => (1, MAX_VALUES),
            _ => (1, 1),
        }
    }

    /// True for `<` and `>`, whose value must be a number.
    pub fn is_numeric(self) -> bool {
        matches!(self, ConstraintOp::Lt | ConstraintOp::Gt)
    }

    /// Operators written with a single `value` field.
    fn single(self) -> bool {
        !matches!(
            self,
            ConstraintOp::In | ConstraintOp::NotIn | ConstraintOp::Exists
        )
    }
}

/// Most values one `in`/`not_in` rule may list.
pub const MAX_VALUES: usize = 64;

/// A rule over one node label. As a hard `constraint` a node that breaks it
/// is never chosen; inside an affinity it only adds to a node's score.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub label: String,
    pub op: ConstraintOp,
    pub values: Vec<String>,
}

/// Reads a label value as a number for `<` and `>`.
pub fn label_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

impl Constraint {
    pub fn new(label: &str, op: ConstraintOp, values: &[&str]) -> Constraint {
        Constraint {
            label: label.to_string(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Whether a node whose label `self.label` is `value` (`None`: not
    /// set) satisfies the rule.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let first = self.values.first().map(String::as_str);
        match (self.op, value) {
            (ConstraintOp::Exists, v) => v.is_some(),
            (ConstraintOp::Eq, Some(v)) => Some(v) == first,
            (ConstraintOp::Ne, v) => v.is_none() || v != first,
            (ConstraintOp::In, Some(v)) => self.values.iter().any(|x| x == v),
            (ConstraintOp::NotIn, v) => v.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            (ConstraintOp::Lt | ConstraintOp::Gt, Some(v)) => {
                match (label_number(v), first.and_then(label_number)) {
                    (Some(have), Some(want)) if self.op == ConstraintOp::Lt => have < want,
                    (Some(have), Some(want)) => have > want,
                    _ => false,
                }
            }
            (ConstraintOp::Eq | ConstraintOp::In | ConstraintOp::Lt | ConstraintOp::Gt, None) => {
                false
            }
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.label).map(String::as_str))
    }
}

impl fmt::Display for Constraint {
    /// `zone = a`, `zone in (a, b)`, `ssd exists`: the form explanations use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op {
            ConstraintOp::Exists => write!(f, "{} exists", self.label),
            ConstraintOp::In | ConstraintOp::NotIn => write!(
                f,
                "{} {} ({})",
                self.label,
                self.op.as_str(),
                self.values.join(", ")
            ),
            op => write!(
                f,
                "{} {} {}",
                self.label,
                op.as_str(),
                self.values.first().map(String::as_str).unwrap_or("")
            ),
        }
    }
}

/// The serde form shared by constraints and affinities.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleForm {
    label: String,
    op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<i32>,
}

impl RuleForm {
    fn from_rule(c: &Constraint, weight: Option<i32>) -> RuleForm {
        let (value, values) = if c.op.single() {
            (c.values.first().cloned(), None)
        } else if c.op == ConstraintOp::Exists {
            (None, None)
        } else {
            (None, Some(c.values.clone()))
        };
        RuleForm {
            label: c.label.clone(),
            op: c.op.as_str().to_string(),
            value,
            values,
            weight,
        }
    }

    fn into_rule<E: serde::de::Error>(self) -> Result<(Constraint, Option<i32>), E> {
        let op = ConstraintOp::parse(&self.op)
            .ok_or_else(|| E::custom(format!("{:?} is not a constraint operator", self.op)))?;
        let mut values = self.values.unwrap_or_default();
        if let Some(v) = self.value {
            values.insert(0, v);
        }
        Ok((
            Constraint {
                label: self.label,
                op,
                values,
            },
            self.weight,
        ))
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RuleForm::from_rule(self, None).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (c, weight) = RuleForm::deserialize(d)?.into_rule()?;
        if weight.is_some() {
            return Err(serde::de::Error::custom(
                "a constraint takes no weight (affinities do)",
            ));
        }
        Ok(c)
    }
}

/// A soft preference: nodes matching `rule` score `weight` (-100 to 100,
/// not 0) more; negative weights steer work away.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Affinity {
    pub rule: Constraint,
    pub weight: i32,
}

impl Serialize for Affinity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RuleForm::from_rule(&self.rule, Some(self.weight)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Affinity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (rule, weight) = RuleForm::deserialize(d)?.into_rule()?;
        let weight = weight.ok_or_else(|| serde::de::Error::custom("weight is required"))?;
        Ok(Affinity { rule, weight })
    }
}

/// Spread a job's replicas over the values of a node label (a zone, a
/// rack): no value may hold more than `max_skew` replicas above the value
/// with fewest. Nodes without the label are not used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    pub label: String,
    #[serde(default = "one")]
    pub max_skew: u32,
}

fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_operator_matches_as_documented() {
        let zone_a = labels(&[("zone", "a"), ("cores", "16")]);
        let none = labels(&[]);
        let c = |op, vals: &[&str]| Constraint::new("zone", op, vals);
        assert!(c(ConstraintOp::Eq, &["a"]).matches(&zone_a));
        assert!(!c(ConstraintOp::Eq, &["a"]).matches(&none));
        assert!(!c(ConstraintOp::Ne, &["a"]).matches(&zone_a));
        assert!(c(ConstraintOp::Ne, &["a"]).matches(&none));
        assert!(c(ConstraintOp::In, &["b", "a"]).matches(&zone_a));
        assert!(!c(ConstraintOp::In, &["b"]).matches(&zone_a));
        assert!(!c(ConstraintOp::NotIn, &["a"]).matches(&zone_a));
        assert!(c(ConstraintOp::NotIn, &["a"]).matches(&none));
        assert!(c(ConstraintOp::Exists, &[]).matches(&zone_a));
        assert!(!c(ConstraintOp::Exists, &[]).matches(&none));
        let cores = |op, v| Constraint::new("cores", op, &[v]);
        assert!(cores(ConstraintOp::Gt, "8").matches(&zone_a));
        assert!(!cores(ConstraintOp::Lt, "8").matches(&zone_a));
        assert!(cores(ConstraintOp::Lt, "16.5").matches(&zone_a));
        assert!(!cores(ConstraintOp::Gt, "8").matches(&none));
        // A label that is not a number never satisfies < or >.
        assert!(!Constraint::new("zone", ConstraintOp::Gt, &["1"]).matches(&zone_a));
    }

    #[test]
    fn constraints_display_as_explanations_show_them() {
        assert_eq!(
            Constraint::new("zone", ConstraintOp::In, &["a", "b"]).to_string(),
            "zone in (a, b)"
        );
        assert_eq!(
            Constraint::new("ssd", ConstraintOp::Exists, &[]).to_string(),
            "ssd exists"
        );
        assert_eq!(
            Constraint::new("cores", ConstraintOp::Gt, &["8"]).to_string(),
            "cores > 8"
        );
    }

    #[test]
    fn rules_round_trip_through_serde() {
        let c = vec![
            Constraint::new("zone", ConstraintOp::In, &["a", "b"]),
            Constraint::new("cores", ConstraintOp::Lt, &["8"]),
            Constraint::new("ssd", ConstraintOp::Exists, &[]),
        ];
        let yaml = serde_yaml_ng::to_string(&c).unwrap();
        assert_eq!(
            serde_yaml_ng::from_str::<Vec<Constraint>>(&yaml).unwrap(),
            c
        );
        let a = Affinity {
            rule: Constraint::new("rack", ConstraintOp::Eq, &["r1"]),
            weight: -40,
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"label":"rack","op":"=","value":"r1","weight":-40}"#
        );
        assert_eq!(serde_json::from_str::<Affinity>(&json).unwrap(), a);
    }
}
