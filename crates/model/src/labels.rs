//! Labels on jobs (`labels: {owner: gitops, team: vision}`): metadata an
//! operator selects jobs by (`skiff get jobs -l owner=gitops`, `skiff
//! apply -f DIR --prune -l owner=gitops`). They never change a job's
//! version. Keys and values follow Kubernetes' rules, so labels carry over.

use std::collections::BTreeMap;

/// Most labels one job may carry.
pub const MAX_LABELS: usize = 64;

/// A name part: 1 to 63 of `[A-Za-z0-9._-]`, starting and ending with a
/// letter or digit.
fn check_name(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1 to 63 characters"));
    }
    if !s.chars().all(ok_char)
        || !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "{s:?} may hold letters, digits, `-`, `_` and `.`, and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label key: `NAME` or `PREFIX/NAME` with a DNS subdomain prefix
/// of at most 253 characters.
pub fn check_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part.len() <= 63
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                });
            if !prefix_ok {
                return Err(format!(
                    "{key:?}: the prefix before `/` must be a DNS subdomain (lowercase labels joined by dots)"
                ));
            }
            check_name(name)
        }
        None => check_name(key),
    }
}

/// Checks a label value: empty, or a name part.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value)
}

/// A label selector: `key=value`, `key!=value` or `key` (exists), joined
/// by commas; every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Is(String, String),
    IsNot(String, String),
    Exists(String),
}

impl Selector {
    /// Parses `owner=gitops,tier!=batch,team`; the error names the term.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for raw in text.split(',') {
            let t = raw.trim();
            let term = if let Some((k, v)) = t.split_once("!=") {
                Term::IsNot(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = t.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                Term::Is(k.trim().to_string(), v.trim().to_string())
            } else {
                Term::Exists(t.to_string())
            };
            let (key, value) = match &term {
                Term::Is(k, v) | Term::IsNot(k, v) => (k, Some(v)),
                Term::Exists(k) => (k, None),
            };
            check_key(key).map_err(|e| format!("selector term {t:?}: key {e}"))?;
            if let Some(v) = value {
                check_value(v).map_err(|e| format!("selector term {t:?}: value {e}"))?;
            }
            terms.push(term);
        }
        Ok(Selector { terms })
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Is(k, v) => labels.get(k) == Some(v),
            Term::IsNot(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
        })
    }

    /// Whether it has no terms (matches everything).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
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
    fn keys_and_values_follow_kubernetes_rules() {
        assert!(check_key("owner").is_ok());
        assert!(check_key("skiff.dev/owner").is_ok());
        assert!(check_key("Team_1.a").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("-bad").is_err());
        assert!(check_key("Bad_Prefix/x").is_err());
        assert!(check_key(&"k".repeat(64)).is_err());
        assert!(check_value("").is_ok());
        assert!(check_value("v1.2").is_ok());
        assert!(check_value("has space").is_err());
    }

    #[test]
    fn a_selector_matches_every_term() {
        let s = Selector::parse("owner=gitops, tier!=batch,team").unwrap();
        assert!(s.matches(&labels(&[("owner", "gitops"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("owner", "gitops")])), "team missing");
        assert!(!s.matches(&labels(&[
            ("owner", "gitops"),
            ("team", "a"),
            ("tier", "batch")
        ])));
        assert!(!s.matches(&labels(&[("owner", "me"), ("team", "a")])));
        let e = Selector::parse("owner=has space").unwrap_err();
        assert!(e.contains("selector term \"owner=has space\""), "{e}");
        assert!(Selector::parse("owner==x")
            .unwrap()
            .matches(&labels(&[("owner", "x")])));
    }
}
